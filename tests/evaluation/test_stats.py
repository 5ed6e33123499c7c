"""Known answers for qamoe_core.evaluation.stats: Welch against scipy, the cluster bootstrap
against the sample bootstrap, Holm by hand, the MDE against the power it promises."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from qamoe_core.evaluation import stats


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.81, 0.84, 0.79], [0.86, 0.88, 0.85, 0.90]),  # unequal n
        ([1.0, 1.2, 0.9, 1.4, 1.1, 0.95], [1.3, 1.25, 1.6, 1.1, 1.5, 1.45]),  # 6 seeds: t(≈10)
        ([0.0, 0.01], [0.5, 0.7, 0.2, 0.9, 0.1, 0.6, 0.4, 0.8, 0.3, 0.55]),  # very unequal sd
    ],
)
def test_welch_equals_scipy(a: list[float], b: list[float]) -> None:
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    for level in (0.95, 0.9):
        ci = ref.confidence_interval(level)
        got = stats.welch(a, b, level)
        assert (got.ci_low, got.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    got = stats.welch(a, b)
    assert got.p == pytest.approx(ref.pvalue, rel=1e-12)
    assert got.df == pytest.approx(ref.df, rel=1e-12)
    assert got.difference == pytest.approx(np.mean(a) - np.mean(b))


def test_welch_uses_the_exact_quantile_not_two() -> None:
    # six seeds each, equal sd: df = 10, t = 2.228 (the old helper used 2.0 from 6 seeds)
    a, b = np.arange(6.0), np.arange(6.0) + 1
    got = stats.welch(a, b)
    half = (got.ci_high - got.ci_low) / 2
    assert half / math.sqrt(2 * np.var(a, ddof=1) / 6) == pytest.approx(2.2281, abs=1e-4)


def test_welch_without_a_replicate_has_no_interval() -> None:
    one = stats.welch([0.8], [0.7, 0.75])
    assert one.difference == pytest.approx(0.075) and math.isnan(one.ci_low) and math.isnan(one.p)
    flat = stats.welch([0.8, 0.8], [0.7, 0.7])
    assert math.isnan(flat.ci_high)
    undefined = stats.welch([0.8, math.nan, 0.7], [0.7, 0.6])  # e.g. Corr of a constant
    assert math.isnan(undefined.difference) and math.isnan(undefined.p)
    assert math.isnan(stats.mde(stats.pooled_sd([0.8, math.nan], [0.7, 0.6]), 2, 2))


def test_holm_matches_a_hand_computation() -> None:
    p = [0.01, 0.04, 0.03, math.nan, 0.005]
    # m = 4 (the NaN does not count); sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 =
    # 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    got = stats.holm(p)
    assert got[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[3])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02])  # one comparison: unchanged


@pytest.mark.parametrize(("n", "effect"), [(3, 3.0709), (10, 1.3249), (20, 0.9091)])
def test_mde_gives_80_percent_power(n: int, effect: float) -> None:
    sd = 0.05
    d = stats.mde(sd, n, n)
    # the textbook effect sizes (G*Power, two-tailed t, alpha 0.05, power 0.8, n per group)
    assert d / sd == pytest.approx(effect, abs=1e-4)
    # scipy's noncentral t power at the MDE, written out independently
    df, ncp = 2 * n - 2, d / (sd * math.sqrt(2 / n))
    crit = scipy_stats.t.ppf(0.975, df)
    power = scipy_stats.nct.sf(crit, df, ncp) + scipy_stats.nct.cdf(-crit, df, ncp)
    assert power == pytest.approx(0.80, abs=1e-9)
    # large n: the normal approximation (z_0.975 + z_0.8) sd sqrt(2/n)
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert stats.mde(sd, 2000, 2000) == pytest.approx(z * sd * math.sqrt(2 / 2000), rel=1e-3)


def test_mde_unequal_seeds_and_pooled_sd() -> None:
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    sd = stats.pooled_sd(a, b)
    assert sd == pytest.approx(math.sqrt((2 * 1.0 + 1 * 2.0) / 3))
    assert stats.power(stats.mde(sd, 3, 2), sd, 3, 2) == pytest.approx(0.8, abs=1e-9)
    assert math.isnan(stats.mde(sd, 1, 1)) and math.isnan(stats.mde(0.0, 3, 3))


def _mean_stat(y: np.ndarray) -> stats.SeedStat:
    """One model seed whose value is the (weighted) mean of per-sample values ``y``."""
    return lambda w: (w @ y / w.sum(1))[:, None]


def _sample_bootstrap_width(y: np.ndarray, draws: int, seed: int) -> float:
    """The plain utterance bootstrap, written independently (indices, not weights)."""
    rng = np.random.default_rng(seed)
    boot = [y[rng.integers(0, y.size, y.size)].mean() for _ in range(draws)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(hi - lo)


def test_cluster_bootstrap_is_wider_when_the_signal_sits_in_few_videos() -> None:
    rng = np.random.default_rng(0)
    videos = np.repeat(np.arange(20), 30)  # 20 videos of 30 clips
    effect = np.zeros(20)
    effect[:3] = 1.0  # the difference lives in 3 videos
    y = effect[videos] + rng.normal(0, 0.1, videos.size)
    zero = lambda w: np.zeros((w.shape[0], 1))  # noqa: E731
    by_video = stats.two_level_bootstrap(
        _mean_stat(y), zero, [f"v{v}" for v in videos], draws=2000, rng=np.random.default_rng(1)
    )
    by_clip = stats.two_level_bootstrap(
        _mean_stat(y), zero, np.arange(y.size), draws=2000, rng=np.random.default_rng(1)
    )
    width_video = by_video.ci_high - by_video.ci_low
    width_clip = by_clip.ci_high - by_clip.ci_low
    assert by_video.difference == pytest.approx(y.mean()) == by_clip.difference
    assert width_video > 3 * width_clip
    # singleton clusters are the sample bootstrap: about the same width
    assert width_clip == pytest.approx(_sample_bootstrap_width(y, 2000, 7), rel=0.1)


def test_cluster_bootstrap_equals_sample_bootstrap_without_cluster_structure() -> None:
    y = np.random.default_rng(3).normal(0, 1, 400)
    zero = lambda w: np.zeros((w.shape[0], 1))  # noqa: E731
    est = stats.two_level_bootstrap(
        _mean_stat(y), zero, [f"u{i}" for i in range(400)], draws=2000, rng=np.random.default_rng(0)
    )
    assert est.ci_high - est.ci_low == pytest.approx(_sample_bootstrap_width(y, 2000, 5), rel=0.1)


def test_seed_level_is_unpaired_and_corruption_seeds_are_not_replicates() -> None:
    # Both arms have model-seed values 1, 2, 3: a paired bootstrap would see zero
    # difference on every draw; unpaired, the arms resample their seeds independently.
    seeds = np.array([1.0, 2.0, 3.0])
    fixed = lambda w: np.tile(seeds, (w.shape[0], 1))  # noqa: E731
    est = stats.two_level_bootstrap(fixed, fixed, ["a"], draws=500, rng=np.random.default_rng(0))
    assert est.difference == 0 and est.ci_low < -0.3 and est.ci_high > 0.3


def test_a_fixed_seed_gives_identical_output() -> None:
    y = np.random.default_rng(0).normal(size=50)
    ids = [f"v{i % 5}_{i}" for i in range(50)]

    def run() -> stats.Estimate:
        return stats.two_level_bootstrap(
            _mean_stat(y), _mean_stat(-y), ids, draws=300, rng=np.random.default_rng(42)
        )

    assert run() == run()
    other = stats.two_level_bootstrap(
        _mean_stat(y), _mean_stat(-y), ids, draws=300, rng=np.random.default_rng(43)
    )
    assert other != run()


def test_bootstrap_p_value() -> None:
    far = stats.bootstrap_estimate(np.concatenate([[1.0], np.full(999, 1.0)]))
    assert far.p == pytest.approx(2 / 1000)  # every draw above 0: the smallest p it can give
    null = stats.bootstrap_estimate(np.concatenate([[0.0], np.linspace(-1, 1, 999)]))
    assert null.p == pytest.approx(1.0)
