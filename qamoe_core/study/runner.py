"""`qamoe study FILE --out DIR`: plan, resume, run and collect a whole study.

The study folder ``DIR`` (marker ``.qamoe-study``; locked while a study runs in it, so a
second one fails at once):

- ``study.toml``: a copy of the study file; ``study.json``: what the study resolved to
  (the file's content as validated, the data files' hashes, the qamoe version and every
  cell's key), read back by the next run and by ``qamoe study status``;
- ``data/``: feature files made by a dataset's ``extract`` command;
- ``cells/<key>/``: one folder per cell (cells.py);
- ``runs/ARM-sSEED``: links to the trained run folders; ``sweeps/ARM-sSEED.PROTOCOL.csv``:
  the results tables (`qamoe eval --out`); with several datasets both get a level per dataset;
- ``report/`` (`qamoe report` over every sweep, seeds pooled, the reference named);
- ``table.md``, ``table.tex``, ``table.csv``: the paper table (table.py).

A rerun skips finished cells, resumes interrupted trainings and retries failed cells. A
study file that resolves to something else than the one that made ``DIR`` is refused with
the list of what changed and of the cells it invalidates, unless ``force``: then the cells
the change does not touch are kept and the others are removed and redone.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import shlex
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base import rundir
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import InputError, NoSpaceError, check_choice
from qamoe_core.study import cells, spec, tunearm
from qamoe_core.study.cells import Cell
from qamoe_core.study.outputs import collect
from qamoe_core.study.plan import (
    HASHES,
    MARKER,
    STUDY_FORMAT,
    STUDY_JSON,
    TABLE_FILES,
    Notify,
    Plan,
    StudyError,
    check_unchanged,
    make_plan,
    prune,
    write_cell,
)
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

# --- the folder ----------------------------------------------------------------------------------


def _refuse_foreign(out: Path) -> None:
    if os.path.lexists(out) and (not out.is_dir() or out.is_symlink()):
        raise InputError(
            f"The output '{out}' is not a folder; --out takes a study folder.",
            hint="Choose a folder path that does not exist yet.",
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(
            f"The folder '{out}' exists and was not made by `qamoe study`; refusing to use it.",
            hint="Choose a new folder with --out: qamoe never deletes files it did not write.",
        )


@contextlib.contextmanager
def study_folder(out: Path) -> Iterator[Path]:
    """Hold ``out`` as a study folder (created if new) for the duration of the block."""
    _refuse_foreign(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"Cannot create the folder '{out}': {exc.strerror or exc}.",
            hint="Check the permissions, or choose another --out.",
        ) from None
    with rundir.locked(out):
        _refuse_foreign(out)  # again, under the lock
        if not (out / MARKER).is_file():
            cells.write_json(out / MARKER, {"format": STUDY_FORMAT, "qamoe": __version__})
        yield out


# --- data ----------------------------------------------------------------------------------------


def _sha256(path: Path, cache_file: Path) -> str:
    """The file's SHA-256, remembered by (path, size, mtime, inode) in the study folder."""
    from qamoe_core.data.store import file_sha256

    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    cache = cells.read_json(cache_file) or {}
    entry = cache.get(str(path.resolve()))
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = file_sha256(path)
    cache[str(path.resolve())] = {"stamp": stamp, "sha256": digest}
    with contextlib.suppress(NoSpaceError):  # only a cache
        cells.write_json(cache_file, cache)
    return digest


def _extract(ds: spec.Dataset, path: Path, out: Path, notify: Notify) -> None:
    """Make a dataset's feature file with its `qamoe extract ...` command."""
    path.parent.mkdir(parents=True, exist_ok=True)
    notify("extract", None, {"dataset": ds.name, "path": str(path)})
    logfile = out / "data" / f"{ds.name}.extract.log"
    args = ds.extract_run or ds.extract
    code = cells.run_child(["extract", *args, "--out", str(path)], logfile)
    if code != 0 or not path.is_file():
        raise StudyError(
            f"Dataset '{ds.name}': `qamoe extract {shlex.join(args)}` failed: "
            f"{cells.error_line(logfile) or f'exit status {code}'}",
            hint=f"See {logfile}.",
        )


