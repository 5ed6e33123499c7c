"""Fuzz: generated feature files (tests/fuzz/files.py) through `audit`, `eval` (clean and a
short --sweep), `corrupt` and `train --epochs 1`, each in a forked child under the harness's
caps (tests/fuzz/harness.py). Each example ends with exit 0 and a sane result (and, for a
written output, one that reads back), or exit 1/2 with a one-line error and no output.

The suite runs a fixed, derandomized budget (EXAMPLES below); ``QAMOE_FUZZ_EXAMPLES=N`` runs
N random examples per target (docs/results/fuzz.md records the long run).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from tests.fuzz.conftest import FuzzInputs, enter_child
from tests.fuzz.files import feature_files, make_file
from tests.fuzz.harness import BUDGET, Outcome, check, fuzz_settings, json_result, run_child

# Examples per target in the suite's run: about a minute for all of tests/fuzz on 2 cores.
EXAMPLES = {"audit": 12, "eval": 16, "corrupt": 16, "train": 10}


def _argv(target: str, data: Path, work: Path, inputs: FuzzInputs, sweep: bool) -> list[str]:
    if target == "audit":
        return ["audit", str(data), "--json", "--max-rows", "200"]
    if target == "corrupt":
        return ["corrupt", str(data), "--level", "0.3", "--out", str(work / "out.h5"), "--json"]
    if target == "train":
        return ["train", str(data), "--out", str(work / "out"), "--epochs", "1", "--config",
                str(inputs.train_config), "--device", "cpu", "--json"]  # fmt: skip
    argv = ["eval", str(inputs.run), "--data", str(data), "--device", "cpu", "--json"]
    if sweep:
        argv += ["--sweep", "--levels", "0,0.5", "--axis", "mixed", "--corruption-seeds", "1",
                 "--out", str(work / "out.csv")]  # fmt: skip
    return argv


def _readback(target: str, work: Path) -> Callable[[], None]:
    """What a success must leave: an output that reads back (checked in the child)."""

    def check_output() -> None:
        if target == "corrupt":
            from qamoe_core.data.store import validate

            validate(work / "out.h5")
        elif target == "train":
            import qamoe_core as qa

            qa.load_run(work / "out")

    return check_output


def _sane(target: str) -> Callable[[Outcome], None]:
    key = {"audit": "modalities", "eval": "metrics"}.get(target)

    def sane(outcome: Outcome) -> None:
        result = json_result(outcome)
        assert key is None or key in result, outcome.show()

    return sane


@pytest.mark.parametrize("target", list(EXAMPLES))
def test_feature_files(target: str, fuzz_inputs: FuzzInputs, tmp_path: Path) -> None:
    @fuzz_settings(EXAMPLES[target])
    @given(spec=feature_files, sweep=st.booleans())
    def example(spec: tuple, sweep: bool) -> None:
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            markers = work / "markers"
            markers.mkdir()
            data = make_file(spec, fuzz_inputs.tiny, work / "data.h5")
            argv = [*BUDGET, *_argv(target, data, work, fuzz_inputs, sweep)]
            note(f"argv: {argv}")

            def go() -> int:
                from qamoe_cli.main import main

                enter_child(fuzz_inputs, markers, work)
                rc = main(argv)
                if rc == 0:
                    _readback(target, work)()
                return rc

            outcome = run_child(go, work / "child")
            outputs = (work / "out.h5", work / "out", work / "out.csv")
            check(outcome, f"file {target}", sane=_sane(target), outputs=outputs, markers=markers)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    example()
