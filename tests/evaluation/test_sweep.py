"""Evaluation and sweeps with small untrained models (the numbers' meaning is not tested here,
only that the sweep computes them faithfully)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qamoe_core.base.errors import ConfigError, DataFormatError, InputError
from qamoe_core.config import ModelConfig
from qamoe_core.data.store import FeatureFile, load_split
from qamoe_core.data.torchdata import to_torch
from qamoe_core.evaluation.plan import DEFAULT_LEVELS, EvalConfig, parse_levels, plan
from qamoe_core.evaluation.results import SCHEMA, measured
from qamoe_core.evaluation.sweep import Evaluation, evaluate_model
from qamoe_core.metrics import compute
from qamoe_core.models.registry import build_model
from qamoe_core.spectrum.engine import CorruptionSpec
from qamoe_core.spectrum.files import corrupt_file

SMALL = ModelConfig(d_model=32, n_heads=2, segments=4, num_experts=4, top_k=2, dropout=0.0)
MODS = ("text", "audio", "vision")


def make_model(path: Path, name: str = "qamoe", seed: int = 0) -> torch.nn.Module:
    with FeatureFile(path) as f:
        dims = dict(f.dims)
    torch.manual_seed(seed)
    model = build_model(name, SMALL, dims, "regression")
    if name == "qamoe":
        # Untrained quality heads start at σ² = 1 for every sample (r = 0.5); spread them so
        # that quality varies across samples and the shuffle control has something to permute.
        for layer in model.quality.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.5)
    return model.eval()


def test_parse_levels() -> None:
    assert parse_levels("0:0.9:0.1") == DEFAULT_LEVELS
    assert parse_levels("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_levels("0.5, 0.1,0.5") == (0.1, 0.5)
    for bad in ("0:1.5:0.1", "0,1.2", "-0.1,0.5"):  # parsed; the range is EvalConfig's check
        with pytest.raises(ConfigError, match=r"'levels'.*\[0, 1\]"):
            EvalConfig(levels=parse_levels(bad))
    for bad, match in [
        ("0.5:0.1:0.1", "empty grid"),
        ("0,nan", "non-number"),
        ("0:1:0", "must be > 0"),
        ("a,b", "non-number"),
        ("0:1", "start:stop:step"),
        ("0:1:1e-9", "has 1,000,000,00[01] points; at most 1001"),
    ]:
        with pytest.raises(InputError, match=match):
            parse_levels(bad)


def test_plan_counts() -> None:
    full = plan(EvalConfig(sweep=True, drop_sets=True), MODS)
    assert len(full) == 1 + 10 * 3 * 3 + 6
    assert full[0].axis == "clean" and full[0].given
    dropped = {p.modalities for p in full if p.axis == "drop"}  # rows name the REMOVED ones
    assert ("text",) in dropped and ("audio", "vision") in dropped and MODS not in dropped
    assert len(dropped) == 6
    only = plan(EvalConfig(sweep=True, axes=("noise",), modalities=("audio",), seeds=(4,)), MODS)
    assert {(p.axis, p.modalities, p.seed) for p in only[1:]} == {("noise", ("audio",), 4)}
    assert len(plan(EvalConfig(), MODS)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": ("sideways",)}, "'axes'.*among mixed, missing, noise"),
        ({"axes": ()}, "'axes'.*non-empty"),
        ({"levels": ()}, "'levels'.*non-empty"),
        ({"levels": (0.2, 1.3)}, r"\[0, 1\]"),
        ({"levels": ("0.2",)}, r"\[0, 1\]"),
        ({"seeds": ()}, "seeds"),
        ({"seeds": (1.5,)}, "integers >= 0"),
        ({"seeds": (-1,)}, "seeds"),
        ({"modalities": ("smell",)}, "modalities"),
        ({"split": "tset"}, "'split'.*train, valid, test"),
        ({"batch_size": 0}, "'batch_size'.*>= 1"),
        ({"noise_scale": 0.0}, "noise_scale"),
        ({"per_sample": "yes"}, "boolean"),
        ({"sweep": True, "missing_pattern": "bursty"}, "missing_pattern.*random, burst"),
        ({"sweep": True, "noise_rho": 1.0}, "noise_rho"),
        ({"sweep": True, "burst_mean": 0.5}, "burst_mean"),
        ({"missing_pattern": "burst"}, "sets the pattern of a sweep"),
        ({"sweep": True, "axes": ("noise",), "missing_pattern": "burst"}, "missing and mixed axes"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EvalConfig(**kwargs)


def test_config_normalises_and_keeps_seeds_exact() -> None:
    cfg = EvalConfig(levels=(0.5, 0.1, 0.5), seeds=(2**62 + 1,), modalities=None)  # type: ignore[arg-type]
    assert cfg.levels == (0.1, 0.5) and cfg.modalities == ()
    assert cfg.seeds == (2**62 + 1,) and isinstance(cfg.seeds[0], int)


def test_level_cap_holds_for_comma_lists_too() -> None:
    # Before: only start:stop:step grids were capped; a comma list (or a library caller) was not.
    many = ",".join(f"{i / 2000:.4f}" for i in range(1500))
    with pytest.raises(InputError, match="1,500 points; at most 1001"):
        EvalConfig(levels=parse_levels(many))
    assert len(EvalConfig(levels=parse_levels(many[: many.index(",0.5000")])).levels) == 1000


def test_precomputed_encodings_are_used(tiny_h5: Path) -> None:
    model = make_model(tiny_h5)
    batch = to_torch(load_split(tiny_h5, "test"))
    with torch.inference_mode():
        plain = model(batch)
        h, coverage = model.encode_with_coverage(batch)
        reused = model(batch, encodings=(h, coverage))
        # The model really reads the encodings it is handed (and not the batch's): scaled
        # text encodings move the prediction.
        moved = model(batch, encodings=({**h, "text": 3 * h["text"]}, coverage))
    torch.testing.assert_close(plain.prediction, reused.prediction, rtol=0, atol=0)
    assert not torch.allclose(plain.prediction, moved.prediction)
    assert not any(callable(v) for v in vars(model).values())  # nothing patched onto it


@pytest.fixture(scope="module")
def sweep(tiny_h5: Path) -> pd.DataFrame:
    cfg = EvalConfig(sweep=True, levels=(0.0, 0.4, 0.9), seeds=(0, 1), drop_sets=True)
    return evaluate_model(make_model(tiny_h5), tiny_h5, cfg, run="qa").table


def test_sweep_table_shape(sweep: pd.DataFrame) -> None:
    assert (sweep["schema"] == SCHEMA).all()
    points = measured(sweep)[["axis", "level", "modalities", "seed"]].drop_duplicates()
    assert len(points) == 1 + 3 * 3 * 2 + 6
    assert set(sweep["variant"]) == {"normal", "quality_shuffle", "constant"}
    one = sweep[(sweep["axis"] == "mixed") & (sweep["level"] == 0.4) & (sweep["seed"] == 1)]
    one = one[one["variant"] == "normal"].set_index("metric")["value"]
    usage = one[[f"expert_usage_{e}" for e in range(4)]]
    assert usage.sum() == pytest.approx(1.0, abs=1e-5)
    assert (
        (one[[f"quality_{m}" for m in MODS]] > 0) & (one[[f"quality_{m}" for m in MODS]] <= 1)
    ).all()


def value(
    table: pd.DataFrame, metric: str = "MAE", variant: str = "normal", **where: object
) -> float:
    sub = table[(table["metric"] == metric) & (table["variant"] == variant)]
    for k, v in where.items():
        sub = sub[sub[k] == v]
    assert len(sub) == 1, where
    return float(sub["value"].iloc[0])


def test_level_zero_is_clean_and_levels_matter(sweep: pd.DataFrame) -> None:
    # Level-0 rows exist on every axis and seed (shared with the clean pass: level 0 is the
    # identity, which tests/spectrum/test_engine.py checks bit for bit).
    clean = value(sweep, axis="clean")
    for axis in ("mixed", "missing", "noise"):
        assert value(sweep, axis=axis, level=0.0, seed=1) == clean
        assert value(sweep, axis=axis, level=0.9, seed=1) != clean
    # Different corruption seeds give different draws.
    assert value(sweep, axis="mixed", level=0.9, seed=0) != value(
        sweep, axis="mixed", level=0.9, seed=1
    )


def test_drop_rows_name_the_dropped_modalities(
    sweep: pd.DataFrame, tiny_h5: Path, tmp_path: Path
) -> None:
    # Before: axis=drop, modalities=text meant text was KEPT (elsewhere modalities lists the
    # corrupted ones). Now it means text was removed: the row equals the file with text dropped.
    no_text = tmp_path / "no-text.h5"
    corrupt_file(tiny_h5, no_text, CorruptionSpec(level=0.0, drop=("text",)))
    given = evaluate_model(make_model(tiny_h5), no_text, EvalConfig(), run="qa").table
    given = measured(given)
    assert set(given["modalities"]) == {"text"} and set(given["axis"]) == {"drop"}
    assert value(sweep, axis="drop", modalities="text") == value(given, axis="drop")
    assert value(sweep, axis="drop", modalities="audio+vision") != value(given, axis="drop")


def test_shuffle_control_moves_predictions(sweep: pd.DataFrame) -> None:
    normal = value(sweep, axis="mixed", level=0.4, seed=0)
    shuffled = value(sweep, variant="quality_shuffle", axis="mixed", level=0.4, seed=0)
    assert normal != shuffled
    # Permuting r within the batch leaves its mean unchanged.
    q = dict(axis="mixed", level=0.4, seed=0)
    assert value(sweep, "quality_audio", **q) == pytest.approx(
        value(sweep, "quality_audio", "quality_shuffle", **q), rel=1e-5
    )


def reference(model: torch.nn.Module, path: Path) -> dict[str, float]:
    """Metrics of ``path``'s test split computed directly: whole split, one forward pass."""
    data = load_split(path, "test")
    with torch.inference_mode():
        pred = model(to_torch(data)).prediction.numpy()
    return compute(pred, data["label"], "mosi")


