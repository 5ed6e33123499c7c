"""The validation score each training selected its epoch on, in the paper table (column
``valid (selected)``) and the summary: read from the runs' metrics.json, mean ± sd over model
seeds, compared with no arm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qamoe_core.study import cells, plan, selection, spec, table
from qamoe_core.study.plan import StudyError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "studies" / "tiny.toml"
SCORES = {
    **{("qamoe", s): v for s, v in enumerate([0.80, 0.84, 0.86])},
    **{("early-fusion", s): v for s, v in enumerate([0.90, 0.91, 0.95])},
}


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[plan.Plan, Path]:
    """The tiny study's plan, with a metrics.json in each training cell's run."""
    info = spec.DataInfo(Path("t.h5"), "c" * 64, ("text", "audio", "vision"), "mosi",
                         ("train", "valid", "test"))  # fmt: skip
    made = plan.make_plan(spec.load_study(TINY), {"tiny": info})
    for cell in made.cells:
        if cell.kind == "train":
            score = SCORES[(cell.arm, cell.seed)]
            metrics = {
                "select_metric": "MAE",
                "val_score": score,
                "best_epoch": 2,
                "val": {"0.5": {"MAE": score, "loss": 2 * score}},
                "test_clean": {"MAE": 99.0},  # never read
            }
            run = cells.cell_dir(tmp_path, cell.key) / cells.RUN
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(metrics))
    return made, tmp_path


def test_each_training_selection_is_read(tiny: tuple[plan.Plan, Path]) -> None:
    found = selection.read(*tiny)
    assert len(found) == 6
    assert {(s.arm, s.seed): s.score for s in found} == SCORES
    assert all(s.metric == "MAE" and s.levels == ("0.5",) and s.best_epoch == 2 for s in found)
    assert math.isclose(found[0].loss, 2 * found[0].score)


def test_the_summary_gives_mean_and_sd_over_seeds(tiny: tuple[plan.Plan, Path]) -> None:
    by_arm = {r["arm"]: r for r in selection.summary(selection.read(*tiny))}
    q = [0.80, 0.84, 0.86]
    assert math.isclose(by_arm["qamoe"]["mean"], np.mean(q))
    assert math.isclose(by_arm["qamoe"]["sd"], np.std(q, ddof=1))
    assert math.isclose(by_arm["qamoe"]["loss_mean"], 2 * np.mean(q))
    assert by_arm["qamoe"]["metric"] == "MAE" and by_arm["qamoe"]["levels"] == ["0.5"]
    assert [s["seed"] for s in by_arm["early-fusion"]["seeds"]] == [0, 1, 2]
    json.dumps(selection.summary(selection.read(*tiny)), allow_nan=False)


def test_the_column_joins_its_metric_and_is_not_compared(tiny: tuple[plan.Plan, Path]) -> None:
    found = selection.read(*tiny)
    values = pd.DataFrame(
        [
            {"dataset": "tiny", "arm": arm, "seed": s, "column": "clean", "metric": "MAE",
             "value": v}
            for arm, vals in (("qamoe", [1.0, 1.1, 1.2]), ("early-fusion", [1.3, 1.2, 1.4]))
            for s, v in enumerate(vals)
        ]
    )  # fmt: skip
    df = pd.concat([table.summarize(values, "early-fusion"), selection.rows(found, "early-fusion")])
    md = table.markdown(df, "T", "early-fusion", 3, selection.note(found))
    assert "| arm | clean | valid (selected) |" in md
    assert "| qamoe | 1.100 ± 0.100 | 0.833 ± 0.031 |" in md
    assert "| qamoe | valid (selected) |" not in md  # no comparison row for it
    assert "| qamoe | clean |" in md
    assert "selected its epoch on" in md and "mixed level 0.5" in md
    assert "Mean ± sd over 3 model seeds" in md
    tex = table.latex(df, "early-fusion", 3)
    assert "valid (selected)" in tex and tex.count("n/a") == 0
    csv = table.csv_text(df)
    assert "tiny,valid (selected),MAE,qamoe,3,0.8333333333" in csv


def test_arms_that_select_on_other_levels_are_named() -> None:
    def one(arm: str, levels: tuple[str, ...]) -> selection.Selected:
        return selection.Selected("d", arm, 0, "MAE", levels, 1.0, 1.0, 1)

    text = selection.note([one("a", ("0.5",)), one("b", ("0", "0.5"))])
    assert "a level 0.5; b levels 0, 0.5" in text


def test_a_run_without_its_metrics_is_an_error(tiny: tuple[plan.Plan, Path]) -> None:
    made, out = tiny
    first = next(c for c in made.cells if c.kind == "train")
    (cells.cell_dir(out, first.key) / cells.RUN / "metrics.json").write_text("{")
    with pytest.raises(StudyError) as info:
        selection.read(made, out)
    assert "metrics.json" in info.value.message and first.key in info.value.hint
