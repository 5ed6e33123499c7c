"""`qamoe_core.data.audit`: a constructed leak is flagged, honest data is not, and the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.data.audit import (
    DEFAULT_GROUP_REGEX,
    AuditConfig,
    audit,
    compile_group_regex,
    group_of,
    label_summary,
)
from qamoe_core.data.store import SplitArrays, write_features
from tests.conftest import mosi_lite_dir

# videos per split and clips per video: 40 train videos, as a small MOSI
VIDEOS = {"train": 40, "valid": 8, "test": 16}
CLIPS = 10
T, D = 3, 6


def _split(
    rng: np.random.Generator, split: str, videos: int, *, leak: bool, binary: bool
) -> SplitArrays:
    """One split: text dim 0 carries the sentiment honestly (same strength in every split);
    with ``leak`` text dim 1 is the train label plus per-video noise in train only (what a
    text network fitted on the train videos' labels would give), pure noise elsewhere."""
    n = videos * CLIPS
    z = rng.standard_normal(n)
    score = np.clip(1.2 * z + 0.8 * rng.standard_normal(n), -3, 3)
    label = (score >= 0).astype(np.float32) if binary else score.astype(np.float32)
    text = rng.standard_normal((n, T, D)).astype(np.float32)
    text[:, :, 0] += 0.8 * z[:, None]
    if leak and split == "train":
        per_video = np.repeat(0.3 * rng.standard_normal(videos), CLIPS)
        text[:, :, 1] = (score + per_video + 0.1 * rng.standard_normal(n))[:, None]
    audio = rng.standard_normal((n, T, 4)).astype(np.float32)
    lens = rng.integers(1, T + 1, size=n)
    text *= (np.arange(T)[None, :] < lens[:, None])[..., None]  # zero padding after len
    ids = [f"{split}v{i // CLIPS:03d}_{i % CLIPS + 1}" for i in range(n)]
    return SplitArrays(
        ids=ids,
        label=label,
        features={"text": text, "audio": audio},
        lengths={"text": lens, "audio": np.full(n, T)},
    )


def make_file(
    path: Path, *, leak: bool = False, binary: bool = False, seed: int = 0, **edit: Any
) -> Path:
    rng = np.random.default_rng(seed)
    splits = {s: _split(rng, s, v, leak=leak, binary=binary) for s, v in VIDEOS.items()}
    for fn in edit.values():
        fn(splits)
    write_features(
        path,
        splits,
        dataset="constructed",
        task="binary" if binary else "regression",
        scheme="binary" if binary else "mosi",
        label_range=(0, 1) if binary else (-3, 3),
        extractor={"name": "test"},
    )
    return path


# seed 4 drew a test split 3.2 standard errors harder than train: the case that set z to 4
@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("binary", [False, True])
def test_a_constructed_leak_is_flagged_and_honest_data_is_not(
    tmp_path: Path, binary: bool, seed: int
) -> None:
    honest = audit(make_file(tmp_path / "honest.h5", binary=binary, seed=seed))
    leaked = audit(make_file(tmp_path / "leaked.h5", leak=True, binary=binary, seed=seed))
    assert honest["flagged"] is False, honest["findings"]
    assert honest["modalities"]["text"]["verdict"] == "ok"
    assert leaked["flagged"] is True
    text = leaked["modalities"]["text"]
    assert text["flagged_on"] == ["valid", "test"] and text["verdict"] == "label-fitted?"
    metric = leaked["probe"]["metric"]
    assert metric == ("Acc_2" if binary else "Has0_acc_2")
    assert text["cv"][metric] > 0.9 > text["heldout"]["test"][metric] + 0.1
    assert [f["modality"] for f in leaked["findings"] if f["kind"] == "label_fitted"] == [
        "text",
        "text",
    ]
    # audio is noise in both files: never flagged, and shown as carrying no signal
    assert leaked["modalities"]["audio"]["verdict"] == "no held-out signal"
    assert leaked["grouping"] == {**leaked["grouping"], "grouped": True, "folds": 5}
    assert leaked["grouping"]["groups"] == VIDEOS


def test_the_gap_must_exceed_the_threshold(tmp_path: Path) -> None:
    path = make_file(tmp_path / "leaked.h5", leak=True)
    assert audit(path, AuditConfig(max_gap=60.0))["flagged"] is False
    assert audit(path, AuditConfig(z=50.0))["flagged"] is False


def test_group_rule() -> None:
    rx = compile_group_regex(DEFAULT_GROUP_REGEX)
    ids = ["03bSnISJMiM_1", "_dI--eQ6qVU_12", "a_b_c_3", "synth_train_0001$_$4", "plain"]
    groups, matched = group_of(ids, rx)
    assert groups == ["03bSnISJMiM", "_dI--eQ6qVU", "a_b_c", "synth_train_0001", "plain"]
    assert matched == 4
    assert group_of(ids, None) == (ids, 0)
    with pytest.raises(InputError, match="no capture group"):
        compile_group_regex(r"^.+_\d+$")
    with pytest.raises(InputError, match="does not compile"):
        compile_group_regex(r"^(.+")


def test_ids_and_videos_shared_across_splits_are_flagged(tmp_path: Path) -> None:
    def share(splits: dict[str, SplitArrays]) -> None:
        ids = list(splits["test"].ids)
        ids[0] = splits["train"].ids[0]  # one clip in both (a duplicated row)
        ids[CLIPS : CLIPS + 2] = ["trainv005_98", "trainv005_99"]  # a train video in test
        splits["test"].ids = ids

    report = audit(make_file(tmp_path / "f.h5", edit=share))
    kinds = {f["kind"]: f for f in report["findings"] if f["level"] == "flag"}
    assert set(kinds) == {"ids_shared", "groups_shared"}
    assert report["overlap"]["ids"]["train/test"] == {"count": 1, "examples": ["trainv000_1"]}
    assert report["overlap"]["groups"]["train/test"]["count"] == 2  # trainv000, trainv005
    assert report["overlap"]["ids"]["train/valid"]["count"] == 0
    # grouping off: the videos are not compared (and CV by row is warned about)
    off = audit(tmp_path / "f.h5", AuditConfig(group_regex=None))
    assert off["overlap"]["groups"] == {} and not off["grouping"]["grouped"]
    assert "no_grouping" in {f["kind"] for f in off["findings"]}


def test_dead_dims_are_named(tmp_path: Path) -> None:
    def kill(splits: dict[str, SplitArrays]) -> None:
        for s in splits.values():
            s.features["audio"][:, :, 1] = 0.0
        splits["train"].features["audio"][:, :, 3] = 2.5

    report = audit(make_file(tmp_path / "f.h5", edit=kill))
    dead = report["modalities"]["audio"]["dead"]
    assert dead["train"] == {"no_valid_steps": False, "zero": [1], "constant": [3]}
    assert dead["test"]["zero"] == [1] and dead["test"]["constant"] == []
    assert report["modalities"]["text"]["dead"]["train"]["zero"] == []
    (warn,) = [f for f in report["findings"] if f["kind"] == "dead_dims"]
    assert warn["modality"] == "audio" and "train 1/1" in warn["message"]
    assert report["flagged"] is False  # a warning, not a flag


def test_label_summary_floors() -> None:
    binary = label_summary(np.array([1, 1, 0, 1]), "binary", "binary")
    assert binary["floor"] == {"Acc_2": 0.75} and binary["balance"]["positive"] == 0.75
    y = np.array([-2.0, -1.0, 0.0, 0.0, 1.0, 2.6])
    mosi = label_summary(y, "regression", "mosi")["floor"]
    assert mosi["Has0_acc_2"] == pytest.approx(4 / 6)  # predict >= 0
    assert mosi["Non0_acc_2"] == pytest.approx(2 / 4)
    assert mosi["Mult_acc_7"] == pytest.approx(2 / 6)  # the two zeros
    assert mosi["MAE"] == pytest.approx(np.mean(np.abs(y)))  # the median is 0


def test_subsample_is_seeded_and_bounded(tmp_path: Path) -> None:
    path = make_file(tmp_path / "f.h5", leak=True)
    a = audit(path, AuditConfig(max_rows=120))
    b = audit(path, AuditConfig(max_rows=120))
    assert a["splits"]["train"]["n_read"] == 120 and a["splits"]["train"]["n"] == 400
    assert a["splits"]["valid"]["n_read"] == 80  # smaller than the cap: read whole
    assert a["modalities"] == b["modalities"]
    assert a["flagged"] is True  # still found on 120 of 400 rows


def test_modalities_and_json_types(tmp_path: Path) -> None:
    import json

    path = make_file(tmp_path / "f.h5")
    report = audit(path, AuditConfig(modalities=("audio",)))
    assert list(report["modalities"]) == ["audio"]
    json.dumps(report)  # plain types only
    with pytest.raises(InputError, match="no modality vision"):
        audit(path, AuditConfig(modalities=("vision",)))


# -- bad input: one-line errors with hints ----------------------------------------------------
def test_no_train_split(tmp_path: Path) -> None:
    path = make_file(tmp_path / "f.h5")
    with h5py.File(path, "a") as h5:
        del h5["train"]
    with pytest.raises(InputError, match="has no train split") as exc:
        audit(path)
    assert exc.value.hint and "train" in exc.value.hint


@pytest.mark.parametrize("positives", [0, 1])
def test_single_class_or_one_sample_per_class(tmp_path: Path, positives: int) -> None:
    def relabel(splits: dict[str, SplitArrays]) -> None:
        label = np.zeros(len(splits["train"]), np.float32)
        label[:positives] = 1.0
        splits["train"].label = label

    path = make_file(tmp_path / "f.h5", binary=True, edit=relabel)
    with pytest.raises(InputError, match=f"{positives} positive labels; a probe needs") as exc:
        audit(path)
    assert exc.value.hint


def test_constant_regression_labels(tmp_path: Path) -> None:
    def flat(splits: dict[str, SplitArrays]) -> None:
        splits["train"].label = np.full(len(splits["train"]), 1.5, np.float32)

    with pytest.raises(InputError, match=r"every train label is 1\.5"):
        audit(make_file(tmp_path / "f.h5", edit=flat))


def test_not_a_feature_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(DataFormatError, match="not a qamoe feature file") as exc:
        audit(plain)
    assert exc.value.hint
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataFormatError, match="not an HDF5 file"):
        audit(text)
    with pytest.raises(InputError, match="does not exist"):
        audit(tmp_path / "missing.h5")


