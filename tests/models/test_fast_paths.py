"""The models' fast paths (packed steps, index_add pooling, the presence test) compute what
the code before them computed: benchmarks/model_reference.py keeps that code, and every
built-in model must give the same outputs and gradients on both paths, to float tolerance,
with the same parameter layout."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import Tensor

from qamoe_core.config import ModelConfig
from qamoe_core.models import build_model, layers, names
from qamoe_core.models.layers import Encoder, Rows, present_steps, segment_pool

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "model_reference", REPO / "benchmarks" / "model_reference.py"
)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

DIMS = {"text": 70, "audio": 5, "vision": 9}  # text wide enough for present_steps' head test
STEPS = {"text": 12, "audio": 40, "vision": 30}
SMALL = {
    "tfn": {"text_hidden": 8, "audio_hidden": 4, "vision_hidden": 4, "text_out": 4,
            "post_fusion_dim": 8},
    "lmf": {"text_hidden": 8, "audio_hidden": 4, "vision_hidden": 4},
    "mult": {"d": 8, "heads": 2, "layers": 1, "memory_layers": 1, "max_steps": 6},
    "self-mm": {"post_fusion_dim": 8, "post_text_dim": 4, "post_audio_dim": 4,
                "post_vision_dim": 4},
    "almt": {"tokens": 2, "token_depth": 2, "ahl_levels": 2, "fusion_depth": 1},
    "lnln": {"tokens": 2, "token_depth": 2, "dmc_depth": 1, "ahl_levels": 2,
             "fusion_depth": 1, "discriminator_hidden": 4},
}  # fmt: skip


def config(name: str, **fields: object) -> ModelConfig:
    base: dict[str, object] = {"d_model": 16, "n_heads": 2, "n_layers": 2, "segments": 6}
    return ModelConfig(**{**base, **fields}, options=SMALL.get(name, {}))  # type: ignore[arg-type]


def make_batch(n: int = 16, seed: int = 0, drop: float = 0.3) -> dict[str, Tensor]:
    """Padding (random lengths, one of 0 and one full), dropped (all-zero) steps and an offset,
    as corrupted real features have."""
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, Tensor] = {"label": torch.randn(n, generator=g)}
    for m, d in DIMS.items():
        t = STEPS[m]
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        lengths[0], lengths[1] = t, 0
        x = torch.randn(n, t, d, generator=g) + 0.7
        x[torch.rand(n, t, generator=g) < drop] = 0.0
        x[torch.arange(t)[None, :] >= lengths[:, None]] = 0.0
        batch[m], batch[f"{m}_len"] = x, lengths
    return batch


def build(name: str, **fields: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, config(name, **fields), DIMS, "regression")
    g = torch.Generator().manual_seed(1)
    model.set_feature_stats(
        {m: torch.randn(d, generator=g) for m, d in DIMS.items()},
        {m: torch.rand(d, generator=g) + 0.5 for m, d in DIMS.items()},
    )
    return model


def assert_close(new: object, old: object, what: str, atol: float = 1e-5) -> None:
    if isinstance(new, dict):
        assert isinstance(old, dict) and new.keys() == old.keys(), what
        for k in new:
            assert_close(new[k], old[k], f"{what}[{k}]", atol)
    elif isinstance(new, Tensor):
        assert isinstance(old, Tensor), what
        torch.testing.assert_close(new, old, atol=atol, rtol=1e-4, msg=what)
    else:
        assert new is None and old is None, what


def test_reference_path_swaps_the_code_and_restores_it() -> None:
    before = (Encoder.encode, layers.segment_pool, layers.present_steps)
    with ref.reference_path():
        assert Encoder.encode is ref.encoder_encode
        assert layers.segment_pool is ref.segment_pool
    assert (Encoder.encode, layers.segment_pool, layers.present_steps) == before


@pytest.mark.parametrize("name", sorted(names()))
@pytest.mark.parametrize("mask_zero_steps", [True, False])
def test_outputs_equal_the_reference(name: str, mask_zero_steps: bool) -> None:
    model = build(name, mask_zero_steps=mask_zero_steps).eval()
    batch = make_batch()
    with torch.no_grad():
        new = model(batch)
        with ref.reference_path():
            old = model(batch)
    for field in new._fields:
        assert_close(getattr(new, field), getattr(old, field), f"{name}.{field}")


def test_the_packed_path_runs_and_the_padded_one_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch above exercises both: text (12 steps, a third dropped, padding) is packed,
    the pooled audio and vision (6 segments of 30-40 steps) mostly are not."""
    seen: list[bool] = []
    of = Rows.of

    def spy(keep: Tensor, most: float = layers.PACK_BELOW) -> Rows | None:
        rows = of(keep, most)
        seen.append(rows is not None)
        return rows

    monkeypatch.setattr(Rows, "of", staticmethod(spy))
    with torch.no_grad():
        build("qamoe").eval()(make_batch(drop=0.05))
    assert True in seen and False in seen


