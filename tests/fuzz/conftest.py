"""The fuzz harness's shared inputs: one tiny trained run, its sweep table, the canaries."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qamoe_cli.main import main
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.training.loop import train
from tests.fuzz.harness import CANARY_MARKER_ENV, TALLY

SMALL = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
SMALL_JSON = {"model": {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4,
                        "top_k": 2}, "train": {"batch_size": 32}}  # fmt: skip
# Importing a canary leaves a marker file: the harness fails an example that leaves one.
CANARY_CODE = (
    "import os\n"
    f"open(os.path.join(os.environ[{CANARY_MARKER_ENV!r}], {{name!r}} + '-imported'), 'w')"
    ".close()\n"
    "class Model:\n    pass\n"
)


@dataclass(frozen=True)
class FuzzInputs:
    tiny: Path  # the tiny preset's feature file
    run: Path  # a run trained on it for one epoch
    results: Path  # a short sweep of that run (results CSV)
    train_config: Path  # --config for `train` (a small model)
    canaries: Path  # a folder on sys.path in each child, holding the canary package


@pytest.fixture(scope="session")
def fuzz_inputs(tiny_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> FuzzInputs:
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    train(tiny_h5, run, "qamoe", SMALL, TrainConfig(epochs=1, batch_size=32), device="cpu")
    results = root / "results.csv"
    argv = ["eval", str(run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5",
            "--axis", "mixed", "--corruption-seeds", "1", "--out", str(results),
            "--device", "cpu", "--json"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    config = root / "train.json"
    config.write_text(json.dumps(SMALL_JSON))
    canaries = root / "canaries"
    package = canaries / "qamoe_fuzz_canary"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(CANARY_CODE.format(name="qamoe_fuzz_canary"))
    (package / "sub.py").write_text(CANARY_CODE.format(name="qamoe_fuzz_canary.sub"))
    return FuzzInputs(tiny_h5, run, results, config, canaries)


def enter_child(inputs: FuzzInputs, markers: Path, cwd: Path) -> None:
    """In a forked child: canaries importable, the example's marker folder, the working
    folder (a run folder's parent: as when a user runs Python beside a downloaded run)."""
    os.environ[CANARY_MARKER_ENV] = str(markers)
    os.chdir(cwd)
    sys.path[:0] = ["", str(inputs.canaries)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How the examples ended, per target (exit status and the error's first words)."""
    if not TALLY:
        return
    terminalreporter.section("fuzz outcomes")
    for target, counts in TALLY.items():
        total = sum(counts.values())
        terminalreporter.write_line(f"{target}: {total} examples")
        for what, n in counts.most_common():
            terminalreporter.write_line(f"  {n:5d}  {what}")
