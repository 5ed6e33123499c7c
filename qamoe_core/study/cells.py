"""Cells: one training (dataset, arm, model seed) or one sweep (training, protocol) of a study.

A cell's KEY is a hash of everything that determines its result: for a training, the data
file's SHA-256, the model, its resolved configs (defaults and the model's own options filled
in, the seed included), the qamoe version and, for a tuned arm, the tuning that chose the
configs (tunearm.py); for a sweep, its training's key, the resolved evaluation config, the run
label and the qamoe version. Paths, the executor and the SLURM settings are not in it. A cell
lives in ``DIR/cells/<key>/``:

- ``cell.json``: what it is and the command that makes it (written before each attempt);
- ``run/`` (training: a `qamoe train` run folder) or ``results.csv`` (sweep: `qamoe eval`);
  a sweep whose protocol sets ``per_sample`` also keeps ``samples.csv.gz`` (``--per-sample``);
- ``log.txt``: the command's output, one header line per attempt;
- ``done.json`` when it finished (written atomically after the command succeeded), or
  ``failed.json`` (the exit status and the error line) when it did not;
- ``.cell.qamoe-lock``: held (``rundir.locked``) while an attempt runs, so a cell runs once.

Each attempt runs the ordinary CLI in a child process (``python -m qamoe_cli.main train ...``
or ``eval ...``), on this machine or inside a SLURM job: one path for every executor. A
training that was interrupted continues with ``train --resume`` (same weights as an
uninterrupted run: train.py), so a killed study loses at most one epoch per cell.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from qamoe_core.base import jsontext, rundir
from qamoe_core.base.atomic import atomic_path
from qamoe_core.version import __version__

CELL_FILE = "cell.json"
DONE = "done.json"
FAILED = "failed.json"
LOG = "log.txt"
RUN = "run"
RESULTS = "results.csv"
SAMPLES = "samples.csv.gz"  # a sweep with per_sample: `qamoe eval --per-sample`
TRAIN_CONFIG = "train-config.json"
KEY_CHARS = 20  # hex digits of the SHA-256 kept in a key: 80 bits


def content_key(content: Mapping[str, Any]) -> str:
    """The key of a cell: SHA-256 of its content as canonical JSON (sorted keys)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_CHARS]


@dataclass(frozen=True)
class Cell:
    """One unit of work of a study, and what determines it."""

    key: str
    kind: str  # "train" or "sweep"
    dataset: str
    arm: str
    seed: int
    protocol: str = ""  # sweep only
    needs: str = ""  # sweep only: the key of the training it evaluates
    content: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """The run label in results tables: ARM-sSEED (what `report --pool-seeds` pools)."""
        return f"{self.arm}-s{self.seed}"

    @property
    def title(self) -> str:
        what = f"sweep {self.protocol}" if self.kind == "sweep" else "train"
        return f"{what} {self.label} on {self.dataset}"

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("content")
        return d


def train_cell(
    dataset: str,
    sha256: str,
    arm: str,
    model: str,
    seed: int,
    model_config: Mapping[str, Any],
    train_config: Mapping[str, Any],
    tuning: Mapping[str, Any] | None = None,
) -> Cell:
    """The training of ``arm`` at ``seed`` on a dataset whose file hashes to ``sha256``;
    ``tuning``: what identifies the tuning whose best setting the configs hold (a tuned arm)."""
    content = {
        "kind": "train",
        "qamoe": __version__,
        "data_sha256": sha256,
        "model": model,
        "model_config": dict(model_config),
        "train_config": dict(train_config),
    }
    if tuning is not None:
        content["tuning"] = dict(tuning)
    return Cell(content_key(content), "train", dataset, arm, seed, content=content)


def sweep_cell(train: Cell, protocol: str, eval_config: Mapping[str, Any]) -> Cell:
    """The sweep of a trained cell under one protocol."""
    content = {
        "kind": "sweep",
        "qamoe": __version__,
        "train": train.key,
        "eval_config": dict(eval_config),
        "label": train.label,
    }
    return Cell(
        content_key(content),
        "sweep",
        train.dataset,
        train.arm,
        train.seed,
        protocol,
        train.key,
        content,
    )


# --- state ---------------------------------------------------------------------------------------


def cell_dir(study_dir: Path, key: str) -> Path:
    return study_dir / "cells" / key


def artifact(kind: str) -> str:
    """The file whose presence (with done.json) says the cell's work is there."""
    return f"{RUN}/metrics.json" if kind == "train" else RESULTS


def _lock_path(folder: Path) -> Path:
    return folder / f".cell{rundir.LOCK_SUFFIX}"


