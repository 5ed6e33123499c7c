"""Hostile or broken feature files (data/README.md, "What readers refuse"):
each is refused with a one-line error naming the file and the problem, nothing is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.data.store import FeatureFile
from qamoe_core.spectrum.engine import CorruptionSpec
from qamoe_core.spectrum.files import corrupt_file


def copy(tiny_h5: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src.h5"
    shutil.copy(tiny_h5, src)
    return src


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_labels_outside_the_declared_range_are_refused(tiny_h5: Path, tmp_path: Path) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5["test/label"][3] = 100.0
        lo, hi = float(h5.attrs["label_min"]), float(h5.attrs["label_max"])
    with FeatureFile(src) as f:
        f.read("train", slice(None))  # other splits stay readable
        with pytest.raises(DataFormatError) as err:
            f.read("test", slice(None))
    text = one_line(err)
    assert f"[{lo:g}, {hi:g}]" in text and "[test]" in text and "100" in text and str(src) in text
    with pytest.raises(DataFormatError, match="outside the declared label range"):
        corrupt_file(src, tmp_path / "out.h5", CorruptionSpec(level=0.2))
    assert not (tmp_path / "out.h5").exists()


def test_absurd_finite_features_are_a_data_error(tiny_h5: Path, tmp_path: Path) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5["valid/audio"][0, 0, 0] = 3e38
    with FeatureFile(src) as f, pytest.raises(DataFormatError) as err:
        f.read("valid", slice(0, 4))
    assert "'audio' holds values beyond ±1e+10 (largest magnitude 3e+38)" in one_line(err)


def test_links_and_storage_outside_the_file_are_refused(tiny_h5: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"SECRET" * 100)
    linked = copy(tiny_h5, tmp_path)
    with h5py.File(linked, "a") as h5:
        h5["train/extra"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
    with pytest.raises(DataFormatError) as err:
        FeatureFile(linked)
    assert "'train/extra' is an external link" in one_line(err)
    external = tmp_path / "external.h5"
    shutil.copy(tiny_h5, external)
    with h5py.File(external, "a") as h5:
        del h5["test/ids"]
        n = h5["test/label"].shape[0]
        h5["test"].create_dataset("ids", shape=(n,), dtype="S8", external=[(str(secret), 0, 8 * n)])
    with pytest.raises(DataFormatError, match="'test/ids' stores its data outside the file"):
        corrupt_file(external, tmp_path / "out.h5", CorruptionSpec(level=0.0))
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    ("links", "bad"),
    [
        ({"train/text": "/train/text"}, "train/text"),  # a link to itself
        ({"train/text": "/valid/loop", "valid/loop": "/train/text"}, "(train/text|valid/loop)"),
        ({"test/extra": "/nowhere"}, "test/extra"),  # dangling
    ],
)
def test_soft_links_that_lead_nowhere_are_refused_on_open(
    tiny_h5: Path, tmp_path: Path, links: dict[str, str], bad: str
) -> None:
    # Found by the fuzz harness: a soft link to itself ended every command in the catch-all
    # "unexpected RuntimeError: Special link traversal failed (too many links)".
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        for name, target in links.items():
            if name in h5:
                del h5[name]
            h5[name] = h5py.SoftLink(target)
    with pytest.raises(DataFormatError) as err:
        FeatureFile(src)
    assert re.search(f"'{bad}' is a soft link to .* leads nowhere", one_line(err))


def test_a_soft_link_inside_the_file_is_read(tiny_h5: Path, tmp_path: Path) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5["valid/label_alias"] = h5py.SoftLink("/valid/label")
    with FeatureFile(src) as f:
        assert len(f.read("valid", slice(0, 3))["label"]) == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_before_opening(tmp_path: Path) -> None:
    fifo = tmp_path / "data.h5"
    os.mkfifo(fifo)
    # In child processes with a timeout: before the fix both blocked forever on open().
    lib = f"from qamoe_core.data.store import FeatureFile; FeatureFile({str(fifo)!r})"
    cli = [
        "-m",
        "qamoe_cli.main",
        "corrupt",
        str(fifo),
        "--level",
        "0.1",
        "--out",
        str(tmp_path / "o.h5"),
    ]
    for args in (["-c", lib], cli):
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0 and "is not a regular file" in done.stderr
        assert "Traceback" not in done.stderr or args[0] == "-c"


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"level": "abc"}, "non-numeric 'level' \\('abc'\\)"),
        ({"level": 0.3, "seed": "x"}, "non-numeric 'seed'"),
        ({"level": 0.3, "modalities": "audio"}, "'modalities' = 'audio', not a list of names"),
        ({"level": 0.3, "modalities": [1, 2]}, "'modalities' = \\[1, 2\\]"),
    ],
)
def test_malformed_corruption_records_are_one_line_errors(
    tiny_h5: Path, tmp_path: Path, record: dict[str, object], match: str
) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5.attrs["corruption"] = json.dumps([record])
    with FeatureFile(src) as f, pytest.raises(DataFormatError, match=match) as err:
        f.corruption  # noqa: B018
    one_line(err)


def test_non_utf8_ids_are_a_data_error_in_corrupt(tiny_h5: Path, tmp_path: Path) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        # bytes objects are stored as given (h5py encodes only str), so this is not UTF-8
        values = np.array([b"\xff\xfe-bad"] * h5["valid/ids"].shape[0], dtype=object)
        del h5["valid/ids"]
        h5["valid"].create_dataset("ids", data=values, dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(DataFormatError) as err:
        corrupt_file(src, tmp_path / "out.h5", CorruptionSpec(level=0.2))
    assert "'valid/ids' holds bytes that are not UTF-8" in one_line(err)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("key", ["dataset", "extractor", "notes"])
def test_root_attrs_that_are_not_utf8_are_refused_on_open(
    tiny_h5: Path, tmp_path: Path, key: str
) -> None:
    # Found by the fuzz harness: `corrupt` copied such an attr and ended in the catch-all
    # "unexpected UnicodeEncodeError: ... surrogates not allowed".
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5.attrs[key] = b"\x80abc"  # h5py reads it back as '\udc80abc'
    with pytest.raises(DataFormatError) as err:
        corrupt_file(src, tmp_path / "out.h5", CorruptionSpec(level=0.2))
    assert f"the root attr '{key}' holds bytes that are not UTF-8 text" in one_line(err)
    assert not (tmp_path / "out.h5").exists()


def test_zero_train_std_noise_is_refused_not_a_silent_no_op(tiny_h5: Path, tmp_path: Path) -> None:
    src = copy(tiny_h5, tmp_path)
    with h5py.File(src, "a") as h5:
        h5.attrs["train_std_audio"] = np.zeros_like(h5.attrs["train_std_audio"])
    with pytest.raises(InputError) as err:
        corrupt_file(src, tmp_path / "out.h5", CorruptionSpec(level=0.4, axis="noise"))
    assert "train std of 'audio' is 0 in every dimension" in one_line(err)
    # leaving audio out (or dropping steps only) is fine
    corrupt_file(src, tmp_path / "ok.h5", CorruptionSpec(level=0.4, axis="missing"))


def test_corrupting_what_is_already_gone_is_refused(tiny_h5: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone.h5"
    corrupt_file(tiny_h5, gone, CorruptionSpec(level=1.0, axis="missing", modalities=("audio",)))
    again = CorruptionSpec(level=0.5, axis="missing", modalities=("audio",), seed=1)
    with pytest.raises(InputError) as err:
        corrupt_file(gone, tmp_path / "again.h5", again)
    assert "'audio' has no kept step left" in one_line(err)
    assert not (tmp_path / "again.h5").exists()
    corrupt_file(gone, tmp_path / "vision.h5", CorruptionSpec(level=0.5, modalities=("vision",)))


def test_writing_labels_outside_the_range_is_refused(tmp_path: Path) -> None:
    from qamoe_core.data.store import write_features
    from qamoe_core.data.synthetic import generate

    splits = generate("tiny", seed=0)
    splits["train"].label[0] = 7.0
    with pytest.raises(DataFormatError, match=r"input \[train\]: labels lie in .* \[-3, 3\]"):
        write_features(
            tmp_path / "x.h5",
            splits,
            dataset="x",
            task="regression",
            scheme="mosi",
            label_range=(-3.0, 3.0),
            extractor={},
        )
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(("key", "value"), [("task", "classification"), ("scheme", "mosei")])
def test_an_unknown_task_or_scheme_is_named_when_the_file_is_opened(
    tiny_h5: Path, tmp_path: Path, key: str, value: str
) -> None:
    # Before: task "classification" reached the model and failed as "unexpected ValueError".
    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "a") as h5:
        h5.attrs[key] = value
    with pytest.raises(DataFormatError, match=f"root attr '{key}' is '{value}'"):
        FeatureFile(bad)
