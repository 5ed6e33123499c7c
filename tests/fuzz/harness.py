"""Run one command on one generated input in a forked child, under a time and memory cap,
and check how it ended (issue 26's contract for files from strangers).

``run_child(fn, workdir)`` forks: the child points ``sys.stdout``/``sys.stderr`` (and fds 1
and 2) at files, limits its address space (so a bug that reads a declared shape cannot take
the machine with it), calls ``fn`` (``main(argv)`` in-process, or an API call) and writes what
it saw to ``outcome.json``: exit code, seconds, how far its RSS rose above where it started,
and which canary modules it imported. The parent kills it past ``TIME_CAP_S``.
``check(outcome, ...)`` then asserts the contract: exit 0 with a sane result, or exit 1/2 with
one ``error:`` line (and at most a ``hint:`` line) on stderr, no traceback, not the catch-all
``unexpected …`` message, no output left behind, no canary imported, RSS within ``RSS_CAP``.

Forking (as tests/faults does) spares the imports per example and keeps what one example
does to the process (signal handlers, memory, modules) out of the next.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

TIME_CAP_S = float(os.environ.get("QAMOE_FUZZ_TIME_CAP", "90"))  # one command on a tiny file
RSS_CAP = 1 << 30  # growth of the child's resident memory over where it started
AS_SLACK = 3 << 30  # the child's address-space limit above its size at the fork
# Modules a generated file may name; none may ever be imported (conftest writes them).
CANARY_MODULES = ("qamoe_fuzz_canary", "qamoe_fuzz_canary.sub", "this")
CANARY_MARKER_ENV = "QAMOE_FUZZ_CANARY_DIR"  # where canary code drops its marker files
# Every command runs under a data budget, and on one thread (the machine is shared).
BUDGET = ["--memory-budget", "512M", "--threads", "1"]
# How many examples each target tries: QAMOE_FUZZ_EXAMPLES=N for the long run (random seed).
# Outcomes per target, printed at the end of the session (tests/fuzz/conftest.py).
TALLY: dict[str, Counter[str]] = {}
LONG = int(os.environ.get("QAMOE_FUZZ_EXAMPLES", "0") or 0)


def fuzz_settings(default_examples: int) -> settings:
    """Fixed budget and seed by default (the suite); $QAMOE_FUZZ_EXAMPLES random examples."""
    common = dict(
        deadline=None,  # each child has its own time cap (a hang is killed, not waited out)
        database=None,  # nothing written beside the repository
        print_blob=True,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    if LONG:
        return settings(max_examples=LONG, derandomize=False, **common)  # type: ignore[arg-type]
    return settings(max_examples=default_examples, derandomize=True, **common)  # type: ignore[arg-type]


@dataclass
class Outcome:
    rc: int | None  # None: killed at the time cap
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    rss_growth: int = 0  # bytes
    imported: list[str] = field(default_factory=list)

    def show(self) -> str:
        return (
            f"rc={self.rc} after {self.seconds:.1f} s\n"
            f"stdout: {self.out[-1500:]}\nstderr: {self.err[-3000:]}"
        )


def _statm() -> tuple[int, int]:
    """(virtual size, resident size) of this process in bytes."""
    pages = Path("/proc/self/statm").read_text().split()
    size = os.sysconf("SC_PAGE_SIZE")
    return int(pages[0]) * size, int(pages[1]) * size


def _child(fn: Callable[[], int | None], workdir: Path) -> int:
    out = open(workdir / "stdout", "w")  # noqa: SIM115  (closed by os._exit's flush below)
    err = open(workdir / "stderr", "w")  # noqa: SIM115
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    code = 99
    try:
        vm, rss0 = _statm()
        resource.setrlimit(resource.RLIMIT_AS, (vm + AS_SLACK, resource.RLIM_INFINITY))
        start = time.monotonic()
        code = int(fn() or 0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        record = {
            "rc": code,
            "seconds": time.monotonic() - start,
            "rss_growth": max(0, peak - rss0),
            "imported": [m for m in CANARY_MODULES if m in sys.modules],
        }
        (workdir / "outcome.json").write_text(json.dumps(record))
    except BaseException:
        traceback.print_exc(file=err)  # the test reports it: an exception escaped the command
        code = 99
    finally:
        out.flush()
        err.flush()
    return code


def run_child(fn: Callable[[], int | None], workdir: Path, cap_s: float = TIME_CAP_S) -> Outcome:
    """Run ``fn`` in a forked child (see the module docstring) and collect its outcome."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in CANARY_MODULES:  # a canary imported earlier in this process would hide one
        sys.modules.pop(name, None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest's code
        os._exit(_child(fn, workdir))
    start = time.monotonic()
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() - start > cap_s:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return Outcome(None, *_texts(workdir), seconds=time.monotonic() - start)
        else:
            time.sleep(0.01)
    report = workdir / "outcome.json"
    out, err = _texts(workdir)
    if not report.exists():  # an exception escaped, or the child died of a signal
        return Outcome(os.waitstatus_to_exitcode(status), out, err, time.monotonic() - start)
    data = json.loads(report.read_text())
    return Outcome(data["rc"], out, err, data["seconds"], data["rss_growth"], data["imported"])


def _texts(workdir: Path) -> tuple[str, str]:
    def read(name: str) -> str:
        path = workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    return read("stdout"), read("stderr")


def error_lines(err: str) -> list[str]:
    """The non-empty lines of stderr."""
    return [line for line in err.splitlines() if line.strip()]


def check(
    outcome: Outcome,
    target: str,
    *,
    sane: Callable[[Outcome], None] | None = None,
    outputs: tuple[Path, ...] = (),
    markers: Path | None = None,
) -> None:
    """Assert issue 26's contract (module docstring). ``sane`` checks a success further;
    ``outputs`` must not exist after a failure; ``markers``: a folder canary code writes to.
    Each outcome is tallied under ``target`` (exit status and the error's first words)."""
    lines = error_lines(outcome.err)
    first = ""
    if outcome.rc and lines:  # the error's first words, quoted paths and values left out
        first = re.sub(r"'[^']*'", "'…'", lines[0].removeprefix("error:")).strip()[:60]
    TALLY.setdefault(target, Counter())[f"rc={outcome.rc} {first}".strip()] += 1
    assert outcome.rc is not None, f"hang: still running after {TIME_CAP_S:g} s\n{outcome.show()}"
    assert not outcome.imported, f"imported a module a file named: {outcome.imported}"
    if markers is not None:
        assert not any(markers.iterdir()), f"file-named code ran: {sorted(markers.iterdir())}"
    assert outcome.rss_growth <= RSS_CAP, (
        f"RSS rose by {outcome.rss_growth / 2**20:.0f} MiB\n{outcome.show()}"
    )
    assert outcome.rc in (0, 1, 2), f"exit status {outcome.rc}\n{outcome.show()}"
    if outcome.rc == 0:
        if sane is not None:
            sane(outcome)
        return
    assert "Traceback" not in outcome.err, outcome.show()
    assert lines and lines[0].startswith("error:"), f"no one-line error\n{outcome.show()}"
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint:")), outcome.show()
    assert not lines[0].startswith("error: unexpected"), f"catch-all error\n{outcome.show()}"
    for path in outputs:
        assert not os.path.lexists(path), f"failed, yet left {path}\n{outcome.show()}"


def json_result(outcome: Outcome) -> dict:
    """The ``--json`` result a successful command printed (it must be one JSON document)."""
    try:
        value = json.loads(outcome.out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"stdout is not JSON ({exc})\n{outcome.show()}") from None
    assert isinstance(value, dict), outcome.show()
    return value
