"""The statistics over a results table (``results.py``): curves, summaries, seed pooling.

Summaries (:func:`summarize`) are per run, axis, modalities and variant: the clean score,
the mean over the grid (LNLN style), the trapezoid area under the reliability curve divided
by the level span (TFR-Net style, so it lives on the metric's own scale and is comparable to
the clean score), and area ÷ clean (relative robustness, MultiBench). Seeds are averaged
per level before either summary. For MAE (lower is better) a ratio above 1 means worse.

Seed pooling (:func:`pool_model_seeds`) stacks the model seeds of one configuration into one
run; :func:`model_seed_of` recovers them for the comparisons of ``report/compare.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.base.errors import InputError
from qamoe_core.base.names import MODALITIES
from qamoe_core.evaluation.results import (
    CONSTANT,
    RUN_COLUMNS,
    SPECTRUM_AXES,
    is_diagnostic,
    measured,
    validate,
)
from qamoe_core.metrics import METRIC_NAMES, PRIMARY

# A run label that names a model seed: "qamoe-s2", "early_s0", "qamoe-seed10", "qamoe_seed3".
MODEL_SEED_RUN = re.compile(r"^(?P<stem>.+?)[-_](?:s|seed)(?P<seed>\d+)$")
SEED_STRIDE = 1000  # pooled seed = SEED_STRIDE x model seed + corruption seed
MAX_MODEL_SEED = 10**15  # keeps the pooled seed inside int64


def pool_model_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Stack the model seeds of one configuration into one run, for seed-aware reports.

    Runs labelled ``<stem>-s<N>`` (also ``_s<N>``, ``-seed<N>``) become run ``<stem>``, and
    the seed column becomes ``1000 x N + corruption seed``, so the curve bands, n_seeds and
    the summaries span model AND corruption seeds. Comparisons (``report/compare.py``) do not
    treat those as independent: they average the corruption seeds within each model seed
    (:func:`model_seed_of`) and count model seeds as the replicates. Runs without such a
    suffix are kept as they are. Raises InputError when no run has a seed suffix, when a
    corruption seed is 1000 or more, when a model seed is 10**15 or more, or when a pooled
    label collides with an existing run.
    """
    out = df.copy()
    parsed = out["run"].astype(str).str.extract(MODEL_SEED_RUN)
    seeded = parsed["stem"].notna()
    if not seeded.any():
        raise InputError(
            "No run label names a model seed, so there is nothing to pool.",
            hint="Label runs NAME-s0, NAME-s1, ... (qamoe eval --name) or drop --pool-seeds.",
        )
    if (out.loc[seeded, "seed"] >= SEED_STRIDE).any():
        raise InputError(
            f"Corruption seeds must be below {SEED_STRIDE} to pool model seeds.",
            hint="Evaluate with fewer corruption seeds (qamoe eval --corruption-seeds).",
        )
    clash = sorted(set(parsed.loc[seeded, "stem"]) & set(out.loc[~seeded, "run"]))
    if clash:
        raise InputError(
            f"Pooled run name(s) {', '.join(clash)} already exist as runs without a seed.",
            hint="Rename one of them with qamoe eval --name.",
        )
    model_seed = parsed.loc[seeded, "seed"].map(int)  # Python ints: no overflow yet
    if (model_seed >= MAX_MODEL_SEED).any():
        big = model_seed[model_seed >= MAX_MODEL_SEED].index[0]
        raise InputError(
            f"The model seed in run '{out.loc[big, 'run']}' is too large to pool "
            f"(the limit is {MAX_MODEL_SEED - 1}).",
            hint="Relabel the run with a smaller seed (qamoe eval --name NAME-s0).",
        )
    model_seed = model_seed.astype(np.int64)
    out.loc[seeded, "seed"] = SEED_STRIDE * model_seed + out.loc[seeded, "seed"]
    out.loc[seeded, "run"] = parsed.loc[seeded, "stem"]
    return validate(out, "pooled results")


def model_seed_of(seeds: Sequence[int] | pd.Series | np.ndarray) -> np.ndarray:
    """The model seed of each row: ``seed // SEED_STRIDE``.

    Pooled tables (:func:`pool_model_seeds`) hold ``SEED_STRIDE x model seed + corruption
    seed``; an unpooled run is one trained model whose seeds are corruption seeds (below
    SEED_STRIDE, as ``qamoe eval`` writes them), so all its rows get model seed 0. Statistics
    average the corruption seeds within each model seed and count model seeds only.
    """
    return np.asarray(seeds, dtype=np.int64) // SEED_STRIDE


def pool_sample_seeds(samples: pd.DataFrame) -> pd.DataFrame:
    """:func:`pool_model_seeds` for per-sample tables: run NAME-sN -> NAME, seed -> 1000 N + s."""
    out = samples.copy()
    parsed = out["run"].astype(str).str.extract(MODEL_SEED_RUN)
    seeded = parsed["stem"].notna()
    model_seed = parsed.loc[seeded, "seed"].map(int).astype(np.int64)
    out.loc[seeded, "seed"] = SEED_STRIDE * model_seed + out.loc[seeded, "seed"]
    out.loc[seeded, "run"] = parsed.loc[seeded, "stem"]
    return out


def infer_scheme(df: pd.DataFrame) -> str | None:
    """The metric scheme whose names all appear in ``df`` (None if none does)."""
    present = set(df["metric"])
    for scheme, names in METRIC_NAMES.items():
        if set(names) <= present:
            return scheme
    return None


