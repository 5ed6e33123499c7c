"""The report's figures as a reader gets them: one-, two- and three-axis reports of more than
ten runs, in the screen and paper styles. Every legend entry and label lies inside the
figure (measured with matplotlib's renderer, and in the saved PNG), nothing sticks out of
it, and each run keeps one look in every figure of a report."""

from __future__ import annotations

import io
import struct
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from qamoe_cli.main import main
from qamoe_core.evaluation.results import SHUFFLED, make_table, measured, save
from qamoe_core.report.build import build_report, draw_figures
from qamoe_core.report.plots import (
    COLOURS,
    PAPER,
    SCREEN,
    Palette,
    Style,
    encode,
    get_style,
    run_style,
)

AXES = ("mixed", "missing", "noise")
LEVELS = (0.0, 0.3, 0.6, 0.9)
RUNS = [f"model-{i:02d}-{'long-ablation-name' if i % 4 == 0 else 'x'}" for i in range(12)]


def rows_for(run: str, axes: tuple[str, ...], slope: float, diagnostics: bool) -> list[dict]:
    """A small sweep of one run on ``axes``: Acc_2 over two seeds, fixed-missing rows; the
    diagnostic runs add quality scores, expert usage and the quality_shuffle control."""
    base = {"run": run, "model": "qamoe", "dataset": "d", "split": "test"}
    mods = "text+audio+vision"
    out: list[dict] = []
    variants = ("normal", SHUFFLED) if diagnostics else ("normal",)
    for variant, axis, level, seed in (
        (v, a, lv, s) for v in variants for a in axes for lv in LEVELS for s in (0, 1)
    ):
        acc = 0.8 + slope * level + 0.01 * seed - (0.05 * level if variant != "normal" else 0)
        values = {"Acc_2": acc}
        if diagnostics:
            values |= {f"quality_{m}": 0.9 - 0.5 * level for m in ("text", "audio", "vision")}
            share = np.abs(np.sin(np.arange(8) + 3 * level)) + 0.1
            values |= {f"expert_usage_{e}": float(u) for e, u in enumerate(share / share.sum())}
        for metric, value in values.items():
            out.append(base | {"axis": axis, "level": level, "modalities": mods, "seed": seed}
                       | {"variant": variant, "metric": metric, "value": value})  # fmt: skip
    for dropped, acc in (("audio+vision", 0.78), ("text", 0.6), ("text+vision", 0.55)):
        out.append(base | {"axis": "drop", "level": 1.0, "modalities": dropped, "seed": 0}
                   | {"variant": "normal", "metric": "Acc_2", "value": acc})  # fmt: skip
    return out


def many_runs(n_axes: int) -> pd.DataFrame:
    rows: list[dict] = []
    for i, run in enumerate(RUNS):
        rows += rows_for(run, AXES[:n_axes], -0.1 - 0.02 * i, diagnostics=i == 7)
    return make_table(rows)


def inside(box: Bbox, outer: Bbox, tol: float = 1.0) -> bool:
    return bool(
        box.x0 >= outer.x0 - tol
        and box.y0 >= outer.y0 - tol
        and box.x1 <= outer.x1 + tol
        and box.y1 <= outer.y1 + tol
    )


def overlap(a: Bbox, b: Bbox, tol: float = 0.5) -> bool:
    return bool(a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol)


def labels_of(fig: Figure) -> list[Text]:
    """The texts a reader needs: titles, axis labels, legend entries."""
    texts = [fig._suptitle, fig._supylabel]  # type: ignore[attr-defined]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    for leg in fig.legends:
        texts += list(leg.get_texts())
    return [t for t in texts if t is not None and t.get_visible() and t.get_text()]


def check_fits(fig: Figure, style: Style, stem: str) -> None:
    """Every legend, legend entry and label inside the figure; nothing drawn outside it; the
    legend clear of every panel; panel titles clear of other panels; tick labels apart."""
    with style.context():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for leg in fig.legends:
            box = leg.get_window_extent(renderer)
            assert inside(box, fig.bbox), (stem, box, fig.bbox)
            panels = [ax.get_window_extent(renderer) for ax in fig.axes if ax.axison]
            assert not any(overlap(box, p) for p in panels), stem
        for text in labels_of(fig):
            box = text.get_window_extent(renderer)
            assert inside(box, fig.bbox), (stem, text.get_text(), box, fig.bbox)
        # what bbox_inches="tight" would keep: nothing of the figure lies outside its page
        tight = fig.get_tightbbox(renderer)
        assert inside(tight, fig.bbox_inches, tol=0.02), (stem, tight, fig.bbox_inches)
        for ax in fig.axes:
            title = ax.title.get_window_extent(renderer)
            others = [o.get_window_extent(renderer) for o in fig.axes if o is not ax and o.axison]
            assert not any(overlap(title, o) for o in others), (stem, ax.get_title())
            ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            assert not any(overlap(a, b) for a, b in combinations(ticks, 2)), (stem, "ticks")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("n_axes", [1, 2, 3])
