"""Statistics for comparing arms (models, configurations) against a named reference.

The unit of replication is the MODEL SEED: one trained model. Everything measured on one
model (corruption seeds, levels, test samples) is averaged into that model's value first;
corruption seeds are never counted as replicates. Two arms share no randomness through a
seed number, so arms are compared UNPAIRED.

- :func:`welch` — difference of means over model seeds with Welch's t-interval: the
  Welch–Satterthwaite degrees of freedom and the exact t quantile (scipy), and its p-value.
- :func:`cluster_weights` and :func:`two_level_bootstrap` — a percentile bootstrap that
  resamples clusters of test samples (videos: :func:`qamoe_core.data.audit.group_of`), the same
  clusters for both arms since both are scored on the same test set, and then each arm's
  model seeds independently. Used when per-sample predictions are at hand.
- :func:`holm` — Holm's step-down adjustment of the p-values of one family (the arms
  compared with one reference on one protocol).
- :func:`mde` — the minimum detectable difference at 80 % power, two-sided alpha 0.05, for
  the seeds given: the exact two-sample Student t power through the NONCENTRAL t
  distribution (:func:`power`), with the pooled sd of the model-seed values.

Pure numpy + scipy: no pandas, no torch. A fixed generator seed gives identical output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as st

ALPHA = 0.05
POWER = 0.80
LEVEL = 0.95
SeedStat = Callable[[np.ndarray], np.ndarray]  # weights (draws, n) -> values (draws, seeds)


@dataclass(frozen=True)
class Estimate:
    """A difference (a − b) with its interval and two-sided p-value (NaN where undefined)."""

    difference: float
    ci_low: float
    ci_high: float
    p: float
    df: float = math.nan  # Welch only


def _values(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    return arr


def welch(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = LEVEL
) -> Estimate:
    """mean(a) − mean(b) with Welch's t-interval and p-value.

    Equals ``scipy.stats.ttest_ind(a, b, equal_var=False)`` and its
    ``confidence_interval(level)``. Fewer than two values on either side, or no spread at
    all, leaves the interval and p undefined (NaN): there is no replicate to measure by. An
    undefined value (NaN, e.g. Corr of a constant prediction) makes everything NaN.
    """
    x, y = _values(a, "a"), _values(b, "b")
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2 or not math.isfinite(diff):
        return Estimate(diff, math.nan, math.nan, math.nan)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, math.nan, math.nan, math.nan)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * st.t.sf(abs(diff) / se, df))
    return Estimate(diff, diff - half, diff + half, p, float(df))


def pooled_sd(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """The pooled standard deviation of two samples (NaN with no degree of freedom or with an
    undefined value)."""
    x, y = _values(a, "a"), _values(b, "b")
    df = x.size + y.size - 2
    if df < 1 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    ss = (x.size - 1) * (x.var(ddof=1) if x.size > 1 else 0.0)
    ss += (y.size - 1) * (y.var(ddof=1) if y.size > 1 else 0.0)
    return math.sqrt(ss / df)


def power(delta: float, sd: float, n_a: int, n_b: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided two-sample Student t-test at a true difference ``delta``.

    Exact: under the alternative the statistic follows a noncentral t with df = n_a + n_b − 2
    and noncentrality delta / (sd · sqrt(1/n_a + 1/n_b)).
    """
    df = n_a + n_b - 2
    ncp = delta / (sd * math.sqrt(1 / n_a + 1 / n_b))
    crit = st.t.ppf(1 - alpha / 2, df)
    return float(st.nct.sf(crit, df, ncp) + st.nct.cdf(-crit, df, ncp))


def mde(sd: float, n_a: int, n_b: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true difference the two-sample t-test detects with power ``target``.

    Solves :func:`power` (noncentral t, not a normal approximation) for the difference.
    NaN when there is no degree of freedom (n_a + n_b < 3) or the sd is not positive.
    """
    if n_a < 1 or n_b < 1 or n_a + n_b < 3 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    se = sd * math.sqrt(1 / n_a + 1 / n_b)
    upper = se  # widen until the power passes the target, then bisect
    while power(upper, sd, n_a, n_b, alpha) < target:
        upper *= 2
    return float(
        optimize.brentq(lambda d: power(d, sd, n_a, n_b, alpha) - target, 0.0, upper, xtol=1e-12)
    )


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values, in the input order; NaN entries stay NaN and do not count.

    Sorted ascending, the k-th smallest of m p-values becomes max over j ≤ k of
    min(1, (m − j + 1) · p_(j)).
    """
    arr = np.asarray(p, dtype=np.float64)
    out = np.full(arr.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(arr))
    order = ok[np.argsort(arr[ok], kind="stable")]
    m = order.size
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(arr[i])))
        out[i] = running
    return out


