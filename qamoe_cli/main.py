"""The ``qamoe`` entry point: registers the subcommands and funnels every error.

One error funnel: a ``QamoeError`` becomes ``error: …`` and ``hint: …`` on stderr; anything
unexpected is reported the same way. A traceback is shown only with ``--debug`` (anywhere on
the command line) or ``QAMOE_DEBUG=1``. Exit statuses follow one rule (EXIT_RULE below):
2 for a request that is not valid (Click's usage errors and our ``UsageError``), 1 for a valid
request that failed, 130/143 for Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from typing import Annotated, Any

import typer
from rich.markup import escape

from qamoe_cli import audit, corrupt, demo, extract, report, train, tune
from qamoe_cli import eval as eval_cmd
from qamoe_cli.common import INTERRUPT_HINT, ClickException, ClickUsageError, err_console
from qamoe_core import __version__
from qamoe_core.base.errors import NoSpaceError, QamoeError, UsageError, no_space
from qamoe_core.base.runtime import set_memory_budget

EXIT_RULE = (
    "Exit status: 0 done; 2 the command line is not valid (unknown option or choice, a value "
    "out of range, options that contradict each other); 1 a valid request failed (a missing "
    "or damaged file, bad data, an existing output without --force, a full disk); 130 "
    "interrupted (Ctrl-C), 143 terminated (SIGTERM)."
)
# After SIGTERM or Ctrl-C a command unwinds like Ctrl-C, removing its temporaries. Should it not
# have ended GRACE_S seconds later (the exception fired where Python drops it, e.g. inside an
# h5py callback, or a C call is still running), the console script's watchdog ends the process:
# what it leaves is at most a temporary, swept by the next command on the same output.
GRACE_S = 0.8

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

_STATE: dict[str, Any] = {
    "debug": False,
    "terminated": False,
    "hard_exit": False,
    "in_main": False,
    "next_excepthook": None,
    "next_unraisable": None,
}


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
) -> None:
    _STATE["debug"] = debug or os.environ.get("QAMOE_DEBUG", "") not in ("", "0")
    set_memory_budget(memory_budget)
    if _STATE["in_main"]:  # here, not in main(): typer installs its own hook as the app starts
        _STATE["next_excepthook"] = sys.excepthook
        sys.excepthook = _quiet_excepthook
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
app.command("audit", help=audit.HELP)(audit.command)
app.command("tune", help=tune.HELP)(tune.command)


def _print_error(message: str, hint: str | None) -> None:
    # escape: messages may hold brackets (e.g. "qamoe[media]") that Rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every atomic output removes its temporary."""


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM raises Terminated, SIGINT KeyboardInterrupt (typer turns either into Exit(130),
    hence the flag). Should Python drop the exception, the watchdog (run()) still ends it."""
    if signum == signal.SIGTERM:
        _STATE["terminated"] = True
        raise Terminated
    raise KeyboardInterrupt


class _Watchdog:
    """Ends the process GRACE_S seconds after SIGTERM/SIGINT if the command has not ended by
    itself, at once on a second signal. It hears signals through ``signal.set_wakeup_fd``,
    which the C-level handler writes even while the main thread is stuck in a C call. The
    channel is a socket pair, not a pipe: Windows takes only a socket there."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        self.previous = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="qamoe-watchdog", daemon=True).start()

    def _watch(self) -> None:
        first: int | None = None
        while True:
            try:
                data = self.reader.recv(64)
            except OSError:
                return
            stops = [b for b in data if b in (signal.SIGTERM, signal.SIGINT)]
            if not data or self.done.is_set():
                return
            if stops and first is not None:
                self._exit(first)  # a second signal: no more waiting
            if stops:
                first = stops[0]
                threading.Thread(target=self._grace, args=(first,), daemon=True).start()

    def _grace(self, signum: int) -> None:
        if not self.done.wait(GRACE_S):
            self._exit(signum)

    def _exit(self, signum: int) -> None:
        if self.done.is_set():
            return
        word, code = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
        hint = "Outputs are written atomically: nothing half-written (a temporary left "
        _print_error(f"{word}.", hint + "behind is swept by the next command on that output).")
        sys.stderr.flush()
        os._exit(code)

    def close(self) -> None:
        self.done.set()
        signal.set_wakeup_fd(self.previous)
        self.writer.close()  # ends _watch's recv


