"""Process policy, kept out of domain code: torch's thread count, handing memory back, and
the memory budget that readers compare a file's declared sizes with (:func:`memory_budget`).

The CLI applies these around the work it starts (qamoe_cli/process.py); library functions
such as :func:`qamoe_core.spectrum.files.corrupt_file` never change process-wide settings
themselves, so a caller embedding qamoe keeps control of its own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from qamoe_core.base.errors import UsageError, check_choice

# Above this resident size, :func:`trim_memory` hands free heap pages back to the OS.
TRIM_ABOVE = 512 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with torch's intra-op thread count at ``n``, restored afterwards.

    `corrupt` overlaps compute with HDF5 I/O in two threads of its own; torch's intra-op threads
    on top oversubscribe small machines (on a busy 2-core box, elementwise ops on a 5 MB tensor
    took ~10 ms with 2 threads against ~1 ms with 1).
    """
    import torch  # here, so importing this module stays cheap

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return cast("Callable[[int], int] | None", getattr(libc, "malloc_trim", None))


_MALLOC_TRIM = _load_malloc_trim()


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def trim_memory(above: int = TRIM_ABOVE) -> bool:
    """Hand free heap pages back (glibc malloc_trim) once RSS passes ``above``; True if it did.

    Streaming `corrupt` allocates blocks in a worker thread and frees them in another, in sizes
    that vary between modalities; glibc's per-thread arenas and sliding mmap threshold then keep
    freed pages resident and RSS ratchets up with the file size (measured without a remedy: peak
    507 MiB for a 0.9 GB file, 573 MiB for 2.6 GB, 873 MiB for 5.4 GB). Calling this after each
    block bounds it. Not unconditionally: pages that stay mapped make the next block's
    allocations cheap (no page faults).
    """
    if _MALLOC_TRIM is None or rss_bytes() <= above:
        return False
    _MALLOC_TRIM(0)
    return True


# -- the memory budget -------------------------------------------------------------------------
BUDGET_ENV = "QAMOE_MEMORY_BUDGET"
# Without a flag or BUDGET_ENV: this share of the memory the machine has available at the
# first call (MemAvailable in /proc/meminfo), or FALLBACK_BUDGET where that is not known.
DEFAULT_SHARE = 0.5
FALLBACK_BUDGET = 4 << 30
MIN_BUDGET = 16 << 20
_BUDGET: dict[str, int | None] = {"set": None, "default": None}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, name: str = "--memory-budget") -> int:
    """Bytes from ``8G``, ``512M``, ``1.5GiB``, ``4096K`` or a plain number of bytes (binary
    units); a UsageError naming ``name`` for anything else or below MIN_BUDGET."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    value = float(m.group(1)) * _UNITS[m.group(2).lower()] if m else math.nan
    if not (math.isfinite(value) and MIN_BUDGET <= value < 1 << 62):
        raise UsageError(
            f"The '{name}' value must be a size of at least {format_size(MIN_BUDGET)} such as "
            f"8G or 512M. Got {text!r} instead.",
            hint="Units are binary: K, M, G, T (KiB, MiB, GiB, TiB); a bare number is bytes.",
        )
    return int(value)


def format_size(n: float) -> str:
    """``n`` bytes for a message: ``512 MiB``, ``7.2 GiB``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def set_memory_budget(value: int | str | None) -> None:
    """Set the budget for this process (the CLI's ``--memory-budget``); None: back to the
    environment variable or the default."""
    _BUDGET["set"] = None if value is None else parse_size(str(value))


def memory_budget() -> int:
    """Bytes a command may hold for the data it reads: ``--memory-budget`` (set_memory_budget),
    else $QAMOE_MEMORY_BUDGET, else DEFAULT_SHARE of the available memory (measured once)."""
    chosen = _BUDGET["set"]
    if chosen is not None:
        return chosen
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        return parse_size(env, BUDGET_ENV)
    default = _BUDGET["default"]
    if default is None:
        available = _available_memory()
        share = int(available * DEFAULT_SHARE) if available else FALLBACK_BUDGET
        default = _BUDGET["default"] = max(MIN_BUDGET, share)
    return default