def prepare_data(study: spec.Study, out: Path, notify: Notify) -> dict[str, spec.DataInfo]:
    """Each dataset's file (made by its extract command when missing), hash and facts."""
    from qamoe_core.data.store import FeatureFile

    infos = {}
    for ds in study.datasets:
        path = ds.file(out)
        if not path.is_file():
            if not ds.extract:
                raise InputError(
                    f"{study.source} [datasets.{ds.name}]: the feature file '{path}' "
                    + ("is not a file." if path.exists() else "does not exist."),
                    hint="Check 'path' (relative to the study file), or give 'extract' to make it.",
                )
            _extract(ds, path, out, notify)
        with FeatureFile(path) as f:
            facts = (tuple(f.modalities), f.scheme, tuple(f.splits))
        sha = _sha256(path, out / HASHES)
        infos[ds.name] = spec.DataInfo(path, sha, *facts)
    return infos


# --- running -------------------------------------------------------------------------------------


# How a cell's error line reads when its disk filled (atomic.write_failure's wording).
NO_ROOM = ("no space left on device", "disk quota exceeded", "file too large")


class Scheduler:
    """Runs the unfinished cells of a plan on an executor, trainings before their sweeps."""

    def __init__(self, out: Path, plan: Plan, executor: Any, retries: int, notify: Notify):
        self.out, self.executor, self.retries, self.notify = out, executor, retries, notify
        self.by_key = {c.key: c for c in plan.cells}
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}
        self.tries: dict[str, int] = {}
        self.inflight: set[str] = set()
        self.waiting: set[str] = set()  # running in another process (an earlier study's job)
        self.todo: list[Cell] = []
        self.blocked: list[str] = []  # cells not run because the cell they need failed
        self.launched = 0
        self.no_space = ""
        for cell in plan.cells:
            st, _ = cells.state(out, cell)
            if st == "done":
                self.done.add(cell.key)
            elif st == "running":
                self.waiting.add(cell.key)
            else:
                self.todo.append(cell)

    def ready(self) -> list[Cell]:
        if self.no_space:
            return []
        return [
            c
            for c in self.todo
            if c.key not in self.inflight and (not c.needs or c.needs in self.done)
        ]

    def run(self) -> None:
        self.notify("plan", None, {"to_run": len(self.todo)})  # the total of progress lines
        adopted = self.executor.adopt([c.key for c in self.todo])
        self.inflight |= adopted
        try:
            while True:
                for cell in self.ready():
                    if self.executor.free() <= 0:
                        break
                    self.notify("start", cell, {"attempt": self.tries.get(cell.key, 0) + 1})
                    self.executor.start(cell.key)
                    self.inflight.add(cell.key)
                    self.launched += 1
                if not (self.inflight or self.waiting or self.ready()):
                    return
                for outcome in self.executor.wait(0.5):
                    self.record(outcome)
                self.check_waiting()
        except BaseException:
            self.executor.stop()
            raise

    def record(self, outcome: Any) -> None:
        self.inflight.discard(outcome.key)
        cell = self.by_key[outcome.key]
        if outcome.ok:
            self.done.add(cell.key)
            self.todo.remove(cell)
            self.notify("done", cell, {"seconds": outcome.seconds})
            return
        if any(words in outcome.error.lower() for words in NO_ROOM):
            self.no_space = outcome.error
        self.tries[cell.key] = self.tries.get(cell.key, 0) + 1
        if self.tries[cell.key] <= self.retries and not self.no_space:
            self.notify("retry", cell, {"error": outcome.error})
            return
        self.failed[cell.key] = outcome.error
        self.notify("failed", cell, {"error": outcome.error})
        after = [c.key for c in self.todo if c.needs == cell.key]
        self.blocked += after
        self.todo = [c for c in self.todo if c.key != cell.key and c.key not in after]

    def check_waiting(self) -> None:
        for key in sorted(self.waiting):
            cell = self.by_key[key]
            st, _ = cells.state(self.out, cell)
            if st == "running":
                continue
            self.waiting.discard(key)
            if st == "done":
                self.done.add(key)
            else:
                self.todo.append(cell)


