"""An arm at another arm's tuned setting (``settings_from``), without training: how it is read
and refused, its cells (the source's chosen setting with the arm's config over it, keyed by
the source's tuning), the note of the table, and that adding such an arm to a study keeps the
old cells and tunings. Through the CLI: tests/study/test_tuned_study.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qamoe_core.base.errors import UsageError
from qamoe_core.study import cells, plan, spec, tunearm, tunespec
from qamoe_core.study.spec import StudyFileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
MECHANISM = REPO / "studies" / "mechanism-mosi-std.toml"
SPACE = "[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n[model.dropout]\nlow = 0.0\nhigh = 0.5\n"

BASE = """
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[tune]
trials = 4
folds = 2
[arms.a]
model = "qamoe"
config = { model = { d_model = 8, n_heads = 2, segments = 0 } }
tune = { space = "space.toml" }
[arms.b]
model = "qamoe"
config = { model = { d_model = 8, n_heads = 2, segments = 0 } }
[train]
epochs = 1
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
[compare]
reference = "b"
"""
TAKEN = """
[arms.a-no-dropout]
model = "qamoe"
settings_from = "a"
config = { model = { dropout = 0.0, options = { quality_gate = false } }, train = { epochs = 2 } }
"""


def load(tmp_path: Path, text: str = BASE + TAKEN) -> spec.Study:
    (tmp_path / "space.toml").write_text(SPACE)
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return spec.load_study(path)


def info(path: Path) -> dict[str, spec.DataInfo]:
    return {"d": spec.DataInfo(path, "0" * 64, ("text", "audio", "vision"), "mosi", ())}


def tuned(trials: int = 4, lr: float = 0.003) -> plan.Tuned:
    train = {"epochs": 1, "lr": lr, "val_levels": [0.0, 0.5], "select_metric": "MAE"}
    options = {"unc_weight": 0.5}
    model = {"d_model": 8, "n_heads": 2, "segments": 0, "dropout": 0.2, "options": options}
    return plan.Tuned({"manifest": "m" * 20, "trials": trials}, model, train)


def test_the_arm_names_its_source_in_the_studys_content(tmp_path: Path) -> None:
    study = load(tmp_path)
    taken = study.arm("a-no-dropout")
    assert taken.settings_from == "a" and taken.tune is None
    doc = study.to_doc()["arms"]
    assert doc["a-no-dropout"]["settings_from"] == "a"
    assert "settings_from" not in doc["a"] and "settings_from" not in doc["b"]  # as before


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (('settings_from = "a"', 'settings_from = "aa"'), ["not another arm", "Did you mean 'a'"]),
        (
            ('settings_from = "a"', 'settings_from = "a-no-dropout"'),
            ["'a-no-dropout', which is not another arm", "The tuned arms: a."],
        ),
        (('settings_from = "a"', 'settings_from = "b"'), ["'b', which is not tuned", "arms: a."]),
        (('settings_from = "a"', "settings_from = 3"), ["'settings_from' must name a tuned arm"]),
        (
            ('settings_from = "a"', 'settings_from = "a"\ntune = true'),
            ["is tuned and also takes the setting of 'a'", "remove one"],
        ),
        (
            ('model = "qamoe"\nsettings_from', 'model = "tfn"\nsettings_from'),
            ["'a', a tuned qamoe, but this arm is a tfn", 'model = "qamoe"'],
        ),
        (
            (TAKEN.splitlines()[-1] + "\n", ""),  # no config of its own
            ["changes nothing in it", "the same models as 'a'", "quality_gate = false"],
        ),
        (
            ('[arms.a-no-dropout]\nmodel = "qamoe"', '[arms.a-no-dropout]\nmodl = "x"'),
            ["unknown field 'modl'", "settings_from"],  # listed among the arm's fields
        ),
    ],
)
def test_a_bad_source_is_refused_in_one_line(
    tmp_path: Path, change: tuple[str, str], words: list[str]
) -> None:
    text = (BASE + TAKEN).replace(*change)
    assert text != BASE + TAKEN
    with pytest.raises(StudyFileError) as err:
        load(tmp_path, text)
    assert "\n" not in err.value.message and isinstance(err.value, UsageError)  # exit 2
    for word in words:
        assert word in err.value.message + " " + (err.value.hint or ""), (word, err.value)


def test_its_cells_wait_for_the_source_then_train_at_its_setting(tmp_path: Path) -> None:
    study = load(tmp_path)
    data = info(tmp_path / "d.h5")
    waiting = plan.make_plan(study, data)
    assert waiting.pending == [("d", "a")] and waiting.waiting == [("d", "a-no-dropout")]
    assert {c.arm for c in waiting.cells} == {"b"}
    done = plan.make_plan(study, data, {("d", "a"): tuned()})
    assert not done.waiting and list(done.tuned) == [("d", "a")]  # no tuning of its own
    t0 = next(c for c in done.cells if c.arm == "a-no-dropout" and c.kind == "train")
    a0 = next(c for c in done.cells if c.arm == "a" and c.kind == "train" and c.seed == t0.seed)
    assert t0.content["tuning"] == a0.content["tuning"] == {"manifest": "m" * 20, "trials": 4}
    model, train = t0.content["model_config"], t0.content["train_config"]
    assert model["dropout"] == 0.0 and a0.content["model_config"]["dropout"] == 0.2  # its own
    # the options merged, not replaced: the tuned weight stays beside the arm's switch
    assert model["options"]["unc_weight"] == 0.5 and not model["options"]["quality_gate"]
    assert train["lr"] == 0.003 and train["select_metric"] == "MAE"  # the source's choice
    assert train["epochs"] == 2 and a0.content["train_config"]["epochs"] == 1
    assert len([c for c in done.cells if c.arm == "a-no-dropout"]) == 4  # 2 seeds x (1 + 1)
    keys = {c.key for c in done.cells if c.arm == "a-no-dropout"}
    for other in (tuned(trials=5), tuned(lr=0.004)):  # another tuning: other cells
        again = plan.make_plan(study, data, {("d", "a"): other})
        assert not keys & {c.key for c in again.cells if c.arm == "a-no-dropout"}


def test_merged_goes_into_tables_and_leaves_its_inputs_alone() -> None:
    base = {"a": 1, "o": {"x": 1, "y": 2}}
    assert plan.merged(base, {"o": {"y": 3}, "b": 2}) == {"a": 1, "o": {"x": 1, "y": 3}, "b": 2}
    assert plan.merged(base, {"o": 5}) == {"a": 1, "o": 5}
    assert base == {"a": 1, "o": {"x": 1, "y": 2}}


def test_the_note_says_whose_setting_it_took(tmp_path: Path) -> None:
    note = tunespec.budget_note(load(tmp_path).arms)
    assert note.startswith("Tuned before training (a): 4 trials")
    assert note.endswith(
        "Not tuned (no budget of their own), trained at a tuned arm's setting with their own "
        "config over it: a-no-dropout took a's setting."
    )


def test_adding_the_arm_keeps_the_old_cells_and_tunings(tiny_h5: Path, tmp_path: Path) -> None:
    before, after = load(tmp_path, BASE), load(tmp_path, BASE + TAKEN)
    data = info(tiny_h5)
    old = plan.make_plan(before, data, {("d", "a"): tuned()})
    out = tmp_path / "out"
    cells.write_json(out / plan.STUDY_JSON, old.doc())
    new = plan.make_plan(after, data, {("d", "a"): tuned()})
    with pytest.raises(plan.StudyChangedError) as err:  # a changed file needs --force ...
        plan.check_unchanged(out, new, force=False)
    assert "arms.a-no-dropout.settings_from added" in err.value.message
    assert "invalidates 0 of its 8 cells and adds 4" in err.value.message
    assert plan.check_unchanged(out, new, force=True) == []  # ... and keeps every cell
    same = [t.identity for t in tunearm.plan_tunings(before, data, out)]
    assert [t.identity for t in tunearm.plan_tunings(after, data, out)] == same
    # before the source's tuning finished, the change says the arm's cells wait for it
    with pytest.raises(plan.StudyChangedError, match="as do those of the arms at their "
                       r"settings \(a-no-dropout on d\)"):  # fmt: skip
        plan.check_unchanged(out, plan.make_plan(after, data), force=False)


def test_the_mechanism_study_only_adds_arms_at_qamoes_setting() -> None:
    """The running study's tunings and cells are those of its file without the added arms."""
    from tests.study.test_project_studies import stand_in

    raw = tomllib.loads(MECHANISM.read_text(encoding="utf-8"))
    added = [n for n, a in raw["arms"].items() if "settings_from" in a]
    assert added == ["qamoe-no-gate"]
    assert raw["arms"]["qamoe-no-gate"]["config"] == {"model": {"options": {"quality_gate": False}}}
    full = spec.load_study(MECHANISM)
    without = spec.parse_study(
        {**raw, "arms": {n: a for n, a in raw["arms"].items() if n not in added}}, MECHANISM
    )
    for arm in without.arms:
        assert full.arm(arm.name) == arm
    data = {ds.name: stand_in(ds) for ds in full.datasets}
    results = {
        ("std-token", a.name): plan.Tuned({"manifest": a.name, "trials": 20}, {}, {})
        for a in full.arms
        if a.tune is not None
    }
    old = {c.key for c in plan.make_plan(without, data, results).cells}
    new = plan.make_plan(full, data, results)
    assert old <= {c.key for c in new.cells}
    assert {c.arm for c in new.cells if c.key not in old} == {"qamoe-no-gate"}
    gate = next(c for c in new.cells if c.arm == "qamoe-no-gate" and c.kind == "train")
    assert gate.content["model_config"]["options"]["quality_gate"] is False
    assert gate.content["tuning"] == {"manifest": "qamoe", "trials": 20}
