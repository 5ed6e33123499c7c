"""The output-folder owner: locks, stale temporaries, replacements that never lose anything
(rundir.py's docstring states the invariant; killing at every file operation is tests/faults)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from qamoe_core.base import rundir
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import InputError, OutputExistsError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.evaluation.results import make_table, save
from qamoe_core.report.build import MARKER, build_report
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.training.loop import train

MODEL = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
ONE = TrainConfig(epochs=1, batch_size=16, patience=10)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _results() -> pd.DataFrame:
    base = {"run": "r", "model": "qamoe", "dataset": "d", "split": "test", "modalities": "text",
            "seed": 0, "variant": "normal", "metric": "MAE"}  # fmt: skip
    rows = [base | {"axis": "clean", "level": 0.0, "value": 0.5}]
    rows += [base | {"axis": "mixed", "level": lv, "value": 0.5 + lv} for lv in (0.0, 0.5, 1.0)]
    return make_table(rows)


def _holder(target: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of ``target`` until its stdin closes."""
    code = (
        "import sys; from qamoe_core.base.rundir import locked\n"
        f"with locked({str(target)!r}):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_the_same_output_fails_at_once(tiny_h5: Path, tmp_path: Path) -> None:
    """Regression: two `train --out R` at once both exited 0 and one run was lost."""
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        t0 = time.perf_counter()
        with pytest.raises(rundir.OutputBusyError, match="Another qamoe command is writing"):
            train(tiny_h5, run, "qamoe", MODEL, ONE, device="cpu")
        assert time.perf_counter() - t0 < 5 and not run.exists()
        with pytest.raises(rundir.OutputBusyError):  # the same for a report and a file
            build_report(_results(), run, force=True)
        with pytest.raises(rundir.OutputBusyError), atomic_path(run):
            pass
    finally:
        holder.communicate("")
    train(tiny_h5, run, "qamoe", MODEL, ONE, device="cpu")  # free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the lock file went too


def test_a_report_never_removes_what_appeared_at_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: without --force, a folder created at --out while the report was built was
    deleted at the end."""
    import qamoe_core.report.build as report

    out = tmp_path / "rep"
    original = report.encode  # renders each figure, while the report is being built

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not out.exists():
            out.mkdir()
            (out / "mine.txt").write_text("a user's file")
        return original(*args, **kwargs)

    monkeypatch.setattr(report, "encode", meanwhile)
    with pytest.raises(OutputExistsError):
        build_report(_results(), out)
    assert (out / "mine.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary left


def test_report_force_keeps_its_input_and_what_it_did_not_write(tmp_path: Path) -> None:
    """Regression: `report --force` deleted its own input CSV kept inside --out."""
    out = tmp_path / "rep"
    build_report(_results(), out)
    results = out / "results.csv"
    save(_results(), results)
    kept = results.read_bytes()
    (out / "notes").mkdir()
    (out / "notes" / "n.txt").write_text("mine")
    build_report(_results(), out, force=True, sources=[str(results)])
    assert results.read_bytes() == kept and (out / "notes" / "n.txt").read_text() == "mine"
    assert (out / MARKER).is_file() and (out / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    save(_results(), out / "summary.csv", force=True)  # a name the report writes: refused
    with pytest.raises(InputError, match="lies in the report folder"):
        build_report(_results(), out, force=True, sources=[str(out / "summary.csv")])


def test_force_replaces_in_one_step_even_when_a_kill_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the old report was removed before the new one was renamed in. Now the swap is
    one rename; a kill right after it (simulated: the clean-up never runs) leaves the new
    report complete under the final name, and the next command sweeps the old one."""
    out = tmp_path / "rep"
    build_report(_results(), out, title="old")

    def killed(*args: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(rundir, "_carry_and_remove", killed)
    with pytest.raises(SystemExit):
        build_report(_results(), out, title="new", force=True)
    assert "<title>new</title>" in (out / "report.html").read_text()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "rep"]
    assert len(leftovers) == 1 and "<title>old" in (leftovers[0] / "report.html").read_text()
    (leftovers[0] / "mine.txt").write_text("kept")  # as if the user had it in the old one
    dead = leftovers[0].name.replace(f"qamoe-{__import__('os').getpid()}-", f"qamoe-{_dead_pid()}-")
    leftovers[0].rename(tmp_path / dead)  # as if its process had been killed
    monkeypatch.undo()
    build_report(_results(), out, title="newer", force=True)
    assert (out / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_stale_temporaries_are_swept_by_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: temporaries left by SIGKILL were never removed (435 MB after 5 corrupt kills)."""
    dead = _dead_pid()
    out = tmp_path / "x.h5"
    stale = tmp_path / f".x.h5.qamoe-{dead}-abcd1234.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".x.h5.qamoe-{1}-abcd1234.tmp"  # pid 1 is alive: not ours to judge
    live.write_bytes(b"busy")
    other = tmp_path / f".y.h5.qamoe-{dead}-abcd1234.tmp"  # another output's
    other.write_bytes(b"other")
    with caplog.at_level("WARNING"), atomic_path(out) as tmp:
        tmp.write_bytes(b"done")
    assert not stale.exists() and live.exists() and other.exists()
    assert out.read_bytes() == b"done" and "removed" in caplog.text and stale.name in caplog.text


def test_an_unfinished_folder_of_a_killed_command_is_swept(tiny_h5: Path, tmp_path: Path) -> None:
    """Regression: a killed fresh demo or train left a partial folder (or, after a kill during
    --force, the old one hidden beside it) forever."""
    dead = _dead_pid()
    run = tmp_path / "run"
    partial = tmp_path / f".run.qamoe-{dead}-0a0b0c0d.tmp"
    partial.mkdir()
    (partial / rundir.STAGE).write_text(f"{dead}\n")
    (partial / ckpt.CONFIG).write_text("{}")
    train(tiny_h5, run, "early-fusion", MODEL, ONE, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # the fallback's instant between two renames: the old run aside, the final name empty
    aside = tmp_path / f".run.qamoe-{dead}-0a0b0c0e.old"
    run.rename(aside)
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny_h5, run, "qamoe", MODEL, ONE, device="cpu")
    assert ckpt.read_config(run)["model_name"] == "early-fusion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_force_without_an_atomic_exchange_falls_back_safely(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rundir, "_rename_exchange", lambda a, b: False)
    run = tmp_path / "run"
    train(tiny_h5, run, "late-fusion", MODEL, ONE, device="cpu")
    (run / "notes.txt").write_text("mine")
    train(tiny_h5, run, "early-fusion", MODEL, replace(ONE, seed=1), device="cpu", force=True)
    assert ckpt.read_config(run)["model_name"] == "early-fusion"
    assert (run / "notes.txt").read_text() == "mine"  # not qamoe's: carried over
    assert sorted(p.name for p in run.iterdir()) == sorted([*ckpt.ALL_FILES, "notes.txt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("command", ["train", "report", "demo"])
def test_an_unwritable_output_folder_is_one_clear_error(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Regression: a read-only --out folder printed an "unexpected" error for report, train, demo.
    (As root chmod cannot stop a write, so the refusal is simulated.)"""
    from qamoe_core.demo import DemoConfig, run_demo

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.os, "open", refuse)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"Cannot create a file in .*Permission denied"):
        if command == "train":
            train(tiny_h5, out, "qamoe", MODEL, ONE, device="cpu")
        elif command == "report":
            build_report(_results(), out)
        else:
            run_demo(out, DemoConfig(preset="tiny", epochs=1), device="cpu")
    assert not out.exists()


