"""A protocol for some arms only (``arms``) and one that keeps every sample's prediction
(``per_sample``): what the project's studies need for specialists (each evaluated at its own
level) and for QA-MoE's per-sample quality checks. No cell runs here."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from qamoe_core.study import cells, outputs, plan, spec, table
from qamoe_core.study.spec import StudyFileError

STUDY = """
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[arms.a]
model = "qamoe"
[arms.b]
model = "early-fusion"
[arms.spec]
model = "qamoe"
config = { train = { train_levels = [0.6, 0.6], clean_fraction = 0.0, val_levels = [0.6] } }
[protocols.main]
axes = ["missing"]
levels = [0.0, 0.5]
[protocols.own-level]
axes = ["mixed"]
levels = [0.6]
shuffle = false
arms = ["spec"]
[protocols.only-text]
axes = ["mixed"]
levels = [0.0, 0.5]
modalities = ["text"]
shuffle = false
per_sample = true
arms = ["a"]
[compare]
reference = "b"
"""

INFO = spec.DataInfo(
    Path("d.h5"), "d" * 64, ("text", "audio", "vision"), "mosi", ("train", "valid", "test")
)


def load(tmp_path: Path, text: str = STUDY) -> spec.Study:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return spec.load_study(path)


def test_a_protocol_sweeps_only_its_arms(tmp_path: Path) -> None:
    study = load(tmp_path)
    p = plan.make_plan(study, {"d": INFO})
    sweeps = {(c.arm, c.protocol) for c in p.cells if c.kind == "sweep"}
    assert sweeps == {
        ("a", "main"),
        ("b", "main"),
        ("spec", "main"),
        ("spec", "own-level"),
        ("a", "only-text"),
    }
    assert sum(c.kind == "train" for c in p.cells) == 3 * 2  # every arm still trains


def test_per_sample_keeps_the_samples_in_the_cell(tmp_path: Path) -> None:
    study = load(tmp_path)
    p = plan.make_plan(study, {"d": INFO})
    for cell in (c for c in p.cells if c.kind == "sweep"):
        fresh = plan.cell_doc(p, cell, tmp_path / "out")["fresh"]
        if cell.protocol == "only-text":
            assert fresh[fresh.index("--per-sample") + 1] == f"cells/{cell.key}/{cells.SAMPLES}"
            assert cell.content["eval_config"]["per_sample"] is True
        else:
            assert "--per-sample" not in fresh
            assert cell.content["eval_config"]["per_sample"] is False


def test_the_new_keys_leave_an_older_studys_content_unchanged(tmp_path: Path) -> None:
    # A folder made before `arms` and `per_sample` existed must not read as changed.
    text = STUDY.split("[protocols.own-level]")[0] + '[compare]\nreference = "b"\n'
    doc = load(tmp_path, text).to_doc()
    assert set(doc["protocols"]["main"]) >= {"axes", "levels", "shuffle"}
    assert "arms" not in doc["protocols"]["main"]
    assert "per_sample" not in doc["protocols"]["main"]
    full = load(tmp_path).to_doc()["protocols"]
    assert full["only-text"]["arms"] == ["a"] and full["only-text"]["per_sample"] is True


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('arms = ["spec"]', 'arms = ["specc"]', ["'specc'", "Did you mean 'spec'"]),
        ('arms = ["spec"]', "arms = []", ["non-empty list"]),
        ('arms = ["spec"]', "arms = 3", ["non-empty list", "3"]),
        ('arms = ["spec"]', 'arms = ["spec", "spec"]', ["twice"]),
        ("per_sample = true", 'per_sample = "yes"', ["[protocols.only-text]", "per_sample"]),
        (
            "levels = [0.0, 0.5]\n[protocols.own-level]",
            'levels = [0.0, 0.5]\narms = ["a", "b"]\n[protocols.own-level]',
            ["[protocols.main]", "clean column", "spec"],
        ),
    ],
)
def test_bad_arms_and_per_sample_are_refused(
    tmp_path: Path, old: str, new: str, words: list[str]
) -> None:
    text = STUDY.replace(old, new, 1)
    assert text != STUDY
    with pytest.raises(StudyFileError) as info:
        load(tmp_path, text)
    said = info.value.message + " " + (info.value.hint or "")
    assert "\n" not in info.value.message
    for word in words:
        assert word in said, (word, said)


def test_a_string_names_one_arm(tmp_path: Path) -> None:
    study = load(tmp_path, STUDY.replace('arms = ["spec"]', 'arms = "spec"'))
    own = next(p for p in study.protocols if p.name == "own-level")
    assert own.arms == ("spec",) and own.covers("spec") and not own.covers("sp")


def test_the_outputs_link_the_samples_beside_the_sweep(tmp_path: Path) -> None:
    study = load(tmp_path)
    p = plan.make_plan(study, {"d": INFO})
    out = tmp_path / "out"
    for cell in p.cells:  # stand-ins for finished cells: only the files _sweep_out reads
        folder = cells.cell_dir(out, cell.key)
        folder.mkdir(parents=True)
        if cell.kind == "sweep":
            (folder / cells.RESULTS).write_text(f"{cell.label},{cell.protocol}\n")
            if cell.protocol == "only-text":
                (folder / cells.SAMPLES).write_bytes(b"samples of " + cell.label.encode())
    outputs._sweep_out(p, out, "")
    link = out / "sweeps" / "a-s1.only-text.samples.csv.gz"
    assert link.is_symlink() and link.read_bytes() == b"samples of a-s1"
    assert not (out / "sweeps" / "b-s1.only-text.samples.csv.gz").exists()
    assert (out / "sweeps" / "spec-s0.own-level.csv").read_text() == "spec-s0,own-level\n"
    assert not (out / "sweeps" / "b-s0.own-level.csv").exists()
    # A study without the per-sample protocol removes the stale link on its next outputs.
    fewer = plan.make_plan(load(tmp_path, STUDY.replace("per_sample = true\n", "")), {"d": INFO})
    for cell in fewer.cells:
        folder = cells.cell_dir(out, cell.key)
        folder.mkdir(parents=True, exist_ok=True)
        if cell.kind == "sweep":
            (folder / cells.RESULTS).write_text("x\n")
    outputs._sweep_out(fewer, out, "")
    assert not link.is_symlink() and not link.exists()


def test_a_column_without_the_reference_has_no_comparison() -> None:
    values = pd.DataFrame(
        [
            {"dataset": "d", "arm": arm, "seed": s, "column": col, "metric": "MAE", "value": v}
            for arm, col, v in (
                ("b", "clean", 1.0),
                ("a", "clean", 0.9),
                ("spec", "clean", 0.95),
                ("spec", "own-level", 1.2),
            )
            for s, v in ((0, v), (1, v + 0.02))
        ]
    )
    df = table.summarize(values, "b")
    own = df[df["column"] == "own-level"]
    assert list(own["arm"]) == ["spec"] and math.isnan(own["difference"].iloc[0])
    clean_a = df[(df["column"] == "clean") & (df["arm"] == "a")]
    assert clean_a["difference"].iloc[0] == pytest.approx(-0.1)
    text = table.markdown(df, "t", "b", 3)
    row_b = next(line for line in text.splitlines() if line.startswith("| b (reference)"))
    assert row_b.endswith("|  |")  # b has no own-level value: an empty cell, not an error
    comparisons = text.split("| arm | column |")[1].splitlines()
    compared = [line for line in comparisons if line.startswith("| spec | ")]
    assert [line.split(" | ")[1] for line in compared] == ["clean"]  # no n/a row for own-level
    tex = table.latex(df, "b", 3)
    delta = next(line for line in tex.splitlines() if line.startswith("$\\Delta$ spec"))
    assert delta.endswith("&  \\\\")  # own-level: empty, not a comparison