# -- the thread policy -------------------------------------------------------------------------
# How many intra-op threads torch runs and how its OpenMP workers wait between parallel regions
# ("active": they spin, "passive": they sleep at once, "unset": the OpenMP runtime's own
# default, which for libgomp spins ~300,000 turns, then sleeps). Both must be in the process
# environment before torch loads libgomp: libgomp reads OMP_WAIT_POLICY once, when it is loaded,
# and a value set later has no effect (measured: after a 2000x2000 matmul on 2 threads, the
# worker spent 0.77 s of CPU during 1 s of main-thread sleep with ACTIVE set before
# `import torch`, 0.00 s with PASSIVE set before, and 0.02-0.03 s with either set after, the
# same as unset). The CLI applies the policy in its root callback, before any command imports
# torch (tests/cli/test_startup.py keeps torch out of start-up).
#
# Why it matters (issue 30, `qamoe demo` on a 2-core machine): quiet, 2 threads with the
# runtime's default waits took 31 s, PASSIVE 44 s, 1 thread 45 s; beside one competing
# 2-thread process they took 166 s, 70 s and 64 s. Each of thousands of small ops ends in a
# barrier, and a spinning worker holds a core the competitor needs while the thread it waits
# for has been descheduled. The automatic policy keeps the fast default on a quiet machine and
# steps aside when other work is already running on our cores (BUSY_AT).
THREADS_ENV = "QAMOE_THREADS"
WAIT_ENV = "QAMOE_WAIT_POLICY"
WAITS = ("auto", "active", "passive", "unset")
# The environment the thread pools read when they start (libgomp, MKL, OpenBLAS).
POOL_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WAIT_VAR = "OMP_WAIT_POLICY"
# Of our cores, how many other processes keep busy at start (busy_elsewhere) from which the
# automatic policy lets its workers sleep (a core counts as taken from 0.5 on, by rounding).
BUSY_AT = 0.5
LOADAVG, PROC_STAT = "/proc/loadavg", "/proc/stat"
_SAMPLES, _SAMPLE_GAP_S = 5, 0.002
SAMPLE_WINDOW_S = 0.05  # /proc/stat counts in clock ticks (10 ms): a few per CPU


@dataclass(frozen=True)
class ThreadPolicy:
    """The resolved policy: ``threads`` and ``wait`` with where each came from."""

    threads: int
    wait: str  # active | passive | unset
    threads_from: str  # --threads | QAMOE_THREADS | OMP_NUM_THREADS | auto (| caller)
    wait_from: str  # --wait-policy | QAMOE_WAIT_POLICY | OMP_WAIT_POLICY | auto (| caller)
    cores: int  # the cores this process may use (affinity, cgroup quota)
    busy: float | None = None  # of those cores, how many others kept busy at start (auto)

    def record(self) -> dict[str, Any]:
        """The policy as a run's metadata records it."""
        return {
            "threads": self.threads,
            "threads_from": self.threads_from,
            "wait_policy": self.wait,
            "wait_from": self.wait_from,
            "cores": self.cores,
            "busy_at_start": None if self.busy is None else round(self.busy, 2),
        }


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by this process's cgroup quota (v2 cpu.max, v1 cfs_quota_us), rounded
    up; None without a quota or where none can be read."""
    own = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    candidates = [
        (root / own / "cpu.max", None),
        (root / "cpu.max", None),
        (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"),
    ]
    for quota_file, period_file in candidates:
        try:
            words = quota_file.read_text().split()
            if period_file is not None:
                words.append(period_file.read_text().strip())
            quota, period = float(words[0]), float(words[1])
        except (OSError, ValueError, IndexError):  # "max" (no quota) is a ValueError too
            continue
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (os.sched_getaffinity, else
    os.cpu_count()), capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def busy_elsewhere(cores: int) -> float | None:
    """How many of this process's ``cores`` other processes keep busy right now; None where
    that cannot be read. Not the load average: it trails by a minute, so a competitor started
    seconds ago would not count, and one that ended seconds ago would.

    With every CPU of the machine usable: the kernel's count of runnable tasks (/proc/loadavg,
    4th field), averaged over a few samples a few ms apart, less this thread, scaled to our
    share of the CPUs (a cgroup quota). Confined to some CPUs (taskset, a Slurm or container
    cpuset): those CPUs' own non-idle time (/proc/stat) over SAMPLE_WINDOW_S, since the tasks
    that the runnable count sees may all run elsewhere."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = set()
    if mine and len(mine) < (os.cpu_count() or 0):
        return _busy_cpus(sorted(mine))
    counts = []
    for i in range(_SAMPLES):
        try:
            with open(LOADAVG) as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return None
        if i < _SAMPLES - 1:
            time.sleep(_SAMPLE_GAP_S)
    others = max(0.0, sum(counts) / len(counts) - 1)
    return others * min(1.0, cores / (os.cpu_count() or cores))


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """(idle, total) time of ``cpus`` so far, summed (/proc/stat, in clock ticks); idle counts
    iowait, total counts steal (a hypervisor's other guests are busy too)."""
    wanted = {f"cpu{c}" for c in cpus}
    idle = total = 0.0
    try:
        with open(PROC_STAT) as fh:
            rows = [ln.split() for ln in fh if ln.split(maxsplit=1)[0] in wanted]
        for row in rows:
            ticks = [float(v) for v in row[1:9]]
            idle, total = idle + ticks[3] + ticks[4], total + sum(ticks)
    except (OSError, ValueError, IndexError):
        return None
    return (idle, total) if len(rows) == len(wanted) else None


