"""Kill a command right after its Nth file operation (the fault harness; docs/results/faults.md).

``run(fn, kill_at, report)`` forks; the child counts every call of ``os.replace``,
``os.rename``, ``shutil.rmtree``, ``os.unlink``, ``h5py.File.close`` and rundir's
``renameat2`` exchange (one counter across
them, so "every N" covers every call of each) and SIGKILLs itself right after call number
``kill_at`` (0: never). No cleanup runs, exactly as with ``kill -9``. The child writes what it
counted to ``report`` (JSON: ``{"counts": {name: calls}, "sequence": [name of call 1, ...]}``)
when it ends normally. Forking (instead of a fresh interpreter)
spares ~2 s of imports per kill point; torch runs with one thread, so no pool is forked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

OPS = ("os.replace", "os.rename", "shutil.rmtree", "os.unlink", "h5py.File.close", "renameat2")


def _patch(kill_at: int, counts: Counter[str], sequence: list[str]) -> None:
    def count(name: str) -> None:
        counts[name] += 1
        sequence.append(name)
        if len(sequence) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            count(name)
            return result

        return counted

    os.replace = wrap("os.replace", os.replace)  # type: ignore[assignment]
    os.rename = wrap("os.rename", os.rename)  # type: ignore[assignment]
    os.unlink = wrap("os.unlink", os.unlink)  # type: ignore[assignment]
    os.remove = os.unlink  # type: ignore[assignment]
    shutil.rmtree = wrap("shutil.rmtree", shutil.rmtree)  # type: ignore[assignment]
    original_close = h5py.File.close

    def close(self: h5py.File) -> None:
        was_open = bool(self.id)
        original_close(self)
        if was_open:  # h5py closes again on garbage collection: count real closes only
            count("h5py.File.close")

    h5py.File.close = close  # type: ignore[method-assign]
    from qamoe_core.base import rundir  # the atomic exchange of --force (renameat2 via ctypes)

    rundir._rename_exchange = wrap("renameat2", rundir._rename_exchange)  # type: ignore[assignment]


def run(fn: Callable[[], int | None], kill_at: int, report: Path) -> str:
    """Run ``fn`` in a forked child; returns "killed", "ok" or "failed (rc N)"."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's (pytest's) code
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            counts: Counter[str] = Counter()
            sequence: list[str] = []
            _patch(kill_at, counts, sequence)
            rc = fn()
            report.write_text(json.dumps({"counts": dict(counts), "sequence": sequence}))
            code = int(rc or 0)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    rc = os.waitstatus_to_exitcode(status)
    return "ok" if rc == 0 else f"failed (rc {rc})"
