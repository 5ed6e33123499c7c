"""The MOSI-std patterns experiment: the job plan of the pattern-trained variants (no training
runs here) and the refusal when the main stage it builds on is missing."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from benchmarks import mosi_std_patterns as exp
from benchmarks.mosi_lite_experiment import Job
from tests.benchmarks.test_mosi_std_experiment import HEADER  # the schema-1 columns


def test_pattern_trained_runs_get_both_fractions_and_a_default_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages: dict[str, list[Job]] = {}
    monkeypatch.setattr(exp, "run_all", lambda jobs, workers, stage: stages.setdefault(stage, jobs))
    monkeypatch.setattr(exp.exp, "qamoe_exe", lambda: "qamoe")
    exp.train_on_patterns(exp._ctx(tmp_path, 2), tmp_path / "std.h5", 0.5, 1)

    cfg = json.loads((tmp_path / "configs" / "patterns-0.5.json").read_text())
    assert cfg["train"] == {"burst_fraction": 0.5, "correlated_fraction": 0.5}
    train, sweep = stages["train patterns"], stages["eval patterns-trained"]
    names = [j.name for j in train]
    assert names == ["train qamoe-pt0.5-s0", "train qamoe-pt0.5-s1",
                     "train early-fusion-pt0.5-s0", "train early-fusion-pt0.5-s1"]  # fmt: skip
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


def _mixed(path: Path, mae: float) -> None:
    base = ["qamoe-results/1", "r", "m", "d", "valid", "mixed"]
    rows = [HEADER] + [[*base, lv, "text+audio", "0", "normal", "MAE", mae + d]
                       for lv, d in (("0.3", -0.1), ("0.6", 0.1))]  # fmt: skip
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def test_cv_selection_scores_each_share_on_the_folds_valid_grids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # QA-MoE: share 0.5 best on random and burst alike; early fusion: share 0 best
    mae = {("qamoe", "0"): 1.0, ("qamoe", "0.5"): 0.9, ("early-fusion", "0"): 0.95,
           ("early-fusion", "0.5"): 1.05}  # fmt: skip
    seen: dict[str, list[Job]] = {}

    def fake(jobs: list[Job], workers: int, stage: str) -> list[Job]:
        seen[stage] = jobs
        for j in jobs if stage == "valid cv" else ():
            model, frac = j.name.split()[1].rsplit("-f", 1)[0], j.name.split("-f")[-1].split("-")[0]
            fold = int(j.name.split("-std-cv")[1][0])
            _mixed(
                j.done_when, mae[(model, frac)] + 0.01 * fold + (0.2 if "burst" in j.name else 0)
            )
        return jobs

    monkeypatch.setattr(exp, "run_all", fake)
    monkeypatch.setattr(exp.exp, "qamoe_exe", lambda: "qamoe")
    sel = exp.select_on_cv(tmp_path, [0.0, 0.5], 1)
    assert len(seen["extract cv"]) == 5 and len(seen["train cv"]) == 2 * 2 * 5
    assert len(seen["valid cv"]) == 2 * 2 * 5 * 2
    assert sel["qamoe"]["chosen"] == "0.5" and sel["early-fusion"]["chosen"] == "0"
    # fold k: (random + burst) / 2 = mae + 0.01 k + 0.1 (the level bumps cancel)
    assert sel["qamoe"]["per_fold"]["0.5"] == pytest.approx([1.0 + 0.01 * k for k in range(1, 6)])
    assert sel["early-fusion"]["mean"]["0.5"] == pytest.approx(1.05 + 0.03 + 0.1)
    burst = [j for j in seen["valid cv"] if j.name.endswith("burst")]
    assert all("burst,correlated" in j.argv and "valid" in j.argv for j in burst)