def _busy_cpus(cpus: list[int]) -> float | None:
    """Busy CPUs among ``cpus`` over SAMPLE_WINDOW_S, while this thread sleeps."""
    first = _cpu_times(cpus)
    time.sleep(SAMPLE_WINDOW_S)
    second = _cpu_times(cpus)
    if first is None or second is None or second[1] <= first[1]:
        return None
    idle = (second[0] - first[0]) / (second[1] - first[1])
    return max(0.0, len(cpus) * (1.0 - idle))


def _threads_given(flag: int | None, environ: Mapping[str, str]) -> tuple[int | None, str]:
    """--threads, else $QAMOE_THREADS (a number >= 1 or 'auto'), else a plain number in
    $OMP_NUM_THREADS (the OpenMP convention; a list or junk is left to the runtime)."""
    if flag is not None:
        if isinstance(flag, bool) or not isinstance(flag, int) or flag < 1:
            raise UsageError(f"The '--threads' value must be at least 1. Got {flag!r} instead.")
        return flag, "--threads"
    text = environ.get(THREADS_ENV, "").strip().lower()
    if text and text != "auto":
        if not text.isdigit() or int(text) < 1:
            raise UsageError(
                f"${THREADS_ENV} must be a number of threads >= 1 or 'auto'. Got {text!r} instead.",
                hint="Unset it (or set 'auto') to let qamoe choose from the free cores.",
            )
        return int(text), THREADS_ENV
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if not text and omp.isdigit() and int(omp) >= 1:
        return int(omp), "OMP_NUM_THREADS"
    return None, "auto"


