"""The bc-LSTM-CV experiment's analysis on hand-written results files: fold means inside a
model seed, mean ± sd over seeds, fold spread, the paired interval, and the job plan."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import pytest

from benchmarks import mosi_bclstm_cv_experiment as exp
from tests.benchmarks.test_mosi_std_experiment import HEADER  # the schema-1 columns

THREE = "text+audio+vision"


def _results(path: Path, clean_mae: float, mixed_mae: float) -> None:
    base = ["qamoe-results/1", "r", "m", "d", "test"]
    rows: list[list[Any]] = [HEADER]
    for m in exp.METRICS:
        rows.append(
            [*base, "clean", "0", THREE, "0", "normal", m, clean_mae if m == "MAE" else 0.5]
        )
    for axis in ("mixed", "missing", "noise"):
        for lv, bump in (("0.3", -0.1), ("0.6", 0.1)):
            for m in ("MAE", "Has0_acc_2"):
                v = mixed_mae + bump if m == "MAE" else 0.6
                rows.append([*base, axis, lv, THREE, "0", "normal", m, v])
    for kept in ("text", "audio", "vision"):  # schema 1 names the KEPT modalities
        rows.append([*base, "drop", "1", kept, "0", "normal", "MAE", 1.3])
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> exp.Ctx:
    monkeypatch.setattr(exp, "qamoe_exe", lambda: "qamoe")
    args = argparse.Namespace(work=tmp_path, seeds=2, jobs=1)
    (tmp_path / "results").mkdir()
    c = exp.Ctx(args)
    for k in exp.FOLDS:
        for s in c.seeds:
            # QA-MoE's clean MAE is 0.8 + 0.01 k (fold spread), seed 1 is 0.1 worse on the grid
            _results(c.results("qamoe", k, s), 0.8 + 0.01 * k, 1.0 + 0.1 * s)
            _results(c.results("early-fusion", k, s), 0.9, 1.2)
    return c


def test_fold_means_then_seed_spread(ctx: exp.Ctx) -> None:
    r = exp.per_model(ctx, "qamoe")
    assert r["clean MAE"]["mean"] == pytest.approx(0.83) and r["clean MAE"]["sd"] == 0
    assert r["clean MAE"]["fold_sd"] == pytest.approx(0.0158, abs=1e-4)  # sd of 0.81..0.85
    assert r["mixed MAE"]["mean"] == pytest.approx(1.05) and r["mixed MAE"]["n"] == 2
    assert r["mixed MAE"]["sd"] == pytest.approx(0.0707, abs=1e-4)
    assert r["vision only MAE"]["mean"] == pytest.approx(1.3)


def test_paired_difference_per_seed(ctx: exp.Ctx) -> None:
    p = exp.paired(ctx, "qamoe", "early-fusion")
    assert p["per_seed"] == pytest.approx([-0.2, -0.1])
    lo, hi = p["ci95"]
    assert p["mean"] == pytest.approx(-0.15) and lo < p["mean"] < hi


def test_jobs_cover_every_fold_model_and_seed(ctx: exp.Ctx) -> None:
    extract, train, evals = ctx.jobs()
    assert len(extract) == 5 and len(train) == len(evals) == 5 * len(exp.MODELS) * 2
    tags = {j.name.split()[-1] for j in train}
    assert "qamoe-s51" in tags and "dense-moe-s10" in tags  # fold 5 seed 1, fold 1 seed 0
    assert all("--fold" in j.argv for j in extract)
