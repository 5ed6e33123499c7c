"""The r-controls of evaluation (issue 32): constant_r and oracle_r, asked for with
EvalConfig.controls (``qamoe eval --control``), each its own variant of the results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from qamoe_core.base.errors import ConfigError
from qamoe_core.evaluation.controls import oracle_quality
from qamoe_core.evaluation.plan import EvalConfig, Point
from qamoe_core.evaluation.sweep import evaluate_model
from tests.evaluation.test_sweep import make_model

GRID = {"sweep": True, "levels": (0.0, 0.5), "seeds": (0,), "axes": ("missing", "noise")}


def rows(table: pd.DataFrame, variant: str, metric: str, **where: object) -> pd.Series:
    sel = (table["variant"] == variant) & (table["metric"] == metric)
    for col, value in where.items():
        sel &= table[col] == value
    return table.loc[sel, "value"]


def test_no_r_control_unless_asked(tiny_h5: Path) -> None:
    res = evaluate_model(make_model(tiny_h5), tiny_h5, EvalConfig(**GRID))
    assert set(res.table["variant"]) == {"normal", "quality_shuffle", "constant"}
    assert "controls" not in res.info


def test_controls_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"'controls'.*constant_r, oracle_r"):
        EvalConfig(controls=("oracle",))


def test_constant_r_is_the_clean_mean_everywhere(tiny_h5: Path) -> None:
    cfg = EvalConfig(**GRID, controls=("constant_r",), drop_sets=True)
    res = evaluate_model(make_model(tiny_h5), tiny_h5, cfg)
    t = res.table
    assert set(t["variant"]) == {"normal", "quality_shuffle", "constant", "constant_r"}
    assert res.info["controls"] == ["constant_r"]
    for m in ("text", "audio", "vision"):
        clean_mean = float(rows(t, "normal", f"quality_{m}", axis="clean").iloc[0])
        assert res.info["constant_r"][m] == pytest.approx(clean_mean, rel=1e-6)
        got = rows(t, "constant_r", f"quality_{m}")
        assert len(got) == 1 + 2 * 2 + 6  # clean, 2 axes x 2 levels, 6 drop subsets
        assert got.to_numpy() == pytest.approx(clean_mean, rel=1e-5)
    # the control changes the predictions where r varied across samples
    normal = rows(t, "normal", "MAE", axis="missing", level=0.5)
    fixed = rows(t, "constant_r", "MAE", axis="missing", level=0.5)
    assert len(normal) == len(fixed) == 1 and float(normal.iloc[0]) != float(fixed.iloc[0])


def test_oracle_r_follows_the_true_corruption(tiny_h5: Path) -> None:
    cfg = EvalConfig(**GRID, controls=("oracle_r",), drop_sets=True)
    t = evaluate_model(make_model(tiny_h5), tiny_h5, cfg).table
    for m in ("text", "audio", "vision"):
        clean = float(rows(t, "oracle_r", f"quality_{m}", axis="clean").iloc[0])
        missing = float(rows(t, "oracle_r", f"quality_{m}", axis="missing", level=0.5).iloc[0])
        noise = float(rows(t, "oracle_r", f"quality_{m}", axis="noise", level=0.5).iloc[0])
        assert clean > 0.9  # the synthetic data has few empty steps
        assert missing == pytest.approx(0.5 * clean, abs=0.08)  # about half the steps kept
        assert noise == pytest.approx(0.5 * clean, abs=1e-5)  # 1 − 0.5, steps all kept
        dropped = rows(t, "oracle_r", f"quality_{m}", axis="drop")
        mods = t.loc[dropped.index, "modalities"]
        assert (dropped[mods.str.contains(m)] == 0).all()  # a dropped modality: r = 0
        assert (dropped[~mods.str.contains(m)] > 0.9).all()


def test_oracle_quality_per_sample() -> None:
    # (B = 2, T = 4): row 0 keeps 3 of its 4 valid steps, row 1 has 2 valid steps, both kept.
    x = torch.ones(2, 4, 3)
    x[0, 1] = 0.0  # dropped (zeroed)
    x[1, 2:] = 0.0  # padding
    mb = {"audio": x, "audio_len": torch.tensor([4, 2])}
    on_missing = oracle_quality(mb, Point("missing", 0.25, ("audio",)), ["audio"])["audio"]
    assert torch.allclose(on_missing, torch.tensor([0.75, 1.0]))
    on_mixed = oracle_quality(mb, Point("mixed", 0.25, ("audio",)), ["audio"])["audio"]
    assert torch.allclose(on_mixed, torch.tensor([0.75 * 0.75, 0.75]))
    untouched = oracle_quality(mb, Point("noise", 0.25, ("text",)), ["audio"])["audio"]
    assert torch.allclose(untouched, torch.tensor([0.75, 1.0]))  # audio not corrupted here
    mb["audio_keep"] = torch.tensor([[True] * 4, [False, True, False, False]])
    kept = oracle_quality(mb, Point("missing", 0.25, ("audio",)), ["audio"])["audio"]
    assert torch.allclose(kept, torch.tensor([0.75, 0.5]))  # the keep mask counts too
    empty = {"audio": torch.zeros(1, 4, 3), "audio_len": torch.tensor([0])}
    assert float(oracle_quality(empty, Point("clean", 0.0, ("audio",)), ["audio"])["audio"]) == 0


def test_a_model_without_the_controls_runs_none(tiny_h5: Path) -> None:
    cfg = EvalConfig(**GRID, controls=("constant_r", "oracle_r"))
    res = evaluate_model(make_model(tiny_h5, "late-fusion"), tiny_h5, cfg)
    assert set(res.table["variant"]) == {"normal", "constant"}
    assert "controls" not in res.info


def test_controls_do_not_change_the_other_rows(tiny_h5: Path) -> None:
    model = make_model(tiny_h5)
    plain = evaluate_model(model, tiny_h5, EvalConfig(**GRID)).table
    both = evaluate_model(model, tiny_h5, EvalConfig(**GRID, controls=("constant_r", "oracle_r")))
    t = both.table
    kept = t[~t["variant"].isin(["constant_r", "oracle_r"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, plain)
    assert set(t["variant"]) >= {"constant_r", "oracle_r"}


def test_residuals_per_point_and_per_sample(tiny_h5: Path) -> None:
    cfg = EvalConfig(**GRID, residuals=True, per_sample=True, controls=("oracle_r",))
    res = evaluate_model(make_model(tiny_h5), tiny_h5, cfg)
    t, samples = res.table, res.samples
    assert samples is not None
    for m in ("text", "audio", "vision"):
        for name in (f"residual_{m}", f"sigma2_{m}"):
            rows_ = t[(t["metric"] == name)]
            assert set(rows_["variant"]) == {"normal"} and len(rows_) == 5  # clean + 2 x 2
            assert bool((rows_["value"] >= 0).all())
            at = samples[(samples["axis"] == "missing") & (samples["level"] == 0.5)]
            normal = at[at["variant"] == "normal"][name]
            assert normal.notna().all() and at[at["variant"] == "oracle_r"][name].isna().all()
            point = rows_[(rows_["axis"] == "missing") & (rows_["level"] == 0.5)]["value"]
            assert float(normal.mean()) == pytest.approx(float(point.iloc[0]), rel=1e-4)
        # the residual grows where the modality loses half its steps
        clean = rows(t, "normal", f"residual_{m}", axis="clean").iloc[0]
        assert rows(t, "normal", f"residual_{m}", axis="missing", level=0.5).iloc[0] > clean
    plain = evaluate_model(make_model(tiny_h5), tiny_h5, EvalConfig(**GRID, per_sample=True))
    assert plain.samples is not None and not any(
        c.startswith(("residual_", "sigma2_")) for c in plain.samples.columns
    )
    assert not plain.table["metric"].str.startswith(("residual_", "sigma2_")).any()