@pytest.mark.parametrize("name", ["qamoe", "early-fusion", "almt", "lnln"])
def test_gradients_equal_the_reference(name: str) -> None:
    """Training mode: the loss and every parameter's gradient (dropout draws in the same
    order on both paths: the encoders' dropout is 0 by default). Each path starts from the
    same running statistics (a training forward updates them)."""
    model = build(name).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batch, clean = make_batch(seed=3), make_batch(seed=3, drop=0.0)
    grads = {}
    for path in ("new", "reference"):
        model.load_state_dict(start)
        model.zero_grad()
        torch.manual_seed(5)
        if path == "new":
            out = model(batch, clean)
        else:
            with ref.reference_path():
                out = model(batch, clean)
        out.loss.backward()
        grads[path] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        grads[path]["loss"] = out.loss.detach()
    assert_close(grads["new"], grads["reference"], name, atol=1e-5)


def test_segment_pool_equals_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 50, 7, generator=g) + 3.0
    lengths = torch.randint(0, 60, (32,), generator=g)  # 0, shorter than S, longer than T
    lengths[:3] = torch.tensor([0, 3, 50])
    x[torch.arange(50)[None, :] >= lengths[:, None]] = 0.0
    present = torch.rand(32, 50, generator=g) > 0.4
    x[~present] = 0.0
    for segments in (0, 8, 49, 50, 64):
        for p in (None, present):
            new, new_mask = segment_pool(x, lengths, segments, p)
            old, old_mask = ref.segment_pool(x, lengths, segments, p)
            assert torch.equal(new_mask, old_mask)
            torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)


def test_both_ways_of_summing_segments_agree() -> None:
    """Index_add on the CPU, running sums elsewhere (repeatable on a GPU): same sums and
    counts, also where a step left out is not zero."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 40, 3, generator=g)
    lengths = torch.tensor([0, 1, 5, 17, 40, 40, 39, 8, 2])
    present = torch.rand(9, 40, generator=g) > 0.3
    for p in (None, present):
        for segments in (4, 16):
            a = layers._segment_sums_indexed(x, lengths, segments, p)
            b = layers._segment_sums_running(x, lengths, segments, p)
            torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
            assert torch.equal(a[1], b[1])


def test_present_steps_equals_any_nonzero() -> None:
    g = torch.Generator().manual_seed(0)
    for d in (1, 5, 20, 63, 64, 200):
        x = torch.randn(8, 30, d, generator=g)
        x[torch.rand(8, 30, generator=g) < 0.5] = 0.0
        x[0, 0] = 0.0
        x[0, 0, -1] = 1e-45  # the smallest subnormal: present
        x[0, 1] = -0.0  # negative zero: absent
        x[0, 2] = 0.0
        x[0, 2, 0] = float("nan")
        x[0, 3] = 0.0
        x[0, 3, -1] = float("-inf")
        valid = torch.rand(8, 30, generator=g) > 0.2
        expected = (x != 0).any(-1) | x.isnan().any(-1)
        assert torch.equal(present_steps(x), expected), d
        assert torch.equal(present_steps(x, valid) & valid, expected & valid), d
        assert torch.equal(ref.present_steps(x, valid) & valid, expected & valid), d


def test_rows_pack_and_unpack_are_inverse() -> None:
    keep = torch.rand(6, 9, generator=torch.Generator().manual_seed(0)) > 0.5
    rows = Rows.of(keep, most=1.0)
    assert rows is not None and rows.flat.numel() == int(keep.sum())
    x = torch.randn(6, 9, 4)
    packed = rows.pack(x)
    torch.testing.assert_close(packed, x[keep])
    torch.testing.assert_close(rows.unpack(packed), x * keep[:, :, None])
    assert torch.equal(rows.sample * 9 + rows.step, rows.flat)
    assert Rows.of(torch.ones(3, 4, dtype=torch.bool)) is None  # everything kept: not worth it
    assert Rows.of(torch.ones(0, 4, dtype=torch.bool)) is None  # an empty batch


def test_training_is_deterministic_for_a_seed() -> None:
    def run() -> dict[str, Tensor]:
        model = build("qamoe").train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(3):
            batch, clean = make_batch(seed=step), make_batch(seed=step, drop=0.0)
            opt.zero_grad()
            model(batch, clean).loss.backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


# sha256 of every built-in model's "key shape" lines (tiny config above), computed with the
# code before the fast paths: old run folders must load into the same parameter layout.
LAYOUT = {
    "almt": "fe20c7bc8cb324b2", "dense-moe": "24a90e6527e20cf0",
    "early-fusion": "f1390f266717f8f1", "late-fusion": "baada5c089723e44",
    "lmf": "621b9a7836f4961a", "lnln": "4b3c5a8cc8673b29", "misa": "20b1aed590e5eee0",
    "mult": "ff51ffed77af0ae3", "qamoe": "242753cf256011c8", "self-mm": "b8d3529c557f5e19",
    "tfn": "ca45aa8924eb7ae2",
}  # fmt: skip


def layout(model: torch.nn.Module) -> str:
    lines = [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_parameter_layout_is_unchanged(name: str) -> None:
    assert layout(build(name)) == LAYOUT[name]
