"""Where the trainings of a tuning run: the one module to swap for `qamoe study`'s executors.

A training is a CELL, laid out as `qamoe study` lays out its cells (qamoe_core/study/cells.py
on its branch), so that its executors (local children, SLURM through submitit) can run a
tuning's cells unchanged:

- ``DIR/cells/<key>/cell.json``: ``key``, ``kind`` ("train"), ``fresh`` and ``resume`` (the
  `qamoe` CLI arguments of a first attempt and of a continued one), plus ``call`` (the same
  training as a function call, for :class:`InProcessExecutor`) and what it is (trial, fold);
- ``run/`` (the `qamoe train` run folder), ``log.txt``, ``done.json`` or ``failed.json``;
- a lock (``rundir.locked``) held while an attempt runs.

The interface is the study's: ``free()`` (how many more cells may start now), ``start(key)``,
``wait(timeout)`` -> the :class:`Outcome` of cells that ended, ``adopt(keys)`` and ``stop()``.
Checked: ``qamoe_core.study.executors.LocalExecutor`` (branch h31-study, b876d9d) runs a
tuning's cells as they are (``run_tuning(settings, executor=LocalExecutor(DIR, jobs))``).
Two executors here:

- :class:`InProcessExecutor` (``--jobs 1``): each training runs in this process, one at a
  through :func:`qamoe_core.training.loop.train`. No interpreter and torch start-up per
  training
  (seconds each, more than a small training takes), and a killed tuning still loses at most
  the epoch in progress: the training resumes from its checkpoint.
- :class:`LocalExecutor` (``--jobs N``): N children at once (``python -m qamoe_cli.main
  train ...``), each with ``threads // N`` threads and this process's wait policy
  (``runtime.job_env``) and, with CUDA devices visible, one device each; every child dies
  with the tuning (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qamoe_core.base import jsontext, rundir, runtime
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import QamoeError, UsageError

CELL_FILE = "cell.json"
DONE = "done.json"
FAILED = "failed.json"
LOG = "log.txt"
RUN = "run"


@dataclass(frozen=True)
class Outcome:
    key: str
    ok: bool
    error: str = ""
    seconds: float = 0.0


class Executor(Protocol):
    describe: str

    def free(self) -> int: ...
    def start(self, key: str) -> None: ...
    def wait(self, timeout: float) -> list[Outcome]: ...
    def adopt(self, keys: list[str]) -> set[str]: ...
    def stop(self) -> None: ...


def cell_dir(root: Path, key: str) -> Path:
    return root / "cells" / key


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON record of ours, or None when absent or unreadable."""
    try:
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """A small JSON record, atomically."""
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_done(root: Path, key: str) -> dict[str, Any] | None:
    """The done.json of a finished cell (with its run's metrics.json there), else None."""
    folder = cell_dir(root, key)
    done = read_json(folder / DONE)
    if done is not None and done.get("key") == key and (folder / RUN / "metrics.json").is_file():
        return done
    return None


def _resuming(folder: Path) -> bool:
    run = folder / RUN
    return (run / "config.json").is_file() and (run / "train_state.pt").is_file()


@contextlib.contextmanager
def _cell_lock(folder: Path, tries: int = 50) -> Iterator[None]:
    """The cell's lock; a child of a killed tuning may take a moment to die and free it."""
    for i in range(tries):
        try:
            cm = rundir.locked(folder / "cell")
            cm.__enter__()
        except rundir.OutputBusyError:
            if i == tries - 1:
                raise
            time.sleep(0.1)
            continue
        try:
            yield
        finally:
            cm.__exit__(None, None, None)
        return


def _record(folder: Path, key: str, ok: bool, seconds: float, error: str, code: int) -> Outcome:
    record = {"key": key, "returncode": code, "seconds": round(seconds, 3)}
    if ok:
        write_json(folder / DONE, record)
    else:
        write_json(folder / FAILED, {**record, "error": error or f"exit status {code}"})
    return Outcome(key, ok, error, seconds)


# --- in this process ----------------------------------------------------------------------------


class InProcessExecutor:
    """One training at a time, in this process (``start`` queues it, ``wait`` runs it)."""

    name = "in-process"
    describe = "in this process, one training at a time"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue: list[str] = []

    def free(self) -> int:
        return 0 if self.queue else 1

    def adopt(self, keys: list[str]) -> set[str]:
        return set()

    def start(self, key: str) -> None:
        self.queue.append(key)

    def wait(self, timeout: float) -> list[Outcome]:
        return [self._run(self.queue.pop(0))] if self.queue else []

    def stop(self) -> None:
        self.queue.clear()

    def _run(self, key: str) -> Outcome:
        folder = cell_dir(self.root, key)
        doc = read_json(folder / CELL_FILE)
        assert doc is not None and doc.get("key") == key, f"no cell.json for {key}"
        with _cell_lock(folder):
            for name in (DONE, FAILED):
                (folder / name).unlink(missing_ok=True)
            t0 = time.monotonic()
            error = _train_here(doc["call"], folder, resume=_resuming(folder))
            seconds = time.monotonic() - t0
            ok = not error and (folder / RUN / "metrics.json").is_file()
            return _record(folder, key, ok, seconds, error, 0 if ok else 1)


