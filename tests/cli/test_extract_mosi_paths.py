"""`extract mosi`: data folders found from --data-dir / $QAMOE_DATA_DIR / the documented place
(never the current directory), and progress with an ETA on stderr without a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import qamoe_cli.common as common
from qamoe_cli.main import app, main
from qamoe_core.data import location
from qamoe_core.data.importers.mosi import import_mosi
from tests.conftest import REPO
from tests.data.test_import_mosi import FakeEncoder, make_folders

runner = CliRunner()


def _data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    lite, labels = make_folders(root)
    lite.rename(root / "mosi-lite")
    labels.rename(root / "cmu-mosi-labels")
    return root


def test_data_dir_flag_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _data_dir(tmp_path)
    monkeypatch.chdir(tmp_path / "data")  # ../shared/data from here would not exist
    args = ["extract", "mosi", "--protocol", "bclstm-cv", "--fold", "1", "--json"]
    by_flag = runner.invoke(app, [*args, "--out", str(tmp_path / "a.h5"), "--data-dir", str(root)])
    assert by_flag.exit_code == 0, by_flag.output
    sources = json.loads(by_flag.stdout)["sources"]
    assert sources == {"mosi_lite": str((root / "mosi-lite").resolve()),
                       "labels": str((root / "cmu-mosi-labels").resolve())}  # fmt: skip
    monkeypatch.setenv(location.ENV, str(root))
    by_env = runner.invoke(app, [*args, "--out", str(tmp_path / "b.h5")])
    assert by_env.exit_code == 0, by_env.output


def test_missing_data_is_one_line_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(location.ENV, str(tmp_path / "nowhere"))
    assert main(["extract", "mosi", "--out", str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err
    looked = tmp_path / "nowhere" / "mosi-lite"
    assert f"looked for {looked} (from $QAMOE_DATA_DIR)" in err.replace("\n", "")
    assert "Traceback" not in err and not (tmp_path / "x.h5").exists()
    monkeypatch.delenv(location.ENV)
    root, source = location.data_root()  # the documented place, beside the checkout
    assert root == REPO.parent / "shared" / "data" and "documented" in source


def test_text_progress_counts_every_transcript(tmp_path: Path) -> None:
    lite, labels = make_folders(tmp_path / "src")
    calls: list[dict[str, Any]] = []
    summary = import_mosi(tmp_path / "o.h5", mosi_lite=lite, labels=labels,
                          encoder=FakeEncoder(), cache_dir=tmp_path / "c",
                          text_progress=lambda n, **f: calls.append({"n": n, **f}))  # fmt: skip
    n = sum(summary["splits"].values())
    assert sum(c["n"] for c in calls) == n and {c["total"] for c in calls} == {n}
    calls.clear()  # a cache hit reports the whole pass at once
    import_mosi(tmp_path / "o.h5", mosi_lite=lite, labels=labels, encoder=FakeEncoder(),
                cache_dir=tmp_path / "c", force=True,
                text_progress=lambda n, **f: calls.append({"n": n, **f}))  # fmt: skip
    assert calls == [{"n": n, "total": n, "cached": True}]


def test_plain_lines_with_an_eta(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = iter([0.0, 1.0, 2.0, 10.0, 11.0, 30.0, 31.0])
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    with common.progress(None, "mosi/std text", lines=True) as tick:
        tick(10, total=100, texts_per_s=5.0)  # t=1: too soon after the start
        tick(10)  # t=2: too soon
        tick(30)  # t=10: a line, 50 of 100 in 10 s -> ETA 0:10
        tick(10)  # t=11: too soon
        tick(40)  # t=30: done
        tick(0, stage="write")  # t=30: nothing new, too soon
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["mosi/std text: 50/100, 0:10 elapsed, ETA 0:10",
                     "mosi/std text: 100/100, 0:30 elapsed"]  # fmt: skip
    with common.progress(None, "x", lines=False) as tick:  # asked for: silent off a tty
        tick(5, total=5)
    assert capsys.readouterr().err == ""
