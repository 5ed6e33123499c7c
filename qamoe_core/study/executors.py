"""Where cells run: child processes on this machine, or SLURM jobs through submitit.

Both run one cell the same way (:class:`qamoe_core.study.cells.Attempt`: the qamoe CLI in a
child process) and answer the runner through one small interface:

- ``free()``: how many more cells may start now;
- ``start(key)``: start (or queue) the cell ``key``;
- ``wait(timeout)``: the :class:`Outcome` of cells that ended (possibly none) within about
  ``timeout`` seconds;
- ``adopt(keys)``: cells still running from an earlier study process, to wait for;
- ``stop()``: on an interrupt.

Local: ``jobs`` children at once, dividing this process's threads (``threads // jobs`` each)
and given its wait policy (``runtime.job_env``: QAMOE_THREADS and the pools' variables, read
before torch starts); with CUDA devices visible, one cell per device (CUDA_VISIBLE_DEVICES).
Every child dies with the study (PR_SET_PDEATHSIG), so a killed study leaves nothing
running. SLURM: each batch of ready cells is one job array (submitit) of ``cpus`` threads per
job (``runtime.remote_job_env``), polled with ``squeue``; a job that is preempted or reaches
its time limit requeues itself (submitit's checkpoint hook) and its training resumes; a job
that vanished without a record (cancelled, node failure) counts as a failed attempt, retried
like any other.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qamoe_core.base import runtime
from qamoe_core.base.errors import InputError, UsageError
from qamoe_core.study import cells
from qamoe_core.study.spec import Slurm


@dataclass(frozen=True)
class Outcome:
    key: str
    ok: bool
    error: str = ""
    seconds: float = 0.0


def visible_gpus() -> list[str]:
    """The CUDA devices a child may be given (CUDA_VISIBLE_DEVICES entries), or none."""
    try:
        import torch
    except ImportError:
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
        return ids[:count]
    return [str(i) for i in range(count)]


class LocalExecutor:
    """Cells as children of this process, ``jobs`` at a time."""

    name = "local"

    def __init__(
        self, study_dir: Path, jobs: int | None = None, gpus: list[str] | None = None
    ) -> None:
        if jobs is not None and jobs < 1:
            raise UsageError(f"--jobs must be at least 1. Got {jobs} instead.")
        self.study_dir = study_dir
        gpus = visible_gpus() if gpus is None else gpus
        n = min(jobs or len(gpus), len(gpus)) if gpus else jobs or default_jobs()
        env = runtime.job_env(n)  # the jobs divide this process's threads
        threads = env[runtime.THREADS_ENV]
        if gpus:
            self.slots = [{**env, "CUDA_VISIBLE_DEVICES": g} for g in gpus[:n]]
            self.describe = f"local: {n} job(s) x {threads} thread(s), one per GPU "
            self.describe += f"({', '.join(gpus[:n])})"
        else:
            self.slots = [dict(env) for _ in range(n)]
            self.describe = f"local: {n} job(s) x {threads} thread(s)"
        self.running: dict[str, tuple[cells.Attempt, dict[str, str]]] = {}

    def free(self) -> int:
        return len(self.slots)

    def adopt(self, keys: list[str]) -> set[str]:
        return set()  # local children never outlive the study that started them

    def start(self, key: str) -> None:
        slot = self.slots.pop(0)
        attempt = cells.Attempt(self.study_dir, key, slot)
        try:
            attempt.start()
        except BaseException:
            self.slots.insert(0, slot)
            raise
        self.running[key] = (attempt, slot)

    def wait(self, timeout: float) -> list[Outcome]:
        end = time.monotonic() + timeout
        while True:
            ended = [k for k, (a, _) in self.running.items() if a.poll() is not None]
            if ended or time.monotonic() >= end:
                break
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        out = []
        for key in ended:
            attempt, slot = self.running.pop(key)
            self.slots.append(slot)
            record = attempt.finish()
            out.append(Outcome(key, record["ok"], record.get("error", ""), record["seconds"]))
        return out

    def stop(self) -> None:
        for attempt, _ in list(self.running.values()):
            attempt.stop()
            with contextlib.suppress(Exception):
                attempt.finish()
        self.running.clear()


def default_jobs() -> int:
    """Cells at once when --jobs is not given: two on a machine with up to two cores, else one
    per two cores. On 2 cores two single-thread cells beat one two-thread cell by 1.71x at load
    1.3-1.9 (benchmarks/bench_study.py, docs/study.md "Executors"), and by 2.9x at load 9-13
    before the wait policy existed."""
    n = runtime.usable_cores()
    return 2 if n <= 2 else max(1, n // 2)


class CellJob:
    """What a SLURM job runs: one attempt at one cell. submitit pickles this object by
    reference to this class (it holds no state); ``checkpoint`` makes a preempted or
    timed-out job requeue itself, and the requeued attempt resumes the training."""

    def __call__(self, study_dir: str, key: str, env: dict[str, str]) -> dict[str, Any]:
        return cells.run_cell(study_dir, key, env)

    def checkpoint(self, study_dir: str, key: str, env: dict[str, str]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, study_dir, key, env)


SLURM_FILE = "slurm.json"  # in a cell's folder: the job running it


def _queued() -> dict[str, str] | None:
    """Job id -> state of this user's jobs in the SLURM queue (array tasks one by one), or
    None when squeue did not answer."""
    try:
        res = subprocess.run(
            ["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return dict(line.split(None, 1) for line in res.stdout.splitlines() if " " in line)


class SlurmExecutor:
    """Cells as SLURM jobs: every batch of ready cells is submitted as one job array."""

    name = "slurm"

    def __init__(self, study_dir: Path, options: Slurm, job_name: str, poll_s: float = 2.0):
        if shutil.which("sbatch") is None:
            raise InputError(
                "--executor slurm needs SLURM's `sbatch` on PATH, and it is not there.",
                hint="Run the study on a SLURM login node, or on this machine with "
                "--executor local.",
            )
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise InputError(
                "--executor slurm needs the Python package submitit, which is not installed.",
                hint="pip install 'qamoe[slurm]' (or use --executor local).",
            ) from None
        self.study_dir, self.options, self.poll_s = study_dir, options, poll_s
        self.job_name = job_name
        self.env = runtime.remote_job_env(options.cpus)
        self._executor: Any = None  # made at the first submission: it writes into the folder
        self.describe = (
            f"slurm: partition {options.partition or '(default)'}, {options.time_min} min, "
            f"{options.cpus} CPU(s), {options.gpus} GPU(s), array parallelism "
            f"{options.array_parallelism}"
        )
        self.queue: list[str] = []
        self.jobs: dict[str, str] = {}  # cell key -> job id

    @property
    def executor(self) -> Any:
        """submitit's executor, with the options of every job."""
        if self._executor is None:
            import submitit

            options = self.options
            params: dict[str, Any] = {
                "timeout_min": options.time_min,
                "cpus_per_task": options.cpus,
                "slurm_array_parallelism": options.array_parallelism,
                "name": self.job_name,
            }
            if options.partition:
                params["slurm_partition"] = options.partition
            if options.gpus:
                params["gpus_per_node"] = options.gpus
            if options.mem_gb:
                params["mem_gb"] = options.mem_gb
            folder = self.study_dir / "slurm" / "%j"
            self._executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
            self._executor.update_parameters(**params)
        return self._executor

    def free(self) -> int:
        return 100_000  # SLURM queues them; the array parallelism bounds what runs

    def adopt(self, keys: list[str]) -> set[str]:
        """Cells whose job (from an earlier study process) is still queued or running."""
        queued = _queued() or {}
        for key in keys:
            record = cells.read_json(cells.cell_dir(self.study_dir, key) / SLURM_FILE)
            if record is not None and str(record.get("job_id")) in queued:
                self.jobs[key] = str(record["job_id"])
        return set(self.jobs)

    def start(self, key: str) -> None:
        folder = cells.cell_dir(self.study_dir, key)
        for name in (cells.FAILED, cells.DONE):  # the job writes a fresh record
            (folder / name).unlink(missing_ok=True)
        self.queue.append(key)

    def _submit(self) -> None:
        keys, self.queue = self.queue, []
        job = CellJob()
        with self.executor.batch():
            futures = [self.executor.submit(job, str(self.study_dir), k, self.env) for k in keys]
        for key, future in zip(keys, futures, strict=True):
            self.jobs[key] = str(future.job_id)
            cells.write_json(
                cells.cell_dir(self.study_dir, key) / SLURM_FILE, {"job_id": str(future.job_id)}
            )

    def wait(self, timeout: float) -> list[Outcome]:
        if self.queue:
            self._submit()
        time.sleep(max(timeout, self.poll_s) if self.jobs else timeout)
        queued = _queued()
        if queued is None:  # squeue did not answer: ask again next time
            return []
        out = []
        for key, job_id in list(self.jobs.items()):
            if job_id in queued:
                continue
            del self.jobs[key]
            out.append(self._outcome(key, job_id))
        return out

    def _outcome(self, key: str, job_id: str) -> Outcome:
        folder = cells.cell_dir(self.study_dir, key)
        done = cells.read_json(folder / cells.DONE)
        if done is not None and (folder / cells.artifact(_kind(folder))).exists():
            return Outcome(key, True, "", float(done.get("seconds", 0)))
        failed = cells.read_json(folder / cells.FAILED)
        if failed is not None:
            return Outcome(key, False, str(failed.get("error", "")))
        return Outcome(
            key,
            False,
            f"SLURM job {job_id} ended without finishing the cell "
            f"(cancelled, or its node failed; log: slurm/{job_id}/)",
        )

    def stop(self) -> None:
        """Leave the jobs to SLURM: a rerun of the study adopts them (their slurm.json)."""
        if self.queue:
            self.queue.clear()


