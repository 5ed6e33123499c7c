"""JSON nested deeper than Python's parser recurses (found by the fuzz harness, tests/fuzz):
every reader of JSON from a file refuses it in its own one-line error, never the catch-all
"unexpected RecursionError"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest

from qamoe_cli.main import main
from qamoe_core.base import jsontext
from qamoe_core.base.errors import CheckpointError, ConfigError, DataFormatError
from qamoe_core.config import read_sections
from qamoe_core.data.store import FeatureFile
from qamoe_core.runs import checkpoint as ckpt

DEEP = "[" * 100_000 + "]" * 100_000


def test_loads_turns_deep_nesting_into_a_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        jsontext.loads(DEEP)
    assert jsontext.loads("[[1]]") == [[1]]
    assert jsontext.loads("[NaN]", parse_constant=lambda name: None) == [None]


def test_deep_run_files_are_damaged_files(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("config.json", "metrics.json", "history.jsonl"):
        run = tmp_path / name.replace(".", "_")
        shutil.copytree(tiny_run, run)
        (run / name).write_text(DEEP)
        with pytest.raises(CheckpointError, match="damaged or not a qamoe file") as err:
            {"config.json": ckpt.read_config, "metrics.json": ckpt.read_metrics,
             "history.jsonl": ckpt.read_history}[name](run)  # fmt: skip
        assert "\n" not in err.value.message
    assert main(["eval", str(tmp_path / "config_json"), "--data", str(tiny_h5), "-q"]) == 1
    err_text = capsys.readouterr().err
    assert "error: 'config.json' in" in err_text and "unexpected" not in err_text


@pytest.mark.parametrize("attr", ["modalities", "corruption", "text_special_ids"])
def test_deep_attributes_of_a_feature_file_are_refused(
    attr: str, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.h5"
    shutil.copy(tiny_h5, path)
    with h5py.File(path, "a") as h5:
        h5.attrs[attr] = DEEP
    with pytest.raises(DataFormatError), FeatureFile(path) as f:
        f.corruption  # noqa: B018
        f.text_special_ids  # noqa: B018
    out = tmp_path / "out.h5"
    assert main(["corrupt", str(path), "--level", "0.2", "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unexpected" not in err and not out.exists()


def test_a_deep_config_file_is_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_sections(path)
