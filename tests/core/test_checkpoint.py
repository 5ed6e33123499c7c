"""Run directories: round trip, the file checker, damaged and mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qamoe_core import checkpoint as ckpt
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.errors import CheckpointError, InputError
from qamoe_core.model import build_model

DIMS = {"text": 12, "audio": 5, "vision": 7}
CFG = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)


def write_run(run: Path, name: str = "qamoe", task: str = "regression") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, CFG, DIMS, task)
    with torch.no_grad():  # non-default buffers and weights must survive the trip
        model.set_feature_stats(
            {m: torch.randn(d) for m, d in DIMS.items()},
            {m: torch.rand(d) + 0.5 for m, d in DIMS.items()},
        )
    run.mkdir(parents=True, exist_ok=True)
    config = ckpt.run_config(name, CFG, TrainConfig(epochs=2), dims=DIMS, task=task,
                             scheme="mosi", dataset={"name": "unit"})  # fmt: skip
    ckpt.write_config(run, config)
    ckpt.save_weights(run, model.state_dict())
    ckpt.write_metrics(run, {"val_score": 1.0})
    ckpt.write_history(run, [{"epoch": 1}])
    return model.eval()


def batch_of(b: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    out: dict[str, torch.Tensor] = {}
    for m, d in DIMS.items():
        out[m] = torch.randn(b, 9, d, generator=g)
        out[f"{m}_len"] = torch.full((b,), 9)
    return out


@pytest.mark.parametrize("name", ["qamoe", "late-fusion", "early-fusion", "dense-moe"])
def test_round_trip_gives_identical_predictions(tmp_path: Path, name: str) -> None:
    model = write_run(tmp_path / "run", name)
    loaded, cfg, meta = ckpt.load_run(tmp_path / "run")
    assert cfg == CFG and meta["model_name"] == name and meta["dims"] == DIMS
    assert meta["train_config"] == TrainConfig(epochs=2) and meta["metrics"] == {"val_score": 1.0}
    assert not loaded.training
    batch = batch_of()
    assert torch.equal(model(batch).prediction, loaded(batch).prediction)
    # state dict only: loadable with weights_only=True by anyone
    sd = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert set(sd) == set(model.state_dict())


def test_checker_names_the_missing_file(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing 'metrics.json'"):
        ckpt.check_run(tmp_path / "run")
    ckpt.load_run(tmp_path / "run")  # evaluation only needs config.json and model.pt
    (tmp_path / "run" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=r"missing 'model.pt'"):
        ckpt.load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_run(tmp_path / "nope")


def test_damaged_weights(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    (tmp_path / "run" / "model.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"'model.pt' .* is damaged") as exc:
        ckpt.load_run(tmp_path / "run")
    assert exc.value.hint and "--force" in exc.value.hint


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    torch.save({"x": Path("a")}, tmp_path / "run" / "model.pt")  # not a plain state dict
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_run(tmp_path / "run")


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    other = build_model("qamoe", CFG.override(d_model=32), DIMS, "regression")
    ckpt.save_weights(tmp_path / "run", other.state_dict())
    with pytest.raises(CheckpointError, match="do not fit the model"):
        ckpt.load_run(tmp_path / "run")


def test_config_problems(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        ckpt.load_run(tmp_path / "run")
    data["model"]["top_k"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="top_k"):
        ckpt.load_run(tmp_path / "run")
    path.write_text("{")
    with pytest.raises(CheckpointError, match=r"'config.json' .* damaged"):
        ckpt.load_run(tmp_path / "run")


def test_device_resolution() -> None:
    assert ckpt.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="auto, cpu, cuda"):
        ckpt.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            ckpt.resolve_device("cuda")
