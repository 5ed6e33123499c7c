"""qamoe_cli/process.py: what one command sets for the process is undone when it ends.

Signals end to end (exit codes, the watchdog) are tests/cli/test_main.py and
tests/data/test_hostile_bounds.py::test_signals_end_the_command_within_a_second.
"""

from __future__ import annotations

import signal
import sys

import pytest
import torch

from qamoe_cli import process
from qamoe_core.base import runtime


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