def _kind(folder: Path) -> str:
    doc = cells.read_json(folder / cells.CELL_FILE) or {}
    return str(doc.get("kind", "sweep"))


class Bounded:
    """At most ``limit`` cells of ``inner`` at once, for a tuning: it asks a new trial whenever
    a cell may start, so an unbounded executor (SLURM's queue) would draw every trial before
    any result came back, and TPE would learn nothing between them. A cell whose SLURM job
    from an earlier process is still queued or running is adopted, not submitted again."""

    def __init__(self, inner: Any, limit: int) -> None:
        if limit < 1:
            raise UsageError(f"--jobs must be at least 1. Got {limit} instead.")
        self.inner, self.limit = inner, limit
        self.describe = f"{inner.describe}; at most {limit} training(s) at once"
        self.running: set[str] = set()

    def free(self) -> int:
        return min(self.inner.free(), self.limit - len(self.running))

    def adopt(self, keys: list[str]) -> set[str]:
        adopted = set(self.inner.adopt(keys)) & set(keys)
        self.running |= adopted
        return adopted

    def start(self, key: str) -> None:
        if key not in self.adopt([key]):
            self.inner.start(key)
            self.running.add(key)

    def wait(self, timeout: float) -> list[Outcome]:
        ended = self.inner.wait(timeout)
        self.running -= {o.key for o in ended}
        return ended

    def stop(self) -> None:
        self.inner.stop()