@pytest.mark.parametrize("name", ["screen", "paper"])
def test_every_legend_entry_inside_every_figure(n_axes: int, name: str) -> None:
    style = get_style(name)
    df = many_runs(n_axes)
    figures = draw_figures(df, ["Acc_2"], False, style)
    stems = [stem for stem, _, _ in figures]
    assert stems[:2] == ["reliability_Acc_2", "quality"] and "fixed_missing" in stems
    for stem, _, fig in figures:
        check_fits(fig, style, stem)
    # The saved PNG is the whole figure at the style's resolution, and a tight crop would
    # not have to grow it: nothing was cut off at its edges.
    fig = figures[0][2]
    png = encode(fig, ("png",), style)["png"]
    w, h = fig.get_size_inches() * style.dpi
    assert np.allclose(png_size(png), (w, h), atol=1)  # matplotlib rounds down
    buf = io.BytesIO()
    with style.context():
        fig.savefig(buf, format="png", dpi=style.dpi, bbox_inches="tight", pad_inches=0)
    tight_w, tight_h = png_size(buf.getvalue())
    assert tight_w <= round(w) + 1 and tight_h <= round(h) + 1
    if name == "paper":  # one column for one panel, two for more; serif; no titles
        assert fig.get_figwidth() == (3.3 if n_axes == 1 else 6.9)
        assert fig.get_suptitle() == ""
        assert "serif" in str(fig.legends[0].get_texts()[0].get_fontfamily())


def colour_of(handle: Any) -> str:
    """A legend handle's colour: a bar's face, a line's colour."""
    return to_hex(handle.get_facecolor() if isinstance(handle, Patch) else handle.get_color())


def test_each_run_keeps_its_look_in_every_figure() -> None:
    df = many_runs(2)
    palette = Palette(measured(df))
    looks = [palette.style(k) for k in palette.keys]
    assert len(looks) == 12
    assert len({(s.color, str(s.dash)) for s in looks}) == 12  # twelve runs, twelve looks
    assert len({(s.color, s.hatch) for s in looks}) == 12
    assert len(set(COLOURS)) == len(COLOURS) == 7 and run_style(7).color == run_style(0).color
    assert run_style(7).dash != run_style(0).dash and run_style(7).hatch != run_style(0).hatch
    colours: dict[str, set[str]] = {}
    for stem, _, fig in draw_figures(df, ["Acc_2"], False, SCREEN):
        for leg in fig.legends:
            for text, handle in zip(leg.get_texts(), leg.legend_handles, strict=True):
                if text.get_text() in RUNS:
                    colours.setdefault(text.get_text(), set()).add(colour_of(handle))
        if stem.startswith("reliability_"):  # the lines drawn match the legend
            for line in fig.axes[0].lines:
                if line.get_label() in RUNS:
                    colours[line.get_label()].add(to_hex(line.get_color()))
    assert set(colours) == set(RUNS)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours[RUNS[0]] == colours[RUNS[7]] == {to_hex(COLOURS[0])}


def test_report_tables_keep_controls_apart(tmp_path: Path) -> None:
    df = many_runs(1)
    rep = build_report(df, tmp_path / "rep", formats=("png",), style="paper", titles=True)
    md = rep.markdown.read_text()
    summary = md.split("## Summary\n")[1].split("\n## ")[0]
    controls = md.split("## Summary: quality_shuffle control\n")[1].split("\n## ")[0]
    assert SHUFFLED not in summary.split("|", 1)[1]  # no control row among the models
    assert summary.count(f"| {RUNS[7]} |") == 1 and controls.count(f"| {RUNS[7]} |") == 1
    assert controls.count("| model-") == 1  # the one run that carries the control
    assert f"| {RUNS[0]} | mixed | Acc\\_2 | 0.805 | 0.760 |" in summary  # three decimals
    assert "## Fixed-missing protocol: quality_shuffle control" not in md  # none recorded
    png = rep.images["reliability_Acc_2"].read_bytes()
    assert png_size(png)[0] == round(3.3 * PAPER.dpi)


def test_expert_usage_without_the_normal_variant_draws_no_usage_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by the fuzz harness: routing shares of the shuffle control alone ended `qamoe
    # report` in the catch-all "zero-size array to reduction operation fmax".
    table = make_table(rows_for("qa", ("mixed",), -0.2, diagnostics=True))
    usage = table["metric"].str.startswith("expert_usage_")
    table = table[~(usage & (table["variant"] == "normal"))]
    path = save(table, tmp_path / "r.csv")
    out = tmp_path / "rep"
    assert main(["report", str(path), "--out", str(out), "--figures", "png"]) == 0, (
        capsys.readouterr().err
    )
    assert (out / "report.html").is_file() and not list(out.glob("expert_usage*"))


def test_cli_style_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = save(many_runs(1)[lambda d: d["run"].isin(RUNS[6:8])], tmp_path / "r.csv")
    out = tmp_path / "rep"
    args = ["report", str(csv), "--out", str(out), "--figures", "png"]
    assert main([*args, "--style", "paper", "--titles"]) == 0
    assert png_size((out / "quality.png").read_bytes())[0] == round(6.9 * PAPER.dpi)
    assert main([*args, "--style", "papr", "--force"]) == 2
    err = capsys.readouterr().err
    assert "'style' parameter must be one of screen, paper" in err and "'paper'" in err
