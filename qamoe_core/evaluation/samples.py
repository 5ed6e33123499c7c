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
from qamoe_core.base.errors import InputError
from qamoe_core.base.inputs import check_file
from qamoe_core.evaluation.plan import Point
from qamoe_core.evaluation.results import (
    QUALITY_PREFIX,
    VARIANT_ALIASES,
    csv_safe,
    first_bad,
    table_error,
)

SAMPLE_COLUMNS: tuple[str, ...] = (
    "run", "split", "axis", "level", "modalities", "seed", "pattern", "variant", "id",
    "label", "prediction",
)  # fmt: skip
"""Columns of EvalResult.samples, followed by ``quality_<modality>`` for models with r, and
``residual_<modality>``, ``sigma2_<modality>`` with ``--residuals`` (normal variant only)."""
# The columns a per-sample table must have to be read (tables written before the temporal
# patterns have no pattern column).
_READ_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c != "pattern")

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
    extra: Mapping[tuple[int, str], Mapping[str, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """One row per (point, variant, sample) of ``outputs``; ``quality`` holds each output's
    per-sample r_m by its key (none for models without quality), ``extra`` more columns by
    key (``residual_<m>``, ``sigma2_<m>`` with EvalConfig.residuals; NaN where a key has
    none)."""
    names = list(dict.fromkeys(n for cols in (extra or {}).values() for n in cols))
    frames = []
    for p, variant, pred, key in outputs:
        cols: dict[str, Any] = {"run": run, "split": split}
        cols |= p.columns() | {"variant": variant, "id": ids, "label": labels,
                               "prediction": pred}  # fmt: skip
        for m, r in quality.get(key, {}).items():
            cols[f"{QUALITY_PREFIX}{m}"] = r
        for name in names:
            cols[name] = (extra or {}).get(key, {}).get(name, np.full(len(pred), np.nan))
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def save_samples(df: pd.DataFrame, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write EvalResult.samples as CSV, atomically (gzip-compressed when the name ends .gz)."""
    target = Path(path)
    compression = "gzip" if target.name.endswith(".gz") else None
    with atomic_path(target, force=force) as tmp:
        csv_safe(df).to_csv(tmp, index=False, float_format="%.6g", compression=compression)
    return target


_SAMPLES_HINT = "Write one with `qamoe eval RUN --data DATA.h5 --sweep --per-sample FILE`."


def load_samples(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read per-sample tables (``qamoe eval --per-sample``, .csv or .csv.gz) into one."""
    frames = []
    for p in map(Path, paths):
        check_file(p, "per-sample table", _SAMPLES_HINT)
        try:
            df = pd.read_csv(
                p,
                dtype={"run": str, "id": str, "modalities": str},
                keep_default_na=False,
                na_values={"prediction": ["nan"]},
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
                OSError, EOFError) as exc:  # fmt: skip
            raise table_error(
                f"'{p}'", f"not a readable per-sample CSV ({type(exc).__name__})."
            ) from None
        missing = [c for c in _READ_COLUMNS if c not in df.columns]
        if missing:
            raise table_error(
                f"'{p}'",
                f"missing column(s) {', '.join(missing)} of a per-sample table.",
                "Per-sample tables are written by `qamoe eval --per-sample FILE`.",
            )
        for col in ("level", "seed", "label", "prediction"):
            values = pd.to_numeric(df[col], errors="coerce")
            if values.isna().any():
                raise table_error(
                    f"'{p}'",
                    f"column '{col}' holds non-numeric values, e.g. "
                    f"{first_bad(df[col], values.isna())}.",
                )
            df[col] = values
        df["variant"] = df["variant"].astype(str).replace(VARIANT_ALIASES)
        df["level"] = df["level"].astype(np.float64).round(10)
        df["seed"] = df["seed"].astype(np.int64)
        frames.append(df)
    if not frames:
        raise InputError("No per-sample table given.")
    return pd.concat(frames, ignore_index=True)