def test_sweep_point_equals_corrupted_file(
    tiny_h5: Path, tmp_path: Path, sweep: pd.DataFrame
) -> None:
    spec = CorruptionSpec(level=0.4, axis="mixed", seed=1)
    corrupted = tmp_path / "c.h5"
    corrupt_file(tiny_h5, corrupted, spec, splits="test")
    model = make_model(tiny_h5)
    # Independently of the evaluator: the corrupted file's metrics, computed directly, equal
    # the sweep's row for the same point; the clean row equals the clean file's.
    direct, clean = reference(model, corrupted), reference(model, tiny_h5)
    for metric in ("MAE", "Corr", "Has0_acc_2", "Mult_acc_7"):
        assert value(sweep, metric, axis="mixed", level=0.4, seed=1) == pytest.approx(
            direct[metric], abs=1e-5
        )
        assert value(sweep, metric, axis="clean") == pytest.approx(clean[metric], abs=1e-5)
    assert direct["MAE"] != pytest.approx(clean["MAE"], abs=1e-4)
    res = evaluate_model(model, corrupted, EvalConfig(), run="qa")
    assert res.info["first_axis"] == "mixed"
    got = res.table[res.table["variant"] == "normal"]
    assert set(got["axis"]) == {"mixed"} and set(got["seed"]) == {1}
    for metric in ("MAE", "Corr", "Has0_acc_2", "quality_text"):
        assert value(got, metric) == pytest.approx(
            value(sweep, metric, axis="mixed", level=0.4, seed=1), abs=1e-6
        )
    with pytest.raises(InputError, match="already corrupted"):
        evaluate_model(make_model(tiny_h5), corrupted, EvalConfig(sweep=True))