def test_config_is_checked() -> None:
    with pytest.raises(InputError, match="'folds'"):
        AuditConfig(folds=1).check()
    with pytest.raises(InputError, match="'max_gap'"):
        AuditConfig(max_gap=-1).check()


def test_honest_synthetic_tiny_is_not_flagged(tiny_h5: Path) -> None:
    report = audit(tiny_h5)
    assert report["flagged"] is False, report["findings"]
    assert report["grouping"]["grouped"]  # MMSA-style ids "<video>$_$<clip>" are grouped


@pytest.mark.slow
@pytest.mark.skipif(mosi_lite_dir() is None, reason="needs ../shared/data/mosi-lite")
def test_honest_real_data_is_not_flagged(tmp_path: Path) -> None:
    """MOSI-lite's 31 bc-LSTM test videos are honest for all three feature sets (the networks
    never saw them): re-split by video into train/valid/test, nothing may be flagged."""
    from qamoe_core.data.importers.mosilite import import_mosilite
    from qamoe_core.data.store import FeatureFile

    root = mosi_lite_dir()
    assert root is not None  # the skipif above
    src = tmp_path / "ml.h5"
    import_mosilite(root, src)
    with FeatureFile(src) as f:
        block, ids, mods = f.read("test", slice(None)), f.ids("test"), f.modalities
    groups, _ = group_of(ids, compile_group_regex(DEFAULT_GROUP_REGEX))
    videos = sorted(set(groups))
    np.random.default_rng(0).shuffle(videos)
    split_of = {
        v: "test" if i < 8 else "valid" if i < 12 else "train" for i, v in enumerate(videos)
    }
    splits = {}
    for s in ("train", "valid", "test"):
        r = np.array([i for i, g in enumerate(groups) if split_of[g] == s])
        splits[s] = SplitArrays(
            [ids[i] for i in r],
            block["label"][r],
            {m: block[m][r] for m in mods},
            {m: block[f"{m}_len"][r] for m in mods},
        )
    path = tmp_path / "honest.h5"
    write_features(
        path,
        splits,
        dataset="t",
        task="binary",
        scheme="binary",
        label_range=(0, 1),
        extractor={"name": "test"},
    )
    report = audit(path)
    assert report["flagged"] is False, [f["message"] for f in report["findings"]]
    assert report["modalities"]["text"]["verdict"] == "ok"  # text-CNN: real signal here
