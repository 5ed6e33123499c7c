"""Tuned arms: each (dataset, tuned arm) of a study is tuned before the arm's seed cells, which
then train at the chosen setting (docs/study.md, "Tuned arms").

The tuning of arm ARM on dataset DS is a `qamoe tune` folder, ``DIR/tune/DS/ARM/`` (fold
files, Optuna's journal, one cell per training, trials.csv, best.json, report.md), run through
:func:`qamoe_core.tuning.api.run_tuning` and resumable as `qamoe tune` is. Beside it the study
keeps ``DIR/tune/DS/ARM.json``: what it asked of the tuning (its identity) and, once the tuning
finished, the chosen setting. The tuning's base config is the arm's (its ``config`` over the
study's ``[train]``), so ``best.json`` is the arm's config with the tuned fields drawn.

The IDENTITY of a tuning is the key of its manifest (data, space, base config, objective,
folds, sampler, pruner, seed, qamoe version: tuning/plan.py) and its trials. It is part of
the content of every training cell of the arm, beside the chosen configs, so a changed tuning
invalidates the arm's cells and no others. A tuning whose identity changed is started afresh,
except that more trials than before extend the finished ones (trial N draws the same
whether or not the tuning stopped before it). The study refuses such a change without
``--force``, like any other change of the study file.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qamoe_core.base import jsontext
from qamoe_core.base.errors import QamoeError
from qamoe_core.study import cells, spec
from qamoe_core.study.plan import Notify, Tuned

log = logging.getLogger(__name__)

TUNE_DIR = "tune"


@dataclass
class Tuning:
    """One (dataset, tuned arm): its `qamoe tune` request, checked and resolved."""

    dataset: str
    arm: str
    settings: Any  # qamoe_core.tuning.plan.TuneSettings
    plan: Any  # qamoe_core.tuning.plan.Plan
    key: str  # the key of the tuning's manifest

    @property
    def folder(self) -> Path:
        return Path(self.settings.out)

    @property
    def record(self) -> Path:
        return self.folder.parent / f"{self.arm}.json"

    @property
    def identity(self) -> dict[str, Any]:
        return {"manifest": self.key, "trials": self.settings.trials}

    @property
    def title(self) -> str:
        return f"{self.arm} on {self.dataset}"

    def result(self) -> Tuned | None:
        """The finished tuning of this identity, or None (not run, unfinished, changed)."""
        doc = cells.read_json(self.record) or {}
        model, train, summary = doc.get("model"), doc.get("train"), doc.get("summary")
        if (
            doc.get("state") != "done"
            or doc.get("identity") != self.identity
            or not isinstance(model, dict)
            or not isinstance(train, dict)
            or not isinstance(summary, dict)
            or not (self.folder / "best.json").is_file()
        ):
            return None  # a record edited by hand is no result: the tuning is read back again
        return Tuned(self.identity, model, train, summary)


def _reworded(exc: QamoeError, prefix: str) -> QamoeError:
    """``exc`` with ``prefix`` before its message (same class: same exit status)."""
    try:
        return type(exc)(prefix + exc.message, hint=exc.hint)
    except TypeError:  # an error class with other arguments (a full disk): as it is
        return exc


def plan_tunings(study: spec.Study, data: Mapping[str, spec.DataInfo], out: Path) -> list[Tuning]:
    """Every tuning of the study, checked as `qamoe tune` checks a request (the space against
    the model and the data, the folds against the data's groups), before any work."""
    from qamoe_core.tuning import plan as tplan
    from qamoe_core.tuning.runner import cell_key

    found = []
    for ds in study.datasets:
        for arm in study.arms:
            t = arm.tune
            if t is None:
                continue
            settings = tplan.TuneSettings(
                data=data[ds.name].path, out=out / TUNE_DIR / ds.name / arm.name,
                model=arm.model, space=t.space, trials=t.trials, folds=t.folds,
                group_regex=t.groups, metric=t.metric, levels=t.levels, sampler=t.sampler,
                pruner=t.pruner, seed=t.seed, jobs=1,
                config={"model": dict(arm.model_config),
                        "train": {**study.train, **arm.train_config}},
            )  # fmt: skip
            try:
                made = tplan.make_plan(settings)
            except QamoeError as exc:
                where = f"{study.source} [arms.{arm.name}] tune on dataset '{ds.name}': "
                raise _reworded(exc, where) from None
            found.append(Tuning(ds.name, arm.name, settings, made, cell_key(made.manifest)))
    return found


def finished(tunings: list[Tuning]) -> dict[tuple[str, str], Tuned]:
    """The tunings done already, by (dataset, arm)."""
    return {(t.dataset, t.arm): r for t in tunings if (r := t.result()) is not None}


def _ours(folder: Path) -> bool:
    from qamoe_core.tuning.plan import MARKER

    return (folder / MARKER).is_file()


def _start_afresh_if_changed(t: Tuning) -> None:
    """Remove the folder of a tuning of another identity (fewer trials than before included:
    the best of more trials than asked would not be this budget's)."""
    old = (cells.read_json(t.record) or {}).get("identity")
    extends = (
        isinstance(old, dict)
        and old.get("manifest") == t.key
        and isinstance(old.get("trials"), int)
        and old["trials"] <= t.settings.trials
    )
    if not extends and t.folder.is_dir() and _ours(t.folder):
        log.info("tuning %s changed: starting it afresh", t.title)
        shutil.rmtree(t.folder)


def prune_tunings(out: Path, tunings: list[Tuning]) -> None:
    """Remove the tunings (and records) of arms the study no longer tunes."""
    keep = {(t.dataset, t.arm) for t in tunings}
    root = out / TUNE_DIR
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        name = path.name[: -len(".json")] if path.suffix == ".json" else path.name
        if (path.parent.name, name) in keep:
            continue
        if path.is_dir() and _ours(path):
            shutil.rmtree(path)
        elif path.suffix == ".json" and path.is_file():
            path.unlink()


def _summary(t: Tuning, result: Any, out: Path) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return {
        "folder": str(t.folder.relative_to(out)),
        "best_trial": result.best_trial,
        "params": result.params,
        "mean": num(result.mean),
        "se": num(result.se),
        "folds": result.folds,
        "metric": t.plan.objective.metric,
        "levels": list(t.plan.objective.levels),
        "finished": result.finished,
        "trials": result.trials,
        "line": result.line,
    }


def run_tunings(
    tunings: list[Tuning],
    out: Path,
    executor_for: Callable[[Path], Any],
    notify: Notify,
) -> dict[tuple[str, str], Tuned]:
    """Run (or resume) every unfinished tuning, one after another; all of them by the end.
    ``executor_for(folder)``: where a tuning's trainings run (None: in this process)."""
    from qamoe_core.tuning.api import run_tuning

    for t in tunings:
        if t.result() is not None:
            continue
        _start_afresh_if_changed(t)
        cells.write_json(t.record, {"identity": t.identity, "state": "running"})
        info = {"dataset": t.dataset, "arm": t.arm, "trials": t.settings.trials}
        notify("tune-start", None, info)

        def say(line: str, info: dict[str, Any] = info) -> None:
            notify("tune", None, {**info, "line": line})

        try:
            result = run_tuning(t.settings, say, executor_for(t.folder), t.plan)
        except QamoeError as exc:
            where = f"The tuning of arm '{t.arm}' on dataset '{t.dataset}': "
            raise _reworded(exc, where) from None
        best = jsontext.loads(result.best_config.read_text(encoding="utf-8"))
        summary = _summary(t, result, out)
        cells.write_json(
            t.record,
            {
                "identity": t.identity,
                "state": "done",
                "summary": summary,
                "model": best["model"],
                "train": best["train"],
            },
        )
        notify("tuned", None, {**info, "line": result.line})
    return finished(tunings)
