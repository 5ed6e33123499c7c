"""The MOSI-std experiment's analysis on hand-written results files (the qamoe commands it
schedules are tested where they live)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import pytest
from scipy import stats as scipy_stats

from benchmarks import mosi_std_experiment as exp

HEADER = [
    "schema",
    "run",
    "model",
    "dataset",
    "split",
    "axis",
    "level",
    "modalities",
    "seed",
    "variant",
    "metric",
    "value",
]


def _results(path: Path, mixed_mae: float, clean_mae: float) -> None:
    rows: list[list[Any]] = [HEADER]
    for m in exp.METRICS:
        v = clean_mae if m == "MAE" else 0.5
        rows.append(
            [
                "qamoe-results/1",
                "r",
                "m",
                "d",
                "test",
                "clean",
                "0",
                "text+audio",
                "0",
                "normal",
                m,
                v,
            ]
        )
    for axis in ("mixed", "missing", "noise"):
        for lv, bump in (("0.3", -0.1), ("0.6", 0.1)):
            for m in ("MAE", "Has0_acc_2"):
                v = mixed_mae + bump if m == "MAE" else 0.6
                rows.append(
                    [
                        "qamoe-results/1",
                        "r",
                        "m",
                        "d",
                        "test",
                        axis,
                        lv,
                        "text+audio",
                        "0",
                        "normal",
                        m,
                        v,
                    ]
                )
    for mod in ("text", "audio"):
        rows.append(
            ["qamoe-results/1", "r", "m", "d", "test", "drop", "1", mod, "0", "normal", "MAE", 1.2]
        )
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> exp.Ctx:
    monkeypatch.setattr(exp, "qamoe_exe", lambda: "qamoe")
    args = argparse.Namespace(work=tmp_path, seeds=3, pooling="sentence", cache_dir=None, jobs=1)
    (tmp_path / "results").mkdir()
    for s, (a, b) in enumerate(((1.0, 1.2), (1.1, 1.2), (0.9, 1.25))):
        _results(tmp_path / "results" / f"qamoe-s{s}.csv", a, 0.9)
        _results(tmp_path / "results" / f"early-fusion-s{s}.csv", b, 0.95)
    return exp.Ctx(args)


def test_per_model_means_over_seeds(ctx: exp.Ctx) -> None:
    r = exp.per_model(ctx, "qamoe")
    assert r is not None
    assert r["mixed MAE"]["mean"] == pytest.approx(1.0) and r["mixed MAE"]["n"] == 3
    assert r["clean MAE"]["mean"] == pytest.approx(0.9) and r["text only MAE"]["n"] == 3
    assert exp.per_model(ctx, "late-fusion") is None  # no results: left out, not zeros


def test_seed_comparison_is_welch_with_the_exact_quantile() -> None:
    # six seeds a side: the old helper's t = 2.0 fallback; Welch's df here is about 8.6
    a = [1.20, 1.18, 1.21, 1.17, 1.22, 1.19]
    b = [1.16, 1.17, 1.15, 1.18, 1.12, 1.19]
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    got = exp.seed_comparison(a, b)
    assert got["ci95"] == pytest.approx([round(ci.low, 4), round(ci.high, 4)])
    assert got["p"] == pytest.approx(round(ref.pvalue, 4)) and got["mde"] > 0


def test_paired_difference_and_interval(ctx: exp.Ctx) -> None:
    p = exp.paired(ctx, "qamoe", "early-fusion")
    assert p is not None
    assert p["per_seed"] == pytest.approx([-0.2, -0.1, -0.35])
    assert p["mean"] == pytest.approx(-0.2167, abs=1e-4)
    lo, hi = p["ci95"]
    assert lo < p["mean"] < hi and hi < 0.2
