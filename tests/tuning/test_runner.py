"""The tuning loop with a stand-in executor (no training: each fold's score is computed from
the trial's config), so pruning, failures, resuming after an interruption and the outputs can
be checked in a second: the real trainings are in tests/cli/test_tune_cli.py."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qamoe_core.base.errors import ConfigError, TrainingError
from qamoe_core.config import from_json
from qamoe_core.tuning import executor as ex
from qamoe_core.tuning.api import run_tuning, tune
from qamoe_core.tuning.plan import TuneSettings, make_plan

Score = Callable[[dict[str, Any], int], float | None]  # (config, fold) -> score; None: fails


class FakeExecutor:
    """Finishes each cell at once with the score ``score`` gives its config (writes what a
    training would: run/metrics.json, done.json); ``stop_after`` cells, then Ctrl-C."""

    describe = "fake"

    def __init__(self, root: Path, score: Score, stop_after: int | None = None) -> None:
        self.root, self.score, self.stop_after = root, score, stop_after
        self.queue: list[str] = []
        self.started: list[str] = []

    def free(self) -> int:
        return 0 if self.queue else 1

    def start(self, key: str) -> None:
        self.queue.append(key)
        self.started.append(key)

    def adopt(self, keys: list[str]) -> set[str]:
        return set()

    def stop(self) -> None:
        self.queue.clear()

    def wait(self, timeout: float) -> list[ex.Outcome]:
        if self.stop_after is not None and len(self.started) > self.stop_after:
            raise KeyboardInterrupt
        key = self.queue.pop(0)
        folder = ex.cell_dir(self.root, key)
        cell = ex.read_json(folder / ex.CELL_FILE) or {}
        config = json.loads((folder / "config.json").read_text())
        value = self.score(config, int(cell["fold"]))
        if value is None:
            ex.write_json(folder / ex.FAILED, {"key": key})
            return [ex.Outcome(key, False, "error: the stand-in failed it")]
        (folder / ex.RUN).mkdir(exist_ok=True)
        metrics = {"val": {"0": {"MAE": value}, "0.5": {"MAE": value}}}
        (folder / ex.RUN / "metrics.json").write_text(json.dumps(metrics))
        ex.write_json(folder / ex.DONE, {"key": key, "seconds": 0.5})
        return [ex.Outcome(key, True, "", 0.5)]


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(
        "[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n[model.dropout]\nlow = 0.0\nhigh = 0.5\n"
    )
    return path


def settings(data: Path, out: Path, space: Path, **kw: Any) -> TuneSettings:
    return TuneSettings(data, out, "early-fusion", space, **{"trials": 8, "folds": 3, **kw})


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def by_dropout(config: dict[str, Any], fold: int) -> float:
    return 1.0 + config["model"]["dropout"] + 0.01 * fold


@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_pruning_stops_trials_after_a_fold(
    tiny_h5: Path, tmp_path: Path, space_file: Path, pruner: str
) -> None:
    out = tmp_path / "t"
    s = settings(tiny_h5, out, space_file, sampler="random", trials=12, pruner=pruner)
    result = run_tuning(s, executor=FakeExecutor(out, by_dropout))
    table = rows(out)
    pruned = [r for r in table if r["state"] == "pruned"]
    assert pruned and all(r["fold_1"] and not r["fold_3"] for r in pruned)
    if pruner == "median":
        assert all(int(r["number"]) >= 5 for r in pruned)  # 5 startup trials
        assert all(r["fold_1"] and not r["fold_2"] for r in pruned)
    complete = [r for r in table if r["state"] == "complete"]
    assert all(r["fold_3"] for r in complete)
    assert result.mean == min(float(r["mean"]) for r in complete)
    assert result.params["model.dropout"] == min(float(r["model.dropout"]) for r in complete)
    assert result.folds == 3 and result.trials == 12


def test_failures_are_recorded_and_the_best_is_chosen_among_finished_trials(
    tiny_h5: Path, tmp_path: Path, space_file: Path
) -> None:
    out = tmp_path / "t"

    def flaky(config: dict[str, Any], fold: int) -> float | None:
        return None if config["model"]["dropout"] > 0.25 else by_dropout(config, fold)

    result = run_tuning(
        settings(tiny_h5, out, space_file, pruner="none"), executor=FakeExecutor(out, flaky)
    )
    table = rows(out)
    failed = [r for r in table if r["state"] == "fail"]
    assert failed and all("the stand-in failed it" in r["error"] for r in failed)
    assert all(float(r["model.dropout"]) > 0.25 for r in failed)
    assert result.params["model.dropout"] <= 0.25
    with pytest.raises(TrainingError, match="None of the 8 trials finished"):
        run_tuning(
            settings(tiny_h5, tmp_path / "u", space_file),
            executor=FakeExecutor(tmp_path / "u", lambda c, k: None),
        )


def test_an_interrupted_tuning_resumes_to_the_same_trials(
    tiny_h5: Path, tmp_path: Path, space_file: Path
) -> None:
    ref = tmp_path / "ref"
    run_tuning(settings(tiny_h5, ref, space_file), executor=FakeExecutor(ref, by_dropout))
    out = tmp_path / "t"
    for stop in (4, 11):  # interrupted twice, mid-trial, then run to the end
        with pytest.raises(KeyboardInterrupt):
            run_tuning(
                settings(tiny_h5, out, space_file),
                executor=FakeExecutor(out, by_dropout, stop_after=stop),
            )
    resumed = FakeExecutor(out, by_dropout)
    run_tuning(settings(tiny_h5, out, space_file), executor=resumed)
    assert rows(out) == rows(ref)
    assert (out / "best.json").read_text() == (ref / "best.json").read_text()
    # finished folds were read back, not trained again: only what was left ran
    assert len(resumed.started) < sum(1 for _ in ref.glob("cells/*"))
    more = FakeExecutor(out, by_dropout)
    result = run_tuning(settings(tiny_h5, out, space_file, trials=10), executor=more)
    assert result.trials == 10 and len(rows(out)) == 10 and rows(out)[:8] == rows(ref)


def test_two_drawn_values_the_config_refuses_together_fail_that_trial(
    tiny_h5: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.toml"
    space.write_text("[model.d_model]\nchoices = [8, 12]\n[model.n_heads]\nchoices = [4, 8]\n")
    out = tmp_path / "t"
    run_tuning(
        TuneSettings(tiny_h5, out, "early-fusion", space, trials=16, folds=0, sampler="random"),
        executor=FakeExecutor(out, lambda c, k: 1.0 / c["model"]["d_model"]),
    )
    table = rows(out)
    bad = [r for r in table if (r["model.d_model"], r["model.n_heads"]) == ("12", "8")]
    assert bad and all(r["state"] == "fail" and "divisible" in r["error"] for r in bad)
    assert all(r["state"] == "complete" for r in table if r not in bad)


def test_tune_with_a_default_space_returns_a_best_json_that_trains(
    tiny_h5: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"train": {"epochs": 1}}))
    best = tune(tiny_h5, "tfn", None, 1, tmp_path / "t", folds=0, config=base, device="cpu")
    doc = json.loads(best.read_text())
    assert doc["model_name"] == "tfn" and doc["train"]["val_levels"] == [0.0, 0.5]
    report = (tmp_path / "t" / "report.md").read_text()
    assert "model.options.text_out" in report and "MMSA config_tune.json" in report
    mcfg, tcfg = from_json(best)
    assert tcfg.epochs == 1 and mcfg.options["text_out"] in (32, 64, 128, 256)


def test_the_base_config_is_checked_against_the_model_before_any_trial(
    tiny_h5: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"model": {"options": {"rank": 4}}}))  # LMF's, not TFN's
    with pytest.raises(
        ConfigError, match=r"Unknown key\(s\) in 'model.options' for the model 'tfn'"
    ):
        make_plan(TuneSettings(tiny_h5, tmp_path / "t", "tfn", None, config=base))
    assert not (tmp_path / "t").exists()
