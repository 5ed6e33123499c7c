"""Issue 26, item 2: the encoder folder a run records is a hint, never opened on its word.

A run records its encoder's folder and content hash. Loading it uses the folder the user names
(--text-model / text_model=), an encoder inside the run folder, or the packaged MiniLM, each
only when its content hash matches, checked before anything is loaded; which folder was used
is said. `train --resume` with the identical command line (a relative --text-model) is accepted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qamoe_core.base.errors import CheckpointError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.models import text_front
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.text.encoder import encoder_hash

transformers = pytest.importorskip("transformers")
from tests.text.tiny_text import save_tiny_bert, write_tiny_ids_file  # noqa: E402

MODEL = {"d_model": 16, "n_heads": 2, "num_experts": 4, "top_k": 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "bert")


@pytest.fixture(scope="module")
def ids_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ids_file(tmp_path_factory.mktemp("ids") / "ids.h5")


@pytest.fixture(scope="module")
def run(tiny_dir: Path, ids_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qamoe_core.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "ft"
    cfg = ModelConfig(text_encoder="pretrained", text_model=str(tiny_dir), fine_tune_layers=1,
                      **MODEL)  # fmt: skip
    train(ids_h5, out, "qamoe", cfg, TrainConfig(epochs=1, batch_size=16), device="cpu")
    return out


def _copy(run: Path, dest: Path, text_model: str) -> Path:
    shutil.copytree(run, dest)
    config = json.loads((dest / "config.json").read_text())
    config["model"]["text_model"] = text_model
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_a_recorded_absolute_path_is_never_opened(
    run: Path, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    real_hash = text_front.encoder_hash

    def spy(path: Path) -> str:
        opened.append(Path(path))
        return real_hash(path)

    monkeypatch.setattr(text_front, "encoder_hash", spy)
    with pytest.raises(CheckpointError, match="never a path a run records") as err:
        ckpt.load_run(run)  # config.json names tiny_dir, absolute
    assert "--text-model DIR" in (err.value.hint or "") and "\n" not in err.value.message
    assert tiny_dir.resolve() not in [p.resolve() for p in opened]
    _, cfg, meta = ckpt.load_run(run, text_model=tiny_dir)  # named by the user: used
    assert meta["text_encoder"] == f"'{tiny_dir}' (given)" and cfg.text_model == str(tiny_dir)


def test_the_hash_is_checked_before_the_encoder_is_built(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = save_tiny_bert(tmp_path / "other", seed=1)

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the encoder was loaded before its hash was checked")

    monkeypatch.setattr("qamoe_core.text.locate.load_model", never)
    monkeypatch.setattr("qamoe_core.text.encoder.load_model", never)
    monkeypatch.setattr("qamoe_core.text.encoder.load_tokenizer", never)
    with pytest.raises(CheckpointError, match="another encoder"):
        ckpt.load_run(run, text_model=other)
    cfg = ckpt.read_config(run)["model_config"].override(text_model=str(other))
    with pytest.raises(CheckpointError, match="another encoder"):
        text_front.build_encoder(cfg)


def test_an_encoder_inside_the_run_folder_is_found(
    run: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    moved = _copy(run, tmp_path / "shared", "encoder")
    shutil.copytree(tiny_dir, moved / "encoder")
    _, cfg, meta = ckpt.load_run(moved)
    assert meta["text_encoder"] == f"'{(moved / 'encoder').resolve()}' (inside the run folder)"
    # A relative path that climbs out of the run folder is not followed.
    shutil.copytree(tiny_dir, tmp_path / "beside")
    escaping = _copy(run, tmp_path / "escaping", "../beside")
    with pytest.raises(CheckpointError, match="never a path a run records"):
        ckpt.load_run(escaping)
    assert encoder_hash(tmp_path / "beside") == cfg.text_model_hash  # the same encoder, even


def test_eval_says_which_encoder_folder_it_used(
    run: Path, tiny_dir: Path, ids_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qamoe_cli.main import main

    args = ["eval", str(run), "--data", str(ids_h5), "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "never a path a run records" in err and "--text-model" in err
    assert main([*args, "--text-model", str(tiny_dir)]) == 0
    assert f"text encoder: '{tiny_dir}' (given)" in capsys.readouterr().err


def test_resume_with_the_same_relative_text_model_is_accepted(
    tiny_dir: Path, ids_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from qamoe_cli.main import main

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_dir, tmp_path / "bert")
    save_tiny_bert(tmp_path / "other", seed=1)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": MODEL, "train": {"epochs": 1, "batch_size": 16}}))
    argv = ["train", str(ids_h5), "--out", "run", "--config", "cfg.json", "--device", "cpu",
            "--text-encoder", "pretrained", "--text-model", "bert"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    (tmp_path / "run" / "metrics.json").unlink()  # as if stopped before the end
    assert main([*argv, "--resume"]) == 0  # the identical command line, plus --resume
    assert "text encoder: '" in capsys.readouterr().err
    argv[argv.index("bert")] = "other"
    assert main([*argv, "--resume"]) == 1  # another folder: another encoder
    assert "another encoder" in capsys.readouterr().err


def test_code_shipped_with_a_run_never_runs(
    run: Path, tiny_dir: Path, ids_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A downloaded run carrying its own encoder folder with an auto_map and .py files, the
    recorded hash made to match: eval finds the folder, then refuses it before loading."""
    from qamoe_cli.main import main
    from tests.text.tiny_text import remote_code_folder

    marker = tmp_path / "ran"
    shared = _copy(run, tmp_path / "shared", "encoder")
    remote_code_folder(tiny_dir, tmp_path, marker).rename(shared / "encoder")
    config = json.loads((shared / "config.json").read_text())
    config["model"]["text_model_hash"] = encoder_hash(shared / "encoder")
    (shared / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(shared), "--data", str(ids_h5), "--device", "cpu", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error:") and "auto_map" in err[0]
    assert not marker.exists()
