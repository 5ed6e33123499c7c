"""constant_r and oracle_r rows (issue 32) appear in the report's controls tables only: never
among the models' rows, never as curves in a figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qamoe_core.evaluation.results import make_table
from qamoe_core.report.build import build_report, draw_figures
from qamoe_core.report.plots import SCREEN


def table() -> pd.DataFrame:
    base = {"run": "qa", "model": "qamoe", "dataset": "d", "split": "test", "seed": 0,
            "modalities": "text+audio+vision"}  # fmt: skip
    rows = []
    for variant, shift in (("normal", 0.0), ("quality_shuffle", -0.02), ("constant_r", -0.05),
                           ("oracle_r", 0.04)):  # fmt: skip
        rows.append(base | {"axis": "clean", "level": 0.0, "variant": variant,
                            "metric": "Acc_2", "value": 0.8 + shift})  # fmt: skip
        for level in (0.0, 0.4, 0.8):
            rows.append(base | {"axis": "missing", "level": level, "variant": variant,
                                "metric": "Acc_2", "value": 0.8 + shift - 0.2 * level})  # fmt: skip
    rows.append(base | {"axis": "drop", "level": 1.0, "modalities": "audio", "variant": "oracle_r",
                        "metric": "Acc_2", "value": 0.7})  # fmt: skip
    rows.append(base | {"axis": "drop", "level": 1.0, "modalities": "audio", "variant": "normal",
                        "metric": "Acc_2", "value": 0.68})  # fmt: skip
    return make_table(rows)


def test_r_controls_are_in_the_controls_tables_only(tmp_path: Path) -> None:
    rep = build_report(table(), tmp_path / "rep", formats=("png",))
    md = rep.markdown.read_text().replace("\\", "")  # Markdown's escapes off: plain names
    summary = md.split("## Summary\n")[1].split("\n## ")[0]
    heading = "## Summary: quality_shuffle, constant_r, oracle_r controls\n"
    controls = md.split(heading)[1].split("\n## ")[0]
    for name in ("constant_r", "oracle_r", "quality_shuffle"):
        assert name not in summary.split("|", 1)[1]
        assert f"| {name} |" in controls
    assert "oracle_r: with r set from each sample's true corruption" in controls
    fixed = md.split("## Fixed-missing protocol: " + heading[12:])[1].split("\n## ")[0]
    assert "| oracle_r |" in fixed and "| normal |" not in fixed


def test_r_controls_draw_no_curve() -> None:
    figures = draw_figures(table(), ["Acc_2"], False, SCREEN)
    labels = [
        str(line.get_label()) for _, _, fig in figures for ax in fig.axes for line in ax.lines
    ]
    assert any("quality_shuffle" in lab for lab in labels)  # the shuffle keeps its curve
    assert not any("constant_r" in lab or "oracle_r" in lab for lab in labels)
