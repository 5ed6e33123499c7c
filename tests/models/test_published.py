"""The published models (TFN, LMF, MulT): shapes, modalities, masks, overfitting, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.models import ModelOutput, build_model, check_output, names, resolve
from qamoe_core.runs import checkpoint as ckpt

MODELS = ("tfn", "lmf", "mult")
DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 6, "audio": 9, "vision": 8}
# Tiny sizes so that every test is fast; the defaults are exercised by the benchmark.
TINY_OPTIONS = {
    "tfn": {"text_hidden": 8, "audio_hidden": 4, "vision_hidden": 4, "text_out": 4,
            "post_fusion_dim": 8},
    "lmf": {"text_hidden": 8, "audio_hidden": 4, "vision_hidden": 4},
    "mult": {"d": 8, "heads": 2, "layers": 1, "memory_layers": 1, "max_steps": 4},
}  # fmt: skip


def config(name: str, **options: object) -> ModelConfig:
    return ModelConfig(d_model=16, n_heads=2, options={**TINY_OPTIONS[name], **options})


def batch(dims: dict[str, int], b: int = 5, seed: int = 0, length: int | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {"label": torch.randn(b, generator=g)}
    for m, d in dims.items():
        t = length or LENS[m]
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t
        x = torch.randn(b, t, d, generator=g) + 0.5
        x[torch.arange(t)[None, :] >= lengths[:, None]] = 0.0  # zero padding, as the schema
        out[m], out[f"{m}_len"] = x, lengths
    return out


def test_registry_lists_every_model() -> None:
    assert set(MODELS) <= set(names())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("task", ["regression", "binary"])
@pytest.mark.parametrize(
    "mods", [("text", "audio", "vision"), ("text", "vision"), ("audio",)], ids="-".join
)
def test_output_shapes_for_any_modalities(name: str, task: str, mods: tuple[str, ...]) -> None:
    dims = {m: DIMS[m] for m in mods}
    model = build_model(name, config(name), dims, task).eval()
    b = batch(dims)
    if task == "binary":
        b["label"] = (b["label"] > 0).float()
    out = model(b)
    assert isinstance(out, ModelOutput)
    check_output(out, 5, labelled=True, name=name)
    assert torch.isfinite(out.prediction).all() and torch.isfinite(out.log_var).all()
    assert out.loss is not None and torch.isfinite(out.loss)
    unlabelled = model({k: v for k, v in b.items() if k != "label"})
    assert unlabelled.loss is None and torch.equal(unlabelled.prediction, out.prediction)


@pytest.mark.parametrize("name", MODELS)
def test_length_one_sequences(name: str) -> None:
    model = build_model(name, config(name), DIMS, "regression").eval()
    out = model(batch(DIMS, length=1))
    assert out.prediction.shape == (5,) and torch.isfinite(out.prediction).all()


@pytest.mark.parametrize("name", MODELS)
def test_padding_is_ignored_and_zero_steps_are_masked(name: str) -> None:
    model = build_model(name, config(name), DIMS, "regression").eval()
    b = batch(DIMS)
    ref = model(b).prediction
    noisy = dict(b)
    for m in DIMS:  # garbage in the padding must not change the prediction
        x = b[m].clone()
        pad = torch.arange(x.shape[1])[None, :] >= b[f"{m}_len"][:, None]
        x[pad] = 7.0
        noisy[m] = x
    torch.testing.assert_close(model(noisy).prediction, ref)
    # A sample whose every step is zero gives a finite prediction (never NaN).
    empty = dict(b)
    empty["audio"] = b["audio"].clone()
    empty["audio"][1] = 0.0
    assert torch.isfinite(model(empty).prediction).all()
    # Without the mask an all-zero step is an input: the prediction may change.
    unmasked = build_model(name, config(name).override(mask_zero_steps=False), DIMS, "regression")
    unmasked.load_state_dict(model.state_dict())
    assert torch.isfinite(unmasked.eval()(empty).prediction).all()


@pytest.mark.parametrize("name", MODELS)
def test_overfits_a_tiny_set(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, config(name), DIMS, "regression")
    b = batch(DIMS, b=16, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()  # no dropout: memorising is the point
    with torch.no_grad():
        first = float(model(b).loss_task)
    for _ in range(100):
        loss = model(b).loss
        assert loss is not None
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(model(b).loss_task)
    assert last < 0.3 * first, (first, last)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    cfg = config(name)
    model = build_model(name, cfg, DIMS, "binary")
    mean = {m: torch.randn(d) for m, d in DIMS.items()}
    model.set_feature_stats(mean, {m: torch.rand(d) + 0.5 for m, d in DIMS.items()})
    model.eval()
    run = tmp_path / "run"
    run.mkdir()
    record = ckpt.run_config(resolve(name), cfg, TrainConfig(), dims=DIMS, task="binary",
                             scheme="binary", dataset={})  # fmt: skip
    ckpt.write_config(run, record)
    ckpt.save_weights(run, model.state_dict())
    loaded, loaded_cfg, meta = ckpt.load_run(run)
    assert type(loaded) is type(model) and loaded_cfg.options == cfg.options
    assert meta["config"]["model_class"].endswith(f":{type(model).__name__}")
    b = batch(DIMS)
    assert torch.equal(loaded(b).prediction, model(b).prediction)


@pytest.mark.parametrize("name", MODELS)
def test_trains_through_the_trainer(name: str, tiny_h5: Path, tmp_path: Path) -> None:
    from qamoe_core.training.loop import train

    result = train(tiny_h5, tmp_path / "run", name, config(name),
                   TrainConfig(epochs=1, batch_size=32), device="cpu")  # fmt: skip
    assert result["epochs_run"] == 1 and result["model_name"] == name
