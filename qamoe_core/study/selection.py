"""The validation score each training selected its epoch on: the paper table's column
``valid (selected)`` and the summary's ``selection`` (issue 31, gap 3).

A training keeps the epoch whose validation score is best: ``train.select_metric`` averaged
over ``train.val_levels`` (mixed corruption of the valid split; ``training/loop.py``). Its
run's ``metrics.json`` records that score (``val_score``), the metric (``select_metric``), the
selected epoch (``best_epoch``) and, per selection level, the selected weights' validation
metrics and loss (``val``). A study gives them per arm as mean ± sd over model seeds and
compares no arm on them with the reference: the best of several epochs' scores is biased
upward, and an arm tuned with another objective selects on other levels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.study import cells
from qamoe_core.study.plan import Plan, StudyError
from qamoe_core.study.table import COLUMNS, NOT_COMPARED
from qamoe_core.study.table import VALID_COLUMN as COLUMN


@dataclass(frozen=True)
class Selected:
    """One training's selection, read from its metrics.json."""

    dataset: str
    arm: str
    seed: int
    metric: str  # the selection metric ("loss" or a metric name)
    levels: tuple[str, ...]  # the valid split's mixed levels it was averaged over
    score: float  # val_score: the selected epoch's score
    loss: float  # the selected weights' validation loss, averaged over the same levels
    best_epoch: int


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def read(plan: Plan, out: Path) -> list[Selected]:
    """The selection of every training cell of ``plan`` (all done) in the folder ``out``."""
    found = []
    for cell in plan.cells:
        if cell.kind != "train":
            continue
        path = cells.cell_dir(out, cell.key) / cells.RUN / "metrics.json"
        m = cells.read_json(path)
        if not isinstance(m, dict) or "val_score" not in m or not isinstance(m.get("val"), dict):
            raise StudyError(
                f"The training {cell.title} has no readable metrics.json ({path}).",
                hint="Its cell is marked done but its run is damaged; remove "
                f"cells/{cell.key} and rerun the study.",
            )
        levels = tuple(m["val"])
        losses = [_number(v.get("loss")) for v in m["val"].values() if isinstance(v, dict)]
        found.append(
            Selected(
                dataset=cell.dataset,
                arm=cell.arm,
                seed=cell.seed,
                metric=str(m.get("select_metric", "")),
                levels=levels,
                score=_number(m["val_score"]),
                loss=float(np.mean(losses)) if losses else math.nan,
                best_epoch=int(m.get("best_epoch") or 0),
            )
        )
    return found


def _groups(found: Sequence[Selected]) -> dict[tuple[str, str, str], list[Selected]]:
    """(dataset, arm, metric) -> its seeds' selections, sorted by seed, in study order."""
    by: dict[tuple[str, str, str], list[Selected]] = {}
    for s in found:
        by.setdefault((s.dataset, s.arm, s.metric), []).append(s)
    return {k: sorted(v, key=lambda s: s.seed) for k, v in by.items()}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def _seed_scores(
    found: Sequence[Selected], pools: Sequence[Any]
) -> dict[tuple[str, str, str], list[float]]:
    """(dataset or pool, arm, metric) -> one score per model seed, sorted by seed. A pool's
    (the folds of one cross-validation, pools.py) is a seed's mean over all its folds, NaN
    when a fold lacks that seed, as the table pools the sweeps."""
    of = {ds: pool for pool in pools for ds in pool.datasets}
    out: dict[tuple[str, str, str], list[float]] = {}
    pooled: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    for (ds, arm, metric), sel in _groups(found).items():
        if ds not in of:
            out[(ds, arm, metric)] = [s.score for s in sel]
            continue
        per_seed = pooled.setdefault((of[ds].name, arm, metric), {})
        for s in sel:
            per_seed.setdefault(s.seed, {})[ds] = s.score
    for (name, arm, metric), per_seed in pooled.items():
        folds = next(p.datasets for p in pools if p.name == name)
        out[(name, arm, metric)] = [
            float(np.mean([v[f] for f in folds])) if all(f in v for f in folds) else math.nan
            for _, v in sorted(per_seed.items())
        ]
    return out


def rows(
    found: Sequence[Selected], reference: str | None, pools: Sequence[Any] = ()
) -> pd.DataFrame:
    """Rows of the tidy table (table.COLUMNS): column ``valid (selected)``, the selection
    metric as ``metric``, mean ± sd over model seeds (a pool's datasets averaged within each
    seed first), no comparison (NaN)."""
    out = []
    for (ds, arm, metric), scores in _seed_scores(found, pools).items():
        mean, sd = _mean_sd(scores)
        out.append(
            {
                "dataset": ds,
                "column": COLUMN,
                "metric": metric,
                "arm": arm,
                "n_seeds": len(scores),
                "mean": mean,
                "sd": sd,
                "reference": reference or "",
                **NOT_COMPARED,
            }
        )
    return pd.DataFrame(out, columns=list(COLUMNS))


def note(found: Sequence[Selected]) -> str:
    """The sentence under the table that says what the column holds."""
    if not found:
        return ""

    def at(levels: tuple[str, ...]) -> str:
        return f"level{'s' if len(levels) > 1 else ''} {', '.join(levels)}"

    defs = sorted({(s.arm, s.levels) for s in found})
    if len({lv for _, lv in defs}) == 1:
        where = f"at mixed {at(defs[0][1])}"
    else:
        where = "at each arm's mixed levels: " + "; ".join(f"{a} {at(lv)}" for a, lv in defs)
    return (
        f"{COLUMN}: the validation score each training selected its epoch on (metrics.json's "
        f"val_score, the valid split {where}), over model seeds; compared with no arm, as the "
        "best of several epochs' scores is biased."
    )


def summary(found: Sequence[Selected]) -> list[dict[str, Any]]:
    """Per dataset and arm, for ``--json``: the selection's metric and levels, its score's
    and loss's mean and sd over model seeds, and every seed's values."""
    out = []
    for (ds, arm, metric), sel in _groups(found).items():
        score, score_sd = _mean_sd([s.score for s in sel])
        loss, loss_sd = _mean_sd([s.loss for s in sel])
        out.append(
            {
                "dataset": ds,
                "arm": arm,
                "metric": metric,
                "levels": sorted({lv for s in sel for lv in s.levels}, key=float),
                "n_seeds": len(sel),
                "mean": _json(score),
                "sd": _json(score_sd),
                "loss_mean": _json(loss),
                "loss_sd": _json(loss_sd),
                "seeds": [
                    {
                        "seed": s.seed,
                        "score": _json(s.score),
                        "loss": _json(s.loss),
                        "best_epoch": s.best_epoch,
                    }
                    for s in sel
                ],
            }
        )
    return out


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None
