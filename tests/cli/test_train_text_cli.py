"""`qamoe train --text-encoder pretrained`: the flags, the saved config and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qamoe_cli.main import main

pytest.importorskip("transformers")
from tests.text.tiny_text import save_tiny_bert, write_tiny_ids_file

MODEL = {"d_model": 16, "n_heads": 2, "num_experts": 4, "top_k": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("text-cli")
    cfg = root / "cfg.json"
    cfg.write_text(json.dumps({"model": MODEL, "train": {"epochs": 1, "batch_size": 16}}))
    return save_tiny_bert(root / "bert"), write_tiny_ids_file(root / "ids.h5"), cfg


def test_flags_reach_the_saved_config(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bert, data, cfg = setup
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--config", str(cfg), "--device", "cpu",
            "--text-encoder", "pretrained", "--text-model", str(bert),
            "--fine-tune-layers", "1"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 1
    saved = json.loads((out / "config.json").read_text())["model"]
    assert (saved["text_encoder"], saved["text_model"], saved["fine_tune_layers"]) == (
        "pretrained", str(bert), 1)  # fmt: skip
    assert saved["text_model_hash"].startswith("sha256:")


def test_bad_text_input_is_one_line_with_a_hint(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bert, data, cfg = setup
    base = ["train", str(data), "--config", str(cfg), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a"), "--text-encoder", "bert"]) == 2
    err = capsys.readouterr().err
    assert "text_encoder" in err and "Traceback" not in err

    missing = tmp_path / "no-such-model"
    argv = [*base, "--out", str(tmp_path / "b"), "--text-encoder", "pretrained",
            "--text-model", str(missing)]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()

    plain = write_tiny_ids_file(tmp_path / "plain.h5", with_ids=False)
    argv = ["train", str(plain), "--config", str(cfg), "--out", str(tmp_path / "c"),
            "--text-encoder", "pretrained", "--text-model", str(bert)]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "text_ids" in err and "extract mosi" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
