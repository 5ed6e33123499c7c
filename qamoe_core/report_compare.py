"""Paired comparisons for ``qamoe report --reference RUN``: grid-mean differences with CIs.

For every run and every spectrum curve it shares with the reference run (same dataset,
split, axis and corrupted modalities; normal variant), the difference of the grid means
(mean over levels of the seed-averaged metric, as in the summary) with a percentile
bootstrap interval. Pairing means both runs see the same resampled seeds and, when
per-sample tables are given, the same resampled test samples, so what the two runs have in
common (a hard seed, a hard sample) cancels out of the difference.

With per-sample tables each draw resamples the test samples (ids common to both runs) and
the seeds, and recomputes the metric at every point; accuracies and MAE are reweighted
sums (:func:`qamoe_core.metrics.sample_terms`), F1 and Corr are recomputed on each draw
(slower, so fewer draws). Without them only the seeds are resampled, from the results
tables: the interval then shows seed variation only, not test-set variation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.errors import InputError
from qamoe_core.metrics import compute, sample_terms
from qamoe_core.results import SPECTRUM_AXES, infer_scheme, measured

SLOW_DRAWS = 200  # draws for metrics that must be recomputed per draw (F1, Corr)
PAIR = ("dataset", "split", "axis", "modalities", "pattern")


@dataclass
class Comparison:
    table: pd.DataFrame
    method: str


def _grid(points: pd.DataFrame, values: np.ndarray, seed_w: np.ndarray) -> np.ndarray:
    """Grid means per draw: seeds weighted per level by ``seed_w`` (draws x seeds), levels
    averaged. ``values`` is draws x points; a level whose seeds all drew weight 0 falls back
    to its plain mean (a deterministic level, e.g. 0, has only one seed)."""
    out = np.zeros(values.shape[0])
    levels = points["level"].to_numpy()
    seed_idx = points["seed_idx"].to_numpy()
    for level in np.unique(levels):
        cols = np.flatnonzero(levels == level)
        w = seed_w[:, seed_idx[cols]]
        num, den = (w * values[:, cols]).sum(1), w.sum(1)
        plain = values[:, cols].mean(1)
        out += np.where(den > 0, num / np.where(den > 0, den, 1), plain)
    return out / len(np.unique(levels))


def _seed_weights(n_seeds: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    ones = np.ones((1, n_seeds))
    boot = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=draws).astype(float)
    return np.vstack([ones, boot])  # row 0: the estimate itself


def _from_table(
    a: pd.DataFrame, b: pd.DataFrame, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[float], int, None]:
    """Per-point differences from the results tables (seed bootstrap only)."""
    key = ["level", "seed"]
    both = (
        a.groupby(key)["value"]
        .mean()
        .to_frame("a")
        .join(b.groupby(key)["value"].mean().to_frame("b"), how="inner")
    )
    points = both.reset_index()
    seeds = sorted(points["seed"].unique())
    points["seed_idx"] = points["seed"].map({s: i for i, s in enumerate(seeds)})
    diff = (points["a"] - points["b"]).to_numpy()[None, :]
    w = _seed_weights(len(seeds), draws, rng)
    values = np.repeat(diff, len(w), axis=0)
    grid = _grid(points, values, w)
    means = [float(_grid(points, points[c].to_numpy()[None, :], w[:1])[0]) for c in "ab"]
    return grid, means, len(seeds), None


def _point_arrays(rows: pd.DataFrame, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(predictions, labels) per point in (level, seed) order, samples in ``ids`` order."""
    out = []
    for _, g in rows.groupby(["level", "seed"], sort=True):
        g = g.set_index("id").loc[ids]
        out.append((g["prediction"].to_numpy(), g["label"].to_numpy()))
    return out


def _metric_draws(
    arrays: list[tuple[np.ndarray, np.ndarray]], idx: np.ndarray, scheme: str, metric: str
) -> np.ndarray:
    """The metric per draw (rows of ``idx``, sample indices) and point: draws x points."""
    try:
        terms = [sample_terms(p, t, scheme, metric) for p, t in arrays]
    except InputError:  # F1, Corr do not decompose: recompute on every draw
        return np.array([[compute(p[i], t[i], scheme)[metric] for p, t in arrays] for i in idx])
    n = idx.shape[1]
    counts = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)
    num = np.array([t[0] for t in terms])
    den = np.array([t[1] for t in terms])
    return (counts @ num.T) / (counts @ den.T)


