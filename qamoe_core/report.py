"""Reliability-curve reports from one or more results tables (see ``results.py``).

A report folder holds::

    report.html            one self-contained page (images embedded as base64, inline CSS)
    report.md              the same content in Markdown, linking the PNGs beside it
    reliability_<metric>.png   metric vs level, one panel per spectrum axis, one line per run,
                               a band of ±1 std over seeds (corruption seeds; model seeds
                               too when pooled), dashed = quality shuffled
    quality.png            mean quality score r_m vs level, one panel per modality
    expert_usage_<run>.png heatmap of the routing share per expert vs level, per axis
    fixed_missing.png      the metric for every kept subset of modalities, per run
    summary.csv, fixed_missing.csv, curves.csv   the numbers behind the figures
    .qamoe-report          marker: only a folder holding it is replaced with ``force``

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (the Agg canvas, never
pyplot), so building a report changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qamoe_core import MODALITIES, __version__, rundir
from qamoe_core.atomic import same_file
from qamoe_core.errors import InputError
from qamoe_core.metrics import higher_is_better
from qamoe_core.results import (
    QUALITY_PREFIX,
    SPECTRUM_AXES,
    USAGE_PREFIX,
    check_metric,
    curves,
    default_metric,
    fixed_missing,
    summarize,
    validate,
)

log = logging.getLogger(__name__)

MARKER = ".qamoe-report"
AXIS_TITLES = {
    "mixed": "mixed: steps dropped + noise",
    "missing": "missing: steps dropped",
    "noise": "noise: Gaussian, × train std",
}
AXIS_STYLES = {"mixed": "-", "missing": "--", "noise": ":"}
# Lines that differ in these columns get their own colour; variant is shown by the dash.
IDENTITY = ("run", "dataset", "split", "modalities")
DPI = 110  # ~900 px wide for a 3-panel figure: sharp in a browser, small in base64


@dataclass
class Report:
    """What :func:`build_report` wrote; paths are inside ``out_dir``."""

    out_dir: Path
    html: Path
    markdown: Path
    images: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "html": str(self.html),
            "markdown": str(self.markdown),
            "images": {k: str(v) for k, v in self.images.items()},
            "tables": {k: str(v) for k, v in self.tables.items()},
            "metrics": self.metrics,
            "runs": self.runs,
        }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


class _Palette:
    """One colour per line identity, stable across every figure of a report."""

    def __init__(self, df: pd.DataFrame) -> None:
        # Lines are drawn for spectrum axes only; drop rows name kept subsets, not lines.
        lines = df[df["axis"].isin(SPECTRUM_AXES)]
        lines = lines if not lines.empty else df
        keys = lines[list(IDENTITY)].drop_duplicates().itertuples(index=False, name=None)
        self.keys = list(keys)
        self.colors = {k: f"C{i % 10}" for i, k in enumerate(self.keys)}
        # Only the columns that vary appear in labels.
        self.varying = [c for i, c in enumerate(IDENTITY) if len({k[i] for k in self.keys}) > 1]
        if "run" not in self.varying:
            self.varying.insert(0, "run")

    def color(self, key: tuple[str, ...]) -> str:
        return self.colors.get(key, "k")

    def label(self, key: tuple[str, ...], variant: str = "normal") -> str:
        parts = dict(zip(IDENTITY, key, strict=True))
        text = parts["run"]
        extra = [parts[c] for c in self.varying if c != "run"]
        if extra:
            text += f" [{', '.join(extra)}]"
        if variant == "quality_shuffle":
            text += " (quality shuffled)"
        return text


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # Constrained layout already fits everything; "tight" bbox would draw the figure twice.
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _legend(fig: Figure, axes: Sequence[Any]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",  # constrained layout makes room for it
            ncol=min(3, len(handles)),
            frameon=False,
        )


def plot_reliability(df: pd.DataFrame, metric: str, palette: _Palette) -> Figure | None:
    """Metric vs level, one panel per spectrum axis present; None if no spectrum rows."""
    c = curves(df, metric)
    c = c[c["axis"].isin(SPECTRUM_AXES)]
    axes_present = [a for a in SPECTRUM_AXES if a in set(c["axis"])]
    if not axes_present:
        return None
    n = len(axes_present)
    fig = Figure(figsize=(4.2 * n, 4.0), layout="constrained")
    axs = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    for ax, axis in zip(axs, axes_present, strict=True):
        sub = c[c["axis"] == axis]
        for (*ident, variant), grp in sub.groupby([*IDENTITY, "variant"], sort=False):
            key = tuple(ident)
            grp = grp.sort_values("level")
            x, y, s = grp["level"].to_numpy(), grp["mean"].to_numpy(), grp["std"].to_numpy()
            color = palette.color(key)
            dashed = variant == "quality_shuffle"
            ax.plot(
                x,
                y,
                color=color,
                ls="--" if dashed else "-",
                marker="o",
                ms=3,
                lw=1.6,
                label=palette.label(key, variant),
            )
            if (s > 0).any():
                ax.fill_between(x, y - s, y + s, color=color, alpha=0.10 if dashed else 0.18, lw=0)
        ax.set_title(AXIS_TITLES[axis], fontsize=10)
        ax.set_xlabel("level (0 = clean, 1 = gone)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    axs[0].set_ylabel(f"{metric} ({direction})")
    fig.suptitle(f"Reliability curves: {metric} (band: ±1 std over seeds)")
    _legend(fig, axs)
    return fig


def plot_quality(df: pd.DataFrame, palette: _Palette) -> Figure | None:
    """Mean quality score r_m vs level, one panel per modality; None without quality rows."""
    mods = [m for m in MODALITIES if f"{QUALITY_PREFIX}{m}" in set(df["metric"])]
    if not mods:
        return None
    fig = Figure(figsize=(4.2 * len(mods), 3.8), layout="constrained")
    axs = fig.subplots(1, len(mods), sharey=True, squeeze=False)[0]
    for ax, m in zip(axs, mods, strict=True):
        c = curves(df, f"{QUALITY_PREFIX}{m}")
        c = c[c["axis"].isin(SPECTRUM_AXES) & (c["variant"] == "normal")]
        c = c.assign(order=c["axis"].map(SPECTRUM_AXES.index)).sort_values("order", kind="stable")
        for (*ident, axis), grp in c.groupby([*IDENTITY, "axis"], sort=False):
            key = tuple(ident)
            grp = grp.sort_values("level")
            ax.plot(
                grp["level"],
                grp["mean"],
                color=palette.color(key),
                ls=AXIS_STYLES[axis],
                marker="o",
                ms=3,
                label=f"{palette.label(key)} · {axis}",
            )
        ax.set_title(f"{m}", fontsize=10)
        ax.set_xlabel("level")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("mean quality score r = 1/(1+σ²)")
    fig.suptitle("Quality scores vs level (should fall as the level rises)")
    _legend(fig, axs)
    return fig


def plot_expert_usage(df: pd.DataFrame, run: str) -> Figure | None:
    """Routing share per expert (columns) vs level (rows), one panel per axis and variant."""
    sub = df[(df["run"] == run) & df["metric"].str.startswith(USAGE_PREFIX)]
    sub = sub[sub["axis"].isin(SPECTRUM_AXES)]
    if sub.empty:
        return None
    sub = sub.assign(expert=sub["metric"].str.slice(len(USAGE_PREFIX)).astype(int))
    axes_present = [a for a in SPECTRUM_AXES if a in set(sub["axis"])]
    variants = [v for v in ("normal", "quality_shuffle") if v in set(sub["variant"])]
    vmax = float(sub["value"].max())
    fig = Figure(figsize=(4.0 * len(axes_present), 3.2 * len(variants) + 0.6), layout="constrained")
    axs = fig.subplots(len(variants), len(axes_present), squeeze=False)
    image = None
    for i, variant in enumerate(variants):
        for j, axis in enumerate(axes_present):
            ax = axs[i][j]
            cell = sub[(sub["axis"] == axis) & (sub["variant"] == variant)]
            grid = cell.pivot_table(index="level", columns="expert", values="value", aggfunc="mean")
            image = ax.imshow(
                grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax, origin="lower"
            )
            ax.set_xticks(range(grid.shape[1]), [str(e) for e in grid.columns])
            step = max(1, len(grid.index) // 6)
            ticks = list(range(0, len(grid.index), step))
            ax.set_yticks(ticks, [f"{grid.index[t]:.2g}" for t in ticks])
            title = axis if variant == "normal" else f"{axis}, quality shuffled"
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("expert")
            ax.set_ylabel("level")
    if image is not None:
        fig.colorbar(image, ax=axs, label="share of routing weight", shrink=0.9)
    fig.suptitle(f"Expert usage: {run}")
    return fig


def plot_fixed_missing(table: pd.DataFrame, metric: str, palette: _Palette) -> Figure | None:
    """Grouped bars: the metric per kept subset, one colour per run (normal variant)."""
    if table.empty:
        return None
    rows = table[table["variant"] == "normal"]
    subsets = [c for c in table.columns if c not in ("run", "variant")]
    if rows.empty or not subsets:
        return None
    fig = Figure(figsize=(max(5.0, 1.0 * len(subsets) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    x = np.arange(len(subsets))
    for i, (_, r) in enumerate(rows.iterrows()):
        key = next((k for k in palette.keys if k[0] == r["run"]), (r["run"], "", "", ""))
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            [r[s] for s in subsets],
            width,
            color=palette.color(key),
            label=r["run"],
        )
    ax.set_xticks(x, [s.replace("+", "\n+") for s in subsets], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_xlabel("modalities kept")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Fixed-missing protocol: {metric}")
    return fig


# -- tables -------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{value:.4f}"
    return str(value)


def _display_summary(summary: pd.DataFrame) -> pd.DataFrame:
    cols = ["run", "model", "dataset", "split", "axis", "modalities", "variant", "metric"]
    cols = [c for c in cols if c in ("run", "axis", "metric") or summary[c].nunique() > 1]
    out = summary[[*cols, "clean", "mean", "area", "area_over_clean", "n_levels", "n_seeds"]]
    return out.rename(columns={"area_over_clean": "area/clean", "n_levels": "levels"})


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional 'tabulate')."""
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = [
        "| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
        for row in df.itertuples(index=False, name=None)
    ]
    return "\n".join([head, rule, *body])


