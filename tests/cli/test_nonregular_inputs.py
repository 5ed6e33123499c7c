"""Named pipes (FIFOs) as inputs (issue 26, items 5 and 9): every input a command opens is
refused at once, in one line saying what it is, never a hang and never "does not exist".

Each command runs in a thread with a deadline: if it blocks on the pipe, the test opens the
pipe's write end and closes it (the reader then sees end-of-file and returns) and fails.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qamoe_cli.main import main

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")

DEADLINE_S = 10.0  # a hang; an answer takes well under a second once the modules are loaded


def finishes(fn: Callable[[], Any], fifo: Path) -> Any:
    """``fn()``'s result, or a test failure if it is still blocked after the deadline."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # wake the blocked reader
        thread.join(DEADLINE_S)
        pytest.fail(f"blocked on the named pipe {fifo}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def refused(capsys: pytest.CaptureFixture[str], args: list[str], fifo: Path) -> str:
    """Run the CLI on ``args``; assert exit 1 and one error line naming the pipe."""
    assert finishes(lambda: main(args), fifo) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("error:", "hint:"))]
    assert len(lines) == 2 and lines[1].startswith("hint: ") and "Traceback" not in err, err
    assert f"'{fifo}' is a named pipe (FIFO), not a regular file" in lines[0], lines
    assert "does not exist" not in lines[0] and "missing" not in lines[0]
    return lines[0]


def test_extract_mmsa_refuses_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "unaligned_50.pkl"
    os.mkfifo(fifo)
    refused(capsys, ["extract", "mmsa", str(fifo), "--out", str(tmp_path / "o.h5")], fifo)
    assert not (tmp_path / "o.h5").exists()


def test_the_pickle_loader_refuses_a_pipe(tmp_path: Path) -> None:
    from qamoe_core.base.errors import InputError
    from qamoe_core.data.importers.safe_pickle import safe_load

    fifo = tmp_path / "x.pkl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is a named pipe \(FIFO\), not a regular file"):
        finishes(lambda: safe_load(fifo), fifo)


def test_a_config_pipe_is_not_called_missing(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    line = refused(
        capsys, ["train", str(tiny_h5), "--out", str(tmp_path / "r"), "--config", str(fifo)], fifo
    )
    assert line.startswith("error: The config file")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def run(tiny_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qamoe_core.config import ModelConfig, TrainConfig
    from qamoe_core.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "run"
    model = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
    train(tiny_h5, out, "qamoe", model, TrainConfig(epochs=1, batch_size=16), device="cpu")
    return out


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_run_file_that_is_a_pipe(
    run: Path, tiny_h5: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / name).unlink()
    os.mkfifo(copy / name)
    line = refused(capsys, ["eval", str(copy), "--data", str(tiny_h5)], copy / name)
    assert line.startswith("error: The run file")


def test_a_per_sample_table_that_is_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qamoe_core.evaluation.results import make_table, save
    from tests.report.test_build import sweep_rows

    results = save(
        make_table(sweep_rows("qamoe", "qamoe", -0.1, diagnostics=True)), tmp_path / "r.csv"
    )
    fifo = tmp_path / "samples.csv"
    os.mkfifo(fifo)
    args = ["report", str(results), "--out", str(tmp_path / "rep"), "--samples", str(fifo)]
    refused(capsys, [*args, "--reference", "qamoe"], fifo)
    assert not (tmp_path / "rep").exists()


def test_a_media_manifest_that_is_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "manifest.csv"
    os.mkfifo(fifo)
    refused(capsys, ["extract", "media", str(fifo), "--out", str(tmp_path / "o.h5")], fifo)


def test_a_mosi_lite_csv_that_is_a_pipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qamoe_core.data.importers.mosilite import REQUIRED

    folder = tmp_path / "lite"
    folder.mkdir()
    for name in REQUIRED:
        (folder / name).write_text("id\n")
    fifo = folder / REQUIRED[0]
    fifo.unlink()
    os.mkfifo(fifo)
    refused(capsys, ["extract", "mosi-lite", str(folder), "--out", str(tmp_path / "o.h5")], fifo)


def test_a_media_clip_that_is_a_pipe_is_a_clip_failure(tmp_path: Path) -> None:
    from qamoe_core.data.media.audio import load_audio
    from qamoe_core.data.media.failures import ClipFailure

    fifo = tmp_path / "clip.wav"
    os.mkfifo(fifo)
    with pytest.raises(ClipFailure, match=r"named pipe \(FIFO\), not a regular file"):
        finishes(lambda: load_audio(fifo), fifo)