def test_corrupted_file_is_labelled_as_what_it_is(tiny_h5: Path, tmp_path: Path) -> None:
    model = make_model(tiny_h5)
    # Only train corrupted: the test split was copied unchanged, so it is the clean point.
    train_only = tmp_path / "train-only.h5"
    corrupt_file(tiny_h5, train_only, CorruptionSpec(level=0.9, seed=2), splits="train")
    res = evaluate_model(model, train_only, EvalConfig(), run="qa")
    assert set(res.table["axis"]) == {"clean"} and res.info["first_axis"] == "clean"
    assert res.clean["MAE"] == pytest.approx(reference(model, tiny_h5)["MAE"], abs=1e-5)
    # A row key cannot hold a level and whole-modality drops at once: refused, not mislabelled.
    both = tmp_path / "both.h5"
    corrupt_file(tiny_h5, both, CorruptionSpec(level=0.2, modalities=("audio",), drop=("text",)))
    with pytest.raises(InputError, match="AND had text dropped"):
        evaluate_model(model, both, EvalConfig())
    # Noise at another noise_scale: pure noise maps onto the spectrum's own scale (0.25 x 3 =
    # 0.75), and equals the sweep's point there; mixed, or beyond level 1, has no level.
    loud = tmp_path / "loud.h5"
    corrupt_file(tiny_h5, loud, CorruptionSpec(level=0.25, axis="noise", noise_scale=3.0, seed=4))
    given = evaluate_model(model, loud, EvalConfig())
    assert (given.info["first_axis"], given.info["first_level"]) == ("noise", 0.75)
    for spec in (CorruptionSpec(level=0.5, axis="noise", noise_scale=3.0),
                 CorruptionSpec(level=0.2, axis="mixed", noise_scale=2.0)):  # fmt: skip
        off = tmp_path / f"off-{spec.axis}.h5"
        corrupt_file(tiny_h5, off, spec)
        with pytest.raises(InputError, match="off the spectrum's scale"):
            evaluate_model(model, off, EvalConfig())
    # Corrupted twice: no single row describes it.
    once, twice = tmp_path / "once.h5", tmp_path / "twice.h5"
    corrupt_file(tiny_h5, once, CorruptionSpec(level=0.2))
    corrupt_file(once, twice, CorruptionSpec(level=0.2, seed=1))
    with pytest.raises(InputError, match="corrupted 2 times on the 'test' split"):
        evaluate_model(model, twice, EvalConfig())
    # The missing axis adds no noise, so its noise_scale does not matter.
    gaps = tmp_path / "gaps.h5"
    corrupt_file(tiny_h5, gaps, CorruptionSpec(level=0.5, axis="missing", noise_scale=3.0))
    assert evaluate_model(model, gaps, EvalConfig()).info["first_axis"] == "missing"