def _wait_given(flag: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """--wait-policy, else $QAMOE_WAIT_POLICY, else $OMP_WAIT_POLICY (active or passive), else
    auto; the first two are checked against WAITS."""
    for value, name in ((flag, "--wait-policy"), (environ.get(WAIT_ENV), WAIT_ENV)):
        text = (value or "").strip().lower()
        if not text:
            continue
        check_choice(text, WAITS, name)
        return text, (name if text != "auto" else "auto")
    omp = environ.get(WAIT_VAR, "").strip().lower()
    if omp in ("active", "passive"):
        return omp, WAIT_VAR
    return "auto", "auto"


def resolve_thread_policy(
    threads: int | None = None,
    wait: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cores: int | None = None,
    busy: float | None = None,
) -> ThreadPolicy:
    """The policy for this process: each of threads and wait from its flag, else its qamoe
    variable, else its OpenMP variable, else chosen automatically. ``cores`` and ``busy``
    (measured when not given: usable_cores, busy_elsewhere) are for tests.

    Automatic: as many threads as there are usable cores not taken by other processes' runnable
    tasks (at least 1); workers that spin briefly before sleeping (the runtime's default,
    fastest on an idle machine) unless others were running (``busy >= BUSY_AT``), then passive.
    """
    env = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else max(1, cores)
    n, n_from = _threads_given(threads, env)
    w, w_from = _wait_given(wait, env)
    if busy is None and (n is None or w == "auto"):
        busy = busy_elsewhere(cores)
    if n is None:
        n = max(1, min(cores, int(cores - (busy or 0.0) + 0.5)))
    if w == "auto":
        w = "passive" if (busy or 0.0) >= BUSY_AT else "unset"
    return ThreadPolicy(n, w, n_from, w_from, cores, busy)


_APPLIED: dict[str, Any] = {"policy": None, "saved": None, "torch_before": None, "late": False}


def _after_torch(policy: ThreadPolicy, torch: Any) -> ThreadPolicy:
    """The policy for a process that loaded torch before it (a caller embedding the CLI, the
    tests): what was chosen automatically yields to the caller's own settings, a flag or
    variable still sets the thread count; the wait policy was fixed when torch loaded."""
    if policy.threads_from == "auto":
        policy = replace(policy, threads=torch.get_num_threads(), threads_from="caller")
    if policy.wait_from == "auto":
        wait = os.environ.get(WAIT_VAR, "").strip().lower()
        policy = replace(policy, wait=wait if wait in WAITS else "unset", wait_from="caller")
    return policy


def apply_thread_policy(policy: ThreadPolicy) -> None:
    """Put ``policy`` into the process: the pools' variables in os.environ, for torch to read
    when it is first imported (and for child processes), and torch.set_num_threads where torch
    is already loaded; the wait policy then cannot change any more (``wait_applied`` false in
    :func:`thread_record`). :func:`reset_thread_policy` undoes it."""
    if _APPLIED["saved"] is None:
        _APPLIED["saved"] = {k: os.environ.get(k) for k in (*POOL_VARS, WAIT_VAR)}
    torch = sys.modules.get("torch")
    if torch is not None:
        policy = _after_torch(policy, torch)
    for key in POOL_VARS:
        os.environ[key] = str(policy.threads)
    if policy.wait == "unset":
        os.environ.pop(WAIT_VAR, None)
    else:
        os.environ[WAIT_VAR] = policy.wait.upper()
    _APPLIED["late"] = torch is not None
    if torch is not None:
        if _APPLIED["torch_before"] is None:
            _APPLIED["torch_before"] = torch.get_num_threads()
        torch.set_num_threads(policy.threads)
    _APPLIED["policy"] = policy


def reset_thread_policy() -> None:
    """Undo :func:`apply_thread_policy`: the variables as they were, and torch's thread count
    where it was changed after torch had loaded (for callers that embed the CLI)."""
    saved, before = _APPLIED["saved"], _APPLIED["torch_before"]
    for key, value in (saved or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    torch = sys.modules.get("torch")
    if before is not None and torch is not None:
        torch.set_num_threads(before)
    _APPLIED.update(policy=None, saved=None, torch_before=None, late=False)


def current_thread_policy() -> ThreadPolicy | None:
    """The policy applied to this process, or None (a library caller's own settings)."""
    return cast("ThreadPolicy | None", _APPLIED["policy"])


def job_env(jobs: int, policy: ThreadPolicy | None = None) -> dict[str, str]:
    """The environment for each of ``jobs`` parallel child processes on this machine (``qamoe
    study --jobs``, ``qamoe tune --jobs``): they divide this process's threads, never multiply
    them, so each gets ``threads // jobs`` (at least 1) of ``policy`` (default: the applied one,
    else the automatic one). The wait policy is passed on as resolved, so that a child neither
    spins beside its siblings nor measures them as others' load. Set both the qamoe variables
    (a child `qamoe` records them as its source) and the pools' own (any other child)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"The number of parallel jobs must be at least 1. Got {jobs!r} instead.")
    policy = policy or current_thread_policy() or resolve_thread_policy()
    return _child_env(max(1, policy.threads // jobs), policy.wait)


def remote_job_env(cpus: int, policy: ThreadPolicy | None = None) -> dict[str, str]:
    """The environment for a job that runs on another machine with ``cpus`` CPUs of its own (a
    SLURM job of ``qamoe study --executor slurm``): ``cpus`` threads; the wait policy of
    ``policy`` (default: the applied one) where a flag or variable chose it, else ``auto``, so
    that the job measures its own node: this machine's load says nothing about it."""
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise UsageError(f"A job's CPUs must be at least 1. Got {cpus!r} instead.")
    policy = policy or current_thread_policy()
    chosen = policy is not None and policy.wait_from not in ("auto", "caller")
    return _child_env(cpus, policy.wait if policy is not None and chosen else "auto")


def _child_env(threads: int, wait: str) -> dict[str, str]:
    env = {THREADS_ENV: str(threads), WAIT_ENV: wait}
    env.update(dict.fromkeys(POOL_VARS, str(threads)))
    if wait in ("active", "passive"):
        env[WAIT_VAR] = wait.upper()
    return env


def thread_record() -> dict[str, Any]:
    """What a run's metadata records of the thread policy: torch's actual thread count (None
    before torch is loaded), the applied policy and where it came from; without one, the wait
    policy as the environment has it now and ``threads_from`` 'caller'."""
    torch = sys.modules.get("torch")
    actual = torch.get_num_threads() if torch is not None else None
    policy = current_thread_policy()
    if policy is None:
        wait = os.environ.get(WAIT_VAR, "").strip().lower() or "unset"
        return {"threads": actual, "threads_from": "caller", "wait_policy": wait,
                "wait_from": "caller", "cores": usable_cores()}  # fmt: skip
    record = policy.record()
    record["threads"] = actual if actual is not None else policy.threads
    record["wait_applied"] = not _APPLIED["late"]
    return record
