"""Temporal patterns of the spectrum (data/README.md): burst missingness and AR(1) noise.

Statistical bounds use Z = 4.5 standard errors (a correct engine fails one with p ~ 7e-6).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from qamoe_core.base.errors import ConfigError, InputError
from qamoe_core.config import TrainConfig
from qamoe_core.spectrum.engine import (
    CorruptionSpec,
    PatternMix,
    Patterns,
    apply_spec,
    corrupt_batch,
    draw_keyed,
    draw_torch,
    parse_pattern,
    pattern_label,
)
from tests.spectrum.test_engine import STD, bits, make_batch, valid_mask

Z = 4.5
# sha256 of apply_spec's output on make_batch(text_ids=True) for the three axes at levels 0.3 and
# 0.8, seed 7, computed with the code as it was before patterns existed (commit 80c1979).
GOLDEN = "321e652523a2affb84401f3cff9ecdd161496d4548b8eafd0c7f6f2108e9366c"


def long_batch(b: int, t: int, d: int = 4) -> dict[str, np.ndarray]:
    """One modality with long rows (some shorter), for the statistics of runs."""
    lens = np.full(b, t, dtype=np.int64)
    lens[::3] = t // 2
    x = np.ones((b, t, d), dtype=np.float32)
    x *= np.arange(t)[None, :, None] < lens[:, None, None]
    return {"audio": x, "audio_len": lens, "index": np.arange(b, dtype=np.int64)}


def digest(spec_kwargs: dict[str, object]) -> str:
    h = hashlib.sha256()
    for axis in ("missing", "noise", "mixed"):
        for lv in (0.3, 0.8):
            spec = CorruptionSpec(level=lv, axis=axis, seed=7, **spec_kwargs)  # type: ignore[arg-type]
            out = apply_spec(make_batch(text_ids=True), spec, split="test", train_std=STD)
            for k in sorted(out):
                h.update(k.encode())
                h.update(np.ascontiguousarray(out[k]).tobytes())
    return h.hexdigest()


def test_default_patterns_give_the_bytes_of_earlier_versions() -> None:
    assert digest({}) == GOLDEN
    assert digest({"missing_pattern": "random", "noise_pattern": "white"}) == GOLDEN


def test_burst_of_mean_one_is_random_and_rho_zero_is_white() -> None:
    batch = make_batch(text_ids=True)
    for axis, extra in (
        ("missing", {"missing_pattern": "burst", "burst_mean": 1.0}),
        ("noise", {"noise_pattern": "correlated", "noise_rho": 0.0}),
    ):
        plain = apply_spec(batch, CorruptionSpec(level=0.6, axis=axis), split="t", train_std=STD)
        spec = CorruptionSpec(level=0.6, axis=axis, **extra)  # type: ignore[arg-type]
        out = apply_spec(batch, spec, split="t", train_std=STD)
        for k in plain:
            assert np.array_equal(np.asarray(out[k]), np.asarray(plain[k])), (axis, k)
    # and a real burst does change which steps go (the check above can fail)
    burst = CorruptionSpec(level=0.6, axis="missing", missing_pattern="burst", burst_mean=4.0)
    out = apply_spec(batch, burst, split="t")
    plain = apply_spec(batch, CorruptionSpec(level=0.6, axis="missing"), split="t")
    assert not np.array_equal(out["audio_keep"], plain["audio_keep"])


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("mean", [3.0, 10.0])
def test_burst_drops_the_level_share(level: float, mean: float) -> None:
    batch = long_batch(300, 200)
    spec = CorruptionSpec(level=level, axis="missing", missing_pattern="burst", burst_mean=mean)
    out = apply_spec(batch, spec, split="test")
    valid = valid_mask(batch, "audio")
    n = int(valid.sum())
    share = 1 - out["audio_keep"][valid].mean()
    # Bursts are dropped independently with probability level; for geometric lengths of mean L
    # the share's variance is level(1-level)·E[len²]/E[len]/n = level(1-level)(2L-1)/n.
    assert abs(share - level) <= Z * math.sqrt(level * (1 - level) * (2 * mean - 1) / n)


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (stops - starts).tolist(), strict=True))


@pytest.mark.parametrize("mean", [2.0, 6.0])
def test_bursts_have_the_stated_mean_length(mean: float) -> None:
    batch = long_batch(200, 400)
    draws = draw_keyed(
        batch, ["audio"], seed=3, split="test", axis="missing", patterns=Patterns("burst", mean)
    )
    u, lens = draws["audio"].u, batch["audio_len"]
    lengths = []
    for i in range(u.shape[0]):
        row = u[i, : lens[i]]
        opens = np.concatenate([[True], row[1:] != row[:-1]])
        starts = np.flatnonzero(opens)
        lengths += np.diff(starts).tolist()  # the last burst is cut by the row's end: left out
    sd = math.sqrt(mean * (mean - 1))  # geometric with p = 1/mean
    assert abs(np.mean(lengths) - mean) <= Z * sd / math.sqrt(len(lengths)) + 1e-9
    # Observed gaps: neighbouring dropped bursts merge, so interior gaps average L / (1 - level).
    level = 0.3
    spec = CorruptionSpec(level=level, axis="missing", missing_pattern="burst", burst_mean=mean)
    keep = apply_spec(batch, spec, split="test")["audio_keep"]
    gaps = [
        n
        for i in range(keep.shape[0])
        for s, n in runs(~keep[i, : lens[i]])
        if s > 0 and s + n < lens[i]
    ]
    assert abs(np.mean(gaps) / (mean / (1 - level)) - 1) < 0.1


def lag1(z: np.ndarray, lens: np.ndarray) -> tuple[float, float, int]:
    """Pooled (std, lag-1 correlation, number of pairs) over valid steps of (B, T, D) values."""
    valid = np.arange(z.shape[1])[None, :] < lens[:, None]
    pairs = valid[:, 1:] & valid[:, :-1]
    a, b = z[:, :-1][pairs], z[:, 1:][pairs]
    return float(z[valid].std()), float((a * b).mean() / (a.std() * b.std())), int(a.size)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_correlated_noise_has_the_stated_lag1_correlation_and_std(rho: float) -> None:
    batch = long_batch(100, 120, d=8)
    std = {"audio": np.array([0.5, 1, 2, 3, 0.1, 1, 1, 4], dtype=np.float32)}
    spec = CorruptionSpec(
        level=0.5, axis="noise", noise_pattern="correlated", noise_rho=rho, noise_scale=2.0
    )
    out = apply_spec(batch, spec, split="test", train_std=std)
    z = (out["audio"] - batch["audio"]) / (spec.noise_std * std["audio"])  # back to N(0, 1)
    sd, r, n = lag1(z, batch["audio_len"])
    # AR(1): Var(sample lag-1 corr) ~ (1 - rho²)/n; Var(sample variance) ~ 2(1+rho²)/(1-rho²)/n.
    assert abs(r - rho) <= Z * math.sqrt((1 - rho**2) / n)
    assert abs(sd**2 - 1) <= Z * math.sqrt(2 * (1 + rho**2) / (1 - rho**2) / n)
    white = apply_spec(
        batch, CorruptionSpec(level=0.5, axis="noise", noise_scale=2.0), split="test", train_std=std
    )
    zw = (white["audio"] - batch["audio"]) / (spec.noise_std * std["audio"])
    assert abs(lag1(zw, batch["audio_len"])[1]) <= Z / math.sqrt(n)
    pad = ~valid_mask(batch, "audio")
    assert not out["audio"][pad].any()  # padding untouched


SPECS = [
    {"missing_pattern": "burst", "noise_pattern": "correlated", "burst_mean": 3.0},
    {"missing_pattern": "burst"},
    {"noise_pattern": "correlated", "noise_rho": 0.7},
]


@pytest.mark.parametrize("extra", SPECS)
def test_identity_at_zero_gone_at_one_deterministic_chunk_free_numpy_equals_torch(
    extra: dict[str, object],
) -> None:
    batch = make_batch(text_ids=True)
    zero = apply_spec(batch, CorruptionSpec(level=0.0, **extra), split="test", train_std=STD)  # type: ignore[arg-type]
    for m in ("text", "audio", "vision"):
        assert np.array_equal(bits(zero[m]), bits(batch[m]))
    one = apply_spec(batch, CorruptionSpec(level=1.0, **extra), split="test", train_std=STD)  # type: ignore[arg-type]
    if extra.get("missing_pattern") == "burst":
        assert not one["audio_keep"].any()
    spec = CorruptionSpec(level=0.4, seed=11, **extra)  # type: ignore[arg-type]
    full = apply_spec(batch, spec, split="test", train_std=STD)
    again = apply_spec(batch, spec, split="test", train_std=STD)
    halves = [
        apply_spec({k: v[s] for k, v in batch.items()}, spec, split="test", train_std=STD)
        for s in (slice(0, 23), slice(23, None))
    ]
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    tout = apply_spec(tb, spec, split="test", train_std=STD)
    for k in full:
        assert np.array_equal(full[k], again[k])
        assert np.array_equal(full[k], np.concatenate([h[k] for h in halves]))
        assert np.array_equal(
            bits(full[k]) if full[k].dtype == np.float32 else full[k],
            bits(tout[k].numpy()) if full[k].dtype == np.float32 else tout[k].numpy(),
        )
    other = apply_spec(
        batch,
        CorruptionSpec(level=0.4, seed=12, **extra),
        split="test",  # type: ignore[arg-type]
        train_std=STD,
    )
    assert not np.array_equal(full["audio"], other["audio"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"missing_pattern": "gusty"}, "'missing_pattern' parameter must be one of random, burst"),
        ({"noise_pattern": "pink"}, "'noise_pattern' parameter must be one of white, correlated"),
        ({"burst_mean": 0.5}, r"'burst_mean' parameter must be a float in \[1, 1e\+06\]. Got 0.5"),
        ({"noise_rho": 1.0}, r"'noise_rho' parameter must be a float in \[0, 1\). Got 1.0"),
        ({"noise_rho": -0.1}, r"'noise_rho' parameter must be a float in \[0, 1\)"),
        ({"axis": "noise", "missing_pattern": "burst"}, "applies to the missing and mixed axes"),
        ({"axis": "missing", "noise_pattern": "correlated"}, "applies to the noise and mixed"),
    ],
)
def test_bad_patterns_are_one_line_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match) as err:
        CorruptionSpec(level=0.3, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_parse_pattern_and_labels() -> None:
    assert parse_pattern("burst") == {"missing_pattern": "burst"}
    assert parse_pattern("correlated,burst") == {
        "noise_pattern": "correlated",
        "missing_pattern": "burst",
    }
    assert parse_pattern(None) == {}
    for bad in ("gusty", "burst,random"):
        with pytest.raises(InputError, match="'pattern' parameter"):
            parse_pattern(bad)
    spec = CorruptionSpec(level=0.2, **parse_pattern("burst,correlated"))  # type: ignore[arg-type]
    assert spec.pattern == "burst+correlated"
    assert CorruptionSpec(level=0.2, axis="missing").pattern == "random"
    assert pattern_label("drop") == "" and pattern_label("noise") == "white"


def test_training_mix_defaults_draw_what_earlier_versions_drew() -> None:
    tb = {k: torch.from_numpy(v) for k, v in make_batch().items()}
    plain = draw_torch(tb, ["audio", "vision"], generator=torch.Generator().manual_seed(5))
    mixed = draw_torch(
        tb,
        ["audio", "vision"],
        generator=torch.Generator().manual_seed(5),
        patterns=PatternMix.from_config(TrainConfig()),
    )
    for m in plain:
        assert torch.equal(plain[m].u, mixed[m].u) and torch.equal(plain[m].z, mixed[m].z)


def test_training_mix_bursts_and_colours() -> None:
    batch = {k: torch.from_numpy(v) for k, v in long_batch(200, 150, d=6).items()}
    cfg = TrainConfig(burst_fraction=1.0, burst_mean=5.0, correlated_fraction=1.0, noise_rho=0.8)
    g = torch.Generator().manual_seed(0)
    out = corrupt_batch(
        batch,
        {"audio": 0.4},
        train_std={"audio": np.ones(6, np.float32)},
        generator=g,
        patterns=PatternMix.from_config(cfg),
    )
    keep = out["audio_keep"].numpy()
    valid = valid_mask({k: v.numpy() for k, v in batch.items()}, "audio")
    n = int(valid.sum())
    share = 1 - keep[valid].mean()
    assert abs(share - 0.4) <= Z * math.sqrt(0.4 * 0.6 * 9 / n)
    gaps = [k for i in range(keep.shape[0]) for _, k in runs(~keep[i][valid[i]])]
    assert np.mean(gaps) > 3  # bursts, not single steps (random gives ~1 / 0.6)
    d = draw_torch(
        batch,
        ["audio"],
        generator=torch.Generator().manual_seed(1),
        patterns=PatternMix(correlated_fraction=1.0, noise_rho=0.8),
    )["audio"]
    _, r, pairs = lag1(d.z.numpy(), batch["audio_len"].numpy())
    assert abs(r - 0.8) <= Z * math.sqrt((1 - 0.64) / pairs)
    with pytest.raises(ConfigError, match="'noise_rho' parameter must be a float in"):
        TrainConfig(noise_rho=1.0)


def test_pattern_parameters_need_their_pattern() -> None:
    assert parse_pattern("burst", burst_mean=3.0) == {"missing_pattern": "burst", "burst_mean": 3.0}
    with pytest.raises(InputError, match="'burst_mean' parameter applies to the burst pattern"):
        parse_pattern("correlated", burst_mean=3.0)
    with pytest.raises(InputError, match="'noise_rho' parameter applies to the correlated"):
        parse_pattern(None, noise_rho=0.5)