def test_blocks_do_not_change_results(tiny_h5: Path) -> None:
    cfg = EvalConfig(sweep=True, levels=(0.5,), seeds=(3,), axes=("mixed",), batch_size=8)
    one = evaluate_model(make_model(tiny_h5), tiny_h5, cfg).table
    # ~1 KiB blocks: one row per block at most, so the rows are read and drawn in many pieces.
    # (Blocks are whole mini-batches and shuffle windows: they stay at 8 rows.)
    small = cfg.override(block_mib=0.001, shuffle_window=2)
    assert Evaluation(make_model(tiny_h5), tiny_h5, small).n_blocks == 4
    one = evaluate_model(make_model(tiny_h5), tiny_h5, cfg.override(shuffle_window=2)).table
    many = evaluate_model(make_model(tiny_h5), tiny_h5, small).table
    pd.testing.assert_frame_equal(one, many, check_exact=True)  # the same batches: same bits
    assert set(many["variant"]) == {"normal", "quality_shuffle", "constant"}


def test_shuffle_control_permutes_even_with_batches_of_one(tiny_h5: Path) -> None:
    # Before: r was permuted within each mini-batch, so --batch-size 1 permuted nothing and the
    # control read "the router ignores quality". Windows of the split do not depend on it.
    cfg = EvalConfig(sweep=True, levels=(0.4,), seeds=(0,), axes=("mixed",))
    ones = evaluate_model(make_model(tiny_h5), tiny_h5, cfg.override(batch_size=1)).table
    assert value(ones, axis="mixed") != value(ones, variant="quality_shuffle", axis="mixed")
    whole = evaluate_model(make_model(tiny_h5), tiny_h5, cfg).table
    for metric in ("MAE", "Corr"):
        assert value(ones, metric, "quality_shuffle", axis="mixed") == pytest.approx(
            value(whole, metric, "quality_shuffle", axis="mixed"), abs=1e-5
        )


