"""MMSA pickles -> HDF5: small files in MMSA's exact layout, written here, round-tripped."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from qamoe_core.base.errors import DataFormatError, InputError, OutputExistsError
from qamoe_core.data.importers import mmsa
from qamoe_core.data.importers.mmsa import PROGRESS_STEPS, import_mmsa
from qamoe_core.data.store import FeatureFile, load_split, validate

SIZES = {"train": 12, "valid": 5, "test": 6}
DIMS = {"text": 16, "audio": 5, "vision": 7}  # real files: 768, 5 (MOSI) / 74, 20 / 35
T_TEXT, T_AUDIO, T_VISION = 8, 11, 13


def make_split(
    n: int,
    rng: np.random.Generator,
    *,
    aligned: bool = False,
    sims: bool = False,
    neg_inf: int = 0,
    dtype: Any = np.float64,
    prefix: str = "",
) -> dict[str, Any]:
    """One split laid out like MMSA's feature files (see MMSA_FORMAT.md)."""
    text_len = rng.integers(3, T_TEXT + 1, size=n)  # [CLS] w1 .. wk [SEP]
    bert = np.zeros((n, 3, T_TEXT))
    for i, k in enumerate(text_len):
        bert[i, 0, :k] = [101, *rng.integers(1000, 30000, size=k - 2), 102]
        bert[i, 1, :k] = 1.0
    # BERT states are nonzero at [PAD] positions too: the importer must zero them
    text = rng.standard_normal((n, T_TEXT, DIMS["text"]))
    t_a, t_v = (T_TEXT, T_TEXT) if aligned else (T_AUDIO, T_VISION)
    audio_len = text_len if aligned else rng.integers(1, t_a + 1, size=n)
    vision_len = text_len if aligned else rng.integers(1, t_v + 1, size=n)
    audio = rng.standard_normal((n, t_a, DIMS["audio"]))
    audio *= (np.arange(t_a)[None, :] < audio_len[:, None])[:, :, None]
    vision = rng.standard_normal((n, t_v, DIMS["vision"]))
    vision *= (np.arange(t_v)[None, :] < vision_len[:, None])[:, :, None]
    for j in range(neg_inf):  # COVAREP writes -inf for log-energy of silence
        audio[j % n, 0, j % DIMS["audio"]] = -np.inf
    if sims:
        labels = np.round(rng.uniform(-1, 1, n) * 5) / 5
    else:  # MOSI: means of annotators' integer scores, e.g. 1.333, -2.6
        labels = np.round(rng.uniform(-3, 3, n) * 3) / 3
    split: dict[str, Any] = {
        "raw_text": np.array([f"sentence {i} with words" for i in range(n)]),
        "audio": audio.astype(dtype),
        "vision": vision.astype(dtype),
        "id": np.array([f"{prefix}vid{i // 3}$_${i % 3 + 1}" for i in range(n)]),
        "text": text.astype(dtype),
        "text_bert": bert.astype(dtype),
        "annotations": np.array(["Positive" if y > 0 else "Negative" for y in labels]),
        "classification_labels": (labels > 0).astype(dtype),
        "regression_labels": labels.astype(dtype),
    }
    if not aligned:
        split["audio_lengths"] = audio_len.tolist()  # MMSA stores these as lists of ints
        split["vision_lengths"] = vision_len.tolist()
    if sims:
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            split[key] = (np.round(rng.uniform(-1, 1, n) * 5) / 5).astype(dtype)
    return split


def make_mmsa(seed: int = 0, **kw: Any) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    # ids are unique across the file: a video's clips stay in one split
    return {s: make_split(n, rng, prefix=f"{s}_", **kw) for s, n in SIZES.items()}


