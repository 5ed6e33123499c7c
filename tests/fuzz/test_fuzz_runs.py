"""Fuzz: generated run folders (tests/fuzz/runs.py) through ``qa.load_run``, `eval` (clean and
a short --sweep) and `train --resume`, and generated results tables through `report`, each in
a forked child under the harness's caps (tests/fuzz/harness.py).

Every child runs from the run folder's parent with that folder and a canary package
importable, so a ``model_name`` such as ``run.payload:Model`` or ``qamoe_fuzz_canary:Model``
would be found if anything imported what a file names; the harness fails the example if any
such module was imported or its marker file written (also by unpickling model.pt).

The suite runs a fixed, derandomized budget (EXAMPLES below); ``QAMOE_FUZZ_EXAMPLES=N`` runs
N random examples per target.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, note

from tests.fuzz.conftest import FuzzInputs, enter_child
from tests.fuzz.harness import BUDGET, Outcome, check, fuzz_settings, json_result, run_child
from tests.fuzz.runs import make_run, make_table, results_tables, run_folders

EXAMPLES = {"load_run": 25, "eval": 16, "eval_sweep": 8, "resume": 8}
REPORT_EXAMPLES = 5


def _load_run(run: Path) -> int:
    """qa.load_run as a command: 0 loaded, 1 with the error's lines as the CLI prints them."""
    import qamoe_core as qa
    from qamoe_core.base.errors import QamoeError

    try:
        qa.load_run(run.name)  # by its relative name, as a user beside the folder would
    except QamoeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


def _argv(target: str, run: Path, inputs: FuzzInputs) -> list[str]:
    if target == "resume":
        # the run's own settings (another --epochs is refused as a config change)
        return ["train", str(inputs.tiny), "--out", run.name, "--resume", "--device", "cpu",
                "--json"]  # fmt: skip
    argv = ["eval", run.name, "--data", str(inputs.tiny), "--device", "cpu", "--json"]
    if target == "eval_sweep":
        argv += ["--sweep", "--levels", "0,0.5", "--axis", "mixed", "--corruption-seeds", "1",
                 "--out", "out.csv"]  # fmt: skip
    return argv


@pytest.mark.parametrize("target", list(EXAMPLES))
def test_run_folders(target: str, fuzz_inputs: FuzzInputs, tmp_path: Path) -> None:
    @fuzz_settings(EXAMPLES[target])
    @given(mutations=run_folders)
    def example(mutations: list[tuple]) -> None:
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            markers = work / "markers"
            markers.mkdir()
            run = make_run(mutations, fuzz_inputs.run, work / "run", markers)
            argv = None if target == "load_run" else [*BUDGET, *_argv(target, run, fuzz_inputs)]
            note(f"argv: {argv}")

            def go() -> int:
                from qamoe_cli.main import main

                enter_child(fuzz_inputs, markers, work)
                return _load_run(run) if argv is None else main(argv)

            outcome = run_child(go, work / "child")
            sane = {"load_run": None, "resume": _has(None)}.get(target, _has("metrics"))
            check(outcome, f"run {target}", sane=sane, outputs=(work / "out.csv",), markers=markers)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    example()


def _has(key: str | None) -> Callable[[Outcome], None]:
    """A success prints one JSON object (holding ``key``)."""

    def sane(outcome: Outcome) -> None:
        result = json_result(outcome)
        assert key is None or key in result, outcome.show()

    return sane


def test_results_tables(fuzz_inputs: FuzzInputs, tmp_path: Path) -> None:
    @fuzz_settings(REPORT_EXAMPLES)
    @given(mutations=results_tables)
    def example(mutations: list[tuple]) -> None:
        work = Path(tempfile.mkdtemp(dir=tmp_path))
        try:
            markers = work / "markers"
            markers.mkdir()
            table = make_table(mutations, fuzz_inputs.results, work / "results.csv")
            out = work / "report"
            argv = [*BUDGET, "report", str(table), "--out", str(out), "--figures", "png",
                    "--json"]  # fmt: skip

            def go() -> int:
                from qamoe_cli.main import main

                enter_child(fuzz_inputs, markers, work)
                return main(argv)

            def sane(outcome: Outcome) -> None:
                json_result(outcome)
                assert (out / "report.md").is_file() and (out / "report.html").is_file()

            check(
                run_child(go, work / "child"), "report", sane=sane, outputs=(out,), markers=markers
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    example()
