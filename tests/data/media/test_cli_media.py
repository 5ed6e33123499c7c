"""`qamoe extract media`: JSON and table output, errors, and extract -> train -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qamoe_cli.main import app, main

runner = CliRunner()


def test_bad_shard_and_backend_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,split,label,text,audio\na,train,1,hi,a.wav\n")
    out = str(tmp_path / "o.h5")
    # bad flag values are usage errors (exit 2); a bad manifest row is a data error (exit 1)
    assert main(["extract", "media", str(manifest), "-o", out, "--shard", "2/2"]) == 2
    assert "must look like i/n" in capsys.readouterr().err
    assert main(["extract", "media", str(manifest), "-o", out, "--vision", "openface"]) == 2
    assert "'vision' parameter must be one of landmarks, haar" in capsys.readouterr().err
    manifest.write_text("id,split,label,text,audio\na,dev,1,hi,a.wav\n")
    assert main(["extract", "media", str(manifest), "-o", out]) == 1
    assert "line 2: split 'dev'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("cached_models")
def test_json_then_table(tmp_path: Path, clips_dir: Path) -> None:
    pytest.importorskip("cv2")
    pytest.importorskip("transformers")
    out = tmp_path / "f.h5"
    args = ["extract", "media", str(clips_dir / "manifest.csv"), "-o", str(out), "--vision", "haar"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["extracted"] == 6 and summary["failed_total"] == 0
    assert summary["dims"] == {"text": 384, "audio": 63, "vision": 293}
    assert summary["frame_rates_hz"] == {"audio": 50.0, "vision": 10.0}
    assert summary["vision_counts"]["vision_frames"] == 72
    again = runner.invoke(app, [*args, "--force", "--quiet", "--modalities", "text,audio"])
    assert again.exit_code == 0, again.output
    for text in ("per token", "50/s", "librosa", "no clip failed", "train 4"):
        assert text in again.stdout
    assert "vision" not in again.stdout


@pytest.mark.slow
def test_twenty_clips_extract_train_eval(tmp_path: Path) -> None:
    """The acceptance test of `extract media`: 20 generated clips -> extract -> train -> eval."""
    pytest.importorskip("cv2")
    pytest.importorskip("transformers")
    pytest.importorskip("av")
    from tests.data.media import mediagen

    manifest = mediagen.make_manifest(tmp_path / "clips", 20, seconds=1.0, fps=10)
    data = tmp_path / "media.h5"
    result = runner.invoke(
        app, ["extract", "media", str(manifest), "-o", str(data), "--workers", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["extracted"] == 20 and summary["splits"] == {"train": 12, "valid": 4, "test": 4}

    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--out", str(run_dir), "--epochs", "3", "-q"])
    assert result.exit_code == 0, result.output
    trained = json.loads((run_dir / "metrics.json").read_text())

    result = runner.invoke(app, ["eval", str(run_dir), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_samples"] == 4 and report["dataset"] == "media"
    # eval reads back the checkpoint train saved: the same clean test numbers.
    for metric in ("MAE", "Corr", "Has0_acc_2"):
        assert report["metrics"][metric] == pytest.approx(
            trained["test_clean"][metric], abs=1e-5, nan_ok=True
        )
