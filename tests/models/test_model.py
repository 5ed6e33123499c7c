"""QA-MoE and baselines: the forward contract, masking, compression, ablations, learning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qamoe_core.base.errors import ConfigError, InputError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.models import ModelOutput, build_model
from qamoe_core.models.layers import present_steps, segment_pool

DIMS = {"text": 12, "audio": 5, "vision": 7}
SHAPES = {"text": 9, "audio": 30, "vision": 20}
TINY = ModelConfig(d_model=16, n_heads=2, segments=8, num_experts=4, top_k=2)
NAMES = ("qamoe", "late-fusion", "early-fusion", "dense-moe")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: a second thread only adds synchronisation, and on a shared
    2-core machine an OpenMP barrier waiting for a descheduled thread made steps ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(b: int = 6, seed: int = 0, t: dict[str, int] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for m, d in DIMS.items():
        steps = (t or SHAPES)[m]
        lens = torch.randint(1, steps + 1, (b,), generator=g)
        lens[0] = steps  # one full-length sample
        x = torch.randn(b, steps, d, generator=g)
        x = x * (torch.arange(steps)[None, :, None] < lens[:, None, None])  # zero padding
        batch[m], batch[f"{m}_len"] = x, lens
    batch["label"] = torch.randn(b, generator=g).clamp(-3, 3)
    return batch


def model_of(name: str, cfg: ModelConfig = TINY, task: str = "regression") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, cfg, DIMS, task).eval()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", ["regression", "binary"])
def test_shapes_and_named_outputs(name: str, task: str) -> None:
    batch = make_batch()
    if task == "binary":
        batch["label"] = (batch["label"] > 0).float()
    model = model_of(name, task=task).train()
    out = model(batch, batch)
    assert isinstance(out, ModelOutput)
    assert out.prediction.shape == (6,) and out.log_var.shape == (6,)
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.loss_task is not None
    out.loss.backward()
    if name == "qamoe":
        assert out.quality is not None and set(out.quality) == set(DIMS)
        assert all(
            v.shape == (6,) and bool(((v > 0) & (v <= 1)).all()) for v in out.quality.values()
        )
        assert out.modality_log_var is not None and set(out.modality_log_var) == set(DIMS)
        assert out.loss_unc is not None and out.loss_balance is not None
    else:
        assert out.quality is None and out.loss_unc is None
    if name in ("qamoe", "dense-moe"):
        assert out.routing is not None and out.routing.shape == (6, TINY.num_experts)
        assert torch.allclose(out.routing.sum(-1), torch.ones(6))
        active = (out.routing > 0).sum(-1)
        k = TINY.top_k if name == "qamoe" else TINY.num_experts
        assert bool((active == k).all())
    else:
        assert out.routing is None and out.loss_balance is None


def test_no_label_no_loss_and_no_clean_no_unc() -> None:
    batch = make_batch()
    del batch["label"]
    out = model_of("qamoe")(batch)
    assert out.loss is None and out.loss_task is None and out.loss_unc is None


@pytest.mark.parametrize("name", NAMES)
def test_sequence_length_one_and_absent_modality(name: str) -> None:
    batch = make_batch(t={"text": 1, "audio": 1, "vision": 1})
    out = model_of(name)(batch)
    assert torch.isfinite(out.prediction).all()
    batch = make_batch()
    batch["audio"] = torch.zeros_like(batch["audio"])
    batch["audio_len"] = torch.zeros_like(batch["audio_len"])  # audio absent everywhere
    out = model_of(name)(batch)
    assert torch.isfinite(out.prediction).all()


def test_padding_and_keep_masks_do_not_change_the_output() -> None:
    model = model_of("qamoe")
    batch = make_batch()
    ref = model(batch).prediction
    noisy = dict(batch)
    for m in DIMS:  # garbage after each valid length must be ignored
        t = batch[m].shape[1]
        pad = torch.arange(t)[None, :, None] >= batch[f"{m}_len"][:, None, None]
        noisy[m] = torch.where(pad, torch.full_like(batch[m], 1e3), batch[m])
        noisy[f"{m}_keep"] = torch.zeros(batch[m].shape[:2], dtype=torch.bool)  # not read
    torch.testing.assert_close(model(noisy).prediction, ref, rtol=1e-4, atol=1e-4)


def test_segment_pool_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 23, 3, generator=g)
    lens = torch.tensor([23, 10, 3, 1])
    pooled, valid = segment_pool(x, lens, 5)
    assert pooled.shape == (4, 5, 3)
    for i, n in enumerate(lens.tolist()):
        seg = [t * 5 // n for t in range(n)]
        for j in range(5):
            steps = [t for t in range(n) if seg[t] == j]
            assert bool(valid[i, j]) == bool(steps)
            if steps:
                torch.testing.assert_close(pooled[i, j], x[i, steps].mean(0))
    same, mask = segment_pool(x, lens, 0)  # 0 = off
    assert same is x and mask.sum().item() == lens.sum().item()


def test_segment_pool_leaves_absent_steps_out_of_the_means() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 20, 4, generator=g)
    lens = torch.tensor([20, 12, 5])
    present = torch.rand(3, 20, generator=g) > 0.4
    present[2, :5] = False  # sample 2: nothing present
    x = x * present[:, :, None]
    pooled, valid = segment_pool(x, lens, 4, present)
    for i, n in enumerate(lens.tolist()):
        seg = [t * 4 // n for t in range(n)]
        for j in range(4):
            steps = [t for t in range(n) if seg[t] == j and present[i, t]]
            assert bool(valid[i, j]) == bool(steps)
            if steps:  # the mean of the present steps, not of every step of the segment
                torch.testing.assert_close(pooled[i, j], x[i, steps].mean(0))
    assert not valid[2].any()
    _, mask = segment_pool(x, lens, 0, present)  # no compression: the mask alone changes
    assert torch.equal(mask, present & (torch.arange(20)[None, :] < lens[:, None]))


@pytest.mark.parametrize("name", NAMES)
def test_mask_zero_steps_treats_zeroed_steps_as_padding(name: str) -> None:
    cfg = TINY.override(segments=0, mask_zero_steps=True)
    batch = make_batch()
    for m in DIMS:
        batch[f"{m}_len"] = batch[f"{m}_len"].clamp(min=3)
    zeroed, shorter = dict(batch), dict(batch)
    for m in DIMS:  # zero the last two valid steps = the same sample two steps shorter
        lens = batch[f"{m}_len"]
        t = torch.arange(batch[m].shape[1])[None, :, None]
        last_two = (t >= lens[:, None, None] - 2) & (t < lens[:, None, None])
        zeroed[m] = batch[m].masked_fill(last_two, 0.0)
        shorter[f"{m}_len"] = lens - 2
    model = model_of(name, cfg)
    h_zeroed, coverage = model.encode_with_coverage(zeroed)
    h_shorter, full = model.encode_with_coverage(shorter)
    for m in DIMS:  # the same encoding; only the coverage tells them apart
        torch.testing.assert_close(h_zeroed[m], h_shorter[m])
        lens = batch[f"{m}_len"].float()
        torch.testing.assert_close(coverage[m], (lens - 2) / lens)
        torch.testing.assert_close(full[m], torch.ones_like(lens))
    plain = model_of(name, TINY.override(segments=0, mask_zero_steps=False))  # zero = input
    h_plain, no_coverage = plain.encode_with_coverage(zeroed)
    assert not torch.allclose(h_plain["text"], plain.encode(shorter)["text"])
    assert all(c is None for c in no_coverage.values())
    # every step zero: the modality is absent (coverage 0), and the output stays finite
    zeroed["audio"] = torch.zeros_like(batch["audio"])
    assert torch.isfinite(model(zeroed).prediction).all()
    assert torch.equal(model.encode_with_coverage(zeroed)[1]["audio"], torch.zeros(6))


def test_coverage_reaches_the_quality_head_only_with_the_mask() -> None:
    on = model_of("qamoe", TINY.override(mask_zero_steps=True))
    off = model_of("qamoe", TINY.override(mask_zero_steps=False))
    width = 2 * TINY.d_model
    assert on.head_of("text").log_var[0].normalized_shape == (width + 1,)
    assert off.head_of("text").log_var[0].normalized_shape == (width,)
    head = on.head_of("audio").train()
    with torch.no_grad():  # make log σ² depend on its inputs (the last layer starts at zero)
        torch.nn.init.normal_(head.log_var[-1].weight)
    h = torch.randn(4, TINY.d_model)
    *_, r_full = head(h, torch.ones(4), update=False)
    *_, r_half = head(h, torch.full((4,), 0.5), update=False)
    assert not torch.allclose(r_full, r_half)


@pytest.mark.parametrize("name", ["late-fusion", "early-fusion", "dense-moe"])
def test_mask_zero_steps_changes_no_baseline_at_sequence_length_one(name: str) -> None:
    """One step per modality (MOSI-lite): an all-zero modality stays its one zero step, so the
    baselines (no quality head, no coverage) compute exactly what they did without the mask."""
    batch = make_batch(t={"text": 1, "audio": 1, "vision": 1})
    batch["vision"][:3] = 0.0  # a missing modality on half the samples
    on = model_of(name, TINY.override(mask_zero_steps=True))(batch)
    off = model_of(name, TINY.override(mask_zero_steps=False))(batch)
    torch.testing.assert_close(on.prediction, off.prediction, rtol=0, atol=0)
    qamoe = model_of("qamoe", TINY.override(mask_zero_steps=True))
    coverage = qamoe.encode_with_coverage(batch)[1]["vision"]
    assert coverage is not None and coverage.tolist() == [0.0] * 3 + [1.0] * 3


def test_compression_can_be_switched_off() -> None:
    batch = make_batch()
    on = model_of("qamoe", TINY)(batch).prediction
    off = model_of("qamoe", TINY.override(segments=0))(batch).prediction
    assert not torch.allclose(on, off)  # audio (30) and vision (20) are longer than 8


# --- ablation switches ----------------------------------------------------------------------


def test_quality_gate_off_uses_r_equal_one() -> None:
    out = model_of("qamoe", TINY.override(options={"quality_gate": False}))(make_batch())
    assert out.quality is not None
    assert all(bool((v == 1).all()) for v in out.quality.values())


def test_prior_fallback_off_has_no_prior_and_changes_the_output() -> None:
    with_prior = model_of("qamoe")
    without = model_of("qamoe", TINY.override(options={"prior_fallback": False}))
    assert without.prior is None and with_prior.prior is not None
    with torch.no_grad():
        for p in with_prior.prior.values():
            p.fill_(3.0)  # a non-zero prior must show up wherever r < 1
    batch = make_batch()
    assert not torch.allclose(with_prior(batch).prediction, without(batch).prediction)


def test_router_without_quality_reads_content_only() -> None:
    blind = model_of("qamoe", TINY.override(options={"router_uses_quality": False})).moe.router
    aware = model_of("qamoe").moe.router
    assert blind.quality is None and aware.quality is not None
    with torch.no_grad():
        aware.quality.weight.normal_(0, 5.0)
    g = torch.Generator().manual_seed(0)
    content = torch.randn(16, 3 * TINY.d_model, generator=g)
    r1, r2 = torch.rand(16, 3, generator=g), torch.rand(16, 3, generator=g)
    torch.testing.assert_close(blind(content, r1)[0], blind(content, r2)[0])
    assert not torch.allclose(aware(content, r1)[0], aware(content, r2)[0])


def test_fuse_quality_switch_adds_r_to_the_fused_vector_only() -> None:
    aware = model_of("qamoe", TINY.override(options={"router_uses_quality": False}))
    blind = model_of(
        "qamoe", TINY.override(options={"router_uses_quality": False, "fuse_uses_quality": False})
    )
    assert aware.fuse_quality is not None and blind.fuse_quality is None
    # created last: every other weight is initialised the same with or without the switch
    shared = {k: v for k, v in aware.state_dict().items() if not k.startswith("fuse_quality")}
    assert shared.keys() == blind.state_dict().keys()
    assert all(torch.equal(v, blind.state_dict()[k]) for k, v in shared.items())
    batch = make_batch()
    with torch.no_grad():
        aware.fuse_quality.weight.fill_(0.0)  # a zero map: exactly the model without it
    torch.testing.assert_close(aware(batch).prediction, blind(batch).prediction)
    with torch.no_grad():
        aware.fuse_quality.weight.normal_(0, 5.0)
    assert not torch.allclose(aware(batch).prediction, blind(batch).prediction)


def test_quality_shuffle_changes_routing_and_prediction() -> None:
    model = model_of("qamoe")
    with torch.no_grad():  # make the (at initialisation equal) quality scores differ per sample
        for m in DIMS:
            model.quality[m].log_var[-1].weight.normal_(0, 1.0)
        model.moe.router.quality.weight.normal_(0, 5.0)
    batch = make_batch(b=16)
    ref = model(batch)
    out = model(batch, shuffle_quality=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(ref.routing, out.routing)
    assert not torch.allclose(ref.prediction, out.prediction)


def test_quality_shuffle_permutes_scores() -> None:
    model = model_of("qamoe")
    with torch.no_grad():
        for m in DIMS:
            model.quality[m].log_var[-1].weight.normal_(0, 1.0)
    batch = make_batch(b=12)
    ref = model(batch).quality
    out = model(batch, shuffle_quality=True, generator=torch.Generator().manual_seed(3)).quality
    for m in DIMS:
        assert not torch.equal(ref[m], out[m])
        torch.testing.assert_close(torch.sort(ref[m]).values, torch.sort(out[m]).values)


def test_dense_and_number_of_experts() -> None:
    out = model_of("qamoe", TINY.override(num_experts=6, top_k=6))(make_batch())
    assert out.routing.shape == (6, 6) and bool((out.routing > 0).all())
    out = model_of("qamoe", TINY.override(num_experts=5, top_k=1))(make_batch())
    assert out.routing.shape == (6, 5) and bool(((out.routing > 0).sum(-1) == 1).all())


def test_uncertainty_targets_differ() -> None:
    batch = make_batch()
    enc = model_of("qamoe").train()
    inp = model_of("qamoe", TINY.override(options={"uncertainty_target": "clean_input"})).train()
    assert enc.quality["audio"].decoder is None
    assert inp.quality["audio"].decoder is not None
    assert inp.quality["audio"].t_mean.shape == (DIMS["audio"],)  # σ² lives in input space
    a, b = enc(batch, batch).loss_unc, inp(batch, batch).loss_unc
    assert a is not None and b is not None and not torch.isclose(a, b)
    # clean_encoding: at initialisation a clean input reproduces its own target exactly.
    enc.eval()
    h = enc.encode(batch)
    mu, _, _ = enc.quality["text"](h["text"])
    torch.testing.assert_close(mu, enc.quality["text"].standardise(h["text"]))


def _encoder_grad_norm(model: torch.nn.Module, loss: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return sum(float(p.grad.abs().sum()) for p in model.encoders.parameters() if p.grad is not None)


def test_unc_encoder_grad_switch_keeps_the_encoders_out_of_the_uncertainty_loss() -> None:
    batch = make_batch()
    noisy = {k: (v + 0.5 * torch.randn_like(v) if v.is_floating_point() and k in DIMS else v)
             for k, v in batch.items()}  # fmt: skip
    on = model_of("qamoe").train()
    off = model_of("qamoe", TINY.override(options={"unc_encoder_grad": False})).train()
    off.load_state_dict(on.state_dict())
    torch.manual_seed(1)  # the same dropout masks in both passes
    out_on = on(noisy, batch)
    torch.manual_seed(1)
    out_off = off(noisy, batch)
    assert out_on.loss_unc is not None and out_off.loss_unc is not None
    # Same weights, same batch: the same loss value and the same predictions ...
    torch.testing.assert_close(out_on.loss_unc, out_off.loss_unc)
    torch.testing.assert_close(out_on.prediction, out_off.prediction)
    # ... but only the default lets that loss reach the encoders; the quality head learns
    # from it either way.
    assert _encoder_grad_norm(on, out_on.loss_unc) > 0
    assert _encoder_grad_norm(off, out_off.loss_unc) == 0
    off.zero_grad(set_to_none=True)
    off(noisy, batch).loss_unc.backward()
    head = off.quality["audio"].log_var[-1]
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0


def test_loss_weights_enter_the_total() -> None:
    batch = make_batch()
    base = model_of("qamoe").train()
    out = base(batch, batch)
    o = base.options  # QA-MoE's own weights: λ_unc and λ_bal
    assert (o.unc_weight, o.balance_weight) == (0.1, 0.01)
    expected = out.loss_task + o.unc_weight * out.loss_unc + o.balance_weight * out.loss_balance
    torch.testing.assert_close(out.loss, expected)
    heavy = model_of("qamoe", TINY.override(options={"unc_weight": 5.0})).train()
    assert not torch.isclose(heavy(batch, batch).loss, out.loss)


def test_each_model_weighs_only_its_own_loss_terms() -> None:
    batch = make_batch()
    dense = model_of("dense-moe", TINY.override(options={"balance_weight": 2.0})).train()
    out = dense(batch, batch)
    assert dense.options.balance_weight == 2.0 and out.loss_unc is None
    torch.testing.assert_close(out.loss, out.loss_task + 2.0 * out.loss_balance)
    # The weights are options of the models that have the terms, nobody else's.
    with pytest.raises(ConfigError, match="for the model 'early-fusion': unc_weight"):
        model_of("early-fusion", TINY.override(options={"unc_weight": 1.0}))
    assert model_of("early-fusion").loss_weights == {}


def test_an_auxiliary_loss_without_a_declared_weight_is_a_contract_error() -> None:
    cls = type(model_of("dense-moe"))

    class Undeclared(cls):  # type: ignore[misc, valid-type]
        loss_weights = {}  # noqa: RUF012  # the declaration left out

    torch.manual_seed(0)
    model = Undeclared(TINY, DIMS, "regression").train()
    with pytest.raises(InputError, match="returned loss_balance but declares no weight"):
        model(make_batch())


def test_unknown_model_name() -> None:
    with pytest.raises(InputError, match="late-fusion"):
        build_model("transformer", TINY, DIMS, "regression")


# --- learning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qamoe", "early-fusion"])
def test_overfits_a_tiny_set(name: str) -> None:
    batch = make_batch(b=16, seed=4)
    cfg = TINY.override(dropout=0.0)
    model = model_of(name, cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        out = model(batch, batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else float(out.loss_task.detach())
    model.eval()
    with torch.no_grad():
        mae = float((model(batch).prediction - batch["label"]).abs().mean())
    assert mae < 0.15, (first, mae)


def test_quality_falls_as_corruption_rises(small_h5: Path, tmp_path: Path) -> None:
    """After a short training on the synthetic set, r_m decreases with the level, for every
    modality: the uncertainty is learned from the content alone (no labels, no keep masks)."""
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.data.torchdata import to_torch
    from qamoe_core.runs.checkpoint import load_run
    from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec
    from qamoe_core.training.loop import train

    cfg = ModelConfig(d_model=32, n_heads=2)
    train(small_h5, tmp_path / "run", "qamoe", cfg,
          TrainConfig(epochs=5, batch_size=32, lr=3e-3), device="cpu")  # fmt: skip
    model, _, _ = load_run(tmp_path / "run")
    with FeatureFile(small_h5) as f:
        batch = f.read("valid", slice(None))
        std = {m: f.train_std(m) for m in f.modalities}
    means = []
    for level in (0.0, 0.5, 1.0):
        spec = CorruptionSpec(level=level, seed=7)
        corrupted = apply_spec(batch, spec, split="valid", train_std=std)
        with torch.no_grad():
            out = model(to_torch(corrupted))
        means.append({m: float(v.mean()) for m, v in out.quality.items()})
    for m in ("text", "audio", "vision"):
        r = [x[m] for x in means]
        assert r[0] > r[1] + 0.02 > r[2] + 0.04, (m, r)
    assert np.mean([means[0][m] for m in means[0]]) > 0.8  # clean inputs are trusted


@pytest.mark.parametrize("width", [5, 64, 768])
def test_present_steps_is_any_non_zero_value(width: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, width, generator=g)
    x[:, 2] = 0.0
    x[1, 5] = -0.0  # a negative zero is zero
    x[2, 7] = 0.0
    x[2, 7, width - 1] = -1e-30  # one tiny value is enough to be present
    x[3, 4] = 0.0
    x[3, 4, 0] = 5.0
    expected = x.ne(0).any(-1)
    assert torch.equal(present_steps(x), expected)
    assert expected[:, 2].sum() == 0 and not expected[1, 5] and expected[2, 7] and expected[3, 4]


@pytest.mark.parametrize("dropped", [0.0, 0.2, 0.9])
def test_present_steps_is_exact_whichever_path_it_takes(dropped: float) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.relu(torch.randn(8, 40, 768, generator=g))  # ReLU-like: many exact zeros
    x[torch.rand(8, 40, generator=g) < dropped] = 0.0
    x[0, 1] = 0.0
    x[0, 1, 500] = 2.0  # present, but zero in the first dims
    assert torch.equal(present_steps(x), x.ne(0).any(-1))
    # Given the valid steps, it is exact on them whatever the padding (here: half of the
    # steps, which would otherwise push it onto the full pass).
    valid = torch.arange(40)[None, :] < torch.tensor([40, 30, 20, 20, 10, 5, 1, 0])[:, None]
    x[~valid] = 0.0
    got = present_steps(x, valid)
    assert torch.equal(got[valid], x.ne(0).any(-1)[valid])
