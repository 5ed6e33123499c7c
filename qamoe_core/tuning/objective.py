"""The tuning objective: one validation metric averaged over declared levels, per fold; the
trial's score is the mean over folds with its standard error.

The default is the criterion the project's own experiments select on: MAE averaged over the
clean validation split and the split corrupted at mixed level 0.5 (benchmarks/
mosi_std_experiment.py). Levels are on the training axis (``train.axis``, mixed by default)
with the fixed validation seed, so every trial is scored on the same copies. The trainer is
told the same criterion (``train.val_levels`` = the levels, ``train.select_metric`` = the
metric), so the epoch each fold keeps is the one the objective scores, and ``best.json``
selects the same way when it trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qamoe_core.base.errors import UsageError, check_level
from qamoe_core.metrics import LOWER_IS_BETTER, METRIC_NAMES

DEFAULT_LEVELS = (0.0, 0.5)


@dataclass(frozen=True)
class Objective:
    metric: str
    levels: tuple[float, ...] = DEFAULT_LEVELS  # 0.0 is the clean split

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    def train_fields(self) -> dict[str, Any]:
        """What the trainer selects its epoch on: the same metric at the same levels."""
        return {"val_levels": list(self.levels), "select_metric": self.metric}

    def score(self, metrics: Mapping[str, Any]) -> float:
        """A fold's score from its run's metrics.json (the kept epoch's validation scores)."""
        values = []
        for level in self.levels:
            per_level = metrics.get("val", {}).get(f"{level:g}", {})
            values.append(float(per_level.get(self.metric, math.nan)))
        return float(sum(values) / len(values))

    def describe(self) -> str:
        words = ["clean" if lv == 0 else f"{lv:g}" for lv in self.levels]
        return f"{self.metric} averaged over validation levels {', '.join(words)}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "levels": list(self.levels)}


def parse_levels(text: str | Sequence[Any]) -> tuple[float, ...]:
    """'clean,0.5' (or a list) -> (0.0, 0.5); each a level in [0, 1], none twice."""
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else text
    if not items:
        raise UsageError("The '--levels' parameter needs at least one level (e.g. clean,0.5).")
    levels = []
    for item in items:
        level = 0.0 if item == "clean" else check_level(item, "--levels")
        if level in levels:
            raise UsageError(
                f"The '--levels' parameter names the level {level:g} twice.",
                hint="clean is level 0.",
            )
        levels.append(level)
    return tuple(sorted(levels))


def make_objective(metric: str, levels: Sequence[float], task: str, scheme: str) -> Objective:
    """Resolve ``metric`` ('auto': MAE for scores, Acc_2 for binary labels) for the data."""
    if metric == "auto":
        metric = "MAE" if task == "regression" else "Acc_2"
    names = METRIC_NAMES[scheme]
    if metric not in names:
        raise UsageError(
            f"The '--metric' parameter must be auto or one of {', '.join(names)} for this "
            f"data (scheme '{scheme}'). Got {metric!r} instead.",
            hint="auto is MAE for sentiment scores and Acc_2 for binary labels.",
        )
    return Objective(metric, tuple(levels))


def mean_se(scores: Sequence[float]) -> tuple[float, float]:
    """Mean over folds and its standard error (sample SD / sqrt(K)); SE is NaN for one fold."""
    n = len(scores)
    if n == 0:
        return math.nan, math.nan
    mean = sum(scores) / n
    if n < 2:
        return mean, math.nan
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(var / n)
