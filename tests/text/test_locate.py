"""text/locate.py: which encoder folder is opened, and (issue 26, item 2) that a text encoder
folder never runs code.

Folders are built from the tiny BERT of tiny_text.py (no download), then made hostile: an
``auto_map`` with ``.py`` files that write a marker, an unknown ``model_type``, a pickled
``pytorch_model.bin`` that would write a marker, shard names leaving the folder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qamoe_core.base.errors import InputError
from qamoe_core.text import locate
from qamoe_core.text.encoder import PretrainedTextEncoder, TextEncoderError
from qamoe_core.text.locate import ModelFolderError, check_folder, resolve_text_model

transformers = pytest.importorskip("transformers")
from tests.text.tiny_text import (  # noqa: E402
    remote_code_folder,
    save_tiny_bert,
    write_tiny_ids_file,
)

REPO = Path(__file__).resolve().parents[2]
MODEL = {"d_model": 16, "n_heads": 2, "num_experts": 4, "top_k": 2}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "bert")


@pytest.fixture(scope="module")
def ids_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ids_file(tmp_path_factory.mktemp("ids") / "ids.h5")


class Payload:
    """Unpickling calls ``open(marker, 'w')``: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def test_remote_code_is_refused_before_anything_is_read(tiny_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = remote_code_folder(tiny_dir, tmp_path, marker)
    with pytest.raises(TextEncoderError, match=r"'auto_map' in config\.json") as err:
        PretrainedTextEncoder(folder)
    assert "\n" not in err.value.message and err.value.hint
    from qamoe_core.data.media.text import TextExtractor

    with pytest.raises(InputError, match="asks to run its own Python code"):
        TextExtractor(folder)
    assert not marker.exists()
    # The auto_map in the tokenizer's config is the same door.
    plain = tmp_path / "tok-map"
    shutil.copytree(tiny_dir, plain)
    tok = json.loads((plain / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (plain / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(ModelFolderError, match=r"tokenizer_config\.json"):
        check_folder(plain)


def test_cli_refuses_remote_code_even_when_yes_answers(
    tiny_dir: Path, ids_h5: Path, tmp_path: Path
) -> None:
    """`yes | qamoe train ... --text-model DIR`: exit 1, one line, the payload never ran."""
    marker = tmp_path / "ran"
    folder = remote_code_folder(tiny_dir, tmp_path, marker)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": MODEL, "train": {"epochs": 1, "batch_size": 16}}))
    argv = [sys.executable, "-m", "qamoe_cli.main", "train", str(ids_h5), "--out",
            str(tmp_path / "run"), "--config", str(cfg), "--device", "cpu", "-q",
            "--text-encoder", "pretrained", "--text-model", str(folder)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(argv, input=b"y\n" * 1000, capture_output=True, env=env, timeout=300)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert not marker.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:") and "auto_map" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_unknown_model_type_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unknown"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-arch"}))
    with pytest.raises(TextEncoderError, match=r"'no-such-arch' in config\.json, which"):
        PretrainedTextEncoder(folder)


def test_a_code_running_pickle_is_refused_in_our_words(tiny_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload(marker)}))
    with pytest.raises(TextEncoderError, match="not a weights-only tensor file") as err:
        PretrainedTextEncoder(folder)
    text = f"{err.value.message} {err.value.hint}"
    assert "weights_only=False" not in text and "\n" not in err.value.message
    assert not marker.exists()
    # A clean pickled checkpoint (weights only) still loads.
    import torch

    model = transformers.BertModel.from_pretrained(tiny_dir)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert PretrainedTextEncoder(folder, fine_tune_layers=0).n_layers == 3


def test_shard_names_must_stay_inside_the_folder(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    index = {"weight_map": {"embeddings.word_embeddings.weight": "../outside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="not a file of the folder"):
        check_folder(folder)


def test_modules_json_cannot_point_outside(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "st"
    folder.mkdir()
    modules = [{"type": "sentence_transformers.models.Transformer", "path": str(tiny_dir)}]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InputError, match=r"has no config\.json"):
        resolve_text_model(folder)
    shutil.copytree(tiny_dir, folder / "inner")
    (folder / "modules.json").write_text(json.dumps([{**modules[0], "path": "inner"}]))
    assert resolve_text_model(folder) == (folder / "inner").resolve()


def test_no_local_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locate, "default_text_model", lambda: None)
    with pytest.raises(InputError) as info:
        resolve_text_model(None)
    assert "No local text model" in info.value.message
    assert info.value.hint is not None and "--text-model" in info.value.hint
    with pytest.raises(InputError, match="not a directory"):
        resolve_text_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no config\.json"):
        resolve_text_model(tmp_path / "empty")
