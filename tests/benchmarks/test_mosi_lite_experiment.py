"""The MOSI-lite experiment script end to end, in its --quick form (1 seed, no ablations or
specialists) with short runs (3 epochs), sweeps of one corruption seed and PNG figures only:
real qamoe commands on the real CSVs, then the analysis and the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, mosi_lite_dir

pytestmark = pytest.mark.slow


@pytest.mark.skipif(mosi_lite_dir() is None, reason="needs ../shared/data/mosi-lite")
def test_quick_experiment_runs_analyses_and_resumes(tmp_path: Path) -> None:
    data_dir = mosi_lite_dir()
    assert data_dir is not None
    work, out = tmp_path / "work", tmp_path / "out"
    argv = [sys.executable, str(REPO / "benchmarks/mosi_lite_experiment.py"), "--quick",
            "--epochs", "3", "--corruption-seeds", "1", "--figures", "png",
            "--data-dir", str(data_dir), "--work", str(work), "--out", str(out)]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout)
    assert set(summary["general"]) == {"qamoe", "early-fusion", "late-fusion", "dense-moe"}
    for row in summary["general"].values():
        assert 0.5 < row["clean"]["mean"] <= 1.0
        # corruption hurts: the mixed grid (up to level 0.9) averages below the clean score
        assert row["mixed_mean"]["mean"] < row["clean"]["mean"]
        assert set(row["fixed_missing"]) == {
            "text", "audio", "vision", "text+audio", "text+vision", "audio+vision"
        }  # fmt: skip
    assert "shuffle_effect_mixed" in summary["general"]["qamoe"]
    assert "shuffle_effect_mixed" not in summary["general"]["early-fusion"]
    only = summary["quality"]["only_one_corrupted"]
    assert set(only) == {"text", "audio", "vision"}
    assert all(v["spearman_own"]["mean"] < 0 for v in only.values())  # r falls with the level
    assert "clean accuracy >= 77 %" in summary["targets"]
    assert (out / "tables.md").read_text().startswith("## Clean and spectrum accuracy")
    assert (out / "report" / "report.html").stat().st_size > 10_000
    run_config = json.loads((work / "runs" / "qamoe-s0" / "config.json").read_text())
    assert run_config["train"]["epochs"] == 3  # --epochs and --corruption-seeds reached qamoe
    with (work / "results" / "qamoe-s0.csv").open() as f:
        assert {row["seed"] for row in csv.DictReader(f)} == {"0"}
    assert sorted(p.name for p in (out / "pooled").glob("*.csv")) == [
        "dense-moe.csv", "early-fusion.csv", "late-fusion.csv", "qamoe.csv"
    ]  # fmt: skip
    # A rerun finds every training and evaluation done and only redoes the analysis.
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[train] 0 ran, 4 already done" in again.stderr
    assert "[eval] 0 ran, 7 already done" in again.stderr
    assert json.loads(again.stdout)["general"] == summary["general"]


def test_missing_data_dir_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import mosi_lite_experiment

    argv = ["mosi_lite_experiment.py", "--data-dir", str(tmp_path / "nope"),
            "--work", str(tmp_path / "w")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:  # sys.exit(text): exit status 1, text on stderr
        mosi_lite_experiment.main()
    assert isinstance(info.value.code, str) and "MOSI-lite not found" in info.value.code
    assert not (tmp_path / "w").exists()
