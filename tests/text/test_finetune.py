"""The pretrained text encoder inside the models (docs/text-encoder.md): config, training,
checkpoint, spectrum on ids, evaluation. On a tiny BERT and a tiny ids file built here (no
download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qamoe_core.base.errors import CheckpointError, ConfigError, InputError, QamoeError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.store import FeatureFile
from qamoe_core.data.torchdata import to_torch
from qamoe_core.spectrum.engine import ModalityDraws, apply_draws, draw_keyed

transformers = pytest.importorskip("transformers")
from tests.text.tiny_text import (  # noqa: E402
    CLS,
    HIDDEN,
    N_LAYERS,
    SEP,
    UNK,
    save_tiny_bert,
    write_tiny_ids_file,
)

EPOCHS = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def ids_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ids_file(tmp_path_factory.mktemp("ids") / "ids.h5")


def _cfg(tiny_dir: Path, **kw: object) -> ModelConfig:
    base: dict[str, object] = {"text_encoder": "pretrained", "text_model": str(tiny_dir),
                               "fine_tune_layers": 1, "d_model": 16, "n_heads": 2}  # fmt: skip
    return ModelConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, ids_h5: Path
) -> tuple[Path, dict]:
    from qamoe_core.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "ft"
    tcfg = TrainConfig(epochs=EPOCHS, batch_size=16, patience=EPOCHS, lr=3e-3)
    metrics = train(ids_h5, out, "qamoe", _cfg(tiny_dir, text_lr=1e-2), tcfg)
    return out, metrics


def _one_line(exc: QamoeError) -> None:
    assert "\n" not in exc.message and exc.hint


# -- config --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [("text_encoder", "bert"), ("fine_tune_layers", -2), ("text_pooling", "max"),
     ("text_model_hash", "md5:abc"), ("text_model", 3), ("text_lr", -1.0)],
)  # fmt: skip
def test_bad_text_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        ModelConfig(**{field: value})  # type: ignore[arg-type]
    _one_line(err.value)


def test_features_mode_builds_no_encoder() -> None:
    from qamoe_core.models import build_model

    model = build_model("qamoe", ModelConfig(), {"text": 8, "audio": 4}, "regression")
    assert model.text_front is None and model.text_special_ids is None
    assert not any(k.startswith("text_front") for k in model.state_dict())
    # The declared capability says so: features corrupted as ever, one learning rate.
    assert not model.reads_text_ids and model.spectrum_options() == {}
    assert model.parameter_groups() == [(None, list(model.parameters()))]


def test_the_text_capability_is_declared_on_the_model(tiny_dir: Path) -> None:
    from qamoe_core.models import build_model

    model = build_model("late-fusion", _cfg(tiny_dir, text_lr=2e-5), {"text": 7, "audio": 4},
                        "regression")  # fmt: skip
    assert model.reads_text_ids and model.text_special_ids == (UNK, CLS, SEP)
    assert model.spectrum_options() == {"special_ids": (UNK, CLS, SEP), "text_noise": True}
    (rest_lr, rest), (text_lr, text) = model.parameter_groups()
    assert rest_lr is None and text_lr == 2e-5
    assert {id(p) for p in text} == {id(p) for p in model.text_front.parameters()}
    assert len(rest) + len(text) == len(list(model.parameters()))


# -- training, checkpoint -------------------------------------------------------------------
def test_run_records_the_encoder_and_its_hash(trained: tuple[Path, dict], tiny_dir: Path) -> None:
    from qamoe_core.text.encoder import encoder_hash

    out, metrics = trained
    config = json.loads((out / "config.json").read_text())
    model = config["model_config"] if "model_config" in config else config["model"]
    assert model["text_encoder"] == "pretrained"
    assert model["text_model_hash"] == encoder_hash(tiny_dir)
    assert np.isfinite(metrics["test_clean"]["MAE"])


def test_fine_tuning_moves_only_the_top_layers(trained: tuple[Path, dict], tiny_dir: Path) -> None:
    from transformers import BertModel

    out, _ = trained
    from qamoe_core.runs.checkpoint import read_weights

    saved = read_weights(out)
    original = BertModel.from_pretrained(tiny_dir, local_files_only=True).state_dict()
    prefix = "text_front.encoder.model."
    mine = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
    changed = {k for k, v in mine.items() if not torch.equal(v, original[k])}
    top = f"encoder.layer.{N_LAYERS - 1}."
    assert changed, "the top layer did not train"
    assert all(k.startswith(top) for k in changed), sorted(changed)[:5]


def test_checkpoint_round_trip_gives_the_same_predictions(
    trained: tuple[Path, dict], ids_h5: Path, tiny_dir: Path
) -> None:
    import qamoe_core as qa

    out, metrics = trained
    run = qa.load_run(out, text_model=tiny_dir)
    assert run.meta["text_encoder"] == f"'{tiny_dir}' (given)"
    pred = qa.predict(run, ids_h5, split="test")
    with FeatureFile(ids_h5) as f:
        label = f.read("test", np.arange(f.n("test")))["label"]
    mae = float(np.abs(pred - label).mean())
    assert mae == pytest.approx(metrics["test_clean"]["MAE"], abs=1e-5)
    again = qa.predict(qa.load_run(out, text_model=tiny_dir), ids_h5, split="test")
    np.testing.assert_array_equal(pred, again)


def test_another_encoder_is_refused(trained: tuple[Path, dict], tmp_path: Path) -> None:
    from qamoe_core.runs.checkpoint import load_run

    out, _ = trained
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    other = save_tiny_bert(tmp_path / "other-bert", seed=1)  # same shapes, other weights
    config_path = moved / "config.json"
    config = json.loads(config_path.read_text())
    section = config["model_config"] if "model_config" in config else config["model"]
    section["text_model"] = str(other)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="another encoder") as err:
        load_run(moved, text_model=other)
    _one_line(err.value)


def test_file_without_ids_is_refused_before_any_output(tiny_dir: Path, tmp_path: Path) -> None:
    from qamoe_core.training.loop import train

    plain = write_tiny_ids_file(tmp_path / "plain.h5", with_ids=False)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="text_ids") as err:
        train(plain, out, "qamoe", _cfg(tiny_dir), TrainConfig(epochs=1))
    assert "extract mosi" in (err.value.hint or "")
    assert not out.exists()


def test_text_lr_has_its_own_parameter_groups(tiny_dir: Path) -> None:
    from qamoe_core.models import build_model
    from qamoe_core.training.step import make_optimizer

    model = build_model("qamoe", _cfg(tiny_dir, text_lr=2e-5), {"text": 7, "audio": 4},
                        "regression")  # fmt: skip
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    text_ids = {id(p) for p in model.text_front.parameters() if p.requires_grad}
    for group in opt.param_groups:
        mine = {id(p) for p in group["params"]}
        if mine & text_ids:
            assert mine <= text_ids and group["lr_scale"] == pytest.approx(2e-5 / 1e-3)
        else:
            assert group["lr_scale"] == 1.0
    assert text_ids <= {id(p) for g in opt.param_groups for p in g["params"]}
    assert model.dims["text"] == HIDDEN and model.file_dims["text"] == 7


@pytest.mark.parametrize("name", ["early-fusion", "late-fusion", "tfn", "lmf", "mult", "lnln"])
def test_every_kind_of_model_reads_the_ids(name: str, tiny_dir: Path, ids_h5: Path) -> None:
    """Shared-encoder baselines and models with encoders of their own: the text they get
    comes from the ids (changing one id changes the prediction) and gradients reach the top
    encoder layer."""
    from qamoe_core.models import build_model

    with FeatureFile(ids_h5) as f:
        batch = to_torch(f.read("train", np.arange(8)))
    model = build_model(name, _cfg(tiny_dir), {"text": HIDDEN, "audio": 4}, "regression")
    model.eval()
    with torch.no_grad():
        base = model(batch).prediction
        altered = dict(batch, text_ids=batch["text_ids"].clone())
        altered["text_ids"][:, 1] = 9 if int(batch["text_ids"][0, 1]) != 9 else 8
        moved = model(altered).prediction
    assert not torch.allclose(base, moved)
    model.train()
    model(batch).loss.backward()
    top = model.text_front.encoder.model.encoder.layer[-1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())


# -- the spectrum on ids ---------------------------------------------------------------------
def _test_batch(ids_h5: Path) -> tuple[dict, dict]:
    with FeatureFile(ids_h5) as f:
        raw = f.read("test", np.arange(f.n("test")))
        std = {m: f.train_std(m) for m in f.modalities}
    return to_torch(raw), {m: torch.from_numpy(v) for m, v in std.items()}


def test_unk_of_the_tokenizer_replaces_dropped_tokens_with_the_features_draws(
    ids_h5: Path,
) -> None:
    batch, std = _test_batch(ids_h5)
    draws = draw_keyed(batch, ["text"], seed=3, split="test", axis="missing")
    out = apply_draws(batch, draws, {"text": 0.5}, axis="missing", train_std=std,
                      special_ids=(UNK, CLS, SEP))  # fmt: skip
    ids, new = batch["text_ids"], out["text_ids"]
    valid = torch.arange(ids.shape[1])[None, :] < batch["text_len"][:, None]
    dropped = valid & ~out["text_keep"]
    special = (ids == CLS) | (ids == SEP)
    assert bool((new[dropped & ~special] == UNK).all())
    assert torch.equal(new[special], ids[special])  # [CLS]/[SEP] kept
    assert torch.equal(new[~dropped], ids[~dropped])
    # the features of the same steps are zeroed: one draw for both
    assert bool((out["text"][dropped] == 0).all())
    assert int((dropped & ~special).sum()) > 0


def test_text_noise_is_the_features_noise_in_unit_free_form(ids_h5: Path) -> None:
    batch, std = _test_batch(ids_h5)
    draws = draw_keyed(batch, ["text"], seed=5, split="test", axis="noise")
    out = apply_draws(batch, draws, {"text": 0.6}, axis="noise", noise_scale=2.0,
                      train_std=std, text_noise=True)  # fmt: skip
    added = out["text"] - batch["text"]  # = text_noise · train std where a step is hit
    torch.testing.assert_close(added, out["text_noise"] * std["text"], atol=1e-5, rtol=1e-5)
    assert float(out["text_noise"].abs().sum()) > 0
    plain = apply_draws(batch, draws, {"text": 0.6}, axis="noise", noise_scale=2.0,
                        train_std=std)  # fmt: skip
    assert "text_noise" not in plain and torch.equal(plain["text"], out["text"])
    _ = ModalityDraws  # the draws type used above


def test_noise_on_the_embeddings_changes_states_and_skips_the_cache(
    tiny_dir: Path, ids_h5: Path
) -> None:
    from qamoe_core.models import build_model

    batch, std = _test_batch(ids_h5)
    model = build_model("qamoe", _cfg(tiny_dir), {"text": HIDDEN, "audio": 4}, "regression")
    model.train()
    front = model.text_front
    assert front is not None and front.cache is not None
    draws = draw_keyed(batch, ["text"], seed=1, split="test", axis="noise")
    noisy = apply_draws(batch, draws, {"text": 0.8}, axis="noise", train_std=std, text_noise=True)
    with torch.no_grad():
        clean_text = front.inputs(batch)["text"]
        stored = len(front.cache)
        noisy_text = front.inputs(noisy)["text"]
        # exact: the cached path equals a fresh forward of the whole encoder
        fresh = front.encoder(batch["text_ids"][:, :8].long(), batch["text_len"]).states
    rows = zip(batch["text_ids"], batch["text_len"], strict=True)
    assert stored == len({tuple(r[:n].tolist()) for r, n in rows})
    assert len(front.cache) == stored  # noisy rows were not kept
    assert not torch.allclose(clean_text, noisy_text)
    torch.testing.assert_close(clean_text[:, :8], fresh, atol=1e-5, rtol=1e-5)


# -- evaluation ------------------------------------------------------------------------------
def test_sweep_runs_and_degrades_on_the_ids(
    trained: tuple[Path, dict], ids_h5: Path, tiny_dir: Path
) -> None:
    from qamoe_core.evaluation.plan import EvalConfig
    from qamoe_core.evaluation.sweep import evaluate_run

    out, _ = trained
    cfg = EvalConfig(sweep=True, axes=("missing", "noise"), levels=(0.0, 1.0), seeds=(0,))
    table = evaluate_run(out, ids_h5, cfg, text_model=tiny_dir).table
    mae = table[table["metric"] == "MAE"] if "metric" in table else table
    assert len(mae) > 0
    assert set(mae["axis"]) >= {"missing", "noise"}


def test_a_file_with_noised_text_features_is_refused(
    trained: tuple[Path, dict], ids_h5: Path, tmp_path: Path, tiny_dir: Path
) -> None:
    from qamoe_core.evaluation.plan import EvalConfig
    from qamoe_core.evaluation.sweep import evaluate_run
    from qamoe_core.spectrum.engine import CorruptionSpec
    from qamoe_core.spectrum.files import corrupt_file

    out, _ = trained
    noised = tmp_path / "noised.h5"
    corrupt_file(ids_h5, noised, CorruptionSpec(level=0.4, axis="noise"))
    with pytest.raises(InputError, match="noise on its text") as err:
        evaluate_run(out, noised, EvalConfig(), text_model=tiny_dir)
    _one_line(err.value)
    missing = tmp_path / "missing.h5"
    corrupt_file(ids_h5, missing, CorruptionSpec(level=0.4, axis="missing"))
    assert len(evaluate_run(out, missing, EvalConfig(), text_model=tiny_dir).table) > 0
