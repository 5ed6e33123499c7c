"""What a tuning leaves in ``DIR``: trials.csv, best.json, report.md with its two figures, and
the one line that sums it up. Every file is written atomically (``atomic.atomic_path``).

- ``trials.csv``: one row per trial in number order: its state, its settings (config values;
  list fields as JSON), each fold's score, the mean and its standard error over the folds it
  finished, the seconds its trainings took and, for a failed trial, the error. Rewritten
  after every trial, so it shows the tuning's progress.
- ``best.json``: the best finished trial's model and train sections, every field resolved;
  a ``--config`` file `qamoe train` takes as it is (``--model`` names the model).
- ``report.md``, ``history.png`` (each trial's CV score and the best so far) and
  ``importance.png`` (Optuna's parameter importances, fANOVA with the tuning's seed).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import TrainingError
from qamoe_core.config import CONFIG_VERSION
from qamoe_core.tuning.objective import mean_se
from qamoe_core.tuning.plan import Plan
from qamoe_core.version import __version__

TRIALS = "trials.csv"
BEST = "best.json"
REPORT = "report.md"
HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


@dataclass(frozen=True)
class Row:
    """One trial as the outputs see it."""

    number: int
    state: str
    params: dict[str, Any]
    scores: list[float]
    seconds: float
    error: str

    @property
    def mean_se(self) -> tuple[float, float]:
        return mean_se(self.scores)


def rows(study: Any, plan: Plan) -> list[Row]:
    out = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = t.user_attrs
        out.append(
            Row(
                t.number,
                t.state.name.lower(),
                plan.space.decode(t.params),
                list(attrs.get("fold_scores", [])),
                float(sum(attrs.get("fold_seconds", []))),
                str(attrs.get("error", "")),
            )
        )
    return out


def write_trials(out: Path, plan: Plan, table: Sequence[Row]) -> Path:
    paths = [p.path for p in plan.space.params]
    folds = [f"fold_{k}" for k in range(1, plan.folds.count + 1)]
    header = ["number", "state", *paths, *folds, "mean", "se", "seconds", "error"]
    with atomic_path(out / TRIALS, force=True) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for r in table:
            scores = r.scores + [math.nan] * (len(folds) - len(r.scores))
            mean, se = r.mean_se
            w.writerow(
                [
                    _cell(v)
                    for v in (
                        r.number,
                        r.state,
                        *(r.params.get(p) for p in paths),
                        *scores,
                        mean,
                        se,
                        round(r.seconds, 3),
                        r.error,
                    )
                ]
            )
    return out / TRIALS


@dataclass(frozen=True)
class Best:
    row: Row
    mean: float
    se: float
    within: int | None  # other finished trials within one SE of the best (None: no SE)
    finished: int

    def line(self, plan: Plan) -> str:
        setting = "  ".join(f"{k}={_short(v)}" for k, v in sorted(self.row.params.items()))
        se = "n/a (one fold)" if math.isnan(self.se) else f"{self.se:.4g}"
        flat = (
            ""
            if self.within is None
            else f"; {self.within} of {self.finished - 1} other finished trials within one SE"
            + (" (a flat optimum)" if self.within else "")
        )
        return (
            f"{plan.settings.model}: trial {self.row.number}  {setting}  CV "
            f"{plan.objective.metric} {self.mean:.4g} ± {se} over {len(self.row.scores)} "
            f"fold(s){flat}"
        )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def best_of(table: Sequence[Row], plan: Plan) -> Best:
    """The best finished trial (ties: the earlier), and how many others are within one SE."""
    done = [r for r in table if r.state == "complete"]
    if not done:
        errors = [r.error for r in table if r.error]
        raise TrainingError(
            f"None of the {len(table)} trials finished"
            + (f"; the first error: {errors[0]}" if errors else "."),
            hint=f"Each trial's state and error are in {TRIALS}; the trainings' logs in "
            "cells/*/log.txt.",
        )
    sign = 1.0 if plan.objective.direction == "minimize" else -1.0
    best = min(done, key=lambda r: (sign * r.mean_se[0], r.number))
    mean, se = best.mean_se
    within = (
        None
        if math.isnan(se)
        else sum(1 for r in done if r is not best and abs(r.mean_se[0] - mean) <= se)
    )
    return Best(best, mean, se, within, len(done))


def write_best(out: Path, plan: Plan, configs: tuple[Any, Any]) -> Path:
    """best.json: the chosen setting as a config file for `qamoe train --config`."""
    mcfg, tcfg = configs
    doc = {
        "format_version": CONFIG_VERSION,
        "model_name": plan.settings.model,
        "created_by": f"qamoe {__version__} tune",
        "model": mcfg.to_dict(),
        "train": tcfg.to_dict(),
    }
    with atomic_path(out / BEST, force=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out / BEST