def _train_here(call: Mapping[str, Any], folder: Path, resume: bool) -> str:
    """Run one training here; '' when it finished, else its one-line error."""
    from qamoe_core.config import from_json
    from qamoe_core.training.loop import train

    try:
        if resume:
            train(call["data"], call["out"], None, None, None, resume=True, device=call["device"])
        else:
            mcfg, tcfg = from_json(call["config"])
            train(call["data"], call["out"], call["model"], mcfg, tcfg, device=call["device"])
    except QamoeError as exc:
        return _log_error(
            folder, f"error: {exc.message}" + (f" hint: {exc.hint}" if exc.hint else "")
        )
    except Exception as exc:  # a model that breaks at one setting fails its trial, not the tuning
        return _log_error(
            folder, f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        )
    return ""


def _log_error(folder: Path, line: str) -> str:
    with open(folder / LOG, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    return line


# --- child processes ----------------------------------------------------------------------------


def _gpus() -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"][:count]
    return [str(i) for i in range(count)]


def _die_with_parent() -> None:
    """In the child: die when the tuning (its parent) dies, even by SIGKILL (Linux only;
    elsewhere a child outlives a killed tuning and ends with its own training)."""
    parent = os.getppid()
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def error_line(log: Path) -> str:
    """The last `error:` line of a log (with its hint), else its last non-empty line."""
    try:
        lines = [ln.strip() for ln in log.read_text("utf-8", "replace").splitlines()[-200:]]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(lines[i : i + 2])[:400]
    return lines[-1][:400] if lines else ""


class LocalExecutor:
    """Cells as children of this process, ``jobs`` at a time."""

    name = "local"

    def __init__(self, root: Path, jobs: int) -> None:
        if jobs < 1:
            raise UsageError(f"The '--jobs' parameter must be at least 1. Got {jobs} instead.")
        self.root = root
        gpus = _gpus()[:jobs]
        env = runtime.job_env(jobs)  # the jobs divide this process's threads
        threads = int(env[runtime.THREADS_ENV])
        self.slots = [{**env, "CUDA_VISIBLE_DEVICES": g} for g in gpus] or [env] * jobs
        self.describe = f"{len(self.slots)} child process(es) x {threads} thread(s)" + (
            f", one GPU each ({', '.join(gpus)})" if gpus else ""
        )
        self.running: dict[str, tuple[subprocess.Popen[bytes], dict[str, str], Any, float]] = {}

    def free(self) -> int:
        return len(self.slots)

    def adopt(self, keys: list[str]) -> set[str]:
        return set()  # children never outlive the tuning that started them

    def start(self, key: str) -> None:
        folder = cell_dir(self.root, key)
        doc = read_json(folder / CELL_FILE)
        assert doc is not None and doc.get("key") == key, f"no cell.json for {key}"
        lock = _cell_lock(folder)
        lock.__enter__()
        slot = self.slots.pop(0)
        try:
            for name in (DONE, FAILED):
                (folder / name).unlink(missing_ok=True)
            argv = doc["resume"] if _resuming(folder) else doc["fresh"]
            with open(folder / LOG, "ab") as log:
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "qamoe_cli.main", *argv],
                    cwd=self.root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **slot},
                    preexec_fn=_die_with_parent if os.name == "posix" else None,
                )
        except BaseException:
            self.slots.insert(0, slot)
            lock.__exit__(None, None, None)
            raise
        self.running[key] = (proc, slot, lock, time.monotonic())

    def wait(self, timeout: float) -> list[Outcome]:
        end = time.monotonic() + timeout
        while True:
            ended = [k for k, (p, *_) in self.running.items() if p.poll() is not None]
            if ended or time.monotonic() >= end or not self.running:
                break
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return [self._finish(key) for key in ended]

    def _finish(self, key: str) -> Outcome:
        proc, slot, lock, t0 = self.running.pop(key)
        self.slots.append(slot)
        folder = cell_dir(self.root, key)
        try:
            code = proc.wait()
            ok = code == 0 and (folder / RUN / "metrics.json").is_file()
            error = "" if ok else error_line(folder / LOG)
            return _record(folder, key, ok, time.monotonic() - t0, error, code)
        finally:
            lock.__exit__(None, None, None)

    def stop(self) -> None:
        """SIGTERM every child (a training keeps its last epoch), SIGKILL after 30 s."""
        for proc, *_ in self.running.values():
            if proc.poll() is None:
                proc.terminate()
        for key in list(self.running):
            proc = self.running[key][0]
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.running.pop(key)[2].__exit__(None, None, None)


def make_executor(root: Path, jobs: int) -> Executor:
    """``--jobs 1``: in this process; more: that many children."""
    if jobs < 1:
        raise UsageError(f"The '--jobs' parameter must be at least 1. Got {jobs} instead.")
    return InProcessExecutor(root) if jobs == 1 else LocalExecutor(root, jobs)
