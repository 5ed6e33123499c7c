"""The process a command runs in: signals, the watchdog, interpreter hooks, the root options'
process-wide settings, thread policy, and the state one command leaves for the error funnel.

SIGTERM (a job scheduler, `timeout`, `kill`) and SIGINT (Ctrl-C) unwind the command like
Ctrl-C, so that every atomic output removes its temporary (:func:`command_scope` installs the
handlers and restores them, for callers that embed ``main()`` too). Should the command not
have ended GRACE_S seconds later (the exception fired where Python drops it, e.g. inside an
h5py callback, or a C call is still running), the console script's :class:`Watchdog` ends the
process: what it leaves is at most a temporary, swept by the next command on the same output.
Only the console script (:func:`run_console`) runs the watchdog and may end its own process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from qamoe_cli.common import print_error
from qamoe_core.base import runtime

GRACE_S = 0.8


@dataclass
class State:
    """What one command leaves for the error funnel and the console script."""

    debug: bool = False  # --debug or QAMOE_DEBUG: tracebacks, debug logs, every hook's report
    terminated: bool = False  # the interruption was SIGTERM (exit 143), not Ctrl-C (130)
    hard_exit: bool = False  # skip the interpreter's teardown (after a failed HDF5 write)
    in_main: bool = False  # inside main(): the quiet hooks are ours to install
    # What the funnel says after Ctrl-C or SIGTERM in place of its generic hint: a command
    # that knows better (train: how to resume) sets it before re-raising.
    interrupt_hint: str | None = None
    next_excepthook: Any = None
    next_unraisable: Any = None


state = State()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every atomic output removes its temporary."""


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM raises Terminated, SIGINT KeyboardInterrupt (typer turns either into Exit(130),
    hence the flag). Should Python drop the exception, the watchdog still ends the process."""
    if signum == signal.SIGTERM:
        state.terminated = True
        raise Terminated
    raise KeyboardInterrupt


class Watchdog:
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
        print_error(f"{word}.", hint + "behind is swept by the next command on that output).")
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


def quiet_unraisable(unraisable: Any) -> None:
    """After a failed write (a full disk), h5py's object destructors each report an error
    that cannot be raised; the error itself reaches the funnel. Shown only with --debug."""
    if state.debug or "h5py" not in repr(unraisable.object):
        (state.next_unraisable or sys.__unraisablehook__)(unraisable)


def quiet_excepthook(kind: Any, value: Any, tb: Any) -> None:
    # Cython prints a destructor's traceback through sys.excepthook before the unraisable hook.
    if state.debug or not _from_h5py_teardown(tb):
        (state.next_excepthook or sys.__excepthook__)(kind, value, tb)


def apply_root_options(
    debug: bool, memory_budget: str | None, threads: int | None = None, wait: str | None = None
) -> None:
    """What the root options set for the whole process: debug output and logging, the memory
    budget that readers compare a file's declared sizes with, and the thread policy (here,
    before any command imports torch: its OpenMP runtime reads the wait policy when loaded)."""
    state.debug = debug or os.environ.get("QAMOE_DEBUG", "") not in ("", "0")
    runtime.set_memory_budget(memory_budget)
    runtime.apply_thread_policy(runtime.resolve_thread_policy(threads, wait))
    if state.in_main:  # here, not in main(): typer installs its own hook as the app starts
        state.next_excepthook = sys.excepthook
        sys.excepthook = quiet_excepthook
    logging.basicConfig(
        level=logging.DEBUG if state.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger(__name__).debug("thread policy: %s", runtime.thread_record())


@contextmanager
def command_scope() -> Iterator[None]:
    """One command: the signal handlers (in the main thread), the quiet hooks and a fresh
    state; everything process-wide is restored afterwards, for callers that embed main()."""
    olds = {}
    if threading.current_thread() is threading.main_thread():
        olds = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    old_hooks = sys.unraisablehook, sys.excepthook
    state.next_unraisable, sys.unraisablehook = sys.unraisablehook, quiet_unraisable
    state.terminated = state.hard_exit = False
    state.interrupt_hint = None
    state.in_main = True
    try:
        yield
    finally:
        state.in_main = False
        sys.unraisablehook, sys.excepthook = old_hooks
        runtime.set_memory_budget(None)
        runtime.reset_thread_policy()
        for sig, old in olds.items():
            if old is not None:  # None: a handler not set from Python
                signal.signal(sig, old)


@contextmanager
def streaming() -> Iterator[Callable[..., bool]]:
    """Thread and memory policy for a command that streams a file block by block (`corrupt`):
    one torch intra-op thread while it runs; yields the call that hands free heap back to the
    system, for after each block (runtime.trim_memory)."""
    with runtime.torch_threads(1):
        yield runtime.trim_memory


def run_console(main: Callable[[], int]) -> NoReturn:
    """The console script: ``main()`` under the signal watchdog, then exit with its status."""
    watchdog = Watchdog()
    try:
        code = main()
    finally:
        watchdog.close()
    if state.hard_exit or code in (130, 143):
        # After a failed HDF5 write the library's own teardown at interpreter exit can crash
        # (SIGSEGV) on the dead file handle; the error is reported and the temporary is gone,
        # so skip that teardown. After Ctrl-C or SIGTERM, too: the command has unwound and
        # removed its temporaries, and the teardown (torch, h5py) can take a second.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
