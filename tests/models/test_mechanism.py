"""QA-MoE's mechanism switches (issue 32): the scale of r, the σ² head without coverage, the
task path's dropout and r given from outside. Defaults must leave the model as it was."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from qamoe_core.base.errors import ConfigError
from qamoe_core.config import ModelConfig
from qamoe_core.models import build_model
from qamoe_core.models.quality_mech import QualityScale, task_dropout
from tests.models.test_model import DIMS, TINY, make_batch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def qamoe(cfg: ModelConfig = TINY, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("qamoe", cfg.override(options=dict(options)), DIMS, "regression")


def test_defaults_build_the_model_of_earlier_versions() -> None:
    # No new module, parameter or buffer with the defaults, and the same initial weights as a
    # model given every new option at its default explicitly.
    plain = qamoe()
    spelled = qamoe(r_scale="unit", unc_uses_coverage=True, input_dropout=0.0,
                    modality_dropout=0.0)  # fmt: skip
    assert plain.quality_scale is None
    assert not any("quality_scale" in k for k in plain.state_dict())
    a, b = plain.state_dict(), spelled.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = plain.quality["text"].log_var[0]
    assert first.normalized_shape == (2 * TINY.d_model + 1,)  # h, (h − h̄)², coverage


def test_bad_option_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"'r_scale'.*unit, clean, learned"):
        qamoe(r_scale="softmax")
    with pytest.raises(ConfigError, match=r"'modality_dropout'.*\[0, 0.9\]"):
        qamoe(modality_dropout=1.0)


def test_quality_scale_lets_an_absent_modality_fall_below_a_tenth() -> None:
    # σ̄² ≈ 1 is what a missing modality gets; with τ = 1 (unit) r stays at 1/2, with τ at a
    # clean level of 0.05 it falls to 1/21.
    scale = QualityScale(("text", "audio"), "clean")
    log_var = torch.zeros(4, 16)  # σ² = 1 in every dim
    assert torch.allclose(scale("audio", log_var), torch.full((4,), 0.5))
    scale.tau[1] = 0.05
    r = scale("audio", log_var)
    assert r.shape == (4,) and bool((r < 0.1).all()) and bool((r > 0).all())
    assert math.isclose(float(r[0]), 1 / 21, rel_tol=1e-6)
    assert torch.allclose(scale("text", log_var), torch.full((4,), 0.5))  # per modality


def test_clean_scale_follows_the_clean_level_and_is_saved() -> None:
    model = qamoe(r_scale="clean").train()
    tau = model.quality_scale.tau
    assert torch.equal(tau, torch.ones(3))  # untrained: the unit scale
    batch = make_batch(8)
    # Force a known clean σ̄²: the heads' last layer gives log σ² = log 0.2 everywhere.
    for head in model.quality.values():
        torch.nn.init.zeros_(head.log_var[-1].weight)
        torch.nn.init.constant_(head.log_var[-1].bias, math.log(0.2))
    for _ in range(60):  # momentum 0.1: within 0.8·0.9^60 < 2e-3 of 0.2
        model(batch, batch)
    assert torch.allclose(tau, torch.full((3,), 0.2), atol=2e-3)
    assert "quality_scale.tau" in model.state_dict()
    model.eval()
    before = tau.clone()
    out = model(batch)
    assert torch.equal(tau, before)  # evaluation never moves it
    assert out.quality is not None
    # r = 1/(1 + 0.2/τ) ≈ 1/2 for every sample (σ̄² = 0.2 whatever the input)
    assert all(torch.allclose(r, torch.full_like(r, 0.5), atol=2e-3) for r in out.quality.values())


def test_learned_scale_is_positive_and_trained_by_the_task_loss() -> None:
    model = qamoe(r_scale="learned").train()
    batch = make_batch(8)
    out = model(batch, batch)
    out.loss.backward()
    grad = model.quality_scale.log_tau.grad
    assert grad is not None and bool((grad != 0).any())
    with torch.no_grad():
        model.quality_scale.log_tau.fill_(-8.0)  # τ = e^-8, still positive
    r = model.eval()(batch).quality
    assert r is not None and all(bool(((v > 0) & (v < 0.1)).all()) for v in r.values())


def test_sigma_head_without_coverage() -> None:
    model = qamoe(unc_uses_coverage=False).train()
    head = model.quality["audio"]
    assert not head.uses_coverage and head.log_var[0].normalized_shape == (2 * TINY.d_model,)
    out = model(make_batch(), make_batch())
    assert out.quality is not None and all(v.shape == (6,) for v in out.quality.values())
    assert torch.isfinite(out.loss)


def test_task_dropout_shapes_determinism_and_no_empty_sample() -> None:
    batch = make_batch(64)
    mods = tuple(DIMS)
    torch.manual_seed(3)
    a = task_dropout(batch, mods, 0.3, 0.6)
    torch.manual_seed(3)
    b = task_dropout(batch, mods, 0.3, 0.6)
    for m in mods:
        assert a[m].shape == batch[m].shape and torch.equal(a[m], b[m])
        assert torch.equal(a[f"{m}_len"], batch[f"{m}_len"])
    gone = torch.stack([(a[m] == 0).flatten(1).all(1) for m in mods], 1)  # (B, M)
    assert bool(gone.any()) and not bool(gone.all(1).any())  # never every modality
    kept = [(a[m] != 0) for m in mods]
    # input dropout: the survivors scaled by 1/(1 − p)
    m0 = mods[0]
    on = kept[0]
    assert torch.allclose(a[m0][on], batch[m0][on] / 0.7)
    assert torch.equal(task_dropout(batch, mods, 0.0, 0.0)[m0], batch[m0])


def test_dropout_is_on_the_task_path_only() -> None:
    # The clean target (and the running statistics it feeds) is the same with and without
    # the dropout; the prediction is not.
    batch = make_batch(16)
    runs = []
    for opts in ({}, {"input_dropout": 0.5, "modality_dropout": 0.5}):
        model = qamoe(**opts).train()
        torch.manual_seed(1)
        out = model(batch, batch)
        runs.append((model.quality["text"].t_mean.clone(), out.prediction.detach()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][1], runs[1][1])


def test_encoder_dropout_never_reaches_the_clean_target() -> None:
    model = qamoe(TINY.override(encoder_dropout=0.5)).train()
    clean = make_batch(8)
    first = model.clean_targets(clean)
    second = model.clean_targets(clean)
    assert all(torch.equal(first[m], second[m]) for m in DIMS)
    h1, h2 = model.encode(clean), model.encode(clean)  # the task path does drop
    assert not torch.equal(h1["text"], h2["text"])


def test_quality_override_sets_r() -> None:
    model = qamoe().eval()
    batch = make_batch()
    given = {m: torch.linspace(0.1, 0.9, 6) for m in DIMS}
    out = model(batch, quality_override=given)
    assert out.quality is not None
    assert all(torch.equal(out.quality[m], given[m]) for m in DIMS)
    plain = model(batch)
    assert not torch.equal(out.prediction, plain.prediction)
    assert "constant_r" in model.controls and "oracle_r" in model.controls


def early_fusion(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("early-fusion", TINY.override(options=dict(options)), DIMS, "regression")


def test_early_fusion_defaults_are_the_plain_model() -> None:
    # The options off: the same parameters and the same outputs as before they existed.
    plain, spelled = early_fusion(), early_fusion(input_dropout=0.0, modality_dropout=0.0,
                                                  presence=False)  # fmt: skip
    a, b = plain.state_dict(), spelled.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.mlp[0].in_features == len(DIMS) * TINY.d_model
    batch = make_batch(8)
    torch.manual_seed(3)
    first = plain.train()(batch).prediction
    torch.manual_seed(3)
    assert torch.equal(first, spelled.train()(batch).prediction)


def test_early_fusion_presence_flags_carry_each_modality_coverage() -> None:
    model = early_fusion(presence=True).eval()
    assert model.mlp[0].in_features == len(DIMS) * TINY.d_model + len(DIMS)
    batch = make_batch(6)
    text = batch["text"].clone()
    text[1] = 0  # sample 1's text entirely missing: its flag is 0, the others' are not
    seen: list[torch.Tensor] = []
    hook = model.mlp[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    model({**batch, "text": text})
    hook.remove()
    flags = seen[0][:, -len(DIMS) :]
    j = list(model.modalities).index("text")
    assert flags[1, j] == 0 and bool((flags[[0, 2, 3, 4, 5], j] > 0).all())
    assert bool(((flags >= 0) & (flags <= 1)).all())


def test_early_fusion_dropout_only_while_training() -> None:
    model = early_fusion(input_dropout=0.5, modality_dropout=0.5)
    batch = make_batch(16)
    model.eval()
    assert torch.equal(model(batch).prediction, model(batch).prediction)
    model.train()
    torch.manual_seed(1)
    dropped = model(batch).prediction
    torch.manual_seed(1)
    plain = early_fusion().train()(batch).prediction
    assert not torch.equal(dropped, plain)
    with pytest.raises(ConfigError, match=r"'modality_dropout'.*\[0, 0.9\]"):
        early_fusion(modality_dropout=0.95)