def is_running(folder: Path) -> bool:
    """Whether an attempt holds the cell's lock now (probed without creating the lock)."""
    import fcntl

    try:
        fd = os.open(_lock_path(folder), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock too
    return False


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON record of ours, or None when absent or unreadable (a torn write
    cannot happen: they are atomic; a hand-edited one is treated as absent)."""
    try:
        data = jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state(study_dir: Path, cell: Cell) -> tuple[str, str]:
    """(state, detail): done, running, failed or pending, and a few words on it."""
    folder = cell_dir(study_dir, cell.key)
    if is_running(folder):
        return "running", "an attempt holds the cell's lock"
    done = read_json(folder / DONE)
    if done is not None and done.get("key") == cell.key and (folder / artifact(cell.kind)).exists():
        return "done", f"{float(done.get('seconds', 0)):.1f} s"
    failed = read_json(folder / FAILED)
    if failed is not None:
        return "failed", str(failed.get("error") or f"exit status {failed.get('returncode')}")
    if cell.kind == "train" and (folder / RUN / "train_state.pt").is_file():
        return "pending", "interrupted: resumes from its last epoch"
    job = read_json(folder / "slurm.json")
    return "pending", f"submitted as SLURM job {job.get('job_id')}" if job else ""


# --- one attempt ---------------------------------------------------------------------------------


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """A small JSON record, atomically (a full disk raises NoSpaceError, nothing torn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def command(folder: Path, doc: Mapping[str, Any]) -> list[str]:
    """The CLI arguments of the next attempt of the cell described by ``doc`` (cell.json):
    a training with a checkpoint continues it (``--resume``), else starts afresh."""
    if doc["kind"] == "train":
        run = folder / RUN
        if (run / "config.json").is_file() and (run / "train_state.pt").is_file():
            return list(doc["resume"])
    return list(doc["fresh"])


def child_pythonpath() -> str:
    """PYTHONPATH for a cell's child, which runs in the study folder: the entries given to
    this process made absolute, after this qamoe's source checkout when it runs from one
    (so that the child runs the same code as the study)."""
    root = Path(__file__).resolve().parents[2]
    given = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    paths = [str(Path(p).resolve()) for p in given if p]
    if (root / "pyproject.toml").is_file() and (root / "qamoe_cli").is_dir():
        paths.insert(0, str(root))
    return os.pathsep.join(dict.fromkeys(paths))


def _die_with_parent() -> None:
    """In the child before exec: die when the study (its parent) dies, even by SIGKILL,
    so that a killed study leaves no cell running behind it (Linux; elsewhere a no-op)."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def run_child(args: list[str], log: Path, cwd: Path | None = None) -> int:
    """Run ``qamoe ARGS`` in a child to its end (output appended to ``log``); the child
    dies with this process, and an interrupt here stops it first. Returns its exit status."""
    argv = [sys.executable, "-m", "qamoe_cli.main", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": child_pythonpath()}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise


def error_line(log: Path) -> str:
    """The last `error:` line of a log (with its hint), else its last non-empty line."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.path.getsize(log) - 8192))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(lines[i : i + 2])[:400]
    return lines[-1][:400] if lines else ""


class Attempt:
    """One attempt at a cell: holds its lock, runs its command in a child, records the end.

    ``start`` returns at once (the child runs); ``poll`` says whether it ended; ``finish``
    writes done.json or failed.json and releases the lock. The local executor keeps several
    attempts in flight from one thread; a SLURM job runs one with :func:`run_cell`.
    """

    def __init__(self, study_dir: Path, key: str, env: Mapping[str, str] | None = None) -> None:
        self.study_dir, self.key = Path(study_dir), key
        self.folder = cell_dir(self.study_dir, key)
        self.env = dict(env or {})
        self.doc: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        doc = read_json(self.folder / CELL_FILE)
        if doc is None or doc.get("key") != self.key:
            raise FileNotFoundError(self.folder / CELL_FILE)
        self.doc = doc
        self._stack.enter_context(_lock_with_retry(self.folder / "cell"))
        try:
            (self.folder / FAILED).unlink(missing_ok=True)
            (self.folder / DONE).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "qamoe_cli.main", *command(self.folder, doc)]
            log = self._stack.enter_context(open(self.folder / LOG, "ab"))  # noqa: SIM115
            self._header(log, argv)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
            env["PYTHONPATH"] = child_pythonpath()
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                argv,
                cwd=self.study_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            self._stack.close()
            raise

    def _header(self, log: IO[bytes], argv: list[str]) -> None:
        where = socket.gethostname()
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        text = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on {where}"
        text += f" (SLURM job {job})" if job else ""
        log.write(f"{text}: {' '.join(argv[1:])}\n".encode())
        log.flush()

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def finish(self) -> dict[str, Any]:
        """Record how the attempt ended; returns the record (``ok``, ``error``)."""
        assert self.proc is not None
        code = self.proc.wait()
        seconds = time.monotonic() - self.started
        try:
            ok = code == 0 and (self.folder / artifact(self.doc["kind"])).exists()
            record = {"key": self.key, "returncode": code, "seconds": round(seconds, 3)}
            if ok:
                write_json(self.folder / DONE, record)
            else:
                record["error"] = error_line(self.folder / LOG) or f"exit status {code}"
                write_json(self.folder / FAILED, record)
            return {**record, "ok": ok}
        finally:
            self._stack.close()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the child (a training keeps its last epoch), SIGKILL after ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def _lock_with_retry(target: Path, tries: int = 10) -> Iterator[None]:
    """The cell's lock; a `study status` probing it at this instant only delays us."""
    for i in range(tries):
        try:
            cm = rundir.locked(target)
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


def run_cell(study_dir: str, key: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one attempt of a cell to its end, here (what a SLURM job does)."""
    attempt = Attempt(Path(study_dir), key, env)
    attempt.start()
    try:
        while attempt.poll() is None:
            time.sleep(0.5)
    except BaseException:
        attempt.stop()
        attempt.finish()
        raise
    return attempt.finish()
