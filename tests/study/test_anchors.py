"""The anchors of a study's table (`[compare] anchors`): the best constant on train and a
ridge / logistic regression on the modalities' pooled features, fitted on train only and
scored on the first protocol's split; their rows in the table, their cache, their checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from qamoe_core.data import audit
from qamoe_core.data.store import FeatureFile, write_features
from qamoe_core.data.synthetic import generate, write_synthetic
from qamoe_core.metrics import compute
from qamoe_core.study import anchors, plan, spec, table
from qamoe_core.study.spec import StudyFileError

STUDY = """
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[arms.a]
model = "early-fusion"
[arms.b]
model = "late-fusion"
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
[compare]
reference = "b"
"""


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("anchors") / "d.h5"
    write_synthetic(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def binary_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    splits = generate("tiny", seed=0)
    for a in splits.values():
        a.label = (a.label > 0).astype(np.float32)
    path = tmp_path_factory.mktemp("anchors") / "b.h5"
    write_features(path, splits, dataset="b", task="binary", scheme="binary",
                   label_range=(0.0, 1.0), extractor={})  # fmt: skip
    return path


def labels(path: Path, split: str) -> np.ndarray:
    with FeatureFile(path) as f:
        return audit.pooled_features(f, split, ())[0]


def test_the_constant_is_chosen_on_train(tiny_h5: Path) -> None:
    got = anchors.fit(tiny_h5, "test", ["constant"])["constant"]
    train, test = labels(tiny_h5, "train"), labels(tiny_h5, "test")
    median = float(np.median(train))
    assert math.isclose(got["fitted"]["constant"]["MAE"], median, rel_tol=1e-6)
    assert math.isclose(got["scores"]["MAE"], np.mean(np.abs(test - median)), rel_tol=1e-5)
    assert math.isnan(got["scores"]["Corr"])  # a constant has no correlation
    assert (got["n_train"], got["n"]) == (len(train), len(test))


def test_the_ridge_learns_and_beats_the_constant(tiny_h5: Path, binary_h5: Path) -> None:
    for path, metric, better in ((tiny_h5, "MAE", np.less), (binary_h5, "Acc_2", np.greater)):
        got = anchors.fit(path, "test", ["constant", "ridge"])
        assert better(got["ridge"]["scores"][metric], got["constant"]["scores"][metric]), path
    fitted = anchors.fit(tiny_h5, "test", ["ridge"])["ridge"]["fitted"]
    assert fitted["alpha"] in audit.ALPHAS
    c = anchors.fit(binary_h5, "test", ["ridge"])["ridge"]["fitted"]["C"]
    assert np.isclose(1 / audit.ALPHAS, c).any()


def test_nothing_is_chosen_on_the_split_scored(
    tiny_h5: Path, binary_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shuffled test labels change the scores, not what was fitted."""
    clean = {p: anchors.fit(p, "test", anchors.ANCHORS) for p in (tiny_h5, binary_h5)}
    real = audit.pooled_features

    def shuffled(f: Any, split: str, mods: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        y, x = real(f, split, mods)
        return (np.random.default_rng(0).permutation(y) if split == "test" else y), x

    monkeypatch.setattr(audit, "pooled_features", shuffled)
    for path, before in clean.items():
        after = anchors.fit(path, "test", anchors.ANCHORS)
        for name in anchors.ANCHORS:
            assert after[name]["fitted"] == before[name]["fitted"], (path, name)
        assert after["ridge"]["scores"] != before["ridge"]["scores"]


def study_plan(tmp_path: Path, data: Path, extra: str) -> plan.Plan:
    source = tmp_path / "s.toml"
    source.write_text(STUDY.replace('path = "d.h5"', f'path = "{data}"') + extra)
    study = spec.load_study(source)
    info = spec.DataInfo(data, "e" * 64, ("text", "audio", "vision"), "mosi",
                         ("train", "valid", "test"))  # fmt: skip
    return plan.make_plan(study, {"d": info})


def test_a_study_fits_once_and_reads_back(
    tmp_path: Path, tiny_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = study_plan(tmp_path, tiny_h5, 'anchors = ["ridge", "constant"]\n')
    records = anchors.compute_all(made, tmp_path)
    assert [(r["anchor"], r["metric"]) for r in records] == [
        ("ridge", "Has0_acc_2"), ("ridge", "MAE"), ("constant", "Has0_acc_2"),
        ("constant", "MAE"),
    ]  # fmt: skip
    assert all(r["split"] == "test" for r in records)
    constant = {r["metric"]: r["fitted"]["constant"] for r in records if r["anchor"] == "constant"}
    assert constant["MAE"] == pytest.approx(float(np.median(labels(tiny_h5, "train"))))
    json.dumps(records, allow_nan=False)

    def no_fit(*args: Any) -> Any:
        raise AssertionError("fitted again")

    monkeypatch.setattr(anchors, "fit", no_fit)
    assert anchors.compute_all(made, tmp_path) == records  # read back from anchors.json
    assert (tmp_path / anchors.FILE).is_file()
    assert anchors.compute_all(study_plan(tmp_path, tiny_h5, ""), tmp_path) == []
    assert not (tmp_path / anchors.FILE).exists()  # a study without anchors keeps none


def test_anchor_rows_are_marked_and_compared_with_nothing(tmp_path: Path, tiny_h5: Path) -> None:
    made = study_plan(tmp_path, tiny_h5, 'anchors = ["constant", "ridge"]\n')
    records = anchors.compute_all(made, tmp_path)
    values = pd.DataFrame(
        [
            {"dataset": "d", "arm": arm, "seed": s, "column": "clean", "metric": m, "value": v}
            for m in ("Has0_acc_2", "MAE")
            for arm, vals in (("a", [1.0, 1.2]), ("b", [1.1, 1.3]))
            for s, v in enumerate(vals)
        ]
    )
    df = pd.concat([table.summarize(values, "b"), anchors.rows(records, "b")])
    md = table.markdown(df, "T", "b", 3, anchors.note(records))
    ridge_mae = next(r["value"] for r in records if (r["anchor"], r["metric"]) == ("ridge", "MAE"))
    assert f"| *ridge (anchor)* | {ridge_mae:.3f} |" in md
    assert "| *constant (anchor)* |" in md
    assert "| ridge" not in md.split("95 % CI")[1]  # the comparisons list the arms only
    assert "Mean ± sd over 2 model seeds" in md and "train split only" in md
    tex = table.latex(df, "b", 3)
    assert "\\textit{ridge (anchor)}" in tex and "$\\Delta$ ridge" not in tex
    assert "d,clean,MAE,anchor:ridge,1," in table.csv_text(df)


def test_the_anchors_key_is_checked(tmp_path: Path) -> None:
    def load(text: str) -> spec.Study:
        (tmp_path / "s.toml").write_text(STUDY + text)
        return spec.load_study(tmp_path / "s.toml")

    assert load('anchors = ["ridge", "ridge"]\n').compare.anchors == ("ridge",)
    assert "anchors" not in load("").to_doc()["compare"]  # an older folder reads unchanged
    assert load('anchors = ["constant"]\n').to_doc()["compare"]["anchors"] == ["constant"]
    for bad, said in (('["ridge", "lasso"]', "unknown anchor 'lasso'"), ('"ridge"', "a list")):
        with pytest.raises(StudyFileError) as info:
            load(f"anchors = {bad}\n")
        assert said in info.value.message and "[compare]" in info.value.message


def test_anchor_scores_match_the_metrics_of_their_predictions(binary_h5: Path) -> None:
    """The constant's accuracy is the majority side of train, scored on test."""
    got = anchors.fit(binary_h5, "test", ["constant"])["constant"]
    train, test = labels(binary_h5, "train"), labels(binary_h5, "test")
    majority = 1.0 if np.mean(train > 0.5) >= 0.5 else -1.0
    expected = compute(np.full(test.shape, majority), test, "binary")["Acc_2"]
    assert math.isclose(got["scores"]["Acc_2"], expected)
