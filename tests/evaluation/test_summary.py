"""The statistics over a results table (evaluation/summary.py): curves, summaries, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qamoe_core.base.errors import InputError
from qamoe_core.evaluation.results import make_table
from qamoe_core.evaluation.summary import (
    check_metric,
    curves,
    default_metric,
    fixed_missing,
    pool_model_seeds,
    summarize,
    trapezoid_area,
)
from tests.evaluation.test_results import linear_sweep, row


def test_summary_numbers() -> None:
    df = make_table(linear_sweep(slope=-0.3, clean=0.8))
    s = summarize(df).iloc[0]
    assert s["clean"] == pytest.approx(0.8)
    # seeds cancel; curve 0.8, 0.65, 0.5: mean 0.65; normalised trapezoid area 0.65 too.
    assert s["mean"] == pytest.approx(0.65)
    assert s["area"] == pytest.approx(0.65)
    assert s["area_over_clean"] == pytest.approx(0.65 / 0.8)
    assert (s["n_levels"], s["n_seeds"]) == (3, 2)


def test_area_differs_from_mean_on_uneven_grid() -> None:
    # Levels 0, 0.1, 1: the mean weights each point equally, the area weights by spacing.
    assert trapezoid_area([0, 0.1, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(0.1 + 0.45)
    assert trapezoid_area([0.4], [0.7]) == 0.7
    assert math.isnan(trapezoid_area([0, 1], [1.0, math.nan]))


def test_curves_seed_std() -> None:
    c = curves(make_table(linear_sweep()), "Has0_acc_2")
    mid = c[(c["axis"] == "mixed") & (c["level"] == 0.5)].iloc[0]
    assert mid["mean"] == pytest.approx(0.65)
    assert mid["std"] == pytest.approx(np.std([0.64, 0.66], ddof=1))
    assert mid["n"] == 2


def test_two_runs_and_fixed_missing() -> None:
    rows = linear_sweep("qa", -0.1) + linear_sweep("late", -0.4)
    rows += [row(run="qa", axis="drop", level=1.0, modalities="text", value=0.7)]
    rows += [row(run="qa", axis="drop", level=1.0, modalities="audio+vision", value=0.55)]
    df = make_table(rows)
    s = summarize(df).set_index("run")
    assert s.loc["qa", "area"] > s.loc["late", "area"]
    fm = fixed_missing(df, "Has0_acc_2")
    # schema 2: drop rows name the DROPPED modalities; "none" is the clean score
    head = ["run", "dataset", "split", "variant"]
    assert list(fm.columns) == [*head, "none", "text", "audio+vision"]
    assert fm.set_index("run").loc["qa", "text"] == pytest.approx(0.7)
    assert fm.set_index("run").loc["qa", "none"] == pytest.approx(0.8)


def test_default_metric() -> None:
    names = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score"]
    names += ["Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
    df = make_table([row(axis="clean", metric=m) for m in [*names, "quality_text"]])
    assert default_metric(df) == "Has0_acc_2"
    assert default_metric(make_table([row(metric="MAE")])) == "MAE"


def test_metric_errors_have_hints() -> None:
    diag = make_table([row(metric="quality_text"), row(metric="expert_usage_0")])
    with pytest.raises(InputError, match="diagnostics only") as info:
        default_metric(diag)
    assert "--metric quality_text" in (info.value.hint or "")
    with pytest.raises(InputError, match="must be one of quality_text") as info:
        check_metric(diag, "MAE")
    assert "diagnostics only" in (info.value.hint or "")
    df = make_table([row(metric="MAE"), row(metric="Corr"), row(metric="quality_text")])
    with pytest.raises(InputError, match=r"must be one of MAE, Corr\. Got 'Acc_9'") as info:
        check_metric(df, "Acc_9")
    assert "are MAE, Corr" in (info.value.hint or "") and "quality_text" in (info.value.hint or "")


def test_pool_model_seeds_stacks_runs_and_widens_the_spread() -> None:
    rows = linear_sweep("qa-s0", clean=0.80) + linear_sweep("qa-s1", clean=0.70)
    rows += linear_sweep("late", clean=0.75)  # no seed suffix: kept as it is
    pooled = pool_model_seeds(make_table(rows))
    assert sorted(set(pooled["run"])) == ["late", "qa"]
    qa = pooled[pooled["run"] == "qa"]
    assert sorted(set(qa["seed"])) == [0, 1, 1000, 1001]  # 1000 x model seed + corruption seed
    c = curves(pooled, "Has0_acc_2")
    at0 = c[(c["run"] == "qa") & (c["axis"] == "mixed") & (c["level"] == 0.0)].iloc[0]
    assert at0["n"] == 4 and math.isclose(at0["mean"], 0.75)
    # the band now spans both model seeds (0.79, 0.81, 0.69, 0.71), not just ±0.01
    assert math.isclose(at0["std"], float(np.std([0.79, 0.81, 0.69, 0.71], ddof=1)))
    summary = summarize(pooled)
    assert math.isclose(summary.set_index("run").loc["qa", "clean"], 0.75)
    # other spellings of the suffix
    other = make_table(linear_sweep("m_seed3") + linear_sweep("m-seed10"))
    assert set(pool_model_seeds(other)["run"]) == {"m"}


def test_pool_model_seeds_refuses_what_it_cannot_pool() -> None:
    with pytest.raises(InputError, match="nothing to pool"):
        pool_model_seeds(make_table(linear_sweep("plain")))
    with pytest.raises(InputError, match="already exist"):
        pool_model_seeds(make_table(linear_sweep("qa") + linear_sweep("qa-s1")))
    big = make_table([row(run="qa-s0", seed=1000)])
    with pytest.raises(InputError, match="below 1000"):
        pool_model_seeds(big)
    for label in ("qa-s1000000000000000", "qa-s99999999999999999999"):  # would overflow int64
        with pytest.raises(InputError, match="too large to pool"):
            pool_model_seeds(make_table([row(run=label)]))


def test_summary_keys_clean_by_dataset() -> None:
    """One run label in two datasets (runs/<dataset>/qamoe): clean scores stay apart."""
    rows = [row(dataset="a", axis="clean", value=0.875), row(dataset="a", value=0.8)]
    rows += [row(dataset="b", axis="clean", value=0.84), row(dataset="b", value=0.6)]
    s = summarize(make_table(rows)).set_index("dataset")
    assert s.loc["a", "clean"] == pytest.approx(0.875) and s.loc["b", "clean"] == 0.84
