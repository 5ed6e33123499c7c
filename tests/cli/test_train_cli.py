"""`qamoe train`: JSON output, flags over config files, resume, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qamoe_cli.main import main
from qamoe_core.config import TrainConfig

MODEL = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": MODEL, "train": {"epochs": 5, "batch_size": 16}}))
    return path


def test_train_json_and_flags_override_config(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--epochs", "2"]
    assert main([*args, "--seed", "3", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs_run"] == 2 and result["run_dir"] == str(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == 3  # flags win
    assert saved["train"]["batch_size"] == 16 and saved["model"]["d_model"] == 16  # file
    assert saved["train"]["lr"] == TrainConfig().lr  # default

    assert main([*args, "--quiet"]) == 1  # the run exists
    err = capsys.readouterr().err
    assert "error: The output folder" in err and "--resume" in err and "Traceback" not in err


def test_table_output_and_model_choice(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--epochs", "1"]
    assert main([*args, "--model", "late-fusion", "-q"]) == 0
    shown = capsys.readouterr().out
    assert "valid @ level 0.5" in shown and "test clean (not used to select)" in shown
    assert json.loads((out / "config.json").read_text())["model_name"] == "late-fusion"
    assert main([*args, "--model", "lstm"]) == 1
    assert "'--model' parameter must be one of qamoe, late-fusion" in capsys.readouterr().err


def test_resume_continues_an_interrupted_run(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "-q"]) == 0
    capsys.readouterr()
    full = json.loads((out / "metrics.json").read_text())
    # Simulate a crash after epoch 2: keep a train_state from a 2-epoch-long partial run.
    part = tmp_path / "part"
    from qamoe_core.train import TrainEvent, train

    def stop(event: TrainEvent) -> None:
        if event.kind == "epoch" and event.epoch == 2:
            raise KeyboardInterrupt

    from qamoe_core.config import resolve

    model_cfg, train_cfg = resolve(cfg)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_h5, part, "qamoe", model_cfg, train_cfg, device="cpu", progress=stop)
    assert main(["train", str(tiny_h5), "--out", str(part), "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["val_score"] == full["val_score"] and resumed["best_epoch"] == full["best_epoch"]
    # changing the config while resuming is refused
    assert main(["train", str(tiny_h5), "--out", str(part), "--resume", "--lr", "0.5"]) == 1
    assert "differs from the run being resumed in: lr" in capsys.readouterr().err


def test_config_errors_are_one_line(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"top_kk": 2}}))
    assert (
        main(["train", str(tiny_h5), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    )  # unknown field: usage
    err = capsys.readouterr().err
    assert "error: Unknown config key(s) in section 'model': top_kk." in err and "hint:" in err
    # a value out of range is a usage error: exit 2
    assert main(["train", str(tiny_h5), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "The 'epochs' parameter must be an integer in [1, 100000]. Got 0" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()
    assert main(["train", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err