def test_shuffle_result_of_a_point_does_not_depend_on_the_grid(tiny_h5: Path) -> None:
    # Before: the permutation was keyed by the point's index in the grid.
    alone = EvalConfig(sweep=True, levels=(0.4,), seeds=(1,), axes=("noise",))
    among = EvalConfig(sweep=True, levels=(0.2, 0.4), seeds=(0, 1), drop_sets=True)
    got = [evaluate_model(make_model(tiny_h5), tiny_h5, c).table for c in (alone, among)]
    for metric in ("MAE", "Corr", "Has0_acc_2"):
        a, b = (value(t, metric, "quality_shuffle", axis="noise", level=0.4, seed=1) for t in got)
        assert a == b


def test_baseline_has_no_shuffle_or_quality(tiny_h5: Path) -> None:
    res = evaluate_model(make_model(tiny_h5, "late-fusion"), tiny_h5, EvalConfig(), run="late")
    assert set(res.table["variant"]) == {"normal", "constant"}
    assert not res.table["metric"].str.startswith(("quality_", "expert_usage_")).any()
    assert res.info["model"] == "late-fusion" and res.info["quality_shuffle"] is False
    assert set(res.clean) == {"Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                              "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}  # fmt: skip


def test_controls_are_what_the_model_declares(tiny_h5: Path) -> None:
    # Evaluation reads the model's declared controls, not its forward's signature: the same
    # QA-MoE without the declaration gets no shuffle pass, and one that does not declare
    # reuses_encodings is never handed encodings (the shuffle pass encodes again, same rows).
    cfg = EvalConfig(sweep=True, levels=(0.4,), seeds=(0,), axes=("mixed",))
    model = make_model(tiny_h5)
    seen: list[bool] = []

    class NoControls(type(model)):  # type: ignore[misc]
        controls = ()

    class EncodesEachPass(type(model)):  # type: ignore[misc]
        reuses_encodings = False

        def forward(self, batch, clean=None, **kw):  # type: ignore[no-untyped-def]
            seen.append("encodings" in kw)
            return super().forward(batch, clean, **kw)

    def like(cls: type) -> torch.nn.Module:
        other = cls(model.cfg, model.file_dims, model.task, model.options)
        other.load_state_dict(model.state_dict())
        return other.eval()

    declared = evaluate_model(model, tiny_h5, cfg).table
    quiet = evaluate_model(like(NoControls), tiny_h5, cfg)
    assert set(quiet.table["variant"]) == {"normal", "constant"}
    assert quiet.info["quality_shuffle"] is False
    again = evaluate_model(like(EncodesEachPass), tiny_h5, cfg).table
    assert seen and not any(seen)
    pd.testing.assert_frame_equal(again, declared, rtol=1e-5)


def test_a_plugin_declaring_an_unknown_control_is_refused() -> None:
    from qamoe_core.models import MultimodalModel, registry

    class Oracle(MultimodalModel):
        name = "oracle"
        controls = ("mind_reading",)  # not offered by evaluation

    with pytest.raises(InputError, match=r"declares the controls .*the evaluation controls are "
                       "quality_shuffle, constant_r, oracle_r"):  # fmt: skip
        registry._checked(Oracle, "x.y:Oracle")


def test_progress_is_called_per_point(tiny_h5: Path) -> None:
    calls: list[dict] = []
    cfg = EvalConfig(sweep=True, levels=(0.2, 0.6), seeds=(0,), axes=("noise",))
    evaluate_model(make_model(tiny_h5, "early-fusion"), tiny_h5, cfg,
                   progress=lambda n=1, **kw: calls.append(kw))  # fmt: skip
    assert len(calls) == 1 + 2


def test_dims_and_task_mismatch(tiny_h5: Path, tmp_path: Path) -> None:
    with FeatureFile(tiny_h5) as f:
        dims = dict(f.dims)
    wrong = build_model("late-fusion", SMALL, {**dims, "audio": dims["audio"] + 1}, "regression")
    with pytest.raises(DataFormatError, match="'audio' has 5 feature dims but the checkpoint"):
        evaluate_model(wrong, tiny_h5)
    binary = build_model("late-fusion", SMALL, dims, "binary")
    with pytest.raises(DataFormatError, match="trained for binary"):
        evaluate_model(binary, tiny_h5)
    text_only = build_model("late-fusion", SMALL, {"text": dims["text"]}, "regression")
    res = evaluate_model(text_only, tiny_h5, EvalConfig(sweep=True, levels=(0.5,), seeds=(0,)))
    assert set(measured(res.table)["modalities"]) == {"text"}
    with pytest.raises(InputError, match="does not use"):
        evaluate_model(text_only, tiny_h5, EvalConfig(sweep=True, modalities=("audio",)))
    assert np.isfinite(res.table["value"]).any()