def cluster_weights(clusters: Sequence[object], draws: int, rng: np.random.Generator) -> np.ndarray:
    """Sample weights (draws + 1, n) of a cluster bootstrap; row 0 is all ones (the estimate).

    Each draw resamples the clusters with replacement; a sample weighs as often as its
    cluster was drawn. Singleton clusters make it the ordinary (sample) bootstrap.
    """
    _, codes = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    if codes.size == 0:
        raise ValueError("a cluster bootstrap needs at least one sample")
    n_clusters = int(codes.max()) + 1
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=draws)
    return np.vstack([np.ones((1, codes.size)), counts[:, codes].astype(np.float64)])


def _seed_means(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row 0: the plain mean over seeds; every other row: the mean of resampled seeds."""
    n = values.shape[1]
    counts = rng.multinomial(n, np.full(n, 1 / n), size=values.shape[0] - 1)
    boot = (counts * values[1:]).sum(1) / n
    return np.concatenate([[values[0].mean()], boot])


def bootstrap_estimate(diffs: np.ndarray, level: float = LEVEL) -> Estimate:
    """Percentile interval and two-sided bootstrap p-value from draws (row 0: the estimate).

    p = 2 · min(#(d* ≤ 0) + 1, #(d* ≥ 0) + 1) / (draws + 1), at most 1.
    """
    boot = diffs[1:]
    lo, hi = np.percentile(boot, [50 - 50 * level, 50 + 50 * level])
    below, above = int((boot <= 0).sum()), int((boot >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (boot.size + 1))
    return Estimate(float(diffs[0]), float(lo), float(hi), p)


def two_level_bootstrap(
    stat_a: SeedStat,
    stat_b: SeedStat,
    clusters: Sequence[object],
    *,
    draws: int = 1000,
    rng: np.random.Generator,
    level: float = LEVEL,
) -> Estimate:
    """mean over a's seeds − mean over b's seeds, by a two-level percentile bootstrap.

    Level 1 resamples the clusters of the test samples (:func:`cluster_weights`), the same
    draw for both arms; ``stat_a(weights)`` and ``stat_b(weights)`` turn the (draws + 1, n)
    sample weights into one value per model seed (draws + 1, seeds), corruption seeds
    already averaged within each model seed. Level 2 resamples each arm's model seeds
    independently (unpaired). Row 0 of every array is the unweighted estimate.
    """
    weights = cluster_weights(clusters, draws, rng)
    va, vb = np.asarray(stat_a(weights)), np.asarray(stat_b(weights))
    diffs = _seed_means(va, rng) - _seed_means(vb, rng)
    return bootstrap_estimate(diffs, level)


def method_sentence(
    with_clusters: bool, draws: int, seed: int, cluster_word: str = "videos"
) -> str:
    """The one sentence a report prints about how its comparisons were computed."""
    common = (
        "Each arm's value is the mean over its model seeds (corruption seeds and levels "
        "averaged within a model seed, never counted as replicates); arms are compared "
        "unpaired with the named reference, "
    )
    if with_clusters:
        how = (
            f"with a 95% two-level percentile bootstrap ({draws} draws, generator seed {seed}) "
            f"that resamples test {cluster_word} (the same for both arms) and then each arm's "
            "model seeds"
        )
    else:
        how = (
            "with Welch's 95% t-interval over model seeds (exact t quantile, "
            "Welch–Satterthwaite df; test-set variation is not in it without per-sample "
            "tables)"
        )
    return (
        common + how + "; p-values are Holm-adjusted across the arms compared on each protocol, "
        "and the MDE is the difference a two-sided t-test at alpha 0.05 detects with 80% "
        "power for these seeds (noncentral t, pooled sd)."
    )