def _from_samples(
    a: pd.DataFrame, b: pd.DataFrame, scheme: str, metric: str, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[float], int, int]:
    """Per-point metrics recomputed on resampled test samples (the same for both runs)."""
    key = ["level", "seed"]
    common = a[key].drop_duplicates().merge(b[key].drop_duplicates())
    a, b = a.merge(common), b.merge(common)
    ids = np.array(sorted(set(a["id"]) & set(b["id"])))
    if ids.size == 0 or common.empty:
        raise InputError(
            "The per-sample tables of the two runs share no sample id at any point.",
            hint="Evaluate both runs on the same data file, split and levels.",
        )
    points = common.sort_values(key).reset_index(drop=True)
    seeds = sorted(points["seed"].unique())
    points["seed_idx"] = points["seed"].map({s: i for i, s in enumerate(seeds)})
    try:
        sample_terms(np.zeros(1), np.zeros(1), scheme, metric)
    except InputError:
        draws = min(draws, SLOW_DRAWS)
    idx = np.vstack([np.arange(ids.size)[None, :], rng.integers(0, ids.size, (draws, ids.size))])
    va = _metric_draws(_point_arrays(a, ids), idx, scheme, metric)
    vb = _metric_draws(_point_arrays(b, ids), idx, scheme, metric)
    w = _seed_weights(len(seeds), draws, rng)
    grid = _grid(points, va - vb, w)
    means = [float(_grid(points, v[:1], w[:1])[0]) for v in (va, vb)]
    return grid, means, len(seeds), int(ids.size)


def compare(
    df: pd.DataFrame,
    reference: str,
    metric: str,
    samples: pd.DataFrame | None = None,
    *,
    draws: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Every run against ``reference`` on ``metric``: one row per shared curve."""
    df = measured(df)
    if reference not in set(df["run"]):
        runs = ", ".join(dict.fromkeys(df["run"]))
        raise InputError(
            f"The reference run {reference!r} is not in the results.",
            hint=f"Pass one of the runs: {runs}.",
        )
    rng = np.random.default_rng(seed)
    sub = df[(df["metric"] == metric) & df["axis"].isin(SPECTRUM_AXES)]
    sub = sub[sub["variant"] == "normal"]
    ref = sub[sub["run"] == reference]
    rows = []
    for run in dict.fromkeys(sub.loc[sub["run"] != reference, "run"]):
        for key, grp in sub[sub["run"] == run].groupby(list(PAIR), sort=False):
            other = ref[(ref[list(PAIR)] == pd.Series(key, index=list(PAIR))).all(axis=1)]
            if other.empty:
                continue
            rows.append(_one(run, reference, key, grp, other, metric, samples, draws, rng))
    table = pd.DataFrame(rows)
    return Comparison(table, _method(samples is not None, draws, seed, metric))


def _one(
    run: str,
    reference: str,
    key: tuple[str, str, str, str, str],
    grp: pd.DataFrame,
    other: pd.DataFrame,
    metric: str,
    samples: pd.DataFrame | None,
    draws: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One shared curve: the grid-mean difference and its bootstrap interval."""
    dataset, split, axis, mods, pattern = key
    n_samples: int | None = None
    if samples is not None:
        pick = (samples["split"] == split) & (samples["axis"] == axis)
        pick &= (samples["modalities"] == mods) & (samples["variant"] == "normal")
        if "pattern" in samples:  # per-sample tables written before patterns have none
            pick &= samples["pattern"] == pattern
        a, b = (
            samples[pick & (samples["run"] == run)],
            samples[pick & (samples["run"] == reference)],
        )
        if a.empty or b.empty:
            missing = run if a.empty else reference
            raise InputError(
                f"No per-sample rows for run {missing!r} on axis {axis} ({split}).",
                hint="Give the per-sample table of every run compared (qamoe eval --per-sample).",
            )
        scheme = infer_scheme(grp) or "binary"
        grid, means, n_seeds, n_samples = _from_samples(a, b, scheme, metric, draws, rng)
    else:
        grid, means, n_seeds, _ = _from_table(grp, other, draws, rng)
    boot = grid[1:]
    # one seed and no samples: nothing to resample, so no interval
    lo, hi = np.percentile(boot, [2.5, 97.5]) if n_seeds > 1 or n_samples else (math.nan,) * 2
    return {
        "run": run, "reference": reference, "dataset": dataset, "split": split, "axis": axis,
        "modalities": mods, "pattern": pattern, "metric": metric, "mean": means[0],
        "reference_mean": means[1],
        "difference": float(grid[0]), "ci_low": float(lo), "ci_high": float(hi),
        "seeds": n_seeds, "samples": n_samples if n_samples is not None else "n/a",
    }  # fmt: skip


def _method(with_samples: bool, draws: int, seed: int, metric: str) -> str:
    over = "test samples and seeds" if with_samples else "seeds only"
    text = (
        f"Difference = run − reference in the grid mean of {metric} (mean over levels of the "
        f"seed-averaged value), with a 95% paired percentile bootstrap interval over {over} "
        f"({draws} draws, generator seed {seed}): each draw resamples "
    )
    if with_samples:
        text += (
            "the test samples (the same ids for both runs) and the seeds (the same seeds for "
            "both runs), then recomputes the metric at every level"
            f" (F1 and Corr: at most {SLOW_DRAWS} draws)."
        )
    else:
        text += (
            "the seeds, the same for both runs. Per-sample tables were not given "
            "(qamoe report --samples), so test-set variation is not in the interval; "
            "with one seed there is no interval."
        )
    return text
