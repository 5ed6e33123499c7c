"""Tuned arms in the library, without training: the `tune` field and the `[tune]` table, their
refusals, the equal-budget note, each tuning checked against the model and the data, the cell
keys of a tuned arm, what a change says, and the bound on trainings in flight. A whole tuned
study through the CLI is tests/study/test_tuned_study.py."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from qamoe_core.base.errors import ConfigError, InputError, UsageError
from qamoe_core.study import cells, executors, plan, spec, tunearm, tunespec
from qamoe_core.study.spec import StudyFileError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "studies" / "tiny-tuned.toml"
SPACE = "[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n[model.dropout]\nlow = 0.0\nhigh = 0.5\n"

BASE = """
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[tune]
trials = 4
folds = 2
[arms.a]
model = "early-fusion"
config = { model = { d_model = 8, n_heads = 2, segments = 0 } }
tune = { space = "space.toml" }
[arms.b]
model = "early-fusion"
config = { model = { d_model = 8, n_heads = 2, segments = 0 } }
[train]
epochs = 1
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
[compare]
reference = "b"
"""


def load(tmp_path: Path, text: str = BASE) -> spec.Study:
    (tmp_path / "space.toml").write_text(SPACE)
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return spec.load_study(path)


def test_the_example_parses_with_one_tuned_arm() -> None:
    study = spec.load_study(EXAMPLE)
    tuned, default = study.arms
    assert default.tune is None and tuned.tune is not None
    assert (tuned.tune.trials, tuned.tune.folds, tuned.tune.seed) == (3, 2, 0)
    assert tuned.tune.space == EXAMPLE.parent / "spaces" / "tiny-early-fusion.toml"
    assert tuned.tune.space_doc is not None and set(tuned.tune.space_doc) == {"train", "model"}
    doc = study.to_doc()["arms"]
    assert doc["tuned"]["tune"]["trials"] == 3 and doc["tuned"]["tune"]["space"]["train"]
    assert "tune" not in doc["default"]  # an untuned arm's doc is what it was before


def test_the_study_table_gives_the_defaults_and_an_arm_overrides_them(tmp_path: Path) -> None:
    arm_b = '[arms.b]\nmodel = "early-fusion"\n'
    text = BASE.replace('tune = { space = "space.toml" }', "tune = true")
    text = text.replace(arm_b, arm_b + "tune = { seed = 3 }\n")
    a, b = load(tmp_path, text).arms
    assert a.tune is not None and b.tune is not None
    assert (a.tune.trials, a.tune.folds, a.tune.seed, a.tune.space) == (4, 2, 0, None)
    assert (b.tune.trials, b.tune.folds, b.tune.seed) == (4, 2, 3)
    note = tunespec.budget_note([a, b])
    assert "UNEQUAL budgets" in note and "seed 3" in note and "seed 0" in note
    same = tunespec.budget_note([a, dataclasses.replace(a, name="c")])
    assert same.startswith("Tuned before training, each with the same budget (a, c): 4 trials")
    assert "2 grouped folds over train+valid" in same and "levels clean, 0.5" in same
    assert tunespec.budget_note([spec.Arm("x", "qamoe", {}, {})]) == ""


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("trials = 4", "trails = 4"), ["[tune]", "unknown key 'trails'", "Did you mean 'trials'"]),
        (("trials = 4", "trials = 0"), ["[tune]", "'trials' must be an integer >= 1, got 0"]),
        (("trials = 4\n", ""), ["[arms.a.tune]", "'trials' is missing", "[tune]"]),
        (("folds = 2", "folds = 1"), ["'folds' must be 0 (the valid split) or an integer"]),
        (
            ('tune = { space = "space.toml" }', 'tune = { space = "space.toml", samplr = "tpe" }'),
            ["[arms.a.tune]", "unknown tune key 'samplr'", "Did you mean 'sampler'"],
        ),
        (("folds = 2", 'folds = 2\nsampler = "tpee"'), ["'sampler' must be one of", "'tpe'"]),
        (("folds = 2", 'folds = 2\npruner = "medain"'), ["Did you mean 'median'"]),
        (("folds = 2", 'folds = 2\nmetric = "MAEE"'), ["'metric'", "Did you mean 'MAE'"]),
        (("folds = 2", "folds = 2\nlevels = [0.5, 0.5]"), ["names the level 0.5 twice"]),
        (("folds = 2", "folds = 2\nlevels = [1.5]"), ["'levels' holds 1.5", "[0, 1]"]),
        (("folds = 2", "folds = 2\ngroups = 3"), ["'groups' must be true, false or a regex"]),
        (('tune = { space = "space.toml" }', "tune = 3"), ["[arms.a.tune]", "must be a table"]),
        (('tune = { space = "space.toml" }', ""), ["[tune]", "no arm is tuned", "tune = true"]),
    ],
)
def test_bad_tune_settings_are_refused_in_one_line(
    tmp_path: Path, change: tuple[str, str], words: list[str]
) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, text)
    err = info.value
    assert "\n" not in err.message and isinstance(err, UsageError)  # exit 2
    for word in words:
        assert word in err.message + " " + (err.hint or ""), (word, err.message, err.hint)


def test_a_space_file_that_is_missing_or_not_toml_says_so_as_tune_does(tmp_path: Path) -> None:
    missing = BASE.replace("space.toml", "nowhere.toml")
    with pytest.raises(InputError, match=r"\[arms.a.tune\]: The search space file .*nowhere"):
        load(tmp_path, missing)
    (tmp_path / "bad.toml").write_text("[train.lr\n")
    with pytest.raises(ConfigError, match=r"\[arms.a.tune\]: The search space file .*not valid"):
        load(tmp_path, BASE.replace("space.toml", "bad.toml"))


def info(path: Path) -> dict[str, spec.DataInfo]:
    return {"d": spec.DataInfo(path, "0" * 64, ("text", "audio", "vision"), "mosi", ())}


def test_each_tuning_is_checked_against_the_model_and_the_data(
    tiny_h5: Path, tmp_path: Path
) -> None:
    study = load(tmp_path)
    (t,) = tunearm.plan_tunings(study, info(tiny_h5), tmp_path / "out")
    assert (t.dataset, t.arm, t.settings.trials, t.settings.folds) == ("d", "a", 4, 2)
    assert t.folder == tmp_path / "out" / "tune" / "d" / "a"
    assert t.settings.config["train"]["epochs"] == 1  # the study's [train] is the base
    assert t.plan.base_model["d_model"] == 8 and t.identity == {"manifest": t.key, "trials": 4}
    assert t.result() is None and not (tmp_path / "out").exists()  # checking writes nothing
    tfn = load(tmp_path, BASE.replace('model = "early-fusion"', 'model = "tfn"', 1).replace(
        "config = { model = { d_model = 8, n_heads = 2, segments = 0 } }\ntune", "tune", 1
    ))  # fmt: skip
    with pytest.raises(UsageError, match=r"\[arms.a\] tune on dataset 'd': .*does not use"):
        tunearm.plan_tunings(tfn, info(tiny_h5), tmp_path / "out")
    many = load(tmp_path, BASE.replace("folds = 2", "folds = 20"))
    with pytest.raises(InputError, match=r"tune on dataset 'd': .*20 folds need at least 20"):
        tunearm.plan_tunings(many, info(tiny_h5), tmp_path / "out")


def tuned(trials: int = 4, lr: float = 0.003) -> plan.Tuned:
    train = {"epochs": 1, "lr": lr, "val_levels": [0.0, 0.5], "select_metric": "MAE"}
    return plan.Tuned({"manifest": "m" * 20, "trials": trials}, {"dropout": 0.2}, train)


def test_a_tuned_arms_cells_follow_its_tuning_and_no_other_cell_does(tmp_path: Path) -> None:
    study = load(tmp_path)
    data = info(tmp_path / "d.h5")
    waiting = plan.make_plan(study, data)
    assert waiting.pending == [("d", "a")]
    assert {c.arm for c in waiting.cells} == {"b"} and len(waiting.cells) == 4
    done = plan.make_plan(study, data, {("d", "a"): tuned()})
    assert not done.pending and len(done.cells) == 8
    a0 = next(c for c in done.cells if c.arm == "a" and c.kind == "train" and c.seed == 0)
    assert a0.content["tuning"] == {"manifest": "m" * 20, "trials": 4}
    assert a0.content["model_config"]["dropout"] == 0.2 and a0.content["model_config"]["d_model"]
    assert a0.content["train_config"]["lr"] == 0.003 and a0.content["train_config"]["seed"] == 0
    b_keys = {c.key for c in done.cells if c.arm == "b"}
    assert b_keys == {c.key for c in waiting.cells}  # untuned cells: keyed as before
    for other in (tuned(trials=5), tuned(lr=0.004)):
        again = plan.make_plan(study, data, {("d", "a"): other})
        a_keys = {c.key for c in again.cells if c.arm == "a"}
        assert not a_keys & {c.key for c in done.cells} and len(a_keys) == 4
        assert {c.key for c in again.cells if c.arm == "b"} == b_keys
    assert json.loads(json.dumps(done.doc()))["tunings"][0]["state"] == "done"


def test_a_changed_tuning_is_refused_naming_it_and_its_cells(tmp_path: Path) -> None:
    study = load(tmp_path)
    data = info(tmp_path / "d.h5")
    out = tmp_path / "out"
    old = plan.make_plan(study, data, {("d", "a"): tuned()})
    cells.write_json(out / plan.STUDY_JSON, old.doc())
    changed = load(tmp_path, BASE.replace("trials = 4", "trials = 6"))
    new = plan.make_plan(changed, data)  # its tuning has not run: its cells are not known
    with pytest.raises(plan.StudyChangedError) as err:
        plan.check_unchanged(out, new, force=False)
    message = err.value.message
    assert "arms.a.tune.trials: 4 -> 6" in message and "invalidates 4 of its 8 cells" in message
    assert "1 tuning(s) run first" in message and "a on d" in message
    gone = plan.check_unchanged(out, new, force=True)
    assert set(gone) == {c.key for c in old.cells if c.arm == "a"}


class FakeInner:
    describe = "fake"

    def __init__(self, queued: set[str]) -> None:
        self.queued, self.started = queued, []

    def free(self) -> int:
        return 100_000

    def adopt(self, keys: list[str]) -> set[str]:
        return {k for k in keys if k in self.queued} | {"unrelated"}

    def start(self, key: str) -> None:
        self.started.append(key)

    def wait(self, timeout: float) -> list[executors.Outcome]:
        return [executors.Outcome(self.started.pop(0), True)] if self.started else []

    def stop(self) -> None:
        pass


def test_bounded_keeps_at_most_its_limit_in_flight_and_adopts_queued_jobs() -> None:
    inner = FakeInner(queued={"old"})
    bounded = executors.Bounded(inner, 2)
    assert bounded.free() == 2 and "at most 2" in bounded.describe
    bounded.start("old")  # its job from an earlier process is still queued: not resubmitted
    bounded.start("new")
    assert inner.started == ["new"] and bounded.free() == 0
    assert [o.key for o in bounded.wait(0)] == ["new"] and bounded.free() == 1
    with pytest.raises(UsageError):
        executors.Bounded(inner, 0)


def test_a_tuning_executor_per_executor_and_jobs(tmp_path: Path) -> None:
    from qamoe_core.study.runner import Options, tuning_executor

    study = load(tmp_path)
    assert tuning_executor(tmp_path, study, Options(jobs=1)) is None  # in this process
    local = tuning_executor(tmp_path, study, Options(jobs=2))
    assert isinstance(local, executors.LocalExecutor) and local.study_dir == tmp_path


def test_a_stale_tuning_folder_is_started_afresh_unless_it_only_grows(
    tiny_h5: Path, tmp_path: Path
) -> None:
    (t,) = tunearm.plan_tunings(load(tmp_path), info(tiny_h5), tmp_path / "out")

    def folder_with(identity: dict[str, Any]) -> bool:
        t.folder.mkdir(parents=True, exist_ok=True)
        (t.folder / ".qamoe-tune").touch()
        cells.write_json(t.record, {"identity": identity, "state": "running"})
        tunearm._start_afresh_if_changed(t)
        return t.folder.is_dir()

    assert folder_with({"manifest": t.key, "trials": 3})  # 3 -> 4 trials: extended
    assert folder_with({"manifest": t.key, "trials": 4})  # the same: resumed
    assert not folder_with({"manifest": t.key, "trials": 5})  # fewer trials: afresh
    assert not folder_with({"manifest": "other", "trials": 4})  # another tuning: afresh


def test_an_interrupted_tuning_resumes_to_the_same_choice(tiny_h5: Path, tmp_path: Path) -> None:
    from tests.tuning.test_runner import FakeExecutor, by_dropout

    study = load(tmp_path)
    events: list[str] = []

    def run(out: Path, stop_after: int | None = None) -> dict[tuple[str, str], plan.Tuned]:
        ts = tunearm.plan_tunings(study, info(tiny_h5), out)
        fake = lambda folder: FakeExecutor(folder, by_dropout, stop_after)  # noqa: E731
        return tunearm.run_tunings(ts, out, fake, lambda event, cell, i: events.append(event))

    ref = run(tmp_path / "ref")[("d", "a")]
    assert events[0] == "tune-start" and events[-1] == "tuned" and "tune" in events
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(out, stop_after=3)
    record = json.loads((out / "tune" / "d" / "a.json").read_text())
    assert record["state"] == "running"
    assert tunearm.finished(tunearm.plan_tunings(study, info(tiny_h5), out)) == {}
    got = run(out)[("d", "a")]
    assert (got.identity, got.model_config, got.train_config) == (
        ref.identity,
        ref.model_config,
        ref.train_config,
    )
    assert got.summary["best_trial"] == ref.summary["best_trial"] and got.summary["trials"] == 4
    rows = csv.DictReader((out / "tune" / "d" / "a" / "trials.csv").read_text().splitlines())
    assert got.model_config["dropout"] == min(float(r["model.dropout"]) for r in rows)
