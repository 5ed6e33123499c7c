"""`qamoe extract mmsa` and `qamoe extract mosi-lite`: summaries, JSON, and one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qamoe_cli.main import app, main
from qamoe_core.data.store import FeatureFile
from tests.data.test_import_mmsa import SIZES, make_mmsa
from tests.data.test_import_mosilite import TEST_VIDEOS, make_mosilite

runner = CliRunner()


@pytest.fixture
def mmsa_pkl(tmp_path: Path) -> Path:
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(make_mmsa(neg_inf=2)))
    return path


def test_mmsa_json(tmp_path: Path, mmsa_pkl: Path) -> None:
    out = tmp_path / "m.h5"
    result = runner.invoke(app, ["extract", "mmsa", str(mmsa_pkl), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["splits"] == SIZES
    assert summary["nonfinite_replaced"]["audio"] == 6
    assert summary["sha256_match"] is False and len(summary["source_sha256"]) == 64
    with FeatureFile(out) as f:
        assert f.n("train") == SIZES["train"]


def test_mmsa_table(tmp_path: Path, mmsa_pkl: Path) -> None:
    out = tmp_path / "m.h5"
    args = ["extract", "mmsa", str(mmsa_pkl), "-o", str(out), "--dataset", "mosi"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in ("audio", "audio_lengths", "train 12", "matches no published release", "mosi"):
        assert text in result.stdout
    again = runner.invoke(app, [*args, "--force", "--quiet"])
    assert again.exit_code == 0, again.output


def test_mmsa_malicious_pickle_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"train": {"text": Evil()}}))
    code = main(["extract", "mmsa", str(src), "--out", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err
    assert code == 1
    assert "error:" in err and "builtins.exec, which could run code" in err and "hint:" in err
    assert "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "x.h5").exists()


def test_mmsa_output_exists(
    tmp_path: Path, mmsa_pkl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.h5"
    out.write_text("keep")
    assert main(["extract", "mmsa", str(mmsa_pkl), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "keep"


def test_mosilite_json_and_table(tmp_path: Path) -> None:
    make_mosilite(tmp_path / "ml")
    out = tmp_path / "ml.h5"
    args = ["extract", "mosi-lite", str(tmp_path / "ml"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--json", "--seed", "2", "--valid-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["seed"] == 2 and summary["valid_fraction"] == 0.25
    assert summary["splits"]["test"] == sum(TEST_VIDEOS.values())
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout and "videos" in result.stdout


def test_mosilite_bad_fraction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_mosilite(tmp_path / "ml")
    argv = ["extract", "mosi-lite", str(tmp_path / "ml"), "--out", str(tmp_path / "x.h5")]
    assert main([*argv, "--valid-fraction", "1.5"]) == 2  # out of range: a usage error
    err = capsys.readouterr().err
    assert "'valid_fraction' parameter must be a float in (0, 1). Got 1.5" in err
