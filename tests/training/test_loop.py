"""The trainer: run directories, selection, resume, bad inputs, DDP."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qamoe_core.base.errors import CheckpointError, DataFormatError, InputError, TrainingError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.store import write_features
from qamoe_core.data.synthetic import generate
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.training.loop import TrainEvent, lr_at, train
from qamoe_core.training.step import Trainer

MODEL = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
FAST = TrainConfig(epochs=3, batch_size=16, patience=10)


def write_variant(path: Path, *, drop_valid: bool = False, audio_dims: int | None = None,
                  binary: bool = False) -> Path:  # fmt: skip
    """The tiny preset, optionally without valid split, with other audio dims, or binary."""
    splits = generate("tiny", seed=0)
    if drop_valid:
        splits.pop("valid")
    for arrays in splits.values():
        if audio_dims is not None:
            arrays.features["audio"] = arrays.features["audio"][:, :, :audio_dims].copy()
        if binary:
            arrays.label = (arrays.label > 0).astype(np.float32)
    write_features(path, splits, dataset="tiny-variant", task="binary" if binary else "regression",
                   scheme="binary" if binary else "mosi",
                   label_range=(0.0, 1.0) if binary else (-3.0, 3.0), extractor={})  # fmt: skip
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_weights(run)


def test_run_directory_and_history(tiny_h5: Path, tmp_path: Path) -> None:
    events: list[TrainEvent] = []
    result = train(tiny_h5, tmp_path / "run", "qamoe", MODEL, FAST, device="cpu",
                   progress=events.append)  # fmt: skip
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(ckpt.ALL_FILES)
    ckpt.check_run(run)
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "qamoe-run" and config["format_version"] == 1
    recorded = MODEL.to_dict() | {"options": config["model"]["options"]}
    assert config["model"] == recorded and config["train"] == FAST.to_dict()
    # QA-MoE's own switches and loss weights: its options, defaults filled in
    assert config["model"]["options"]["quality_gate"] is True
    assert config["model"]["options"]["unc_weight"] == 0.1 and "unc_weight" not in recorded
    assert config["dims"] == {"text": 32, "audio": 5, "vision": 8}
    assert config["dataset"]["sha256"] and config["task"] == "regression"
    history = ckpt.read_history(run)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["train_loss"]) and "0.5" in h["val"] for h in history)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == {k: v for k, v in result.items() if k != "run_dir"}
    best = min(history, key=lambda h: h["val_score"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["val_score"] == best["val_score"]
    assert metrics["select_metric"] == "MAE" and "test_clean" in metrics
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3
    assert kinds.count("batch") == 3 * 4  # 64 train samples / 16


def test_selected_weights_reproduce_the_validation_score(tiny_h5: Path, tmp_path: Path) -> None:
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.data.torchdata import to_torch
    from qamoe_core.metrics import compute
    from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec

    result = train(tiny_h5, tmp_path / "run", "qamoe", MODEL, FAST, device="cpu")
    model, _, _ = ckpt.load_run(tmp_path / "run")
    with FeatureFile(tiny_h5) as f:
        batch = f.read("valid", slice(None))
        std = {m: f.train_std(m) for m in f.modalities}
    spec = CorruptionSpec(level=0.5, seed=FAST.val_seed)
    with torch.no_grad():
        pred = model(to_torch(apply_spec(batch, spec, split="valid", train_std=std))).prediction
    mae = compute(pred.numpy(), batch["label"], "mosi")["MAE"]
    assert mae == pytest.approx(result["val_score"], abs=1e-6)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_equals_uninterrupted(tiny_h5: Path, tmp_path: Path, ema: float) -> None:
    cfg = replace(FAST, epochs=4, ema_decay=ema)
    train(tiny_h5, tmp_path / "full", "qamoe", MODEL, cfg, device="cpu")

    def interrupt(event: TrainEvent) -> None:
        if event.kind == "batch" and event.epoch == 3 and event.batch == 2:
            raise KeyboardInterrupt  # mid-epoch, after two epochs were saved

    with pytest.raises(KeyboardInterrupt):
        train(tiny_h5, tmp_path / "cut", "qamoe", MODEL, cfg, device="cpu", progress=interrupt)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert len(ckpt.read_history(tmp_path / "cut")) == 2
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny_h5, tmp_path / "cut", "qamoe", MODEL, cfg, device="cpu")
    result = train(tiny_h5, tmp_path / "cut", "qamoe", None, None, resume=True, device="cpu")
    full, cut = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)
    last_full = torch.load(tmp_path / "full" / "train_state.pt", weights_only=True)["model"]
    last_cut = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)["model"]
    assert all(torch.equal(last_full[k], last_cut[k]) for k in last_full)
    assert ckpt.read_history(tmp_path / "cut")[-1]["val_score"] == pytest.approx(
        ckpt.read_history(tmp_path / "full")[-1]["val_score"], abs=0
    )
    assert result["epochs_run"] == 4
    state = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=True)
    if ema:  # the average is kept (and resumed) beside the trained weights
        assert not all(torch.equal(state["ema_model"][k], last_cut[k]) for k in last_cut)
    else:
        assert state["ema_model"] is None


def test_same_seed_same_weights_other_seed_differs(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = replace(FAST, epochs=1)
    train(tiny_h5, tmp_path / "a", "qamoe", MODEL, cfg, device="cpu")
    train(tiny_h5, tmp_path / "b", "qamoe", MODEL, cfg, device="cpu")
    train(tiny_h5, tmp_path / "c", "qamoe", MODEL, replace(cfg, seed=1), device="cpu")
    a, b, c = (weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_lazy_reading_matches_in_memory(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = replace(FAST, epochs=1)
    train(tiny_h5, tmp_path / "mem", "qamoe", MODEL, cfg, device="cpu")
    train(tiny_h5, tmp_path / "lazy", "qamoe", MODEL, replace(cfg, in_memory_gib=0.0),
          device="cpu")  # fmt: skip
    a, b = weights(tmp_path / "mem"), weights(tmp_path / "lazy")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("name", ["late-fusion", "early-fusion", "dense-moe"])
def test_baselines_train_through_the_same_path(tiny_h5: Path, tmp_path: Path, name: str) -> None:
    result = train(tiny_h5, tmp_path / name, name, MODEL, replace(FAST, epochs=1), device="cpu")
    model, _, meta = ckpt.load_run(tmp_path / name)
    assert meta["model_name"] == name and type(model).name == name
    assert np.isfinite(result["val_score"])


def test_binary_task(tmp_path: Path) -> None:
    data = write_variant(tmp_path / "bin.h5", binary=True)
    result = train(data, tmp_path / "run", "qamoe", MODEL, replace(FAST, epochs=2), device="cpu")
    assert result["select_metric"] == "Acc_2" and 0.0 <= result["val_score"] <= 1.0
    assert set(result["test_clean"]) >= {"Acc_2", "F1_score"}


def test_output_folder_rules(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = replace(FAST, epochs=1)
    train(tiny_h5, tmp_path / "run", "qamoe", MODEL, cfg, device="cpu")
    with pytest.raises(InputError, match="already holds a run") as exc:
        train(tiny_h5, tmp_path / "run", "qamoe", MODEL, cfg, device="cpu")
    assert "--force" in (exc.value.hint or "")
    train(tiny_h5, tmp_path / "run", "early-fusion", MODEL, cfg, device="cpu", force=True)
    assert ckpt.read_config(tmp_path / "run")["model_name"] == "early-fusion"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no qamoe run"):
        train(tiny_h5, other, "qamoe", MODEL, cfg, device="cpu", force=True)
    assert (other / "notes.txt").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_h5, tmp_path / "fresh", "qamoe", MODEL, cfg, device="cpu", resume=True)


def test_dataset_without_valid_split(tmp_path: Path) -> None:
    data = write_variant(tmp_path / "novalid.h5", drop_valid=True)
    with pytest.raises(DataFormatError, match="no 'valid' split") as exc:
        train(data, tmp_path / "run", "qamoe", MODEL, FAST, device="cpu")
    assert "never on test" in (exc.value.hint or "")
    assert not (tmp_path / "run").exists()


def test_resume_with_other_dims_or_config(tiny_h5: Path, tmp_path: Path) -> None:
    cfg = replace(FAST, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_h5, tmp_path / "run", "qamoe", MODEL, cfg, device="cpu",
              progress=lambda e: (_ for _ in ()).throw(KeyboardInterrupt)
              if e.kind == "epoch" else None)  # fmt: skip
    other = write_variant(tmp_path / "other.h5", audio_dims=3)
    with pytest.raises(CheckpointError, match="dims") as exc:
        train(other, tmp_path / "run", "qamoe", None, None, resume=True, device="cpu")
    assert "same DATA.h5" in (exc.value.hint or "")
    with pytest.raises(CheckpointError, match=r"differs .* lr"):
        train(tiny_h5, tmp_path / "run", "qamoe", MODEL, replace(cfg, lr=0.5), resume=True,
              device="cpu")  # fmt: skip
    with pytest.raises(CheckpointError, match="trains 'qamoe'"):
        train(tiny_h5, tmp_path / "run", "late-fusion", None, None, resume=True, device="cpu")


def test_nan_loss_names_epoch_and_batch_and_keeps_last_checkpoint(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    original = Trainer.corrupt

    def poisoned(self: Trainer, clean: dict, gen: torch.Generator) -> dict:
        calls["n"] += 1
        batch = original(self, clean, gen)
        if calls["n"] == 6:  # epoch 2 (4 batches per epoch), batch 2
            batch = {**batch, "audio": batch["audio"] * float("nan")}
        return batch

    monkeypatch.setattr(Trainer, "corrupt", poisoned)
    with pytest.raises(TrainingError, match="epoch 2, batch 2") as exc:
        train(tiny_h5, tmp_path / "run", "qamoe", MODEL, FAST, device="cpu")
    assert "epoch 1" in (exc.value.hint or "")
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and (tmp_path / "run" / "model.safetensors").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_things_as_they_were(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = replace(FAST, epochs=1)
    run = tmp_path / "run"
    train(tiny_h5, run, "late-fusion", MODEL, cfg, device="cpu")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    original = Trainer.corrupt

    def poisoned(self: Trainer, clean: dict, gen: torch.Generator) -> dict:
        batch = original(self, clean, gen)
        return {**batch, "audio": batch["audio"] * float("nan")}

    monkeypatch.setattr(Trainer, "corrupt", poisoned)
    # --force over a finished run: the failed replacement gives the old run back, intact
    with pytest.raises(TrainingError, match="epoch 1, batch 1") as exc:
        train(tiny_h5, run, "qamoe", MODEL, cfg, device="cpu", force=True)
    assert "Nothing was kept" in (exc.value.hint or "")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # a new folder: removed again, so the same command can simply be rerun
    with pytest.raises(TrainingError):
        train(tiny_h5, tmp_path / "new", "qamoe", MODEL, cfg, device="cpu")
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(Trainer, "corrupt", original)
    train(tiny_h5, run, "qamoe", MODEL, cfg, device="cpu", force=True)  # now it replaces it
    assert ckpt.read_config(run)["model_name"] == "qamoe"


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_non_finite_data_is_named_before_training(
    tiny_h5: Path, tmp_path: Path, split: str
) -> None:
    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "a") as h5:
        h5[f"{split}/vision"][1, 0, 0] = np.nan
    with pytest.raises(DataFormatError, match=rf"\[{split}\]: 'vision' holds 1 non-finite"):
        train(bad, tmp_path / "run", "qamoe", MODEL, FAST, device="cpu")
    assert not (tmp_path / "run").exists()
    lazy = replace(FAST, in_memory_gib=0.0)  # read in batches: checked batch by batch
    if split == "test":  # read lazily, test is only scored (for reference) at the end
        result = train(bad, tmp_path / "run", "qamoe", MODEL, lazy, device="cpu")
        assert result["test_clean"] is None and "non-finite" in result["test_note"]
        return
    with pytest.raises(DataFormatError, match="non-finite"):
        train(bad, tmp_path / "run", "qamoe", MODEL, lazy, device="cpu")


def test_select_metric_must_exist_for_the_scheme(tiny_h5: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"scheme 'mosi'. Got 'Acc_2'"):
        train(tiny_h5, tmp_path / "run", "qamoe", MODEL, replace(FAST, select_metric="Acc_2"),
              device="cpu")  # fmt: skip
    with pytest.raises(InputError, match="'model' parameter"):
        train(tiny_h5, tmp_path / "run", "lstm", MODEL, FAST, device="cpu")
    assert not (tmp_path / "run").exists()


def test_learning_rate_schedule() -> None:
    lrs = [lr_at(s, total=100, warmup=10, peak=1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 0.01


@pytest.mark.slow
def test_the_optimizer_follows_the_models_parameter_groups() -> None:
    # A model (a plug-in) declares its own groups on the contract; training reads them.
    from qamoe_core.models import get
    from qamoe_core.training.step import make_optimizer

    class SlowHead(get("early-fusion")):  # type: ignore[misc]
        def parameter_groups(self) -> list:
            head = {id(p) for p in self.head.parameters()}
            params = list(self.parameters())
            return [(None, [p for p in params if id(p) not in head]),
                    (1e-4, [p for p in params if id(p) in head])]  # fmt: skip

    model = SlowHead(MODEL, {"text": 6, "audio": 4}, "regression")
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(scale) == len(list(model.parameters()))
    assert all(scale[id(p)] == pytest.approx(0.1) for p in model.head.parameters())
    assert {scale[id(p)] for p in model.mlp.parameters()} == {1.0}


def test_distributed_two_cpu_processes(tiny_h5: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes: the same command, one run written by rank 0."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": MODEL.to_dict(), "train": {"epochs": 2}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "-m", "qamoe_cli.main",
           "train", str(tiny_h5), "--out", str(tmp_path / "run"), "--config", str(cfg),
           "--device", "cpu", "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["world_size"] == 2 and result["epochs_run"] == 2
    ckpt.check_run(tmp_path / "run")
    assert len(ckpt.read_history(tmp_path / "run")) == 2
    model, _, _ = ckpt.load_run(tmp_path / "run")
    assert not any(k.startswith("module.") for k in model.state_dict())


def test_early_stopping_stops_after_patience_epochs_without_improvement(
    tiny_h5: Path, tmp_path: Path
) -> None:
    cfg = replace(FAST, epochs=40, patience=2)
    result = train(tiny_h5, tmp_path / "run", "early-fusion", MODEL, cfg, device="cpu")
    history = ckpt.read_history(tmp_path / "run")
    scores = [h["val_score"] for h in history]
    best = int(np.argmin(scores)) + 1  # MAE: lower is better; the first best wins ties
    assert result["stopped_early"] and len(history) == result["epochs_run"] < 40
    assert result["best_epoch"] == best and result["val_score"] == min(scores)
    assert result["epochs_run"] == best + 2  # exactly `patience` epochs after the best


def test_training_corruption_follows_levels_axis_and_modalities(tiny_h5: Path) -> None:
    """A specialist's batches are corrupted at its one level, on its axis and modalities only."""
    from qamoe_core.data.store import FeatureFile, load_split
    from qamoe_core.data.torchdata import to_torch
    from qamoe_core.models.registry import build_model
    from qamoe_core.training.loop import DistInfo

    with FeatureFile(tiny_h5) as f:
        dims = dict(f.dims)
        std = {m: torch.as_tensor(f.train_std(m)) for m in f.modalities}
    clean = to_torch(load_split(tiny_h5, "train"))
    cfg = replace(FAST, train_levels=(0.6, 0.6), clean_fraction=0.0, axis="missing",
                  corrupt_modalities=("text", "audio"))  # fmt: skip
    model = build_model("early-fusion", MODEL, dims, "regression")
    trainer = Trainer(model, cfg, torch.device("cpu"), DistInfo(), std, tuple(dims))
    batch = trainer.corrupt(clean, torch.Generator().manual_seed(0))
    for m in ("text", "audio"):
        t = clean[m].shape[1]
        valid = torch.arange(t)[None, :] < clean[f"{m}_len"][:, None]
        dropped = (batch[m].abs().sum(-1) == 0) & valid
        assert float(dropped.sum() / valid.sum()) == pytest.approx(0.6, abs=0.08), m
        kept = valid & ~dropped
        assert torch.equal(batch[m][kept], clean[m][kept])  # the missing axis adds no noise
    assert torch.equal(batch["vision"], clean["vision"])  # not among corrupt_modalities