def test_the_lock_is_exclusive_and_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "t"
    with rundir.locked(target), pytest.raises(rundir.OutputBusyError), rundir.locked(target):
        pass
    with rundir.locked(target):  # released: free again
        assert (tmp_path / f".t{rundir.LOCK_SUFFIX}").exists()
    assert not (tmp_path / f".t{rundir.LOCK_SUFFIX}").exists()


def test_a_lock_file_left_by_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    """kill -9 leaves the lock file behind; the lock itself died with its holder."""
    left = rundir.lock_path(tmp_path / "t")
    left.write_text("")
    with rundir.locked(tmp_path / "t"):
        pass
    assert not left.exists()


def test_the_exchange_is_absent_off_linux_and_without_renameat2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where renameat2 is missing, _rename_exchange says so and touches nothing; commit()
    then takes the two renames (test_force_without_an_atomic_exchange_falls_back_safely)."""
    import ctypes

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").write_text("")
    for platform in ("win32", "darwin"):
        monkeypatch.setattr(rundir.sys, "platform", platform)
        assert rundir._rename_exchange(a, b) is False
    monkeypatch.setattr(rundir.sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: object())  # a libc without it
    assert rundir._rename_exchange(a, b) is False
    assert (a / "from-a").exists() and not any(b.iterdir())


def test_windows_renames_which_refuse_an_existing_folder_still_commit(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows semantics simulated: no exchange, and a rename onto an existing folder (even an
    empty one) refused. A run into an empty --out and a --force replacement still commit."""
    real_rename = os.rename

    def windows_rename(src: Any, dst: Any) -> None:
        if os.path.lexists(dst):
            raise FileExistsError(17, "Cannot create a file when that file already exists", dst)
        real_rename(src, dst)

    monkeypatch.setattr(rundir, "_rename_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", windows_rename)
    run = tmp_path / "run"
    run.mkdir()
    train(tiny_h5, run, "late-fusion", MODEL, ONE, device="cpu")
    assert ckpt.read_config(run)["model_name"] == "late-fusion"
    train(tiny_h5, run, "early-fusion", MODEL, replace(ONE, seed=1), device="cpu", force=True)
    assert ckpt.read_config(run)["model_name"] == "early-fusion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


class _Kernel32:
    """A stand-in for kernel32: one process table, pid -> exit code (259: still running)."""

    def __init__(self, table: dict[int, int], denied: frozenset[int] = frozenset()) -> None:
        self.table, self.denied, self.error, self.open = table, denied, 0, 0

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int:
        if pid in self.denied:
            self.error = 5  # ERROR_ACCESS_DENIED
            return 0
        if pid not in self.table:
            self.error = 87  # ERROR_INVALID_PARAMETER: no such process
            return 0
        self.open += 1
        return pid

    def GetExitCodeProcess(self, handle: int, code: Any) -> int:
        code._obj.value = self.table[handle]
        return 1

    def CloseHandle(self, handle: int) -> int:
        self.open -= 1
        return 1


def test_a_pid_is_asked_of_kernel32_on_windows_never_signalled() -> None:
    """os.kill(pid, 0) would END the process on Windows: liveness is asked of kernel32."""
    k = _Kernel32({10: 259, 11: 0}, denied=frozenset({12}))
    assert rundir._alive_windows(10, k, lambda: k.error) is True  # running
    assert rundir._alive_windows(11, k, lambda: k.error) is False  # exited
    assert rundir._alive_windows(12, k, lambda: k.error) is True  # another user's
    assert rundir._alive_windows(13, k, lambda: k.error) is False  # gone
    assert k.open == 0  # every handle closed