def html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False, name=None)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto;display:block;margin:0.5rem 0}
table{border-collapse:collapse;font-size:0.85rem;margin:0.5rem 0}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:0.9rem}
"""


# -- the report -----------------------------------------------------------------------------


def _own(name: str) -> bool:
    """The entries a report writes (what --force may replace; anything else is kept)."""
    return name in (MARKER, "report.html", "report.md", "summary.csv", "curves.csv",
                    "fixed_missing.csv") or name.endswith(".png")  # fmt: skip


KIND = rundir.Kind("report", MARKER, _own, force_over_empty=True, foreign="is not a qamoe report")


def _check_inputs(out: Path, sources: Sequence[str]) -> None:
    """--force never writes over an input: refuse one that the new report would replace."""
    for src in sources:
        path = Path(src)
        if path.parent.exists() and same_file(path.parent, out) and _own(path.name):
            raise InputError(
                f"The input '{src}' lies in the report folder '{out}' that --force would replace.",
                hint="Move the results file out of the report folder, or choose another --out.",
            )


def build_report(
    results: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    sources: Sequence[str] = (),
    force: bool = False,
) -> Report:
    """Write the report for ``results`` (a table from :func:`qamoe_core.results.load`).

    ``metrics``: the metrics to plot and summarise (default: the scheme's primary metric,
    e.g. Has0_acc_2 for MOSI-like results). The folder is built under a temporary name and
    renamed at the end; an existing report folder is replaced only with ``force``.
    """
    out = Path(out_dir)
    rundir.check_target(out, KIND, force)  # before any work; again under the lock
    _check_inputs(out, sources)
    df = validate(results, "results")
    names = list(metrics) if metrics else [default_metric(df)]
    for m in names:
        check_metric(df, m)
    palette = _Palette(df)
    runs = list(dict.fromkeys(df["run"]))
    title = title or f"qamoe report: {', '.join(runs)}"

    figures: list[tuple[str, str, Figure]] = []  # (file stem, caption, figure)
    for m in names:
        fig = plot_reliability(df, m, palette)
        if fig is not None:
            figures.append((f"reliability_{_slug(m)}", f"Reliability curves ({m})", fig))
    fig = plot_quality(df, palette)
    if fig is not None:
        figures.append(("quality", "Quality scores r_m vs level", fig))
    for run in runs:
        fig = plot_expert_usage(df, run)
        if fig is not None:
            stem = f"expert_usage_{_slug(run)}"
            while any(stem == f[0] for f in figures):  # "a b" and "a-b" share a slug
                stem += "_"
            figures.append((stem, f"Expert usage ({run})", fig))
    fm = fixed_missing(df, names[0])
    fig = plot_fixed_missing(fm, names[0], palette)
    if fig is not None:
        figures.append(("fixed_missing", f"Fixed-missing protocol ({names[0]})", fig))

    summary = summarize(df, names)
    curve_table = pd.concat([curves(df, m).assign(metric=m) for m in names], ignore_index=True)

    with rundir.OutputFolder(out, KIND, force=force) as folder:
        tmp = folder.path
        (tmp / MARKER).write_text(f"qamoe {__version__}\n")
        report = Report(out, out / "report.html", out / "report.md", metrics=names, runs=runs)
        pngs: dict[str, bytes] = {}
        for stem, _, fig in figures:
            pngs[stem] = _png(fig)
            (tmp / f"{stem}.png").write_bytes(pngs[stem])
            report.images[stem] = out / f"{stem}.png"
        tables = {"summary": summary, "curves": curve_table}
        if not fm.empty:
            tables["fixed_missing"] = fm
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False, float_format="%.6g")
            report.tables[name] = out / f"{name}.csv"
        sections = _sections(summary, fm, names[0], figures)
        captions = {stem: caption for stem, caption, _ in figures}
        page = _html(title, sections, pngs, captions, sources)
        (tmp / "report.html").write_text(page, encoding="utf-8")
        (tmp / "report.md").write_text(_markdown(title, sections, captions, sources), "utf-8")
    log.info("wrote report to %s", out)
    return report


# A section is (heading, note, [(kind, payload)]), kind "img" (file stem), "table" (DataFrame).
Section = tuple[str, str, list[tuple[str, Any]]]


def _sections(
    summary: pd.DataFrame, fm: pd.DataFrame, metric: str, figures: list[tuple[str, str, Figure]]
) -> list[Section]:
    stems = [stem for stem, _, _ in figures]
    out: list[Section] = []
    if not summary.empty:
        out.append(
            (
                "Summary",
                "Per run and spectrum axis: clean score, mean over the grid, trapezoid area "
                "under the curve divided by the level span, and area ÷ clean (relative "
                "robustness; above 1 is worse for MAE). Seeds are averaged per level first.",
                [("table", _display_summary(summary))],
            )
        )
    rel = [s for s in stems if s.startswith("reliability_")]
    if rel:
        out.append(
            (
                "Reliability curves",
                "One checkpoint per run, evaluated at every level; dashed lines permute the "
                "quality scores within each batch (if they match the solid line, the router "
                "ignores quality).",
                [("img", s) for s in rel],
            )
        )
    if "quality" in stems:
        out.append(("Quality scores", "Mean r_m per modality.", [("img", "quality")]))
    usage = [s for s in stems if s.startswith("expert_usage_")]
    if usage:
        out.append(
            ("Expert usage", "Share of routing weight per expert.", [("img", s) for s in usage])
        )
    if not fm.empty:
        items: list[tuple[str, Any]] = [("table", fm)]
        if "fixed_missing" in stems:
            items.insert(0, ("img", "fixed_missing"))
        out.append(
            (
                "Fixed-missing protocol",
                f"{metric} with only the named modalities kept (the others removed entirely).",
                items,
            )
        )
    return out


def _html(
    title: str,
    sections: list[Section],
    pngs: dict[str, bytes],
    captions: dict[str, str],
    sources: Sequence[str],
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated by qamoe {__version__}.</p>',
    ]
    for heading, note, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p class='note'>{html.escape(note)}</p>")
        for kind, payload in items:
            if kind == "img":
                data = base64.b64encode(pngs[payload]).decode("ascii")
                alt = html.escape(captions.get(payload) or str(payload))
                parts.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
            else:
                parts.append(html_table(payload))
    if sources:
        parts.append("<h2>Sources</h2><ul>")
        parts += [f"<li><code>{html.escape(s)}</code></li>" for s in sources]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(
    title: str, sections: list[Section], captions: dict[str, str], sources: Sequence[str]
) -> str:
    lines = [f"# {title}", "", f"Generated by qamoe {__version__}.", ""]
    for heading, note, items in sections:
        lines += [f"## {heading}", "", note, ""]
        for kind, payload in items:
            if kind == "img":
                lines += [f"![{captions.get(payload) or str(payload)}]({payload}.png)", ""]
            else:
                lines += [markdown_table(payload), ""]
    if sources:
        lines += ["## Sources", ""] + [f"- `{s}`" for s in sources] + [""]
    return "\n".join(lines)