def default_metric(df: pd.DataFrame) -> str:
    """The scheme's primary metric, else the first non-diagnostic metric in the table."""
    scheme = infer_scheme(df)
    if scheme is not None:
        return PRIMARY[scheme]
    names = [m for m in dict.fromkeys(df["metric"]) if not is_diagnostic(m)]
    if not names:
        raise InputError(
            "The results hold diagnostics only, no metric to summarise.",
            hint="Add the results file that holds the metrics, or name a diagnostic, e.g. "
            f"--metric {df['metric'].iloc[0]}.",
        )
    return names[0]


def check_metric(df: pd.DataFrame, metric: str) -> str:
    if metric not in set(df["metric"]):
        names = [m for m in dict.fromkeys(df["metric"]) if not is_diagnostic(m)]
        diagnostics = [m for m in dict.fromkeys(df["metric"]) if is_diagnostic(m)]
        if names:
            also = f"; diagnostics such as {diagnostics[0]} work too" if diagnostics else ""
            hint = (
                f"The metrics in these results are {', '.join(names)}: pass one or more, "
                f"comma-separated, with --metric{also}."
            )
        else:
            hint = f"These results hold diagnostics only; pick one, e.g. --metric {diagnostics[0]}."
        raise InputError(
            f"The 'metric' parameter must be one of {', '.join(names or diagnostics)}. "
            f"Got {metric!r} instead.",
            hint=hint,
        )
    return metric


SERIES: tuple[str, ...] = (
    *("run", "model", "dataset", "split", "axis", "modalities", "pattern"),
    "variant",
)


def curves(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Seed statistics per level: one row per series and level with mean, std and n.

    ``std`` is the sample std over corruption seeds (0 with one seed).
    """
    sub = df[df["metric"] == metric]
    g = sub.groupby([*SERIES, "level"], sort=True, dropna=False)["value"]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    return out


def trapezoid_area(levels: Sequence[float], values: Sequence[float]) -> float:
    """Area under the curve divided by the level span; the single value if one level.

    NaN anywhere gives NaN: an undefined point makes the area undefined, not smaller.
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size == 1 or x[-1] == x[0]:
        return float(y.mean())
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def summarize(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run, spectrum axis, modalities and variant: clean, mean, area, area_over_clean.

    ``clean`` is the run's clean-axis score for the same split and variant (falling back to
    the curve's value at level 0 when no clean row exists). Columns: the series columns,
    metric, clean, mean, area, area_over_clean, n_levels, level_min, level_max, n_seeds.
    """
    names = (
        list(metrics)
        if metrics is not None
        else [m for m in dict.fromkeys(df["metric"]) if not is_diagnostic(m)]
    )
    rows: list[dict[str, Any]] = []
    for metric in names:
        check_metric(df, metric)
        c = curves(df, metric)
        # Keyed by everything that names a run: one label may come from several datasets.
        clean_key = [*RUN_COLUMNS, "variant"]
        clean = c[c["axis"] == "clean"].groupby(clean_key)["mean"].mean()
        for key, grp in c[c["axis"].isin(SPECTRUM_AXES)].groupby(list(SERIES), sort=False):
            row = dict(zip(SERIES, key, strict=True))
            grp = grp.sort_values("level")
            ck = tuple(row[k] for k in clean_key)
            if ck in clean.index:
                clean_value = float(clean[ck])
            elif (grp["level"] == 0).any():
                clean_value = float(grp.loc[grp["level"] == 0, "mean"].iloc[0])
            else:
                clean_value = math.nan
            area = trapezoid_area(grp["level"], grp["mean"])
            row.update(
                metric=metric,
                clean=clean_value,
                mean=float(grp["mean"].mean(skipna=False)),
                area=area,
                area_over_clean=area / clean_value if clean_value else math.nan,
                n_levels=len(grp),
                level_min=float(grp["level"].min()),
                level_max=float(grp["level"].max()),
                n_seeds=int(grp["n"].max()),
            )
            rows.append(row)
    columns = [
        *SERIES,
        "metric",
        "clean",
        "mean",
        "area",
        "area_over_clean",
        "n_levels",
        "level_min",
        "level_max",
        "n_seeds",
    ]
    return pd.DataFrame(rows, columns=columns)


def fixed_missing(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The fixed-missing protocol as a table: one row per run (dataset, split, variant), one
    column per DROPPED subset ("none" = the clean score), values averaged over seeds."""
    sub = measured(df)
    sub = sub[(sub["metric"] == metric) & (sub["axis"].isin(["drop", "clean"]))]
    if not (sub["axis"] == "drop").any():
        return pd.DataFrame()
    sub = sub.assign(dropped=sub["modalities"].where(sub["axis"] == "drop", "none"))
    index = ["run", "dataset", "split", "variant"]
    table = sub.pivot_table(index=index, columns="dropped", values="value", aggfunc="mean")

    def order(name: str) -> tuple[int, list[int]]:
        parts = [] if name == "none" else name.split("+")
        return (len(parts), [MODALITIES.index(p) if p in MODALITIES else 9 for p in parts])

    table = table[sorted(table.columns, key=order)]
    table.columns.name = None
    return table.reset_index()


def constants(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best-constant scores of ``metric``: one row per (dataset, split, value), with the
    runs that carry it; empty when the results hold no constant rows for it."""
    sub = df[(df["variant"] == CONSTANT) & (df["metric"] == metric)].dropna(subset=["value"])
    cols = ["dataset", "split", "value"]
    if sub.empty:
        return pd.DataFrame(columns=[*cols, "runs"])
    g = sub.groupby(cols, sort=False)["run"]
    return g.agg(lambda r: ", ".join(dict.fromkeys(r))).reset_index(name="runs")
