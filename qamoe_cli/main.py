"""The ``qamoe`` entry point: registers the subcommands and funnels every error.

One error funnel: a ``QamoeError`` becomes ``error: …`` and ``hint: …`` on stderr; anything
unexpected is reported the same way. A traceback is shown only with ``--debug`` (anywhere on
the command line) or ``QAMOE_DEBUG=1``. Exit statuses follow one rule (EXIT_RULE below):
2 for a request that is not valid (Click's usage errors and our ``UsageError``), 1 for a valid
request that failed, 130/143 for Ctrl-C/SIGTERM. Signals, the watchdog, hooks and what the
root options set for the process are ``process.py``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from qamoe_cli import audit, corrupt, demo, export, extract, process, report, study, train, tune
from qamoe_cli import eval as eval_cmd
from qamoe_cli.common import ClickException, ClickUsageError, print_error
from qamoe_cli.process import Terminated, state
from qamoe_core import __version__
from qamoe_core.base.errors import NoSpaceError, QamoeError, UsageError, no_space

EXIT_RULE = (
    "Exit status: 0 done; 2 the command line is not valid (unknown option or choice, a value "
    "out of range, options that contradict each other); 1 a valid request failed (a missing "
    "or damaged file, bad data, an existing output without --force, a full disk); 130 "
    "interrupted (Ctrl-C), 143 terminated (SIGTERM)."
)

app = typer.Typer(
    name="qamoe",
    help=(
        "Robust multimodal sentiment analysis along a continuous reliability spectrum: "
        "extract features, train QA-MoE and baselines, corrupt data at any level, evaluate "
        "sweeps and report reliability curves."
    ),
    epilog=EXIT_RULE,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(extract.app, name="extract")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qamoe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks and debug logs.", metavar="")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
            metavar="",
        ),
    ] = False,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget",
            help=(
                "Most memory a command may use for the data it reads, e.g. 8G or 512M (also "
                "$QAMOE_MEMORY_BUDGET; default: half the memory available at start). Files whose "
                "declared sizes need more are refused before reading."
            ),
            metavar="SIZE",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help=(
                "Torch threads for this command (also $QAMOE_THREADS, then $OMP_NUM_THREADS; "
                "default: the cores this process may use that other processes are not "
                "running on at start)."
            ),
            metavar="N",
        ),
    ] = None,
    wait_policy: Annotated[
        str | None,
        typer.Option(
            "--wait-policy",
            help=(
                "How idle torch threads wait: active (spin), passive (sleep), unset (the "
                "OpenMP runtime's default: spin briefly, then sleep) or auto (also "
                "$QAMOE_WAIT_POLICY, then $OMP_WAIT_POLICY; default auto: unset on an idle "
                "machine, passive when other processes are running)."
            ),
            metavar="POLICY",
        ),
    ] = None,
) -> None:
    process.apply_root_options(debug, memory_budget, threads, wait_policy)


# One line per command; each module's docstring is its help text.
app.command("train", help=train.__doc__)(train.command)
app.command("corrupt", help=corrupt.__doc__)(corrupt.command)
app.command("eval", help=eval_cmd.__doc__)(eval_cmd.command)
app.command("report", help=report.__doc__)(report.command)
app.command("export", help=export.__doc__)(export.command)
app.command("demo", help=demo.__doc__)(demo.command)
app.command("audit", help=audit.HELP)(audit.command)
app.command("tune", help=tune.HELP)(tune.command)
app.command("study", help=study.__doc__)(study.command)


# The root options that take a value, moved to the front by _debug_first.
ROOT_VALUED = ("--memory-budget", "--threads", "--wait-policy")


def _debug_first(argv: list[str]) -> list[str]:
    """Move ``--debug``, ``--memory-budget SIZE``, ``--threads N`` and ``--wait-policy P`` to
    the front, so that they work after the command name too (where one adds them when a
    command has just failed: ``qamoe corrupt … --debug``, or as a refusal's hint says)."""
    end = argv.index("--") if "--" in argv else len(argv)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        a = argv[i]
        if a == "--debug" or a.startswith(tuple(f"{o}=" for o in ROOT_VALUED)):
            front.append(a)
        elif a in ROOT_VALUED and i + 1 < end:
            front += argv[i : i + 2]
            i += 1
        else:
            rest.append(a)
        i += 1
    return [*front, *rest, *argv[end:]]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app and turn exceptions into one-line errors."""
    with process.command_scope():  # signals unwind like Ctrl-C; restored for embedders
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        # Non-standalone typer returns the code of an Exit, and turns Ctrl-C into Exit(130).
        code = app(args=_debug_first(sys.argv[1:] if argv is None else argv), standalone_mode=False)
        if code == 130:
            raise Terminated if state.terminated else KeyboardInterrupt
        if isinstance(code, int) and code:
            return code
    except QamoeError as exc:
        if state.debug:
            raise
        print_error(exc.message, exc.hint)
        state.hard_exit = isinstance(exc, NoSpaceError)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        hint = state.interrupt_hint or "Outputs are written atomically: nothing half-written."
        print_error(f"{what}.", hint)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # the funnel: unexpected errors still get one line
        if isinstance(exc, typer.Exit):
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, ClickUsageError):
            return _usage_error(exc)
        if isinstance(exc, ClickException):
            print_error(exc.format_message(), None)  # type: ignore[attr-defined]
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, typer.Abort):
            print_error("aborted.", None)
            return 1
        if state.debug:
            raise
        full = no_space(exc, getattr(exc, "filename", None))  # a writer the core did not wrap
        if full is not None:
            print_error(full.message, full.hint)
            state.hard_exit = True
            return 1
        text = " ".join(str(exc).split())  # one line, whatever the library's message
        print_error(
            f"unexpected {type(exc).__name__}: {text[:300]}",
            "Rerun with --debug for the traceback, and report it if it persists.",
        )
        return 1
    return 0


def _usage_error(exc: Any) -> int:
    """Click's usage errors: the message, and where to look (exit 2)."""
    path = exc.ctx.command_path if exc.ctx is not None else "qamoe"
    message = exc.format_message()
    hint = f"See '{path} --help'."
    words = message.lower().replace("(", " ").replace(")", " ").replace("'", " ").split()
    if "extra" in words and {"true", "false", "yes", "no", "1", "0"} & set(words):
        # `--sweep true`: an on/off flag takes no value
        hint = f"On/off options take no value (e.g. --sweep, not --sweep true). {hint}"
    print_error(message, hint)
    return int(exc.exit_code)


def run() -> None:
    """The console script: :func:`main` under the signal watchdog, then exit with its status."""
    process.run_console(main)


if __name__ == "__main__":
    run()
