"""Comparisons for ``qamoe report --reference RUN``: grid-mean differences with intervals.

For every run and every spectrum curve (protocol) it shares with the reference run (same
dataset, split, axis, corrupted modalities and pattern; normal variant): the difference of
the grid means (mean over the levels both runs measured). The statistics are
:mod:`qamoe_core.evaluation.stats`:

- The replicate is the MODEL SEED (:func:`qamoe_core.evaluation.summary.model_seed_of`: one run, or
  the ``NAME-sN`` runs that ``--pool-seeds`` stacked). Corruption seeds are averaged within a
  model seed first, never counted as replicates. Each run's value is the mean over its model
  seeds; runs are compared unpaired (two architectures share nothing through a seed number).
- Without per-sample tables: Welch's t-interval over the model seeds (exact t quantile).
- With per-sample tables (``--samples``): a two-level percentile bootstrap that resamples
  clusters of test samples (videos, by the id rule of ``qamoe audit``:
  :func:`qamoe_core.data.audit.group_of`), the same for both runs, and then each run's model
  seeds. Accuracies and MAE are reweighted sums (:func:`qamoe_core.metrics.sample_terms`);
  F1 and Corr are recomputed on each draw (slower, so fewer draws). The Welch interval is
  reported beside it.
- p-values are Holm-adjusted across the runs compared on each protocol; beside every
  comparison the minimum detectable difference (80 % power, two-sided 0.05) for its seeds,
  and a note when the observed difference is below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.base.errors import InputError
from qamoe_core.data.audit import DEFAULT_GROUP_REGEX, compile_group_regex, group_of
from qamoe_core.evaluation import stats
from qamoe_core.evaluation.results import SPECTRUM_AXES, measured
from qamoe_core.evaluation.summary import infer_scheme, model_seed_of
from qamoe_core.metrics import compute, sample_terms

SLOW_DRAWS = 200  # draws for metrics that must be recomputed per draw (F1, Corr)
PAIR = ("dataset", "split", "axis", "modalities", "pattern")
JSON_FIELDS = (
    *("reference", "run", "protocol", "metric", "difference", "ci_low", "ci_high"),
    *("p_holm", "mde", "n_seeds", "n_clusters", "method"),
)
COUNTS = ("n_seeds", "n_seeds_reference", "n_samples", "n_clusters")
BELOW_MDE = "below the MDE: not established"
NO_MDE = "one model seed: no MDE"


@dataclass
class Comparison:
    table: pd.DataFrame
    method: str

    def records(self) -> list[dict[str, Any]]:
        return records(self.table)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per comparison: :data:`JSON_FIELDS` first, then the rest of the row; NaN and
    missing counts become None."""
    if table.empty:
        return []
    cols = [*JSON_FIELDS, *(c for c in table.columns if c not in JSON_FIELDS)]
    out = []
    for row in table[cols].to_dict("records"):
        out.append({k: _plain(k, v) for k, v in row.items()})
    return out


def _plain(key: str, v: Any) -> Any:
    """Python values: NaN and missing counts -> None, counts (floats beside a NaN) -> int."""
    v = v.item() if isinstance(v, np.generic) else v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return int(v) if key in COUNTS else v


# -- per-model-seed values from the results tables --------------------------------------------


def seed_values(rows: pd.DataFrame, levels: np.ndarray) -> pd.Series:
    """Grid mean per model seed: corruption seeds averaged per level, then levels averaged."""
    rows = rows[rows["level"].isin(levels)]
    rows = rows.assign(model_seed=model_seed_of(rows["seed"]))
    per_level = rows.groupby(["model_seed", "level"])["value"].mean()
    return per_level.groupby(level="model_seed").mean()


# -- per-model-seed values from per-sample tables, under bootstrap weights -----------------


@dataclass
class _Points:
    """One run's evaluation points (level, seed) on the common sample ids."""

    level: np.ndarray  # (P,)
    model_seed: np.ndarray  # (P,)
    pred: list[np.ndarray]  # P arrays of (n,)
    label: list[np.ndarray]


