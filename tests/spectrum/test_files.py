"""`corrupt_file`: streaming, chunk-size independence, the chain record, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from qamoe_core import MODALITIES
from qamoe_core.base.errors import DataFormatError, InputError, OutputExistsError
from qamoe_core.data.store import FeatureFile, file_sha256, write_features
from qamoe_core.data.synthetic import generate
from qamoe_core.data.torchdata import H5Dataset, to_torch
from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec
from qamoe_core.spectrum.files import corrupt_file

REPO = Path(__file__).resolve().parents[2]


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a file as '<split>/<key>' -> array (strings decoded)."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for split in f:
            for key, ds in f[split].items():
                out[f"{split}/{key}"] = ds[()]
    return out


def assert_same_datasets(a: Path, b: Path) -> None:
    da, db = datasets(a), datasets(b)
    assert da.keys() == db.keys()
    for key in da:
        x, y = np.asarray(da[key]), np.asarray(db[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        if x.dtype.kind == "f":
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), key
        else:
            assert np.array_equal(x, y), key


def test_corrupt_file_summary_record_and_statistics(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    seen: list[int] = []
    summary = corrupt_file(tiny_h5, out, CorruptionSpec(level=0.4, seed=3), progress=seen.append)
    with FeatureFile(tiny_h5) as src, FeatureFile(out) as f:
        total = sum(src.n(s) for s in src.splits)
        assert sum(seen) == total
        chain = f.corruption
        assert len(chain) == 1
        rec = chain[0]
        assert rec["level"] == 0.4 and rec["axis"] == "mixed" and rec["seed"] == 3
        assert rec["modalities"] == list(MODALITIES) and rec["splits"] == list(src.splits)
        assert rec["source_sha256"] == file_sha256(tiny_h5)
        for m in MODALITIES:  # the CLEAN source's statistics are carried over
            assert np.array_equal(f.train_std(m), src.train_std(m))
            assert np.array_equal(f.train_mean(m), src.train_mean(m))
        assert f.ids("test") == src.ids("test")
        counted = {m: [0, 0] for m in MODALITIES}  # valid steps, dropped steps, from the file
        for split in f.splits:
            a, b = src.read(split, slice(None)), f.read(split, slice(None))
            assert np.array_equal(a["label"], b["label"])
            for m in MODALITIES:
                valid = np.arange(a[m].shape[1])[None, :] < a[f"{m}_len"][:, None]
                keep = b[f"{m}_keep"]
                assert not (keep & ~valid).any()
                assert (b[m][valid & ~keep] == 0).all()
                assert np.array_equal(a[f"{m}_len"], b[f"{m}_len"])
                counted[m][0] += int(valid.sum())
                counted[m][1] += int((valid & ~keep).sum())
    for m in MODALITIES:
        s = summary["modalities"][m]
        n = s["steps"]
        assert abs(s["missing_rate"] - 0.4) <= 4.5 * np.sqrt(0.24 / n)
        # The summary's counts are the keep masks' (every split was corrupted here).
        assert [s["steps"], s["dropped"]] == counted[m]
        assert abs(s["noise_std"] - 0.4) < 0.03  # realised RMS in train-std units ≈ level
        assert s["missing_rate_nominal"] == 0.4 and s["noise_std_nominal"] == 0.4
    assert summary["chain_length"] == 1 and summary["bytes"] == out.stat().st_size


@pytest.mark.parametrize("axis", ["missing", "noise", "mixed"])
def test_chunk_size_does_not_change_the_bytes(tiny_h5: Path, tmp_path: Path, axis: str) -> None:
    spec = CorruptionSpec(level=0.5, axis=axis, seed=1)
    paths = []
    for rows in (1, 7, 64, None):
        path = tmp_path / f"c{rows}.h5"
        corrupt_file(tiny_h5, path, spec, chunk_rows=rows)
        paths.append(path)
    for path in paths[1:]:
        assert_same_datasets(paths[0], path)
        assert path.read_bytes() == paths[0].read_bytes()  # the layout too, not only the arrays


def _wide_h5(path: Path) -> Path:
    """A file whose text rows take 128 KiB, so that a small memory budget cuts the blocks."""
    rng = np.random.default_rng(0)
    data = generate("tiny", seed=2)
    for arrays in data.values():
        n = len(arrays.label)
        lens = rng.integers(1, 65, n)
        x = rng.standard_normal((n, 64, 512)).astype(np.float32)
        x *= (np.arange(64)[None, :] < lens[:, None])[:, :, None]
        arrays.features["text"], arrays.lengths["text"] = x, lens
    write_features(path, data, dataset="wide", task="regression", scheme="mosi",
                   label_range=(-3, 3), extractor={"name": "test"})  # fmt: skip
    return path


def test_memory_budget_does_not_change_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The budget (by default half the memory free at the time) shrinks the streamed blocks.
    # Before: blocks that ended inside an HDF5 chunk had it stored twice, and the chunks'
    # places in the file followed the blocks, so where memory was short the file differed.
    src = _wide_h5(tmp_path / "wide.h5")
    spec = CorruptionSpec(level=0.5, seed=7)
    outs, blocks = [], []
    for budget in ("4G", "16M"):
        monkeypatch.setenv("QAMOE_MEMORY_BUDGET", budget)
        out, seen = tmp_path / f"c-{budget}.h5", []
        corrupt_file(src, out, spec, progress=seen.append)
        outs.append(out)
        blocks.append(len(seen))
    assert blocks[1] > blocks[0] == 3  # one block per split with 4 GiB, more with 16 MiB
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_file_path_equals_on_the_fly_torch_path(tiny_h5: Path, tmp_path: Path) -> None:
    spec = CorruptionSpec(level=0.35, seed=12)
    out = tmp_path / "c.h5"
    corrupt_file(tiny_h5, out, spec, chunk_rows=10)
    with FeatureFile(tiny_h5) as src, FeatureFile(out) as f:
        std = {m: torch.from_numpy(src.train_std(m)) for m in MODALITIES}
        rows = np.array([30, 2, 17, 5, 11])  # a shuffled mini-batch, as a sweep might see
        batch = to_torch(src.read("test", rows))
        live = apply_spec(batch, spec, split="test", train_std=std)
        stored = f.read("test", rows)
        for m in MODALITIES:
            assert np.array_equal(live[m].numpy().view(np.uint32), stored[m].view(np.uint32))
            assert np.array_equal(live[f"{m}_keep"].numpy(), stored[f"{m}_keep"])
        # the training/eval loader: shuffled per-sample reads, default collation
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(H5Dataset(tiny_h5, "test"), batch_size=6, shuffle=True, generator=g)
        seen = 0
        for batch in loader:
            live = apply_spec(batch, spec, split="test", train_std=std)
            stored = f.read("test", batch["index"].numpy())
            for m in MODALITIES:
                assert np.array_equal(live[m].numpy(), stored[m])
                assert np.array_equal(live[f"{m}_keep"].numpy(), stored[f"{m}_keep"])
            seen += len(batch["index"])
        assert seen == f.n("test")


def test_level_zero_copies_features_bit_for_bit(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    summary = corrupt_file(tiny_h5, out, CorruptionSpec(level=0.0))
    src, dst = datasets(tiny_h5), datasets(out)
    for key, value in src.items():
        got = dst[key]
        if value.dtype.kind == "f":
            assert np.array_equal(value.view(np.uint8), got.view(np.uint8)), key
        else:
            assert np.array_equal(value, got), key
    assert summary["modalities"] == {}


def test_only_chosen_splits_are_corrupted(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    summary = corrupt_file(tiny_h5, out, CorruptionSpec(level=0.6), splits="test")
    assert summary["splits"] == ["test"] and summary["copied_splits"] == ["train", "valid"]
    src, dst = datasets(tiny_h5), datasets(out)
    for key, value in src.items():
        if key.startswith(("train/", "valid/")):
            assert np.array_equal(value, dst[key]), key
    for split in ("train", "valid"):  # keep masks everywhere: the valid steps
        assert (dst[f"{split}/audio_keep"].sum(1) == dst[f"{split}/audio_len"]).all()
    assert not np.array_equal(src["test/audio"], dst["test/audio"])


def test_drop_zeroes_a_whole_modality(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    spec = CorruptionSpec(level=0.2, modalities=("audio",), drop=("text",))
    summary = corrupt_file(tiny_h5, out, spec)
    dst, src = datasets(out), datasets(tiny_h5)
    for split in ("train", "valid", "test"):
        assert (dst[f"{split}/text"] == 0).all() and not dst[f"{split}/text_keep"].any()
        assert np.array_equal(dst[f"{split}/text_len"], src[f"{split}/text_len"])
        assert np.array_equal(dst[f"{split}/vision"], src[f"{split}/vision"])
    assert summary["modalities"]["text"]["missing_rate"] == 1.0
    assert summary["modalities"]["text"]["dropped_whole"] is True
    assert set(summary["modalities"]) == {"audio", "text"}


def test_corrupting_a_corrupted_file_records_the_chain(tiny_h5: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    corrupt_file(tiny_h5, first, CorruptionSpec(level=0.3, axis="missing", seed=5))
    corrupt_file(first, second, CorruptionSpec(level=0.3, axis="noise", seed=5))
    with FeatureFile(tiny_h5) as s, FeatureFile(first) as a, FeatureFile(second) as b:
        chain = b.corruption
        assert [r["axis"] for r in chain] == ["missing", "noise"]
        assert chain[0]["source_sha256"] == file_sha256(tiny_h5)
        assert chain[1]["source_sha256"] == file_sha256(first)
        assert [r["chain_index"] for r in chain] == [0, 1]
        for m in MODALITIES:
            assert np.array_equal(b.train_std(m), s.train_std(m))
        ra, rb = a.read("test", slice(None)), b.read("test", slice(None))
        for m in MODALITIES:
            assert np.array_equal(ra[f"{m}_keep"], rb[f"{m}_keep"])  # noise drops nothing
            gone = ~ra[f"{m}_keep"]
            assert (rb[m][gone] == 0).all()  # dropped steps get no noise later
            assert not np.array_equal(ra[m], rb[m])


@pytest.mark.slow
def test_same_seed_in_two_processes_gives_identical_files(tiny_h5: Path, tmp_path: Path) -> None:
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from qamoe_core.spectrum.files import corrupt_file\n"
        "from qamoe_core.spectrum.engine import CorruptionSpec\n"
        "spec = CorruptionSpec(level=0.5, seed=42)\n"
        "corrupt_file(sys.argv[1], sys.argv[2], spec, chunk_rows=int(sys.argv[3]))\n"
    )
    outs = []
    for i, rows in enumerate((9, 9, 40)):
        out = tmp_path / f"p{i}.h5"
        cmd = [sys.executable, "-c", code, str(tiny_h5), str(out), str(rows)]
        subprocess.run(cmd, check=True, cwd=REPO)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()  # same call: the very same file
    assert_same_datasets(outs[0], outs[2])  # other chunking: same arrays (layout may differ)
    other = tmp_path / "other.h5"
    corrupt_file(tiny_h5, other, CorruptionSpec(level=0.5, seed=43))
    assert not np.array_equal(datasets(outs[0])["test/audio"], datasets(other)["test/audio"])


# -- bad input -------------------------------------------------------------------------------


def test_output_equal_to_input_is_refused(tiny_h5: Path, tmp_path: Path) -> None:
    copy = tmp_path / "d.h5"
    shutil.copy(tiny_h5, copy)
    for out in (copy, tmp_path / "." / "d.h5"):
        with pytest.raises(InputError, match="is an input of this command"):
            corrupt_file(copy, out, CorruptionSpec(level=0.1), force=True)


def test_existing_output_needs_force(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError):
        corrupt_file(tiny_h5, out, CorruptionSpec(level=0.1))
    assert out.read_bytes() == b"precious"
    corrupt_file(tiny_h5, out, CorruptionSpec(level=0.1), force=True)
    with FeatureFile(out) as f:
        assert f.corruption[0]["level"] == 0.1


def test_file_without_train_std_asks_for_reimport(tiny_h5: Path, tmp_path: Path) -> None:
    bad = tmp_path / "nostd.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "a") as f:
        del f.attrs["train_std_audio"]
    with pytest.raises(DataFormatError, match="train_std_audio") as err:
        corrupt_file(bad, tmp_path / "c.h5", CorruptionSpec(level=0.3, axis="noise"))
    assert "Re-import" in (err.value.hint or "")
    assert not (tmp_path / "c.h5").exists()
    # the missing axis needs no std
    corrupt_file(bad, tmp_path / "c.h5", CorruptionSpec(level=0.3, axis="missing"))


def test_unknown_split_and_modality_not_in_file(tmp_path: Path) -> None:
    data = generate("tiny", seed=1)
    for arrays in data.values():
        del arrays.features["vision"], arrays.lengths["vision"]
    two = tmp_path / "two.h5"
    write_features(
        two,
        data,
        dataset="t",
        task="regression",
        scheme="mosi",
        label_range=(-3, 3),
        extractor={"name": "test"},
    )
    with pytest.raises(InputError, match=r"'vision'.*does not hold"):
        corrupt_file(two, tmp_path / "c.h5", CorruptionSpec(level=0.3, modalities=("vision",)))
    with pytest.raises(InputError, match="cannot remove every modality"):
        corrupt_file(two, tmp_path / "c.h5", CorruptionSpec(level=0.3, drop=("text", "audio")))
    with pytest.raises(InputError, match=r"'splits' parameter .* Got 'tset'"):
        corrupt_file(two, tmp_path / "c.h5", CorruptionSpec(level=0.3), splits="tset")
    summary = corrupt_file(two, tmp_path / "c.h5", CorruptionSpec(level=0.3, modalities="audio"))
    assert set(summary["modalities"]) == {"audio"}
    with FeatureFile(tmp_path / "c.h5") as f:
        assert f.modalities == ("text", "audio")
        assert json.loads(f.h5.attrs["corruption"])[0]["modalities"] == ["audio"]


def test_a_failure_midway_leaves_no_output(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qamoe_core.spectrum.files as corrupt_mod

    calls = {"n": 0}
    real = corrupt_mod.apply_spec

    def flaky(*args: object, **kwargs: object) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(corrupt_mod, "apply_spec", flaky)
    with pytest.raises(KeyboardInterrupt):
        corrupt_file(tiny_h5, tmp_path / "c.h5", CorruptionSpec(level=0.5), chunk_rows=8)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda h5: h5["test/audio"].__setitem__((2, 0, 1), np.nan), r"\[test\]: 'audio' holds 1"),
        (lambda h5: h5["valid/label"].__setitem__(0, np.inf), r"\[valid\]: 'label' holds 1"),
        (lambda h5: h5["train/text_len"].__setitem__(0, 999), "'text_len' holds lengths outside"),
        (lambda h5: h5.attrs.__setitem__("train_std_vision", np.full(8, np.nan, np.float32)),
         "train std of 'vision'"),
    ],
)  # fmt: skip
def test_damaged_source_is_refused_and_nothing_written(
    tiny_h5: Path, tmp_path: Path, damage: object, match: str
) -> None:
    src = tmp_path / "src.h5"
    shutil.copy(tiny_h5, src)
    with h5py.File(src, "a") as h5:
        damage(h5)  # type: ignore[operator]
    out = tmp_path / "out.h5"
    with pytest.raises(DataFormatError, match=match):
        corrupt_file(src, out, CorruptionSpec(level=0.3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.h5"]


@pytest.mark.parametrize("raw", ['{"level": 0.3}', "not json", "[1, 2]"])
def test_damaged_corruption_record_is_refused(tiny_h5: Path, tmp_path: Path, raw: str) -> None:
    src = tmp_path / "src.h5"
    shutil.copy(tiny_h5, src)
    with h5py.File(src, "a") as h5:
        h5.attrs["corruption"] = raw
    with pytest.raises(DataFormatError, match="'corruption' attribute is not a JSON list"):
        corrupt_file(src, tmp_path / "out.h5", CorruptionSpec(level=0.3))
