"""The HDF5 store: round trips, lazy reads, validation errors, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from qamoe_core.base.errors import DataFormatError, InputError, OutputExistsError
from qamoe_core.data.store import (
    FORMAT_VERSION,
    FeatureFile,
    FeatureWriter,
    SplitArrays,
    load_split,
    validate,
    write_features,
)
from qamoe_core.data.torchdata import H5Dataset


def _split(n: int, rng: np.random.Generator, t: int = 6, d: int = 4) -> SplitArrays:
    feats, lens = {}, {}
    for m, (tm, dm) in {"text": (t, d), "audio": (t + 2, 3), "vision": (t, 5)}.items():
        ln = rng.integers(1, tm + 1, size=n)
        x = rng.standard_normal((n, tm, dm)).astype(np.float32)
        x *= (np.arange(tm)[None, :] < ln[:, None])[:, :, None]
        feats[m], lens[m] = x, ln
    return SplitArrays(
        ids=[f"v{i}$_${i}" for i in range(n)],
        label=rng.uniform(-3, 3, n).astype(np.float32),
        features=feats,
        lengths=lens,
        raw_text=[f"sentence {i} é" for i in range(n)],
    )


def _write(path: Path, splits: dict[str, SplitArrays], **kw: object) -> Path:
    args = dict(
        dataset="unit",
        task="regression",
        scheme="mosi",
        label_range=(-3, 3),
        extractor={"name": "unit"},
    )
    args.update(kw)
    return write_features(path, splits, **args)  # type: ignore[arg-type]


@pytest.fixture
def splits() -> dict[str, SplitArrays]:
    rng = np.random.default_rng(0)
    return {"train": _split(20, rng), "valid": _split(7, rng), "test": _split(9, rng)}


def test_round_trip_and_lazy_reads(tmp_path: Path, splits: dict[str, SplitArrays]) -> None:
    path = _write(tmp_path / "a.h5", splits)
    with FeatureFile(path) as f:
        assert f.splits == ("train", "valid", "test")
        assert f.modalities == ("text", "audio", "vision")
        assert f.dims == {"text": 4, "audio": 3, "vision": 5}
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.ids("valid") == splits["valid"].ids
        assert f.raw_text("test") == splits["test"].raw_text
        whole = f.read("train", slice(None))
        np.testing.assert_array_equal(whole["audio"], splits["train"].features["audio"])
        np.testing.assert_array_equal(whole["text_len"], splits["train"].lengths["text"])
        # unordered, repeated indices come back in the order asked
        rows = np.array([5, 2, 5, 0])
        part = f.read("train", rows)
        np.testing.assert_array_equal(part["vision"], splits["train"].features["vision"][rows])
        np.testing.assert_array_equal(part["index"], rows)
        chunks = list(f.iter_batches("train", 6))
        assert [len(c["label"]) for c in chunks] == [6, 6, 6, 2]
        assert f.corruption == []


def test_train_stats_are_over_valid_steps_only(
    tmp_path: Path, splits: dict[str, SplitArrays]
) -> None:
    path = _write(tmp_path / "a.h5", splits)
    tr = splits["train"]
    x, lens = tr.features["vision"], tr.lengths["vision"]
    valid = np.concatenate([x[i, : lens[i]] for i in range(len(x))])  # (steps, D)
    with FeatureFile(path) as f:
        np.testing.assert_allclose(f.train_std("vision"), valid.std(0), rtol=1e-4)
        np.testing.assert_allclose(f.train_mean("vision"), valid.mean(0), atol=1e-5)


def test_torch_dataset_reads_batches(tmp_path: Path, splits: dict[str, SplitArrays]) -> None:
    path = _write(tmp_path / "a.h5", splits)
    ds = H5Dataset(path, "test")
    assert len(ds) == 9
    item = ds[3]
    assert item["text"].shape == (6, 4) and item["text"].dtype == torch.float32
    batch = ds.__getitems__([4, 1])
    assert torch.equal(batch[1]["audio"], torch.from_numpy(splits["test"].features["audio"][1]))
    full = load_split(path, "valid")
    assert full["label"].shape == (7,)


def test_refuses_existing_output_and_leaves_no_partial_file(
    tmp_path: Path, splits: dict[str, SplitArrays]
) -> None:
    path = _write(tmp_path / "a.h5", splits)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        _write(path, splits)
    # an interrupted write (exception mid-way) must neither leave a temp file nor touch the old
    with (
        pytest.raises(RuntimeError),
        FeatureWriter(path, force=True, attrs={"dataset": "x"}) as w,
    ):
        w.create_split("train", 3, {"text": (2, 2)})
        raise RuntimeError("disk full")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_same_rows_become_the_same_bytes_whatever_was_compressed_before(tmp_path: Path) -> None:
    # `qamoe corrupt` promises identical bytes for a seed, so the codec's output must depend on
    # the chunk alone. h5py's lzf did not (its hash table is not cleared between calls): here
    # 3 of 10 rewrites of the same rows, each after similar rows, came out different.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 32)).astype(np.float32)
    x[:, 5:] = 0  # padding
    x[::3] = np.round(x[::3], 1)  # rows with fewer distinct values

    def write(path: Path, feats: np.ndarray) -> bytes:
        with FeatureWriter(path, force=True, attrs={}) as w:
            w.create_split("test", 64, {"text": (8, 32)}, keep_masks=True)
            batch = {"label": np.zeros(64, np.float32), "text": feats, "text_len": np.full(64, 5)}
            w.write("test", 0, {**batch, "text_keep": feats[:, :, 0] > 0})
        return path.read_bytes()

    first = write(tmp_path / "first.h5", x)
    for k in range(12):
        other = x.copy()
        other.reshape(-1)[rng.integers(0, other.size, 200)] = rng.standard_normal(200)
        write(tmp_path / "other.h5", other)
        assert write(tmp_path / "again.h5", x) == first, f"rewrite {k}"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda s: s["train"].features.__setitem__("audio", s["train"].features["audio"][:5]),
            "has 5 samples",
        ),
        (lambda s: s["train"].features["text"].__setitem__((0, 0, 0), np.nan), "non-finite"),
        (lambda s: s["valid"].features["vision"].__setitem__((1, 0, 2), np.inf), "non-finite"),
        (
            lambda s: s["test"].lengths.__setitem__("text", s["test"].lengths["text"] + 10),
            "longer than the padded axis",
        ),
        (lambda s: s.pop("train"), "no 'train' split"),
        (lambda s: s["test"].features.pop("vision"), "modalities"),
        (lambda s: s["train"].features.__setitem__("text", np.zeros((20, 6))), "3-D"),
    ],
)
def test_write_rejects_bad_input(
    tmp_path: Path, splits: dict[str, SplitArrays], mutate: object, message: str
) -> None:
    mutate(splits)  # type: ignore[operator]
    with pytest.raises(DataFormatError, match=message):
        _write(tmp_path / "bad.h5", splits)
    assert not (tmp_path / "bad.h5").exists()


def test_reader_names_the_problem(tmp_path: Path, splits: dict[str, SplitArrays]) -> None:
    with pytest.raises(InputError, match="does not exist"):
        FeatureFile(tmp_path / "missing.h5")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="not an HDF5 file"):
        FeatureFile(tmp_path / "notes.txt")
    path = _write(tmp_path / "a.h5", splits)
    with h5py.File(path, "a") as h5:
        h5.attrs["format_version"] = 99
    with pytest.raises(DataFormatError, match="format_version 99"):
        FeatureFile(path)
    for key, value, match in [("format_version", "abc", "format_version -1"),
                              ("modalities", "text,audio", "'modalities' is not a JSON list"),
                              ("modalities", "5", "'modalities' is not a JSON list")]:  # fmt: skip
        path = _write(tmp_path / "v.h5", splits, force=True)
        with h5py.File(path, "a") as h5:
            h5.attrs[key] = value
        with pytest.raises(DataFormatError, match=match) as info:
            FeatureFile(path)
        assert info.value.hint
    path = _write(tmp_path / "b.h5", splits)
    with h5py.File(path, "a") as h5:
        del h5["valid/audio"]
    with pytest.raises(DataFormatError, match="modality 'audio' is missing from split 'valid'"):
        FeatureFile(path)
    path = _write(tmp_path / "c.h5", splits)
    with h5py.File(path, "a") as h5:
        h5["test/vision_len"][0] = 99
    with pytest.raises(DataFormatError, match="vision_len"):
        validate(path)
    path = _write(tmp_path / "d.h5", splits)
    with h5py.File(path, "a") as h5:
        h5["test/text"][0, 0, 0] = np.nan
    FeatureFile(path).close()  # opening checks structure only; the deep scan finds values
    with pytest.raises(DataFormatError, match=r"\[test\]: 'text' holds 1 non-finite"):
        validate(path)
    with FeatureFile(path) as f, pytest.raises(InputError, match="no split 'dev'"):
        f.read("dev", slice(None))
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5.attrs["format"] = "something-else"
    with pytest.raises(DataFormatError, match="not a qamoe feature file"):
        FeatureFile(tmp_path / "other.h5")


def test_missing_train_std_gives_reimport_hint(
    tmp_path: Path, splits: dict[str, SplitArrays]
) -> None:
    path = _write(tmp_path / "a.h5", splits)
    with h5py.File(path, "a") as h5:
        del h5.attrs["train_std_text"]
    with FeatureFile(path) as f, pytest.raises(DataFormatError) as info:
        f.train_std("text")
    assert "re-import" in (info.value.hint or "").lower()


def test_binary_labels_must_be_zero_or_one(tmp_path: Path, splits: dict[str, SplitArrays]) -> None:
    with pytest.raises(DataFormatError, match="0 or 1"):
        _write(tmp_path / "a.h5", splits, task="binary", scheme="binary")


def test_attrs_are_json_where_structured(tmp_path: Path, splits: dict[str, SplitArrays]) -> None:
    path = _write(tmp_path / "a.h5", splits, attrs={"notes": {"k": [1, 2]}})
    with FeatureFile(path) as f:
        assert json.loads(f.attrs["extractor"]) == {"name": "unit"}
        assert json.loads(f.attrs["notes"]) == {"k": [1, 2]}


def test_a_write_that_runs_out_of_room_leaves_nothing(
    tmp_path: Path, splits: dict[str, SplitArrays]
) -> None:
    """A full disk (here a file-size limit in a child process) is one clear error, and no
    file appears under the output's name: h5py's close() would swallow the write failure."""
    import subprocess
    import sys

    out = tmp_path / "big.h5"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))\n"
        "from qamoe_core.base.errors import NoSpaceError\n"
        "from qamoe_core.data.synthetic import write_synthetic\n"
        "try:\n"
        f"    write_synthetic({str(out)!r}, preset='small', seed=0)\n"
        "except NoSpaceError as exc:\n"
        "    print('NOSPACE', exc.message)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert f"NOSPACE File too large at '{out}'; nothing was written." in res.stdout, res.stderr
    assert list(tmp_path.iterdir()) == []  # no output, no temporary


def test_write_failure_reads_errno_from_h5py_messages(tmp_path: Path) -> None:
    from qamoe_core.base.atomic import write_failure
    from qamoe_core.base.errors import NoSpaceError

    h5py_style = RuntimeError("Can't close dataset (file write failed: ..., errno = 28, ...)")
    err = write_failure(h5py_style, tmp_path / "x.h5")
    assert isinstance(err, NoSpaceError)
    assert err.message == f"No space left on device at '{tmp_path / 'x.h5'}'; nothing was written."
    assert isinstance(write_failure(OSError(28, "No space left"), tmp_path / "x.h5"), NoSpaceError)
    assert write_failure(OSError(13, "Permission denied"), tmp_path / "x.h5") is None
    assert write_failure(ValueError("errno = 28"), tmp_path / "x.h5") is None


def test_output_may_not_be_an_input_or_a_special_file(tmp_path: Path) -> None:
    import os

    from qamoe_core.base.atomic import check_output

    src = tmp_path / "in.pkl"
    src.write_bytes(b"precious")
    link = tmp_path / "link.pkl"
    link.symlink_to(src)
    for out in (src, link, tmp_path / "." / "in.pkl"):
        with pytest.raises(InputError, match="is an input of this command"):
            check_output(out, force=True, inputs=[src])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        check_output(fifo, force=True)
    assert src.read_bytes() == b"precious" and fifo.exists()
    with pytest.raises(InputError, match="file name is too long"):
        check_output(tmp_path / ("n" * 300 + ".h5"), force=False)


def test_an_unwritable_folder_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from qamoe_core.base.atomic import atomic_path

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # as root, chmod cannot stop a write
    with (
        pytest.raises(InputError, match=r"Cannot create a file in .*Permission denied"),
        atomic_path(tmp_path / "x.h5"),
    ):
        pass


def test_damaged_bytes_and_wrong_kinds_are_named(
    tmp_path: Path, splits: dict[str, SplitArrays]
) -> None:
    path = _write(tmp_path / "a.h5", splits)
    with h5py.File(path, "a") as h5:
        del h5["test/label"]
        h5["test/label"] = np.zeros((len(splits["test"].label), 2), np.float32)
    with pytest.raises(DataFormatError, match="'test/label' must be a non-empty 1-D array"):
        FeatureFile(path)
    path = _write(tmp_path / "b.h5", splits)
    with h5py.File(path, "a") as h5:
        n, t, d = h5["valid/text"].shape
        del h5["valid/text"]
        h5["valid/text"] = np.full((n, t, d), b"x")
    with pytest.raises(DataFormatError, match=r"'valid/text' has shape .* dtype \|S1"):
        FeatureFile(path)
    # Overwrite the bytes of one compressed chunk: opening works, reading it cannot.
    path = _write(tmp_path / "c.h5", splits)
    with h5py.File(path) as h5:
        offset = h5["train/audio"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 64)
    with FeatureFile(path) as f, pytest.raises(DataFormatError, match="reading 'train/audio'"):
        f.read("train", slice(None))


def test_long_multibyte_output_names_still_get_a_temporary(tmp_path: Path) -> None:
    from qamoe_core.base.atomic import atomic_path

    out = tmp_path / ("情" * 82 + ".h5")  # 249 bytes: a legal name, too long to extend
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"done")
    assert out.read_bytes() == b"done" and sorted(tmp_path.iterdir()) == [out]
