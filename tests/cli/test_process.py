"""qamoe_cli/process.py: what one command sets for the process is undone when it ends.

Signals end to end (exit codes, the watchdog) are tests/cli/test_main.py and
tests/data/test_hostile_bounds.py::test_signals_end_the_command_within_a_second. The thread
policy's resolution is tests/base/test_runtime.py; here, that a command applies it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qamoe_cli import process
from qamoe_cli.main import main
from qamoe_core.base import runtime

REPO = Path(__file__).resolve().parents[2]


def test_streaming_runs_on_one_torch_thread_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), process.streaming() as trim:
            assert torch.get_num_threads() == 1 and trim is runtime.trim_memory
            raise RuntimeError("a failed block")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_command_scope_starts_fresh_and_restores_the_process() -> None:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    hooks = sys.excepthook, sys.unraisablehook
    process.state.interrupt_hint, process.state.terminated = "stale", True
    with process.command_scope():
        assert process.state.in_main and not process.state.terminated
        assert process.state.interrupt_hint is None
        assert signal.getsignal(signal.SIGTERM) is process._on_signal
        assert sys.unraisablehook is process.quiet_unraisable
        with pytest.raises(process.Terminated):
            signal.raise_signal(signal.SIGTERM)
        assert process.state.terminated
    assert not process.state.in_main
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert (sys.excepthook, sys.unraisablehook) == hooks


def _openmp_as_loaded(args: list[str], env: dict[str, str]) -> dict[str, str]:
    """Run `qamoe ARGS` in a fresh interpreter with libgomp's OMP_DISPLAY_ENV=VERBOSE: the
    settings the OpenMP runtime read when torch loaded it (printed once, at load)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "QAMOE_"))}
    child_env.update(env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "qamoe_cli.main", *args], env=child_env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if "OPENMP DISPLAY ENVIRONMENT" not in res.stderr:
        pytest.skip("torch's OpenMP runtime is not libgomp (no OMP_DISPLAY_ENV report)")
    assert res.returncode == 1 and "no-such.h5" in res.stderr  # corrupt ran, after torch
    pairs = (line.strip().split(" = ", 1) for line in res.stderr.splitlines() if " = '" in line)
    return {k: v.strip("'") for k, v in pairs}


CORRUPT = ["corrupt", "no-such.h5", "--level", "0.5", "--out", "never.h5"]  # imports torch


def test_the_wait_policy_reaches_the_openmp_runtime() -> None:
    # Flags after the command name (moved to the front), then the qamoe variables. libgomp
    # reads OMP_WAIT_POLICY only when loaded, so this passes only if the policy is in the
    # environment before the command imports torch.
    omp = _openmp_as_loaded([*CORRUPT, "--threads", "1", "--wait-policy", "passive"], {})
    assert (omp["OMP_WAIT_POLICY"], omp["GOMP_SPINCOUNT"]) == ("PASSIVE", "0")
    assert omp["OMP_NUM_THREADS"] == "1"
    omp = _openmp_as_loaded(CORRUPT, {"QAMOE_THREADS": "2", "QAMOE_WAIT_POLICY": "active"})
    assert (omp["OMP_WAIT_POLICY"], omp["OMP_NUM_THREADS"]) == ("ACTIVE", "2")
    assert int(omp["GOMP_SPINCOUNT"]) > 10**9  # spins (practically) for ever
    omp = _openmp_as_loaded([*CORRUPT, "--wait-policy", "unset"], {"OMP_WAIT_POLICY": "active"})
    assert omp["GOMP_SPINCOUNT"] == "300000"  # the runtime's own default: spin, then sleep


def test_root_thread_options_are_checked_and_recorded_then_undone(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--threads", "0", "report", "--help"]) == 2
    assert "--threads" in capsys.readouterr().err
    before = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    run, cfg = tmp_path / "run", tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"d_model": 16, "n_heads": 2, "segments": 4}}))
    args = ["train", str(tiny_h5), "--out", str(run), "--epochs", "1", "--config", str(cfg), "-q"]
    assert main([*args, "--device", "cpu", "--threads", "2", "--wait-policy", "passive"]) == 0
    env = json.loads((run / "metrics.json").read_text())["environment"]
    assert env["threads"] == 2 and env["threads_from"] == "--threads"
    assert env["wait_policy"] == "passive" and env["wait_from"] == "--wait-policy"
    assert env["wait_applied"] is False  # this test process had loaded torch long before
    assert env["torch"] == torch.__version__ and env["cores"] >= 1
    assert torch.get_num_threads() == before and os.environ.get("OMP_NUM_THREADS") == omp


def test_a_bad_thread_variable_is_one_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QAMOE_WAIT_POLICY", "sleepy")
    assert main(["report", "--help"]) == 2
    err = capsys.readouterr().err
    assert "QAMOE_WAIT_POLICY" in err and "passive" in err and "Traceback" not in err
