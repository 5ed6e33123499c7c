"""`qamoe extract mosi`: the table, --json, and one-line refusals (no text encoder needed:
bclstm-cv with the text-CNN features)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qamoe_cli.main import app, main
from qamoe_core.data.store import FeatureFile
from tests.data.test_import_mosi import BC_TEST, make_folders

runner = CliRunner()


def _args(tmp_path: Path) -> list[str]:
    lite, labels = make_folders(tmp_path / "src")
    return ["extract", "mosi", "--mosi-lite", str(lite), "--labels", str(labels)]


def test_bclstm_cv_json_and_table(tmp_path: Path) -> None:
    args = [*_args(tmp_path), "--protocol", "bclstm-cv", "--fold", "2"]
    out = tmp_path / "f2.h5"
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["fold"] == 2 and sum(summary["splits"].values()) == sum(BC_TEST.values())
    assert summary["dims"] == {"text": 100, "audio": 73, "vision": 100}
    with FeatureFile(out) as f:
        assert f.attrs["protocol"] == "bclstm-cv" and f.scheme == "mosi"
    again = runner.invoke(app, [*args, "--out", str(out), "--force"])
    assert again.exit_code == 0 and "mosi-bclstm-cv fold 2" in again.stdout


def test_std_refuses_label_fitted_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_args(tmp_path), "--out", str(tmp_path / "x.h5")]
    assert main([*args, "--vision"]) == 1
    err = capsys.readouterr().err
    assert "3D-CNN video features cannot be used with --protocol std" in err
    assert "24 of the 31 CMU standard test videos" in err
    assert main([*args, "--protocol", "bclstm-cv", "--fold", "9"]) == 1
    assert "must be a fold number in 1..5. Got 9" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
