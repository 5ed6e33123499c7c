"""A full disk in `train` and `report` (issue 26, item 6): one message everywhere, "No space
left on device at PATH; nothing was written.", exit 1, and no partial output left behind.

The disk is simulated: the writer at each point raises OSError(ENOSPC) as the C library
reports it; one test uses a real file-size limit (EFBIG) in a child process, where torch.save
fails the way it does on a full disk (a bare RuntimeError without the errno)."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import qamoe_core.runs.checkpoint as ckpt
from qamoe_cli.main import main

MODEL = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}
NO_ROOM = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": MODEL, "train": {"epochs": 2, "batch_size": 16}}))
    return path


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[1].startswith("hint: "), err
    assert "unexpected" not in err and "Traceback" not in err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".qamoe-" in p.name)


def test_train_out_of_room_before_the_first_checkpoint_leaves_nothing(
    tiny_h5: Path, tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise NO_ROOM

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "-q"]) == 1
    line = one_error(capsys.readouterr().err)
    assert line == f"error: No space left on device at '{out}'; nothing was written."
    assert not out.exists() and leftovers(tmp_path) == []


def test_train_out_of_room_after_a_checkpoint_keeps_the_run_resumable(
    tiny_h5: Path, tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The metrics writer fails at the end: the run keeps its last epoch, no temporary."""
    real = pathlib.Path.write_text

    def write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(f".{ckpt.METRICS}."):
            raise NO_ROOM
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "-q"]) == 1
    err = capsys.readouterr().err
    line = one_error(err)
    assert line == f"error: No space left on device at '{out / ckpt.METRICS}'; nothing was written."
    assert "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ckpt.CONFIG, ckpt.WEIGHTS, ckpt.HISTORY, ckpt.STATE]
    )
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    assert main(["train", str(tiny_h5), "--out", str(out), "--resume", "-q"]) == 0
    assert (out / ckpt.METRICS).is_file()


def test_train_under_a_file_size_limit_names_the_run(
    tiny_h5: Path, tmp_path: Path, cfg: Path
) -> None:
    """A real write failure: torch.save itself only says 'unexpected pos'."""
    out = tmp_path / "run"
    code = (
        "import resource, sys\n"
        "from qamoe_cli.main import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))\n"
        f"sys.exit(main(['train', {str(tiny_h5)!r}, '--out', {str(out)!r}, '--config', "
        f"{str(cfg)!r}, '-q', '--device', 'cpu']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 1, res.stderr
    assert one_error(res.stderr) == f"error: File too large at '{out}'; nothing was written."
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.fixture
def results(tmp_path: Path) -> Path:
    from qamoe_core.evaluation.results import make_table, save
    from tests.report.test_build import sweep_rows

    return save(
        make_table(sweep_rows("qamoe", "qamoe", -0.1, diagnostics=True)), tmp_path / "r.csv"
    )


def test_report_out_of_room_leaves_no_folder(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    real = pathlib.Path.write_bytes
    calls = {"n": 0}

    def write_bytes(self: Path, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 3:  # a few files in
            raise NO_ROOM
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out), "--figures", "png"]) == 1
    line = one_error(capsys.readouterr().err)
    assert line == f"error: No space left on device at '{out}'; nothing was written."
    assert not out.exists() and leftovers(tmp_path) == []


def test_report_out_of_room_in_a_figure_is_the_same_message(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import matplotlib.figure

    def savefig(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NO_ROOM

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out), "--figures", "png"]) == 1
    assert one_error(capsys.readouterr().err) == (
        "error: No space left on device; nothing was written."
    )
    assert not out.exists() and leftovers(tmp_path) == []
