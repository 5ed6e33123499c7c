"""The ``qamoe`` entry point: registers the subcommands and funnels every error.

One error funnel: a ``QamoeError`` becomes ``error: …`` and ``hint: …`` on stderr with exit
status 1; anything unexpected is reported the same way. A traceback is shown only with
``--debug`` or ``QAMOE_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from qamoe_cli import corrupt, demo, extract, report, train
from qamoe_cli import eval as eval_cmd
from qamoe_cli.common import err_console
from qamoe_core import __version__
from qamoe_core.errors import QamoeError

app = typer.Typer(
    name="qamoe",
    help=(
        "Robust multimodal sentiment analysis along a continuous reliability spectrum: "
        "extract features, train QA-MoE and baselines, corrupt data at any level, evaluate "
        "sweeps and report reliability curves."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(extract.app, name="extract")

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qamoe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _STATE["debug"] = debug or os.environ.get("QAMOE_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if _STATE["debug"] else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# One line per command; each module's docstring is its help text.
app.command("train", help=train.__doc__)(train.command)
app.command("corrupt", help=corrupt.__doc__)(corrupt.command)
app.command("eval", help=eval_cmd.__doc__)(eval_cmd.command)
app.command("report", help=report.__doc__)(report.command)
app.command("demo", help=demo.__doc__)(demo.command)


def _print_error(message: str, hint: str | None) -> None:
    # escape: messages may hold brackets (e.g. "qamoe[media]") that Rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app and turn exceptions into one-line errors."""
    try:
        app(args=argv, standalone_mode=False)
    except QamoeError as exc:
        if _STATE["debug"]:
            raise
        _print_error(exc.message, exc.hint)
        return 1
    except KeyboardInterrupt:
        _print_error("interrupted.", "Outputs are written atomically: nothing half-written.")
        return 130
    except Exception as exc:  # the funnel: unexpected errors still get one line
        from typer._click import exceptions as cx  # typer vendors click

        if isinstance(exc, typer.Exit):
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, cx.UsageError):
            path = exc.ctx.command_path if exc.ctx is not None else "qamoe"
            _print_error(exc.format_message(), f"See '{path} --help'.")
            return exc.exit_code
        if isinstance(exc, cx.ClickException):
            _print_error(exc.format_message(), None)
            return exc.exit_code
        if isinstance(exc, typer.Abort):
            _print_error("aborted.", None)
            return 1
        if _STATE["debug"]:
            raise
        _print_error(
            f"unexpected {type(exc).__name__}: {exc}",
            "Rerun with --debug for the traceback, and report it if it persists.",
        )
        return 1
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