def _from_h5py_teardown(tb: Any) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith("h5py/_objects.pyx"):
            return True
        tb = tb.tb_next
    return False


def _quiet_unraisable(unraisable: Any) -> None:
    """After a failed write (a full disk), h5py's object destructors each report an error
    that cannot be raised; the error itself reaches the funnel. Shown only with --debug."""
    if _STATE["debug"] or "h5py" not in repr(unraisable.object):
        (_STATE["next_unraisable"] or sys.__unraisablehook__)(unraisable)


def _quiet_excepthook(kind: Any, value: Any, tb: Any) -> None:
    # Cython prints a destructor's traceback through sys.excepthook before the unraisable hook.
    if _STATE["debug"] or not _from_h5py_teardown(tb):
        (_STATE["next_excepthook"] or sys.__excepthook__)(kind, value, tb)


def _debug_first(argv: list[str]) -> list[str]:
    """Move ``--debug`` and ``--memory-budget SIZE`` to the front, so that they work after the
    command name too (where one adds them when a command has just failed:
    ``qamoe corrupt … --debug``, or as a refusal's hint says)."""
    end = argv.index("--") if "--" in argv else len(argv)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        a = argv[i]
        if a == "--debug" or a.startswith("--memory-budget="):
            front.append(a)
        elif a == "--memory-budget" and i + 1 < end:
            front += argv[i : i + 2]
            i += 1
        else:
            rest.append(a)
        i += 1
    return [*front, *rest, *argv[end:]]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app and turn exceptions into one-line errors."""
    # SIGTERM (a job scheduler, `timeout`, `kill`) unwinds like Ctrl-C, so that atomic outputs
    # remove their temporaries; both hooks are restored for callers that embed main().
    in_main_thread = threading.current_thread() is threading.main_thread()
    olds = {}
    if in_main_thread:
        olds = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    old_hooks = sys.unraisablehook, sys.excepthook
    _STATE["next_unraisable"], sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    _STATE["terminated"] = _STATE["hard_exit"] = False
    INTERRUPT_HINT["text"] = None
    _STATE["in_main"] = True
    try:
        return _main(argv)
    finally:
        _STATE["in_main"] = False
        sys.unraisablehook, sys.excepthook = old_hooks
        set_memory_budget(None)
        for sig, old in olds.items():
            if old is not None:  # None: a handler not set from Python
                signal.signal(sig, old)


def _main(argv: list[str] | None) -> int:
    try:
        # Non-standalone typer returns the code of an Exit, and turns Ctrl-C into Exit(130).
        code = app(args=_debug_first(sys.argv[1:] if argv is None else argv), standalone_mode=False)
        if code == 130:
            raise Terminated if _STATE["terminated"] else KeyboardInterrupt
        if isinstance(code, int) and code:
            return code
    except QamoeError as exc:
        if _STATE["debug"]:
            raise
        _print_error(exc.message, exc.hint)
        _STATE["hard_exit"] = isinstance(exc, NoSpaceError)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        hint = INTERRUPT_HINT["text"] or "Outputs are written atomically: nothing half-written."
        _print_error(f"{what}.", hint)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # the funnel: unexpected errors still get one line
        if isinstance(exc, typer.Exit):
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, ClickUsageError):
            return _usage_error(exc)
        if isinstance(exc, ClickException):
            _print_error(exc.format_message(), None)  # type: ignore[attr-defined]
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, typer.Abort):
            _print_error("aborted.", None)
            return 1
        if _STATE["debug"]:
            raise
        full = no_space(exc, getattr(exc, "filename", None))  # a writer the core did not wrap
        if full is not None:
            _print_error(full.message, full.hint)
            _STATE["hard_exit"] = True
            return 1
        text = " ".join(str(exc).split())  # one line, whatever the library's message
        _print_error(
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
    _print_error(message, hint)
    return int(exc.exit_code)


def run() -> None:
    """The console script: :func:`main` under the signal watchdog, then exit with its status."""
    watchdog = _Watchdog()
    try:
        code = main()
    finally:
        watchdog.close()
    if _STATE["hard_exit"] or code in (130, 143):
        # After a failed HDF5 write the library's own teardown at interpreter exit can crash
        # (SIGSEGV) on the dead file handle; the error is reported and the temporary is gone,
        # so skip that teardown. After Ctrl-C or SIGTERM, too: the command has unwound and
        # removed its temporaries, and the teardown (torch, h5py) can take a second.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