def make_executor(
    name: str, out: Path, study: spec.Study, jobs: int | None, slurm: Mapping[str, Any]
) -> Any:
    from qamoe_core.study import executors

    check_choice(name, ("local", "slurm"), "executor")
    if name == "local":
        return executors.LocalExecutor(out, jobs)
    options = spec.parse_slurm(_slurm_table(study), spec._Where(study.source), **slurm)
    return executors.SlurmExecutor(out, options, f"qamoe-{study.name}")


def tuning_executor(folder: Path, study: spec.Study, options: Options) -> Any:
    """Where the trainings of a tuned arm's tuning (in ``folder``) run: the study's executor
    rooted at the tuning (whose cells are laid out as the study's), or None (the tuning's
    own, in this process) for one local job, where a child per training would only add an
    interpreter and torch start-up to each. On SLURM at most ``--jobs`` (default: the array
    parallelism) trainings run at once."""
    from qamoe_core.study import executors

    if options.executor == "slurm":
        where = spec._Where(study.source)
        slurm = spec.parse_slurm(_slurm_table(study), where, **options.slurm)
        inner = executors.SlurmExecutor(folder, slurm, f"qamoe-{study.name}-tune")
        return executors.Bounded(inner, options.jobs or slurm.array_parallelism)
    local = executors.LocalExecutor(folder, options.jobs)
    return None if len(local.slots) == 1 else local


def _slurm_table(study: spec.Study) -> dict[str, Any]:
    s = study.slurm
    table: dict[str, Any] = {
        "time": s.time_min,
        "gpus": s.gpus,
        "cpus": s.cpus,
        "array_parallelism": s.array_parallelism,
    }
    if s.partition:
        table["partition"] = s.partition
    if s.mem_gb:
        table["mem_gb"] = s.mem_gb
    return table


@dataclass(frozen=True)
class Options:
    executor: str = "local"
    jobs: int | None = None
    force: bool = False
    retries: int = 1
    slurm: Mapping[str, Any] = field(default_factory=dict)  # flags over [slurm]
    dry_run: bool = False