def _points(rows: pd.DataFrame, ids: np.ndarray, run: str) -> _Points:
    levels, seeds, pred, label = [], [], [], []
    for (level, seed), g in rows.groupby(["level", "seed"], sort=True):
        if g["id"].duplicated().any():
            dup = g.loc[g["id"].duplicated(), "id"].iloc[0]
            raise InputError(
                f"The per-sample rows of run {run!r} repeat id {dup!r} at level {level:g}, "
                f"seed {seed}.",
                hint="Give each run's per-sample table once (qamoe eval --per-sample).",
            )
        g = g.set_index("id").reindex(ids)
        levels.append(float(level))
        seeds.append(int(seed))
        pred.append(g["prediction"].to_numpy(np.float64))
        label.append(g["label"].to_numpy(np.float64))
    return _Points(np.array(levels), model_seed_of(seeds), pred, label)


def _point_metrics(pts: _Points, weights: np.ndarray, scheme: str, metric: str) -> np.ndarray:
    """The metric at every point under every row of sample weights: (draws + 1, P)."""
    try:
        pairs = zip(pts.pred, pts.label, strict=True)
        terms = [sample_terms(p, t, scheme, metric) for p, t in pairs]
    except InputError:  # F1, Corr do not decompose: recompute on every draw
        idx = [np.repeat(np.arange(weights.shape[1]), w.astype(np.int64)) for w in weights]
        return np.array(
            [[compute(p[i], t[i], scheme)[metric] for p, t in zip(pts.pred, pts.label, strict=True)]
             for i in idx]
        )  # fmt: skip
    num = np.array([t[0] for t in terms])
    den = np.array([t[1] for t in terms])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((weights @ num.T) / (weights @ den.T))


def _to_seeds(values: np.ndarray, pts: _Points) -> np.ndarray:
    """Point values (draws + 1, P) -> per-model-seed grid means (draws + 1, seeds)."""
    out = []
    for ms in np.unique(pts.model_seed):
        mine = pts.model_seed == ms
        at = np.unique(pts.level[mine])
        per_level = [values[:, mine & (pts.level == lv)].mean(1) for lv in at]
        out.append(np.mean(per_level, axis=0))
    return np.stack(out, axis=1)


def _seed_stat(pts: _Points, scheme: str, metric: str) -> stats.SeedStat:
    return lambda weights: _to_seeds(_point_metrics(pts, weights, scheme, metric), pts)


def _common_ids(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """The ids present at every point of both runs (the test set both were scored on)."""
    common: set[str] | None = None
    for rows in (a, b):
        for _, g in rows.groupby(["level", "seed"]):
            common = set(g["id"]) if common is None else common & set(g["id"])
    ids = np.array(sorted(common or ()), dtype=object)
    if ids.size == 0:
        raise InputError(
            "The per-sample tables of the two runs share no sample id at every point.",
            hint="Evaluate both runs on the same data file, split and levels.",
        )
    return ids


def _bootstrap(
    a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str], how: dict[str, Any]
) -> tuple[stats.Estimate, int, int]:
    """The two-level bootstrap on per-sample rows: (estimate, samples, clusters)."""
    ids = _common_ids(a, b)
    clusters, _ = group_of([str(i) for i in ids], how["regex"])
    draws = how["draws"]
    try:
        sample_terms(np.zeros(1), np.zeros(1), how["scheme"], how["metric"])
    except InputError:
        draws = min(draws, SLOW_DRAWS)
    est = stats.two_level_bootstrap(
        _seed_stat(_points(a, ids, names[0]), how["scheme"], how["metric"]),
        _seed_stat(_points(b, ids, names[1]), how["scheme"], how["metric"]),
        clusters,
        draws=draws,
        rng=how["rng"],
    )
    return est, int(ids.size), len(set(clusters))


# -- the comparison --------------------------------------------------------------------------