def dump(tmp_path: Path, data: Any, name: str = "unaligned_50.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


def test_unaligned_round_trip(tmp_path: Path) -> None:
    data = make_mmsa(neg_inf=3)
    src = dump(tmp_path, data)
    out = tmp_path / "mosi.h5"
    calls: list[dict[str, Any]] = []
    summary = import_mmsa(src, out, progress=lambda n=1, **f: calls.append(f))
    assert len(calls) == PROGRESS_STEPS
    validate(out)
    assert summary["aligned"] is False
    assert summary["splits"] == SIZES
    assert summary["dims"] == DIMS
    assert summary["seq_lens"] == {"text": T_TEXT, "audio": T_AUDIO, "vision": T_VISION}
    assert summary["nonfinite_replaced"] == {"text": 0, "audio": 9, "vision": 0}  # 3 per split
    assert summary["length_source"] == {
        "text": "text_attention_mask",
        "audio": "audio_lengths",
        "vision": "vision_lengths",
    }
    assert summary["padding_zeroed"]["text"] > 0 and summary["padding_zeroed"]["audio"] == 0
    assert summary["scheme"] == "mosi" and summary["label_range"] == [-3.0, 3.0]
    assert summary["source_dtypes"]["text"] == "float64"
    assert summary["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert summary["sha256_match"] is False and summary["release"] is None
    json.dumps(summary)  # the CLI prints it as JSON

    with FeatureFile(out) as f:
        assert f.scheme == "mosi" and f.task == "regression"
        assert f.attrs["source_sha256"] == summary["source_sha256"]
        assert f.attrs["source_release"] == "unknown"
        assert json.loads(f.attrs["extractor"])["length_source"]["audio"] == "audio_lengths"
        assert f.text_special_ids == (100, 101, 102)  # bert-base-uncased's [UNK]/[CLS]/[SEP]
        for split, raw in data.items():
            batch = f.read(split, slice(None))
            assert f.ids(split) == list(raw["id"])
            assert f.raw_text(split) == list(raw["raw_text"])
            np.testing.assert_array_equal(batch["label"], raw["regression_labels"].astype("f4"))
            np.testing.assert_array_equal(batch["text_ids"], raw["text_bert"][:, 0].astype(int))
            text_len = raw["text_bert"][:, 1].sum(1).astype(int)
            np.testing.assert_array_equal(batch["text_len"], text_len)
            np.testing.assert_array_equal(batch["audio_len"], raw["audio_lengths"])
            np.testing.assert_array_equal(batch["vision_len"], raw["vision_lengths"])
            for i, k in enumerate(text_len):  # valid steps kept, [PAD] states zeroed
                np.testing.assert_allclose(batch["text"][i, :k], raw["text"][i, :k], rtol=1e-6)
                assert not batch["text"][i, k:].any()
            expected_audio = np.where(np.isfinite(raw["audio"]), raw["audio"], 0.0)
            np.testing.assert_allclose(batch["audio"], expected_audio, rtol=1e-6)
            np.testing.assert_allclose(batch["vision"], raw["vision"], rtol=1e-6)
            assert batch["audio"].dtype == np.float32


def test_aligned_lengths_from_text_mask(tmp_path: Path) -> None:
    data = make_mmsa(aligned=True)
    summary = import_mmsa(dump(tmp_path, data, "aligned_50.pkl"), tmp_path / "a.h5")
    assert summary["aligned"] is True
    assert summary["length_source"]["audio"] == "text_attention_mask"
    assert summary["length_source"]["vision"] == "text_attention_mask"
    test = load_split(tmp_path / "a.h5", "test")
    np.testing.assert_array_equal(test["audio_len"], test["text_len"])
    np.testing.assert_array_equal(test["vision_len"], test["text_len"])
    with FeatureFile(tmp_path / "a.h5") as f:
        assert json.loads(f.attrs["extractor"])["aligned"] is True


def test_aligned_with_data_after_the_mask_keeps_full_length(tmp_path: Path) -> None:
    """If padding is not where the text mask says (e.g. left-padded), keep every step."""
    data = make_mmsa(aligned=True)
    i = int(np.argmin(data["valid"]["text_bert"][:, 1].sum(1)))  # shortest sentence
    assert data["valid"]["text_bert"][i, 1, -1] == 0
    data["valid"]["vision"][i, -1, :] = 1.0  # data after its text mask
    summary = import_mmsa(dump(tmp_path, data), tmp_path / "a.h5")
    assert summary["length_source"]["vision"] == "full"
    assert summary["length_source"]["audio"] == "text_attention_mask"
    for split in SIZES:  # the choice is per file, not per split
        batch = load_split(tmp_path / "a.h5", split)
        assert (batch["vision_len"] == T_TEXT).all()
    valid = load_split(tmp_path / "a.h5", "valid")
    assert (valid["vision"][i, -1] == 1.0).all()


def test_text_lengths_without_text_bert(tmp_path: Path) -> None:
    data = make_mmsa()
    for split in data.values():
        del split["text_bert"]
    data["train"]["text"][0, 5:] = 0.0  # a sentence of 5 steps
    summary = import_mmsa(dump(tmp_path, data), tmp_path / "n.h5")
    assert summary["length_source"]["text"] == "nonzero_steps"
    assert summary["text_ids"] is False
    train = load_split(tmp_path / "n.h5", "train")
    assert "text_ids" not in train
    assert train["text_len"][0] == 5 and (train["text_len"][1:] == T_TEXT).all()


def test_float32_and_torch_tensors(tmp_path: Path) -> None:
    ref = make_mmsa(dtype=np.float32)
    data = make_mmsa(dtype=np.float32)
    for split in data.values():
        for key in ("text", "text_bert", "audio", "vision", "regression_labels"):
            split[key] = torch.from_numpy(split[key])
    summary = import_mmsa(dump(tmp_path, data), tmp_path / "t.h5")
    assert summary["source_dtypes"]["audio"] == "torch float32"
    assert summary["text_ids"] is True
    train = load_split(tmp_path / "t.h5", "train")
    np.testing.assert_array_equal(train["vision"], ref["train"]["vision"])
    np.testing.assert_array_equal(train["label"], ref["train"]["regression_labels"])


def test_sims_scheme_and_unimodal_labels(tmp_path: Path) -> None:
    data = make_mmsa(sims=True)
    src = dump(tmp_path, data, "unaligned_39.pkl")
    summary = import_mmsa(src, tmp_path / "s.h5")
    assert summary["scheme"] == "sims" and summary["dataset"] == "sims"
    assert summary["label_range"] == [-1.0, 1.0]
    assert summary["unimodal_labels"] == ["label_audio", "label_text", "label_vision"]
    validate(tmp_path / "s.h5")
    with FeatureFile(tmp_path / "s.h5") as f:
        assert f.scheme == "sims" and f.label_range == (-1.0, 1.0)
    with h5py.File(tmp_path / "s.h5", "r") as h5:
        for split, raw in data.items():
            np.testing.assert_allclose(h5[split]["label_text"][:], raw["regression_labels_T"])
            np.testing.assert_allclose(h5[split]["label_vision"][:], raw["regression_labels_V"])


def test_sims_detected_from_the_label_grid(tmp_path: Path) -> None:
    data = make_mmsa(sims=True)
    for split in data.values():
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            del split[key]
    summary = import_mmsa(dump(tmp_path, data, "custom.pkl"), tmp_path / "s.h5")
    assert summary["scheme"] == "sims" and summary["unimodal_labels"] == []
    assert summary["dataset"] == "sims"
    # an explicit MOSI name wins over the grid (a tiny MOSI subset can look like SIMS)
    summary = import_mmsa(tmp_path / "custom.pkl", tmp_path / "m.h5", dataset="mosi")
    assert summary["scheme"] == "mosi" and summary["label_range"] == [-3.0, 3.0]


def test_known_release_is_recognised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = dump(tmp_path, make_mmsa(), "anything.pkl")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setitem(mmsa.KNOWN_RELEASES, sha, ("mosei", "MOSEI unaligned_50"))
    summary = import_mmsa(src, tmp_path / "k.h5")
    assert summary["sha256_match"] is True and summary["release"] == "MOSEI unaligned_50"
    assert summary["dataset"] == "mosei"
    with FeatureFile(tmp_path / "k.h5") as f:
        assert f.attrs["source_release"] == "MOSEI unaligned_50" and f.dataset == "mosei"


def test_published_sums_are_well_formed() -> None:
    assert len(mmsa.KNOWN_RELEASES) == 5
    for sha, (name, release) in mmsa.KNOWN_RELEASES.items():
        assert len(sha) == 64 and int(sha, 16) >= 0
        assert name in mmsa.KNOWN_DATASETS and name.upper() in release.upper()


def test_dataset_name_from_path_and_option(tmp_path: Path) -> None:
    folder = tmp_path / "MOSI" / "Processed"
    folder.mkdir(parents=True)
    src = dump(folder, make_mmsa())
    assert import_mmsa(src, tmp_path / "a.h5")["dataset"] == "mosi"
    assert import_mmsa(src, tmp_path / "b.h5", dataset="my-mosi")["dataset"] == "my-mosi"
    assert import_mmsa(dump(tmp_path, make_mmsa()), tmp_path / "c.h5")["dataset"] == "mmsa"


def test_top_level_config_is_ignored(tmp_path: Path) -> None:
    data: dict[str, Any] = make_mmsa()
    data["config"] = {"feature_dims": [768, 5, 20], "seq_lens": [50, 375, 500]}
    assert import_mmsa(dump(tmp_path, data), tmp_path / "c.h5")["splits"] == SIZES


def _break(data: dict[str, Any], how: str) -> None:
    if how == "missing_key":
        del data["valid"]["text"]
    elif how == "mismatched_n":
        data["train"]["audio"] = data["train"]["audio"][:-2]
    elif how == "mismatched_ids":
        data["test"]["id"] = data["test"]["id"][:-1]
    elif how == "wrong_ndim":
        data["test"]["vision"] = data["test"]["vision"][:, 0, :]
    elif how == "too_long":
        data["train"]["audio_lengths"][4] = T_AUDIO + 1
    elif how == "bad_text_bert":
        data["valid"]["text_bert"] = data["valid"]["text_bert"][:, :2]
    elif how == "missing_split":
        del data["test"]
    elif how == "half_aligned":
        del data["test"]["audio_lengths"]
    elif how == "other_dims":
        data["test"]["audio"] = np.zeros((SIZES["test"], T_AUDIO, 3))
    elif how == "nan_label":
        data["valid"]["regression_labels"][0] = np.nan
    elif how == "text_bert_in_one_split":
        del data["valid"]["text_bert"]
    elif how == "string_features":
        data["train"]["vision"] = np.array(["x"] * SIZES["train"])


@pytest.mark.parametrize(
    "how, expected",
    [
        ("missing_key", r"\[valid\]: the key 'text' is missing"),
        ("mismatched_n", r"\[train\]: 'audio' has 10 samples but 'regression_labels' has 12"),
        ("mismatched_ids", r"\[test\]: 'id' has 5 entries"),
        ("wrong_ndim", r"\[test\]: 'vision' must be 3-D"),
        ("too_long", r"\[train\]: 'audio_lengths' holds lengths up to 12 .* has 11 steps"),
        ("bad_text_bert", r"\[valid\]: 'text_bert' must have shape \(5, 3, 8\)"),
        ("missing_split", r"the split 'test' is missing"),
        ("half_aligned", r"'audio_lengths' but split 'test' does not"),
        ("other_dims", r"\[test\]: 'audio' has 3 feature dims but \[train\] has 5"),
        ("nan_label", r"\[valid\]: 'regression_labels' holds NaN"),
        ("string_features", r"\[train\]: 'vision' must hold numbers"),
        ("text_bert_in_one_split", r"'valid' and split 'train' disagree on 'text_bert'"),
    ],
)
def test_bad_files_name_split_and_key(tmp_path: Path, how: str, expected: str) -> None:
    data = make_mmsa()
    _break(data, how)
    out = tmp_path / "x.h5"
    with pytest.raises(DataFormatError, match=expected) as info:
        import_mmsa(dump(tmp_path, data), out)
    assert "unaligned_50.pkl" in info.value.message or how in (
        "half_aligned",
        "text_bert_in_one_split",
    )
    assert not out.exists()


def test_labels_outside_the_scheme_range(tmp_path: Path) -> None:
    src = dump(tmp_path, make_mmsa())  # MOSI labels up to 3
    with pytest.raises(DataFormatError, match=r"sims scheme\) has labels in \[-1, 1\]"):
        import_mmsa(src, tmp_path / "x.h5", dataset="sims")


@pytest.mark.parametrize(
    "payload, expected",
    [([1, 2, 3], "holds a list, not a dict"), ({"train": [1]}, "split 'valid' is missing")],
)
def test_not_an_mmsa_dict(tmp_path: Path, payload: Any, expected: str) -> None:
    with pytest.raises(DataFormatError, match=expected):
        import_mmsa(dump(tmp_path, payload), tmp_path / "x.h5")


def test_not_a_pickle(tmp_path: Path, tiny_h5: Path) -> None:
    with pytest.raises(DataFormatError, match="is not a readable pickle"):
        import_mmsa(tiny_h5, tmp_path / "x.h5")


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    data: dict[str, Any] = make_mmsa()
    data["train"]["raw_text"] = [Evil()] * SIZES["train"]
    with pytest.raises(DataFormatError, match=r"references builtins\.exec, which could run code"):
        import_mmsa(dump(tmp_path, data), tmp_path / "x.h5")
    assert not marker.exists() and not (tmp_path / "x.h5").exists()


def test_paths_and_force(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        import_mmsa(tmp_path / "nope.pkl", tmp_path / "x.h5")
    with pytest.raises(InputError, match="directory"):
        import_mmsa(tmp_path, tmp_path / "x.h5")
    src = dump(tmp_path, make_mmsa())
    out = tmp_path / "x.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        import_mmsa(src, out)
    assert out.read_bytes() == b"keep me"
    import_mmsa(src, out, force=True)
    validate(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _raises(tmp_path: Path, data: Any, expected: str, **kw: Any) -> DataFormatError:
    """Import ``data``; expect a one-line DataFormatError with a hint, matching ``expected``."""
    out = tmp_path / "x.h5"
    with pytest.raises(DataFormatError, match=expected) as info:
        import_mmsa(dump(tmp_path, data), out, **kw)
    assert "\n" not in info.value.message and info.value.hint
    assert not out.exists()
    return info.value


def _empty(split: dict[str, Any]) -> None:
    for key, value in split.items():
        split[key] = value[:0]


@pytest.mark.parametrize("which", [["valid"], list(SIZES)], ids=["one", "all"])
def test_empty_splits(tmp_path: Path, which: list[str]) -> None:
    data = make_mmsa()
    for split in which:
        _empty(data[split])
    first = next(s for s in SIZES if s in which)
    _raises(tmp_path, data, rf"\[{first}\]: the split has no samples")


@pytest.mark.parametrize(
    "how, expected",
    [
        ("text_t0", r"\[test\]: 'text' has shape \(6, 0, 16\): no time steps"),
        ("audio_t0", r"\[test\]: 'audio' has shape \(6, 0, 5\): no time steps"),
        ("audio_d0", r"\[test\]: 'audio' has shape \(6, 11, 0\): no time steps or no feature"),
    ],
)
def test_empty_time_or_feature_axis(tmp_path: Path, how: str, expected: str) -> None:
    data = make_mmsa()
    test = data["test"]
    if how == "text_t0":
        test["text"], test["text_bert"] = test["text"][:, :0], test["text_bert"][:, :, :0]
    elif how == "audio_t0":
        test["audio"], test["audio_lengths"] = test["audio"][:, :0], [0] * SIZES["test"]
    else:
        test["audio"] = test["audio"][:, :, :0]
    _raises(tmp_path, data, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_torch_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    data = make_mmsa(dtype=np.float32)
    ref = {s: split["vision"].copy() for s, split in data.items()}
    for split in data.values():
        for key in ("text", "audio", "vision", "regression_labels"):
            split[key] = torch.from_numpy(split[key]).to(dtype)
    summary = import_mmsa(dump(tmp_path, data), tmp_path / "h.h5")
    name = str(dtype).removeprefix("torch.")
    assert summary["source_dtypes"] == {m: f"torch {name}" for m in ("text", "audio", "vision")}
    train = load_split(tmp_path / "h.h5", "train")
    assert train["vision"].dtype == np.float32
    np.testing.assert_allclose(train["vision"], ref["train"], rtol=1e-2, atol=1e-2)


def test_non_utf8_id(tmp_path: Path) -> None:
    data = make_mmsa()
    ids = [clip.encode() for clip in data["train"]["id"]]
    ids[3] = b"vid1$_$\xff\xfe"
    data["train"]["id"] = ids
    error = _raises(tmp_path, data, r"\[train\]: 'id' entry 3 is not valid UTF-8 bytes")
    assert "invalid start byte" in error.message


@pytest.mark.parametrize(
    "value, expected",
    [(np.nan, "has nan at step"), (2.0, "has 2 at step"), (0.5, "has 0.5 at step")],
)
def test_attention_mask_must_be_0_or_1(tmp_path: Path, value: float, expected: str) -> None:
    data = make_mmsa()
    mask = data["valid"]["text_bert"][:, 1]
    if np.isnan(value):
        mask[:] = np.nan  # every length would silently become 0
    else:
        mask[2, 1] = value
    _raises(
        tmp_path,
        data,
        rf"\[valid\]: 'text_bert'\[:, 1\] \(attention mask\) must hold only 0 and 1; .*{expected}",
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (np.nan, r"\[test\]: 'regression_labels_A' holds NaN or inf \(first at sample 1: nan\)"),
        (np.inf, r"\[test\]: 'regression_labels_A' holds NaN or inf \(first at sample 1: inf\)"),
        (1.4, r"\[test\]: 'regression_labels_A' spans \[.*, 1\.4\] .* labels in \[-1, 1\]"),
    ],
)
def test_bad_sims_unimodal_labels(tmp_path: Path, value: float, expected: str) -> None:
    data = make_mmsa(sims=True)
    data["test"]["regression_labels_A"][1] = value
    _raises(tmp_path, data, expected)


def test_duplicate_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Repeated ids are told but not refused: a published release cannot be mended by its users.
    data = make_mmsa()
    data["valid"]["id"][3] = data["valid"]["id"][1]
    with caplog.at_level("WARNING"):
        import_mmsa(dump(tmp_path, data), tmp_path / "repeat.h5")
    assert "[valid]: 1 id(s) repeat, e.g. 'valid_vid0$_$2' (rows 1 and 3)" in caplog.text
    # The same id in two splits: a possible leak between them.
    data = make_mmsa()
    ids = list(data["test"]["id"])
    ids[4] = data["train"]["id"][0]
    data["test"]["id"] = np.array(ids)
    with caplog.at_level("WARNING"):
        import_mmsa(dump(tmp_path, data), tmp_path / "shared.h5")
    assert "1 id(s) appear in two splits, e.g. 'train_vid0$_$1' in [train] and [test]" in (
        caplog.text
    )


def _break_more(data: dict[str, Any], how: str) -> None:
    train = data["train"]
    n = SIZES["train"]
    if how == "labels_2col":
        train["regression_labels"] = np.zeros((n, 2))
    elif how == "labels_scalar":
        train["regression_labels"] = np.float64(0.5)
    elif how == "labels_inf":
        train["regression_labels"][2] = np.inf
    elif how == "lengths_float":
        train["audio_lengths"][5] = 2.5
    elif how == "lengths_nan":
        train["vision_lengths"][0] = float("nan")
    elif how == "ragged":
        train["vision"] = [np.zeros((T_VISION, DIMS["vision"]))] * (n - 1) + [np.zeros((2, 3))]
    elif how == "split_list":
        data["valid"] = [1, 2]
    elif how == "split_none":
        data["test"] = None


@pytest.mark.parametrize(
    "how, expected",
    [
        ("labels_2col", r"\[train\]: 'regression_labels' must be 1-D \(N,\); got shape \(12, 2\)"),
        ("labels_scalar", r"\[train\]: 'regression_labels' must be 1-D \(N,\); got shape \(\)"),
        ("labels_inf", r"\[train\]: 'regression_labels' holds NaN or inf \(first at sample 2"),
        ("lengths_float", r"\[train\]: 'audio_lengths' must hold whole .* sample 5 has 2\.5"),
        ("lengths_nan", r"\[train\]: 'vision_lengths' must hold whole .* sample 0 has nan"),
        ("ragged", r"\[train\]: 'vision' is not an array \(.*inhomogeneous"),
        ("split_list", r"the split 'valid' is a list, not a dict"),
        ("split_none", r"the split 'test' is a NoneType, not a dict"),
    ],
)
def test_bad_files_have_a_hint(tmp_path: Path, how: str, expected: str) -> None:
    data = make_mmsa()
    _break_more(data, how)
    _raises(tmp_path, data, expected)


def test_directory_input_has_a_hint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a directory, not an MMSA \.pkl file") as info:
        import_mmsa(tmp_path, tmp_path / "x.h5")
    assert info.value.hint and "unaligned_50.pkl" in info.value.hint


def test_force_never_writes_over_the_pickle(tmp_path: Path) -> None:
    src = dump(tmp_path, make_mmsa())
    before = src.read_bytes()
    with pytest.raises(InputError, match="is an input of this command"):
        import_mmsa(src, src, force=True)
    assert src.read_bytes() == before
