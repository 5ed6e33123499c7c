"""Per-sample tables (``qamoe eval --per-sample FILE``): one row per (point, variant, sample).

What the model said about each sample at each point: its prediction and, for models with
quality scores, that sample's ``quality_<m>``. Averaging a point's ``quality_<m>`` gives the
results table's row of that name, and the metrics of its predictions the metric rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.base.atomic import atomic_path
from qamoe_core.evaluation.plan import Point
from qamoe_core.evaluation.results import QUALITY_PREFIX, csv_safe

SAMPLE_COLUMNS: tuple[str, ...] = (
    "run", "split", "axis", "level", "modalities", "seed", "pattern", "variant", "id",
    "label", "prediction",
)  # fmt: skip
"""Columns of EvalResult.samples, followed by ``quality_<modality>`` for models with r."""

# (point, variant, predictions (N,), accumulator key): one evaluated output, in table order.
Output = tuple[Point, str, np.ndarray, tuple[int, str]]


def sample_rows(
    outputs: Sequence[Output],
    quality: Mapping[tuple[int, str], Mapping[str, np.ndarray]],
    *,
    run: str,
    split: str,
    ids: np.ndarray,
    labels: np.ndarray,
) -> pd.DataFrame:
    """One row per (point, variant, sample) of ``outputs``; ``quality`` holds each output's
    per-sample r_m by its key (none for models without quality)."""
    frames = []
    for p, variant, pred, key in outputs:
        cols: dict[str, Any] = {"run": run, "split": split}
        cols |= p.columns() | {"variant": variant, "id": ids, "label": labels,
                               "prediction": pred}  # fmt: skip
        for m, r in quality.get(key, {}).items():
            cols[f"{QUALITY_PREFIX}{m}"] = r
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def save_samples(df: pd.DataFrame, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write EvalResult.samples as CSV, atomically (gzip-compressed when the name ends .gz)."""
    target = Path(path)
    compression = "gzip" if target.name.endswith(".gz") else None
    with atomic_path(target, force=force) as tmp:
        csv_safe(df).to_csv(tmp, index=False, float_format="%.6g", compression=compression)
    return target