def test_chunked_corruption_equals_whole(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qamoe_core.evaluation.sweep as evaluate

    cfg = EvalConfig(sweep=True, levels=(0.7,), seeds=(2,), drop_sets=True, batch_size=32)
    whole = evaluate_model(make_model(tiny_h5), tiny_h5, cfg).table
    monkeypatch.setattr(evaluate, "CORRUPT_ROWS", 5)  # 32-row batches in 7 pieces
    pieces = evaluate_model(make_model(tiny_h5), tiny_h5, cfg).table
    pd.testing.assert_frame_equal(whole, pieces, check_exact=True)


def test_non_finite_data_is_named_not_blamed_on_the_model(tiny_h5: Path, tmp_path: Path) -> None:
    import shutil

    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "a") as h5:
        h5["test/text"][3, 0, 0] = np.inf
    with pytest.raises(DataFormatError, match=r"\[test\]: 'text' holds 1 non-finite"):
        evaluate_model(make_model(tiny_h5), bad, EvalConfig())


def test_sweep_rows_carry_their_pattern(tiny_h5: Path, sweep: pd.DataFrame) -> None:
    # The default sweep: each axis its default label, clean/drop/constant rows none.
    labels = dict(measured(sweep).groupby("axis")["pattern"].unique().map(tuple))
    assert labels == {"clean": ("",), "drop": ("",), "mixed": ("random+white",),
                      "missing": ("random",), "noise": ("white",)}  # fmt: skip
    assert set(sweep.loc[sweep["variant"] == "constant", "pattern"]) == {""}
    cfg = EvalConfig(sweep=True, levels=(0.0, 0.4), seeds=(1,), missing_pattern="burst",
                     burst_mean=4.0, noise_pattern="correlated")  # fmt: skip
    burst = evaluate_model(make_model(tiny_h5), tiny_h5, cfg, run="qa").table
    labels = dict(measured(burst).groupby("axis")["pattern"].unique().map(tuple))
    assert labels == {"clean": ("",), "mixed": ("burst+correlated",), "missing": ("burst",),
                      "noise": ("correlated",)}  # fmt: skip
    # The pattern reaches the draws: the same point under another pattern scores otherwise,
    # and level 0 stays the clean point whatever the pattern.
    for axis in ("missing", "noise"):
        assert value(burst, axis=axis, level=0.4) != pytest.approx(
            value(sweep, axis=axis, level=0.4, seed=1), abs=1e-6
        )
        assert value(burst, axis=axis, level=0.0) == value(burst, axis="clean")


def test_burst_file_evaluated_as_given_is_labelled_burst(tiny_h5: Path, tmp_path: Path) -> None:
    model = make_model(tiny_h5)
    spec = CorruptionSpec(level=0.4, axis="missing", seed=1, missing_pattern="burst",
                          burst_mean=4.0)  # fmt: skip
    burst = tmp_path / "burst.h5"
    corrupt_file(tiny_h5, burst, spec, splits="test")
    got = evaluate_model(model, burst, EvalConfig(), run="qa").table
    assert set(measured(got)["pattern"]) == {"burst"}
    # ...and it is the sweep's burst point (same draws), not the random one.
    cfg = EvalConfig(sweep=True, axes=("missing",), levels=(0.4,), seeds=(1,),
                     missing_pattern="burst", burst_mean=4.0, quality_shuffle=False)  # fmt: skip
    swept = evaluate_model(model, tiny_h5, cfg, run="qa").table
    assert value(got) == pytest.approx(value(swept, axis="missing", level=0.4), abs=1e-5)
    noisy = tmp_path / "ar.h5"
    spec = CorruptionSpec(level=0.3, axis="mixed", noise_pattern="correlated", noise_rho=0.5)
    corrupt_file(tiny_h5, noisy, spec)
    got = evaluate_model(model, noisy, EvalConfig(), run="qa").table
    assert set(measured(got)["pattern"]) == {"random+correlated"}