def compare(
    df: pd.DataFrame,
    reference: str,
    metric: str,
    samples: pd.DataFrame | None = None,
    *,
    draws: int = 1000,
    seed: int = 0,
    group_regex: str | None = DEFAULT_GROUP_REGEX,
) -> Comparison:
    """Every run against ``reference`` on ``metric``: one row per shared protocol.

    ``group_regex``: the cluster (video) of a per-sample id, as in ``qamoe audit`` (None:
    every sample its own cluster).
    """
    df = measured(df)
    if reference not in set(df["run"]):
        runs = ", ".join(dict.fromkeys(df["run"]))
        raise InputError(
            f"The reference run {reference!r} is not in the results.",
            hint=f"Pass one of the runs: {runs}.",
        )
    how = {"draws": draws, "metric": metric, "rng": np.random.default_rng(seed)}
    how["regex"] = compile_group_regex(group_regex)
    # the scheme from every metric of the dataset (one metric alone does not name it)
    how["schemes"] = {d: infer_scheme(g) or "binary" for d, g in df.groupby("dataset")}
    sub = df[(df["metric"] == metric) & df["axis"].isin(SPECTRUM_AXES)]
    sub = sub[sub["variant"] == "normal"]
    ref = sub[sub["run"] == reference]
    rows = []
    for run in dict.fromkeys(sub.loc[sub["run"] != reference, "run"]):
        for key, grp in sub[sub["run"] == run].groupby(list(PAIR), sort=False):
            other = ref[(ref[list(PAIR)] == pd.Series(key, index=list(PAIR))).all(axis=1)]
            if not other.empty:
                rows.append(_one(run, reference, key, grp, other, samples, how))
    table = _adjust(pd.DataFrame(rows))
    word = "videos" if group_regex is not None else "samples"
    return Comparison(table, stats.method_sentence(samples is not None, draws, seed, word))


def _adjust(table: pd.DataFrame) -> pd.DataFrame:
    """Holm across the runs compared on each protocol, and the MDE note."""
    if table.empty:
        return table
    table["p_holm"] = np.nan
    for _, grp in table.groupby(list(PAIR), sort=False):
        table.loc[grp.index, "p_holm"] = stats.holm(grp["p"].to_numpy())
    below = table["difference"].abs() < table["mde"]
    table["note"] = np.where(table["mde"].isna(), NO_MDE, np.where(below, BELOW_MDE, ""))
    return table


def _sample_rows(samples: pd.DataFrame, key: tuple[str, ...], run: str) -> pd.DataFrame:
    _, split, axis, mods, pattern = key
    pick = (samples["split"] == split) & (samples["axis"] == axis)
    pick &= (samples["modalities"] == mods) & (samples["variant"] == "normal")
    if "pattern" in samples:  # per-sample tables written before patterns have none
        pick &= samples["pattern"] == pattern
    rows = samples[pick & (samples["run"] == run)]
    if rows.empty:
        raise InputError(
            f"No per-sample rows for run {run!r} on axis {axis} ({split}).",
            hint="Give the per-sample table of every run compared (qamoe eval --per-sample).",
        )
    return rows


def _one(
    run: str,
    reference: str,
    key: tuple[str, ...],
    grp: pd.DataFrame,
    other: pd.DataFrame,
    samples: pd.DataFrame | None,
    how: dict[str, Any],
) -> dict[str, Any]:
    """One shared protocol: the difference, its interval, p, the MDE."""
    levels = np.intersect1d(grp["level"].unique(), other["level"].unique())
    va, vb = seed_values(grp, levels), seed_values(other, levels)
    welch = stats.welch(va.to_numpy(), vb.to_numpy())
    mde = stats.mde(stats.pooled_sd(va.to_numpy(), vb.to_numpy()), va.size, vb.size)
    est, n_samples, n_clusters, method = welch, None, None, "Welch t over model seeds"
    if samples is not None:
        a, b = (_sample_rows(samples, key, r) for r in (run, reference))
        a, b = a[a["level"].isin(levels)], b[b["level"].isin(levels)]
        how["scheme"] = how["schemes"][key[0]]
        est, n_samples, n_clusters = _bootstrap(a, b, (run, reference), how)
        method = f"two-level bootstrap: {n_clusters} clusters, then model seeds"
    else:
        method += " (no per-sample tables: test-set variation not included)"
    dataset, split, axis, mods, pattern = key
    return {
        "reference": reference, "run": run,
        "protocol": f"{dataset}/{split}/{axis}/{mods}/{pattern}", "metric": how["metric"],
        "difference": est.difference, "ci_low": est.ci_low, "ci_high": est.ci_high,
        "p": est.p, "mde": mde, "n_seeds": int(va.size), "n_seeds_reference": int(vb.size),
        "n_samples": n_samples, "n_clusters": n_clusters, "method": method,
        "mean": float(va.mean()), "reference_mean": float(vb.mean()),
        "welch_low": welch.ci_low, "welch_high": welch.ci_high, "p_welch": welch.p,
        "dataset": dataset, "split": split, "axis": axis, "modalities": mods, "pattern": pattern,
    }  # fmt: skip
