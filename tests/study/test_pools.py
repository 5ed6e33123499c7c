"""Datasets pooled as the folds of one cross-validation (``[pools.NAME]``): how a pool is read
and refused, and the paper table's pooled values: the folds averaged within a model seed, so
one model seed is one replicate, then mean ± sd and the Welch comparison over seeds."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qamoe_core.base.errors import UsageError
from qamoe_core.evaluation import results
from qamoe_core.study import cells, outputs, plan, pools, spec, table
from qamoe_core.study.spec import StudyFileError

REPO = Path(__file__).resolve().parents[2]

STUDY = """
seeds = [0, 1, 2]
[datasets.f1]
path = "f1.h5"
[datasets.f2]
path = "f2.h5"
[datasets.other]
path = "o.h5"
[pools.cv]
datasets = ["f1", "f2"]
[arms.a]
model = "early-fusion"
[arms.ref]
model = "late-fusion"
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
corruption_seeds = 1
[compare]
reference = "ref"
metrics = ["MAE"]
"""


def load(tmp_path: Path, text: str = STUDY) -> spec.Study:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    for name in ("f1.h5", "f2.h5", "o.h5"):
        (tmp_path / name).touch()
    return spec.load_study(path)


def test_a_pool_is_read_and_named_in_the_studys_content(tmp_path: Path) -> None:
    study = load(tmp_path)
    assert study.pools == (pools.Pool("cv", ("f1", "f2")),)
    assert study.to_doc()["pools"] == {"cv": ["f1", "f2"]}
    plain = load(tmp_path, STUDY.replace('[pools.cv]\ndatasets = ["f1", "f2"]\n', ""))
    assert plain.pools == () and "pools" not in plain.to_doc()  # older folders: unchanged


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('["f1", "f2"]', '["f1", "othr"]'), ["'othr', which is not a dataset", "'other'"]),
        (('["f1", "f2"]', '["f1", "f9"]'), ["'f9', which is not", "Its datasets: f1, f2, other"]),
        (('["f1", "f2"]', '["f1"]'), ["two or more datasets, each once"]),
        (('["f1", "f2"]', '["f1", "f1"]'), ["two or more datasets, each once"]),
        (('["f1", "f2"]', '"f1"'), ["'datasets' must be a list of dataset names"]),
        (("[pools.cv]", "[pools.other]"), ["the pool's name 'other' is a dataset's"]),
        (("datasets = [", "folds = ["), ["unknown key 'folds'", "Valid keys: datasets"]),
        (
            ('["f1", "f2"]\n', '["f1", "f2"]\n[pools.cv2]\ndatasets = ["f2", "other"]\n'),
            ["[pools.cv2]", "the dataset 'f2' is in pool 'cv' already"],
        ),
    ],
)
def test_a_bad_pool_is_refused_in_one_line(
    tmp_path: Path, change: tuple[str, str], words: list[str]
) -> None:
    text = STUDY.replace(*change)
    assert text != STUDY
    with pytest.raises(StudyFileError) as err:
        load(tmp_path, text)
    assert "\n" not in err.value.message and isinstance(err.value, UsageError)
    for word in words:
        assert word in err.value.message + " " + (err.value.hint or ""), (word, err.value)


def info(scheme: str = "mosi", digest: str = "0") -> spec.DataInfo:
    return spec.DataInfo(Path("x.h5"), digest * 64, ("text", "audio", "vision"), scheme, ("test",))


def test_the_folds_of_a_pool_share_a_label_scheme(tmp_path: Path) -> None:
    study = load(tmp_path)
    spec.check_against_data(study, {"f1": info(), "f2": info(), "other": info()})
    with pytest.raises(StudyFileError, match=r"\[pools.cv\]: .*different label schemes"):
        spec.check_against_data(study, {"f1": info(), "f2": info("binary"), "other": info()})


# one value per (dataset, arm, model seed): MAE in the column p
VALUES = {
    ("f1", "a"): [1.00, 1.10, 0.90],
    ("f2", "a"): [1.20, 1.00, 1.30],
    ("f1", "ref"): [1.10, 1.30, 1.20],
    ("f2", "ref"): [1.40, 1.20, 1.50],
    ("other", "a"): [0.50, 0.60, 0.70],
    ("other", "ref"): [0.80, 0.90, 0.85],
}


def frame(values: dict[tuple[str, str], list[float]] = VALUES) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"dataset": ds, "arm": arm, "seed": s, "column": "p", "metric": "MAE", "value": v}
            for (ds, arm), vals in values.items()
            for s, v in enumerate(vals)
        ]
    )


def test_a_seeds_value_is_its_mean_over_the_folds_and_one_replicate() -> None:
    cv = (pools.Pool("cv", ("f1", "f2")),)
    df = table.summarize(pools.pooled(frame(), cv), "ref")
    assert list(dict.fromkeys(df["dataset"])) == ["cv", "other"]  # in place of its first fold
    a = np.mean([VALUES[("f1", "a")], VALUES[("f2", "a")]], axis=0)  # per seed: 1.1, 1.05, 1.1
    ref = np.mean([VALUES[("f1", "ref")], VALUES[("f2", "ref")]], axis=0)
    row = df[(df["dataset"] == "cv") & (df["arm"] == "a")].iloc[0]
    assert row["n_seeds"] == 3  # three model seeds, not six (seed, fold) pairs
    assert math.isclose(row["mean"], a.mean()) and math.isclose(row["sd"], a.std(ddof=1))
    want = table.compare_arms({"a": a.tolist(), "ref": ref.tolist()}, "ref")["a"]
    assert math.isclose(row["difference"], want.difference)
    assert math.isclose(row["ci_low"], want.ci_low) and math.isclose(row["p"], want.p)
    six = {arm: VALUES[("f1", arm)] + VALUES[("f2", arm)] for arm in ("a", "ref")}
    folds_as_seeds = table.compare_arms(six, "ref")["a"]
    assert not math.isclose(row["ci_low"], folds_as_seeds.ci_low)  # pseudo-replication differs
    other = df[(df["dataset"] == "other") & (df["arm"] == "a")].iloc[0]
    assert math.isclose(other["mean"], np.mean(VALUES[("other", "a")]))  # unpooled: as it was


def test_a_seed_without_every_fold_has_no_pooled_value() -> None:
    values = {k: v for k, v in VALUES.items() if k[0] != "other"}
    short = frame(values)
    short = short[~((short["dataset"] == "f2") & (short["arm"] == "a") & (short["seed"] == 2))]
    got = pools.pooled(short, (pools.Pool("cv", ("f1", "f2")),))
    a = got[got["arm"] == "a"].set_index("seed")["value"]
    assert math.isclose(a[0], 1.1) and math.isclose(a[1], 1.05) and math.isnan(a[2])


def test_the_study_table_gives_the_pool_and_says_how(tmp_path: Path) -> None:
    study = load(tmp_path)
    data = {"f1": info(digest="1"), "f2": info(digest="2"), "other": info(digest="3")}
    made = plan.make_plan(study, data)  # fold files differ: their cells too
    out = tmp_path / "out"
    for cell in (c for c in made.cells if c.kind == "train"):  # what each training selected on
        score = 0.5 + 0.1 * cell.seed + (0.2 if cell.dataset == "f2" else 0.0)
        run = cells.cell_dir(out, cell.key) / cells.RUN
        run.mkdir(parents=True)
        metrics = {"select_metric": "MAE", "val_score": score, "best_epoch": 1,
                   "val": {"0.5": {"MAE": score, "loss": score}}}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(metrics))
    by_ds: dict[str, list] = {}
    for cell in (c for c in made.cells if c.kind == "sweep"):
        value = VALUES[(cell.dataset, cell.arm)][cell.seed]  # the same at both levels
        rows = [
            {"run": cell.label, "model": cell.arm, "dataset": cell.dataset, "split": "test",
             "axis": axis, "level": level, "modalities": "text+audio+vision", "seed": 0,
             "variant": "normal", "metric": "MAE", "value": value}
            for axis, level in (("clean", 0.0), ("missing", 0.0), ("missing", 0.5))
        ]  # fmt: skip
        path = out / f"{cell.dataset}-{cell.label}.csv"
        out.mkdir(exist_ok=True)
        results.save(results.make_table(rows), path)
        by_ds.setdefault(cell.dataset, []).append((cell, cell.protocol, path))
    outputs._tables(made, out, by_ds)
    csv = pd.read_csv(io.StringIO((out / "table.csv").read_text()))
    assert set(csv["dataset"]) == {"cv", "other"}
    cv_a = csv[(csv["dataset"] == "cv") & (csv["arm"] == "a") & (csv["column"] == "p")].iloc[0]
    a = np.mean([VALUES[("f1", "a")], VALUES[("f2", "a")]], axis=0)
    assert cv_a["n_seeds"] == 3 and math.isclose(cv_a["mean"], a.mean(), rel_tol=1e-9)
    # The selection column is pooled the same way: a seed's folds averaged first (0.6 + 0.1 s).
    valid = csv[
        (csv["dataset"] == "cv") & (csv["arm"] == "a") & (csv["column"] == "valid (selected)")
    ]
    assert len(valid) == 1 and math.isclose(valid.iloc[0]["mean"], 0.7, rel_tol=1e-9)
    assert math.isclose(valid.iloc[0]["sd"], 0.1, rel_tol=1e-9)
    md = (out / "table.md").read_text()
    assert "## cv: MAE (lower is better)" in md and "## f1" not in md
    assert "Datasets pooled as the folds of one cross-validation (cv pools f1, f2)" in md
    assert "cv pools f1, f2" in (out / "table.tex").read_text()


def test_the_cv_study_pools_its_five_folds() -> None:
    study = spec.load_study(REPO / "studies" / "mosi-bclstm-cv.toml")
    assert [(p.name, p.datasets) for p in study.pools] == [
        ("cv", ("fold1", "fold2", "fold3", "fold4", "fold5"))
    ]
