"""Progress with an ETA on stderr when stderr is not a terminal (a log, a pipe, a batch job):
plain lines from every long command, none with --quiet or --json. The line interval is set
to 0 so that the tiny inputs here, done in a second or two, still print lines."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest

import qamoe_cli.common as common
import qamoe_core.demo
from qamoe_cli.main import main
from qamoe_core.study import plan, runner
from tests.study.test_study import FakeExecutor, tiny_plan  # noqa: F401  (a fixture)

SMALL = {"model": {"d_model": 8, "n_heads": 2, "segments": 4, "n_layers": 1},
         "train": {"batch_size": 32}}  # fmt: skip
SPACE = "[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n"


def _lines(err: str, what: str) -> list[str]:
    """The plain progress lines of ``what`` in ``err``: 'WHAT: 3/9, 0:01 elapsed[, ETA 0:02]'."""
    shape = re.compile(rf"^{re.escape(what)}: \d+(/\d+)?, \d+:\d\d elapsed(, ETA \d+:\d\d)?")
    return [line for line in err.splitlines() if shape.match(line)]


@pytest.fixture
def every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "LINE_INTERVAL_S", 0.0)


def _runs_with_and_without_lines(
    argv: list[str], what: str, capsys: pytest.CaptureFixture[str], *, eta: bool = True
) -> None:
    """``argv`` (with {out} for a fresh output each time) prints progress lines of ``what``,
    the last at its total and an earlier one with an ETA, and none with --quiet or --json."""
    for i, extra in enumerate(([], ["--quiet"], ["--json"])):
        assert main([a.format(out=f"out{i}") for a in argv] + extra) == 0
        captured = capsys.readouterr()
        lines = _lines(captured.err, what)
        if extra:
            assert lines == [], (extra, lines)
            if extra == ["--json"]:
                json.loads(captured.out)  # stdout holds the result alone
            continue
        assert lines, captured.err
        done, total = lines[-1].split(": ", 1)[1].split(",")[0].split("/")
        assert done == total, lines[-1]
        if eta:
            assert any(", ETA " in line for line in lines), lines


@pytest.fixture
def small_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    return path


def test_train(tiny_h5: Path, small_config: Path, every_tick: None,
               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["train", str(tiny_h5), "--out", "{out}", "--config", str(small_config),
            "--epochs", "2", "--device", "cpu"]  # fmt: skip
    _runs_with_and_without_lines(argv, "train qamoe", capsys)


def test_eval(tiny_h5: Path, small_config: Path, every_tick: None,
              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    train = ["train", str(tiny_h5), "--out", "run", "--config", str(small_config),
             "--epochs", "1", "--device", "cpu", "-q"]  # fmt: skip
    assert main(train) == 0
    argv = ["eval", "run", "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5",
            "--corruption-seeds", "2", "--device", "cpu", "--out", "{out}.csv"]  # fmt: skip
    _runs_with_and_without_lines(argv, "eval run", capsys)


def test_report(tiny_h5: Path, small_config: Path, every_tick: None,
                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    train = ["train", str(tiny_h5), "--out", "run", "--config", str(small_config),
             "--epochs", "1", "--device", "cpu", "-q"]  # fmt: skip
    sweep = ["eval", "run", "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5",
             "--corruption-seeds", "1", "--device", "cpu", "--out", "r.csv", "-q"]  # fmt: skip
    assert main(train) == 0 and main(sweep) == 0
    argv = ["report", "r.csv", "--out", "{out}", "--figures", "png"]
    _runs_with_and_without_lines(argv, "report", capsys)


def test_corrupt(tiny_h5: Path, small_config: Path, every_tick: None,
                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["corrupt", str(tiny_h5), "--level", "0.4", "--out", "{out}.h5"]
    _runs_with_and_without_lines(argv, "corrupt", capsys)


def test_extract_synthetic(small_config: Path, every_tick: None,
                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["extract", "synthetic", "--preset", "tiny", "--out", "{out}.h5"]
    _runs_with_and_without_lines(argv, "synthetic/tiny", capsys)


def test_audit(tiny_h5: Path, small_config: Path, every_tick: None,
               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # audit's core does not know its step count ahead: lines without an ETA
    argv = ["audit", str(tiny_h5)]
    for extra in ([], ["--quiet"], ["--json"]):
        assert main(argv + extra) == 0
        lines = _lines(capsys.readouterr().err, "audit")
        assert bool(lines) == (not extra), (extra, lines)


def test_demo(small_config: Path, every_tick: None, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    tiny = partial(qamoe_core.demo.DemoConfig, preset="tiny", levels=(0.0, 0.5),
                   corruption_seeds=(0,), axes=("mixed",))  # fmt: skip
    monkeypatch.setattr(qamoe_core.demo, "DemoConfig", tiny)
    argv = ["demo", "--out", "{out}", "--epochs", "1", "--device", "cpu"]
    _runs_with_and_without_lines(argv, "demo stages", capsys)


def test_tune(tiny_h5: Path, small_config: Path, every_tick: None,
              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    Path("space.toml").write_text(SPACE)
    Path("base.json").write_text(json.dumps({**SMALL, "train": {"epochs": 1, "batch_size": 32}}))
    argv = ["tune", str(tiny_h5), "--out", "{out}", "--model", "early-fusion", "--space",
            "space.toml", "--config", "base.json", "--device", "cpu", "--trials", "2",
            "--folds", "0"]  # fmt: skip
    _runs_with_and_without_lines(argv, "tune trials", capsys)


def test_study_lines_count_cells_with_an_eta(
    tmp_path: Path,
    tiny_plan: plan.Plan,  # noqa: F811  (the fixture imported above)
    capsys: pytest.CaptureFixture[str],
) -> None:
    from qamoe_cli.study import _say

    runner.Scheduler(tmp_path / "a", tiny_plan, FakeExecutor(tmp_path / "a", {}), 0,
                     _say(False)).run()  # fmt: skip
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " done " in ln]
    n = len(tiny_plan.cells)
    assert len(lines) == n
    assert re.match(rf"^\[1/{n}, \d+:\d\d elapsed, ETA \d+:\d\d\] done ", lines[0]), lines[0]
    assert re.match(rf"^\[{n}/{n}, \d+:\d\d elapsed\] done ", lines[-1]), lines[-1]
    runner.Scheduler(tmp_path / "b", tiny_plan, FakeExecutor(tmp_path / "b", {}), 0,
                     _say(True)).run()  # fmt: skip
    assert capsys.readouterr().err == ""  # --quiet, --json