def run_study(
    study_file: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: Options = Options(),
    notify: Notify | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study of ``study_file`` in the folder ``out``; returns a summary.

    Raises StudyFileError for a study file that is not valid, StudyChangedError for a
    changed study over an old folder (without ``force``), StudyError when cells failed.
    """
    t0 = time.monotonic()
    say = notify or (lambda event, cell, info: None)
    study = spec.load_study(study_file)
    out = Path(out)
    executor = make_executor(options.executor, out, study, options.jobs, options.slurm)
    with study_folder(out):
        data = _checked_data(study, out, say)
        tunings = tunearm.plan_tunings(study, data, out)
        plan = make_plan(study, data, tunearm.finished(tunings))
        gone = check_unchanged(out, plan, options.force)
        summary = _summary(plan, out, executor, options)
        if options.dry_run:
            return summary
        prune(out, gone)
        tunearm.prune_tunings(out, tunings)
        _write_study(out, plan, study)
        tuned_now = len(plan.pending)
        if tuned_now:  # the tunings first; then the tuned arms' cells are known
            where = functools.partial(tuning_executor, study=study, options=options)
            plan = make_plan(study, data, tunearm.run_tunings(tunings, out, where, say))
            _write_study(out, plan, study)
            summary = _summary(plan, out, executor, options)
        summary["tuned_now"] = tuned_now
        for cell in plan.cells:
            if cells.state(out, cell)[0] != "done":
                write_cell(plan, cell, out)
        sched = Scheduler(out, plan, executor, options.retries, say)
        sched.run()
        summary.update(launched=sched.launched, failed=sorted(sched.failed))
        _raise_if_unfinished(sched, out)
        summary["outputs"] = collect(plan, out, say)
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return summary


def _checked_data(study: spec.Study, out: Path, say: Notify) -> dict[str, spec.DataInfo]:
    data = prepare_data(study, out, say)
    spec.check_against_data(study, data)
    return data


def _summary(plan: Plan, out: Path, executor: Any, options: Options) -> dict[str, Any]:
    counts = {"train": 0, "sweep": 0}
    todo = 0
    for cell in plan.cells:
        counts[cell.kind] += 1
        todo += cells.state(out, cell)[0] != "done"
    return {
        "study": plan.study.name,
        "out": str(out),
        "executor": executor.describe,
        "cells": len(plan.cells),
        "trainings": counts["train"],
        "sweeps": counts["sweep"],
        "to_run": todo,
        "tunings": [
            {"dataset": ds, "arm": arm, **t.summary} for (ds, arm), t in plan.tuned.items()
        ],
        "tunings_to_run": len(plan.pending),
        "launched": 0,
        "failed": [],
        "dry_run": options.dry_run,
    }


def _write_study(out: Path, plan: Plan, study: spec.Study) -> None:
    doc = plan.doc()
    if cells.read_json(out / STUDY_JSON) != json.loads(json.dumps(doc)):
        cells.write_json(out / STUDY_JSON, doc)
    text = study.source.read_bytes()
    if not (out / "study.toml").is_file() or (out / "study.toml").read_bytes() != text:
        with atomic_path(out / "study.toml", force=True) as tmp:
            tmp.write_bytes(text)


def _raise_if_unfinished(sched: Scheduler, out: Path) -> None:
    if sched.no_space:
        raise NoSpaceError(
            errno.ENOSPC,
            out,
            hint=f"{sched.no_space} Free some space and rerun the study: the "
            f"{len(sched.done)} finished cells are kept.",
        )
    if sched.failed:
        first = sched.by_key[next(iter(sched.failed))]
        blocked = len(sched.blocked)
        titles = ", ".join(sched.by_key[k].title for k in sorted(sched.failed))
        raise StudyError(
            f"{len(sched.failed)} cell(s) failed ({titles[:300]}); first: "
            f"{sched.failed[first.key]}"
            + (f"; {blocked} cell(s) after them did not run." if blocked else ""),
            hint=f"See cells/{first.key}/log.txt in '{out}'; rerun the study to retry them "
            f"(`qamoe study status {out}` lists them).",
        )


# --- status --------------------------------------------------------------------------------------


def study_status(out: str | os.PathLike[str]) -> dict[str, Any]:
    """done / running / failed / pending for every cell of the study in ``out`` (reads only)."""
    out = Path(out)
    doc = cells.read_json(out / STUDY_JSON)
    if not (out / MARKER).is_file() or doc is None or doc.get("format") != STUDY_FORMAT:
        raise InputError(
            f"'{out}' holds no study (no {STUDY_JSON} from `qamoe study`).",
            hint="Give the --out folder of `qamoe study FILE.toml --out DIR`.",
        )
    rows = []
    counts = dict.fromkeys(("done", "running", "failed", "pending"), 0)
    for entry in doc.get("cells", []):
        cell = Cell(
            **{k: entry[k] for k in ("key", "kind", "dataset", "arm", "seed", "protocol", "needs")}
        )
        st, detail = cells.state(out, cell)
        counts[st] += 1
        rows.append({**cell.describe(), "label": cell.label, "state": st, "detail": detail})
    outputs = {name: (out / name).is_file() for name in TABLE_FILES}
    tunings = [_tuning_status(out, t) for t in doc.get("tunings", []) if isinstance(t, dict)]
    return {
        "study": doc.get("study", {}).get("name"),
        "out": str(out),
        "counts": counts,
        "tunings": tunings,
        "cells": rows,
        "complete": counts["done"] == len(rows) and all(t["state"] == "done" for t in tunings),
        "tables": outputs,
    }


def _tuning_status(out: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """A tuned arm's tuning as study.json last recorded it, with the trials done so far."""
    ds, arm = str(entry.get("dataset")), str(entry.get("arm"))
    record = cells.read_json(out / tunearm.TUNE_DIR / ds / f"{arm}.json") or {}
    trials = (record.get("identity") or {}).get("trials")
    try:
        with open(out / tunearm.TUNE_DIR / ds / arm / "trials.csv", "rb") as fh:
            recorded = max(0, sum(1 for _ in fh) - 1)
    except OSError:
        recorded = 0
    done = entry.get("state") == "done" and record.get("state") == "done"
    state = "done" if done else "pending"
    detail = record.get("summary", {}).get("line", "") if state == "done" else ""
    return {
        "dataset": ds,
        "arm": arm,
        "state": state,
        "trials": trials,
        "recorded": recorded,
        "detail": detail or f"{recorded} of {trials} trial(s) recorded",
    }


__all__ = ["Options", "run_study", "study_status"]
