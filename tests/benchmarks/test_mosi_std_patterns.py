"""The MOSI-std patterns experiment: the job plan of the pattern-trained variants (no training
runs here) and the refusal when the main stage it builds on is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks import mosi_std_patterns as exp
from benchmarks.mosi_lite_experiment import Job


def test_pattern_trained_runs_get_both_fractions_and_a_default_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages: dict[str, list[Job]] = {}
    monkeypatch.setattr(exp, "run_all", lambda jobs, workers, stage: stages.setdefault(stage, jobs))
    exp.train_on_patterns("qamoe", tmp_path, tmp_path / "std.h5", 0.5, 2, 1)

    cfg = json.loads((tmp_path / "configs" / "patterns-0.5.json").read_text())
    assert cfg["train"] == {"burst_fraction": 0.5, "correlated_fraction": 0.5}
    train, sweep = stages["train patterns"], stages["eval patterns-trained"]
    names = [j.name for j in train]
    assert names == ["train qamoe-pt-s0", "train qamoe-pt-s1",
                     "train early-fusion-pt-s0", "train early-fusion-pt-s1"]  # fmt: skip
    for job, seed in zip(train, (0, 1, 0, 1), strict=True):
        argv = job.argv
        assert argv[argv.index("--config") + 1] == str(tmp_path / "configs" / "patterns-0.5.json")
        assert argv[argv.index("--seed") + 1] == str(seed)
        assert job.done_when.name == "metrics.json"  # a finished run is skipped on a rerun
    for job in sweep:  # the default-pattern sweep; the burst sweep is main()'s
        assert "--pattern" not in job.argv and "--sweep" in job.argv
        assert job.done_when.parent == tmp_path / "results"


def test_a_missing_main_stage_is_a_clear_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exp, "qamoe_exe", lambda: "qamoe")
    monkeypatch.setattr(sys, "argv", ["mosi_std_patterns.py", "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        exp.main()
    assert "lacks the token-level main stage" in str(exc.value)
    assert "--pooling token --stages main" in str(exc.value)
