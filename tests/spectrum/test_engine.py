"""The corruption engine: statistics of each axis, determinism, and numpy == torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qamoe_core import MODALITIES
from qamoe_core.base.errors import ConfigError, DataFormatError, InputError
from qamoe_core.spectrum.engine import (
    CLS_ID,
    SEP_ID,
    UNK_ID,
    CorruptionSpec,
    apply_draws,
    apply_spec,
    corrupt_batch,
    draw_keyed,
    move_draws,
    sample_levels,
)

Z = 4.5  # two-sided normal quantile: a correct engine fails a bound with p ~ 7e-6
SHAPES = {"text": (12, 16), "audio": (20, 3), "vision": (15, 5)}
STD = {  # deliberately different scales per dimension, one constant dimension
    "text": np.linspace(0.1, 3.0, 16, dtype=np.float32),
    "audio": np.array([0.5, 2.0, 0.0], dtype=np.float32),
    "vision": np.array([1.0, 0.2, 5.0, 1.5, 0.7], dtype=np.float32),
}


def make_batch(b: int = 64, seed: int = 0, text_ids: bool = False) -> dict[str, np.ndarray]:
    """A batch-contract dict with zero (including -0.0) padding and varied lengths."""
    rng = np.random.default_rng(seed)
    batch: dict[str, np.ndarray] = {
        "label": rng.uniform(-3, 3, b).astype(np.float32),
        "index": np.arange(b, dtype=np.int64) + 1000,
    }
    for m, (t, d) in SHAPES.items():
        lens = rng.integers(1, t + 1, b)
        lens[0] = t  # one full-length row
        x = rng.standard_normal((b, t, d), dtype=np.float32) * STD[m] + 0.3
        x *= np.arange(t)[None, :, None] < lens[:, None, None]  # negative * 0 gives -0.0
        batch[m] = x
        batch[f"{m}_len"] = lens.astype(np.int64)
    if text_ids:
        t = SHAPES["text"][0]
        lens = batch["text_len"]
        ids = rng.integers(1000, 2000, (b, t)).astype(np.int64)
        ids[:, 0] = CLS_ID
        ids[np.arange(b), lens - 1] = SEP_ID
        ids[np.arange(t)[None, :] >= lens[:, None]] = 0
        batch["text_ids"] = ids
    return batch


def valid_mask(batch: dict[str, np.ndarray], m: str) -> np.ndarray:
    return np.arange(batch[m].shape[1])[None, :] < batch[f"{m}_len"][:, None]  # (B, T)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


def binomial_ok(k: int, n: int, p: float) -> bool:
    return abs(k / n - p) <= Z * math.sqrt(p * (1 - p) / n) + 1e-12


# -- identity and extremes ------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["missing", "noise", "mixed"])
def test_level_zero_is_identity_bit_for_bit(axis: str) -> None:
    batch = make_batch(text_ids=True)
    out = apply_spec(batch, CorruptionSpec(level=0.0, axis=axis), split="test", train_std=STD)
    for m in MODALITIES:
        assert np.array_equal(bits(out[m]), bits(batch[m]))  # -0.0 padding survives too
        assert np.array_equal(out[f"{m}_keep"], valid_mask(batch, m))
    assert np.array_equal(out["text_ids"], batch["text_ids"])


def test_per_sample_level_zero_rows_are_untouched() -> None:
    batch = make_batch()
    levels = {m: np.where(np.arange(64) % 2 == 0, 0.0, 0.7).astype(np.float32) for m in MODALITIES}
    draws = draw_keyed(batch, MODALITIES, seed=3, split="train")
    out = apply_draws(batch, draws, levels, train_std=STD)
    for m in MODALITIES:
        assert np.array_equal(bits(out[m][::2]), bits(batch[m][::2]))
        assert not np.array_equal(out[m][1::2], batch[m][1::2])


def test_level_one_missing_leaves_nothing() -> None:
    batch = make_batch()
    out = apply_spec(batch, CorruptionSpec(level=1.0, axis="missing"), split="test")
    for m in MODALITIES:
        assert not out[f"{m}_keep"].any()
        assert (out[m] == 0).all()
        assert np.array_equal(out[f"{m}_len"], batch[f"{m}_len"])  # lengths stay


def test_level_one_mixed_also_leaves_nothing() -> None:
    batch = make_batch()
    out = apply_spec(batch, CorruptionSpec(level=1.0), split="valid", train_std=STD)
    for m in MODALITIES:
        assert (out[m] == 0).all() and not out[f"{m}_keep"].any()


# -- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dropped_fraction_matches_level(level: float, seed: int) -> None:
    batch = make_batch(b=2000, seed=seed)
    spec = CorruptionSpec(level=level, axis="missing", seed=seed)
    out = apply_spec(batch, spec, split="train")
    for m in MODALITIES:
        valid = valid_mask(batch, m)
        dropped = valid & ~out[f"{m}_keep"]
        assert binomial_ok(int(dropped.sum()), int(valid.sum()), level), m
        assert (out[m][dropped] == 0).all()
        kept = out[f"{m}_keep"]
        assert np.array_equal(out[m][kept], batch[m][kept])  # missing axis: kept steps exact


@pytest.mark.parametrize(("level", "noise_scale"), [(0.2, 1.0), (0.5, 1.0), (0.5, 2.0), (1.0, 0.5)])
def test_noise_std_is_level_times_train_std_per_dimension(level: float, noise_scale: float) -> None:
    batch = make_batch(b=1500, seed=5)
    spec = CorruptionSpec(level=level, axis="noise", noise_scale=noise_scale, seed=9)
    out = apply_spec(batch, spec, split="test", train_std=STD)
    lam = level * noise_scale
    for m in MODALITIES:
        valid = valid_mask(batch, m)
        assert np.array_equal(out[f"{m}_keep"], valid)  # the noise axis drops nothing
        noise = (out[m] - batch[m])[valid].astype(np.float64)  # (steps, D)
        n = noise.shape[0]
        for d, s in enumerate(STD[m]):
            if s == 0:
                assert (noise[:, d] == 0).all()  # a constant feature gets no noise
                continue
            expected = lam * float(s)
            got = noise[:, d].std()
            # std of a normal sample: relative s.e. 1/sqrt(2n); float32 rounding adds ~1e-6
            assert abs(got / expected - 1) <= Z / math.sqrt(2 * n) + 1e-3, (m, d, got, expected)
            assert abs(noise[:, d].mean()) <= Z * expected / math.sqrt(n)


def test_mixed_adds_noise_only_to_kept_steps_and_drops_at_level() -> None:
    batch = make_batch(b=300, seed=2)
    out = apply_spec(batch, CorruptionSpec(level=0.4, seed=4), split="test", train_std=STD)
    for m in MODALITIES:
        valid, keep = valid_mask(batch, m), out[f"{m}_keep"]
        assert binomial_ok(int((valid & ~keep).sum()), int(valid.sum()), 0.4)
        assert (out[m][valid & ~keep] == 0).all()
        noise = (out[m] - batch[m])[keep]  # (kept steps, D)
        rms = np.sqrt((noise.astype(np.float64) ** 2).mean(0))
        ok = STD[m] > 0
        rel = rms[ok] / (0.4 * STD[m][ok])
        assert np.all(np.abs(rel - 1) < Z / math.sqrt(2 * noise.shape[0]) + 1e-3)


def test_padding_stays_zero_bit_for_bit() -> None:
    batch = make_batch(text_ids=True)
    out = apply_spec(batch, CorruptionSpec(level=0.8), split="test", train_std=STD)
    for m in MODALITIES:
        pad = ~valid_mask(batch, m)
        assert np.array_equal(bits(out[m][pad]), bits(batch[m][pad]))
        assert not out[f"{m}_keep"][pad].any()
    pad = ~valid_mask(batch, "text")
    assert (out["text_ids"][pad] == 0).all()


def test_unchosen_modalities_are_untouched() -> None:
    batch = make_batch(text_ids=True)
    spec = CorruptionSpec(level=0.9, modalities=("audio", "vision"), seed=1)
    out = apply_spec(batch, spec, split="test", train_std=STD)
    assert np.array_equal(bits(out["text"]), bits(batch["text"]))
    assert np.array_equal(out["text_ids"], batch["text_ids"])
    assert np.array_equal(out["text_keep"], valid_mask(batch, "text"))
    for m in ("audio", "vision"):
        assert not np.array_equal(out[m], batch[m])
    assert out["label"] is batch["label"]


def test_text_ids_become_unk_but_cls_and_sep_stay() -> None:
    batch = make_batch(b=200, text_ids=True)
    out = apply_spec(batch, CorruptionSpec(level=0.6, axis="missing"), split="test")
    ids, new, valid = batch["text_ids"], out["text_ids"], valid_mask(batch, "text")
    dropped = valid & ~out["text_keep"]
    special = (ids == CLS_ID) | (ids == SEP_ID)
    assert dropped.sum() > 100
    assert (new[dropped & ~special] == UNK_ID).all()
    assert np.array_equal(new[special], ids[special])  # structure tokens kept even if dropped
    assert np.array_equal(new[out["text_keep"]], ids[out["text_keep"]])
    assert (dropped & special).any()  # their features were dropped all the same


def test_text_ids_misaligned_is_an_error() -> None:
    batch = make_batch(text_ids=True)
    batch["text_ids"] = batch["text_ids"][:, :5]
    with pytest.raises(DataFormatError, match="text_ids"):
        apply_spec(batch, CorruptionSpec(level=0.5, axis="missing"), split="test")


def test_whole_modality_drop() -> None:
    batch = make_batch(text_ids=True)
    spec = CorruptionSpec(level=0.0, drop=("text",))
    out = apply_spec(batch, spec, split="test", train_std=STD)
    assert (out["text"] == 0).all() and not out["text_keep"].any()
    assert np.array_equal(out["text_len"], batch["text_len"])
    ids = batch["text_ids"]
    gone = valid_mask(batch, "text") & (ids != CLS_ID) & (ids != SEP_ID)
    assert (out["text_ids"][gone] == UNK_ID).all()
    for m in ("audio", "vision"):
        assert np.array_equal(bits(out[m]), bits(batch[m]))


def test_default_modalities_are_those_the_batch_holds() -> None:
    batch = make_batch()
    for key in ("vision", "vision_len"):
        del batch[key]
    out = apply_spec(batch, CorruptionSpec(level=0.5), split="test", train_std=STD)
    assert "vision_keep" not in out and not np.array_equal(out["audio"], batch["audio"])
    with pytest.raises(InputError, match="names 'vision', which the data does not hold"):
        apply_spec(batch, CorruptionSpec(level=0.5, modalities="vision"), split="test")
    with pytest.raises(InputError, match="cannot remove every modality of the data"):
        apply_spec(batch, CorruptionSpec(level=0.5, drop="text,audio"), split="test")


# -- determinism -----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs() -> None:
    batch = make_batch()
    run = lambda seed, split="test": apply_spec(  # noqa: E731
        batch, CorruptionSpec(level=0.5, seed=seed), split=split, train_std=STD
    )
    a, b, c, d = run(7), run(7), run(8), run(7, "valid")
    for m in MODALITIES:
        assert np.array_equal(bits(a[m]), bits(b[m]))
        assert np.array_equal(a[f"{m}_keep"], b[f"{m}_keep"])
        assert not np.array_equal(a[f"{m}_keep"], c[f"{m}_keep"])
        assert not np.array_equal(a[m], c[m])
        assert not np.array_equal(a[m], d[m])  # splits have their own streams


def test_rows_do_not_depend_on_batching_or_order() -> None:
    batch = make_batch(b=50)
    spec = CorruptionSpec(level=0.5, seed=11)
    whole = apply_spec(batch, spec, split="train", train_std=STD)
    perm = np.random.default_rng(0).permutation(50)
    for sizes in ([7] * 7 + [1], [50], [13, 37]):
        start = 0
        for size in sizes:
            rows = perm[start : start + size]
            part = apply_spec(
                {k: v[rows] for k, v in batch.items()}, spec, split="train", train_std=STD
            )
            for m in MODALITIES:
                assert np.array_equal(bits(part[m]), bits(whole[m][rows]))
                assert np.array_equal(part[f"{m}_keep"], whole[f"{m}_keep"][rows])
            start += size


def test_chain_position_changes_the_draws() -> None:
    batch = make_batch()
    spec = CorruptionSpec(level=0.5, axis="missing")
    a = apply_spec(batch, spec, split="test", chain=0)
    b = apply_spec(batch, spec, split="test", chain=1)
    assert not np.array_equal(a["audio_keep"], b["audio_keep"])


def test_incoming_keep_mask_is_respected() -> None:
    batch = make_batch()
    first = apply_spec(batch, CorruptionSpec(level=0.5, axis="missing"), split="test")
    second = apply_spec(first, CorruptionSpec(level=0.3), split="test", train_std=STD, chain=1)
    for m in MODALITIES:
        assert not (second[f"{m}_keep"] & ~first[f"{m}_keep"]).any()  # dropped stays dropped
        assert (second[m][~second[f"{m}_keep"]] == 0).all()


def test_numpy_and_torch_batches_give_identical_bits() -> None:
    batch = make_batch(text_ids=True)
    spec = CorruptionSpec(level=0.45, seed=5)
    out_np = apply_spec(batch, spec, split="test", train_std=STD)
    tbatch = {k: torch.from_numpy(v) for k, v in batch.items()}
    tstd = {m: torch.from_numpy(s) for m, s in STD.items()}
    out_t = apply_spec(tbatch, spec, split="test", train_std=tstd)
    assert all(isinstance(v, torch.Tensor) for k, v in out_t.items())
    for key, value in out_np.items():
        got = out_t[key].numpy()
        assert got.dtype == value.dtype, key
        assert np.array_equal(got.view(np.uint8), value.view(np.uint8)), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_same_bits_as_cpu() -> None:
    batch = make_batch(text_ids=True)
    spec = CorruptionSpec(level=0.45, seed=5)
    out_np = apply_spec(batch, spec, split="test", train_std=STD)
    tbatch = {k: torch.from_numpy(v).cuda() for k, v in batch.items()}
    out_t = apply_spec(tbatch, spec, split="test", train_std=STD)
    for key, value in out_np.items():
        assert out_t[key].device.type == "cuda"
        assert np.array_equal(out_t[key].cpu().numpy().view(np.uint8), value.view(np.uint8)), key


def test_one_draw_serves_a_whole_sweep_monotonically() -> None:
    batch = make_batch()
    draws = draw_keyed(batch, MODALITIES, seed=0, split="test")
    prev = None
    for level in (0.0, 0.2, 0.5, 0.8, 1.0):
        out = apply_draws(batch, draws, dict.fromkeys(MODALITIES, level), train_std=STD)
        assert np.array_equal(
            out["audio"],
            apply_spec(batch, CorruptionSpec(level=level), split="test", train_std=STD)["audio"],
        )
        moved = apply_draws(
            {k: torch.from_numpy(v) for k, v in batch.items()},
            move_draws(draws, "cpu"),
            dict.fromkeys(MODALITIES, level),
            train_std=STD,
        )
        assert np.array_equal(moved["text"].numpy(), out["text"])
        if prev is not None:
            assert not (out["audio_keep"] & ~prev).any()  # drops only grow with the level
        prev = out["audio_keep"]


# -- training-time sampling ------------------------------------------------------------------


def test_sample_levels_clean_fraction_and_uniformity() -> None:
    g = torch.Generator().manual_seed(0)
    levels = sample_levels(20000, MODALITIES, clean_fraction=0.5, generator=g)
    clean = torch.stack([levels[m] == 0 for m in MODALITIES]).all(0)
    assert binomial_ok(int(clean.sum()), 20000, 0.5)
    for m in MODALITIES:
        lv = levels[m][~clean].numpy()
        assert lv.dtype == np.float32 and lv.min() >= 0 and lv.max() < 1
        # U(0,1): mean 1/2 (sd 1/sqrt(12 n)), each quarter holds 1/4
        assert abs(lv.mean() - 0.5) <= Z / math.sqrt(12 * len(lv))
        counts = np.histogram(lv, bins=4, range=(0, 1))[0]
        assert all(binomial_ok(int(c), len(lv), 0.25) for c in counts)
    # independent per modality
    r = np.corrcoef(levels["text"][~clean].numpy(), levels["audio"][~clean].numpy())[0, 1]
    assert abs(r) < Z / math.sqrt(int((~clean).sum()))
    again = sample_levels(20000, MODALITIES, generator=g)  # next epoch: new draws
    assert not torch.equal(again["text"], levels["text"])
    assert torch.equal(
        sample_levels(8, generator=torch.Generator().manual_seed(3))["vision"],
        sample_levels(8, generator=torch.Generator().manual_seed(3))["vision"],
    )


def test_sample_levels_edges() -> None:
    assert all((v == 0).all() for v in sample_levels(16, clean_fraction=1.0).values())
    assert all((v > 0).all() for v in sample_levels(16, clean_fraction=0.0).values())
    with pytest.raises(InputError, match="clean_fraction"):
        sample_levels(4, clean_fraction=1.5)
    with pytest.raises(InputError, match="'low'"):
        sample_levels(4, low=0.7, high=0.2)


def test_sample_levels_range_and_specialist() -> None:
    g = torch.Generator().manual_seed(5)
    ranged = sample_levels(5000, ("audio",), clean_fraction=0.0, low=0.2, high=0.4, generator=g)
    a = ranged["audio"]
    assert float(a.min()) >= 0.2 and float(a.max()) <= 0.4
    assert abs(float(a.mean()) - 0.3) < 0.01
    fixed = sample_levels(64, clean_fraction=0.0, low=0.6, high=0.6)
    assert all(torch.allclose(v, torch.full((64,), 0.6)) for v in fixed.values())
    # The default range keeps the historical U(0, 1) draws bit for bit.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(sample_levels(32, generator=g1)["text"],
                       sample_levels(32, low=0.0, high=1.0, generator=g2)["text"])  # fmt: skip


def test_corrupt_batch_with_per_sample_levels() -> None:
    batch = {k: torch.from_numpy(v) for k, v in make_batch(b=300, seed=1).items()}
    b = 300
    lv = torch.zeros(b)
    lv[100:200] = 0.5
    lv[200:] = 1.0
    g = torch.Generator().manual_seed(0)
    out = corrupt_batch(
        batch, dict.fromkeys(MODALITIES, lv), train_std=STD, axis="mixed", generator=g
    )
    for m in MODALITIES:
        x, y, keep = batch[m].numpy(), out[m].numpy(), out[f"{m}_keep"].numpy()
        valid = valid_mask({m: x, f"{m}_len": batch[f"{m}_len"].numpy()}, m)
        assert np.array_equal(bits(y[:100]), bits(x[:100])) and np.array_equal(
            keep[:100], valid[:100]
        )
        mid = valid[100:200]
        assert binomial_ok(int((mid & ~keep[100:200]).sum()), int(mid.sum()), 0.5)
        assert (y[200:] == 0).all() and not keep[200:].any()
    # fresh draws each call (training must not repeat the same corruption every epoch)
    out2 = corrupt_batch(batch, dict.fromkeys(MODALITIES, lv), train_std=STD, generator=g)
    assert not torch.equal(out2["audio_keep"], out["audio_keep"])


def test_corrupt_batch_noise_needs_train_std() -> None:
    batch = {k: torch.from_numpy(v) for k, v in make_batch().items()}
    with pytest.raises(InputError, match="train std"):
        corrupt_batch(batch, {"audio": 0.5}, axis="noise")
    out = corrupt_batch(batch, {"audio": 0.5}, axis="missing")  # missing needs no std
    assert torch.equal(out["text"], batch["text"])


# -- the spec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": 1.4}, r"'level' parameter must be a float in \[0, 1\]. Got 1.4"),
        ({"level": "abc"}, r"'level' parameter must be a float in \[0, 1\]. Got 'abc'"),
        ({"level": float("nan")}, "'level' parameter"),
        ({"axis": "blur"}, "'axis' parameter must be one of missing, noise, mixed. Got 'blur'"),
        ({"modalities": ("smell",)}, "'modalities' parameter .* Got 'smell'"),
        ({"modalities": ()}, "at least one modality"),
        ({"drop": "text,audio,vision"}, "cannot remove every modality"),
        ({"drop": ("touch",)}, "'drop' parameter"),
        ({"noise_scale": 0}, r"'noise_scale' parameter must be a float in \(0, 1e\+06\]"),
        ({"noise_scale": 1e300}, "'noise_scale' parameter .* Got 1e\\+300"),
        ({"noise_scale": float("nan")}, "'noise_scale' parameter"),
        ({"seed": -1}, "'seed' parameter"),
        ({"seed": 1.5}, "'seed' parameter must be an integer"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        CorruptionSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_normalises_and_round_trips() -> None:
    spec = CorruptionSpec(level="0.4", modalities="vision,audio", drop=["text"], seed=3)  # type: ignore[arg-type]
    assert spec.level == 0.4 and spec.modalities == ("audio", "vision") and spec.drop == ("text",)
    assert spec.missing_rate == 0.4 and spec.noise_std == 0.4
    assert CorruptionSpec(level=0.5, axis="missing").noise_std == 0.0
    assert CorruptionSpec(level=0.5, axis="noise", noise_scale=2).missing_rate == 0.0
    assert CorruptionSpec(level=0.5, axis="noise", noise_scale=2).noise_std == 1.0
    assert CorruptionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="Unknown corruption field"):
        CorruptionSpec.from_dict({"level": 0.1, "blur": 2})