def test_level_draws_switch(tiny_h5: Path) -> None:
    """TrainConfig.level_draws: tied (default, the draws of earlier versions) or independent
    (η and λ apart, byte-identical for a seed); independent needs the mixed axis."""
    from qamoe_core.base.errors import ConfigError
    from qamoe_core.data.store import FeatureFile, load_split
    from qamoe_core.data.torchdata import to_torch
    from qamoe_core.models.registry import build_model
    from qamoe_core.spectrum.engine import corrupt_batch, sample_levels
    from qamoe_core.training.loop import DistInfo

    assert TrainConfig().level_draws == "tied"
    with pytest.raises(ConfigError, match=r"'level_draws'.*mixed axis"):
        TrainConfig(level_draws="independent", axis="missing")
    with FeatureFile(tiny_h5) as f:
        dims = dict(f.dims)
        std = {m: torch.as_tensor(f.train_std(m)) for m in f.modalities}
    clean = to_torch(load_split(tiny_h5, "train"))
    model = build_model("early-fusion", MODEL, dims, "regression")

    def corrupted(cfg: TrainConfig, seed: int) -> dict:
        trainer = Trainer(model, cfg, torch.device("cpu"), DistInfo(), std, tuple(dims))
        return trainer.corrupt(clean, torch.Generator().manual_seed(seed))

    tied = corrupted(FAST, 0)
    g = torch.Generator().manual_seed(0)
    levels = sample_levels(clean["label"].shape[0], tuple(dims), generator=g)
    by_hand = corrupt_batch(clean, levels, train_std=std, generator=g)
    indep = replace(FAST, level_draws="independent")
    a, b = corrupted(indep, 0), corrupted(indep, 0)
    for m in dims:
        assert torch.equal(tied[m], by_hand[m])  # the default draws what it always drew
        assert torch.equal(a[m], b[m]) and torch.equal(a[f"{m}_keep"], b[f"{m}_keep"])
    assert any(not torch.equal(a[m], tied[m]) for m in dims)


def test_selection_levels_are_configurable(tiny_h5: Path) -> None:
    """Selection scores the validation split at train.val_levels (default: mixed 0.5 alone);
    e.g. [0, 0.3, 0.6] scores it clean (uncorrupted) and at two levels, with the mean of the
    three as the score."""
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.training.data import SplitData, validation_sets

    assert TrainConfig().val_levels == (0.5,)
    with FeatureFile(tiny_h5) as f:
        std = {m: torch.as_tensor(f.train_std(m)) for m in f.modalities}
        data = SplitData(f, "valid", torch.device("cpu"), 4.0)
        sets = validation_sets(data, f, replace(FAST, val_levels=(0.0, 0.3, 0.6)), std, 64)
    assert [vs.level for vs in sets] == [0.0, 0.3, 0.6]
    assert sets[0].spec is None  # level 0: the split as it is
    assert [vs.spec.level for vs in sets[1:]] == [0.3, 0.6]
    clean, low = (next(iter(vs.batches())) for vs in sets[:2])
    assert torch.equal(clean["text"], data.memory["text"][: clean["text"].shape[0]])
    assert not torch.equal(low["text"], clean["text"])
