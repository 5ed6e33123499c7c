"""Reliability-curve reports from one or more results tables (see ``results.py``).

A report folder holds::

    report.html            one self-contained page (images embedded as base64, inline CSS)
    report.md              the same content in Markdown, linking the PNGs beside it
    reliability_<metric>.png   metric vs level, one panel per spectrum axis, one line per run,
                               a band of ±1 std over seeds (the legend says which), faint with
                               open markers = quality_shuffle, dotted grey = the best constant
    quality.png            mean quality score r_m vs level, a panel per modality and axis
    expert_usage_<run>.png clean routing share per expert, and differences: level − clean,
                           quality_shuffle − normal
    fixed_missing.png      the metric with every subset of modalities dropped, per run
    *.pdf, *.svg           every figure again as vectors, for papers
    summary.csv, data.csv, fixed_missing.csv, curves.csv, comparison.csv
                           the numbers behind the page (comparison with --reference only:
                           ``report_compare.JSON_FIELDS`` and the Welch columns)
    .qamoe-report          marker: only a folder holding it is replaced with ``force``

The figures live in ``plots.py`` (styles ``screen`` and ``paper``), the comparison with a
reference run (statistics in ``evaluation/stats.py``) in ``compare.py``. The page's tables show
the models; the quality_shuffle control rows have tables of their own (the CSVs keep every row,
with its variant).
Nothing is left out silently: a run that lacks a plotted metric is named in the page's
notes and in :attr:`Report.warnings`.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import qamoe_core.base.rundir as rundir
from qamoe_core.base.atomic import same_file
from qamoe_core.base.errors import InputError
from qamoe_core.data.audit import DEFAULT_GROUP_REGEX
from qamoe_core.evaluation.results import (
    N_SAMPLES,
    R_VARIANTS,
    SHUFFLED,
    SPECTRUM_AXES,
    USAGE_PREFIX,
    VARIANTS,
    csv_safe,
    measured,
    validate,
)
from qamoe_core.evaluation.summary import (
    check_metric,
    constants,
    curves,
    default_metric,
    fixed_missing,
    infer_scheme,
    summarize,
)
from qamoe_core.metrics import PRIMARY
from qamoe_core.report.compare import BELOW_MDE, compare, records
from qamoe_core.report.diagnostics import plot_residuals
from qamoe_core.report.plots import (
    FORMATS,
    Palette,
    Style,
    encode,
    get_style,
    plot_expert_usage,
    plot_fixed_missing,
    plot_quality,
    plot_reliability,
    seed_text,
    several_patterns,
)
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

MARKER = ".qamoe-report"


@dataclass
class Report:
    """What :func:`build_report` wrote; paths are inside ``out_dir``."""

    out_dir: Path
    html: Path
    markdown: Path
    images: dict[str, Path] = field(default_factory=dict)
    vectors: dict[str, list[Path]] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] | None = None  # with a reference: report_compare.records

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.comparisons is None else {"comparisons": self.comparisons}
        return {
            "out_dir": str(self.out_dir),
            "html": str(self.html),
            "markdown": str(self.markdown),
            "images": {k: str(v) for k, v in self.images.items()},
            "vectors": {k: [str(p) for p in v] for k, v in self.vectors.items()},
            "tables": {k: str(v) for k, v in self.tables.items()},
            "metrics": self.metrics,
            "runs": self.runs,
            "warnings": self.warnings,
        } | extra


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_metrics(df: pd.DataFrame) -> list[str]:
    """The primary metric of every dataset's scheme (Has0_acc_2 for MOSI, Acc_2 for a
    binary file, ...), so a report over two datasets plots each one's own metric."""
    names = []
    for _, grp in measured(df).groupby("dataset", sort=False):
        scheme = infer_scheme(grp)
        names.append(PRIMARY[scheme] if scheme else default_metric(grp))
    return list(dict.fromkeys(names)) or [default_metric(df)]


def coverage_warnings(df: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """One line per metric that some runs lack: those runs are missing from its figures and
    summary rows, and the page says so instead of dropping them silently."""
    rows = measured(df)
    out = []
    for metric in metrics:
        have = set(rows.loc[rows["metric"] == metric, ["run", "dataset"]].itertuples(index=False))
        lack = [
            f"{r} ({d})"
            for r, d in dict.fromkeys(rows[["run", "dataset"]].itertuples(index=False))
            if (r, d) not in have
        ]
        if lack:
            out.append(
                f"{', '.join(lack)} {'has' if len(lack) == 1 else 'have'} no {metric}: "
                f"not in the {metric} figure and summary rows."
            )
    return out


def data_table(df: pd.DataFrame, samples: pd.DataFrame | None, pooled: bool) -> pd.DataFrame:
    """Per run: model, dataset, split, samples scored, levels, and the seeds the bands span."""
    rows = []
    for (run, model, dataset, split), grp in df.groupby(
        ["run", "model", "dataset", "split"], sort=False
    ):
        n = grp.loc[grp["metric"] == N_SAMPLES, "value"]
        if n.empty and samples is not None:
            mine = samples[(samples["run"] == run) & (samples["split"] == split)]
            n = pd.Series([mine["id"].nunique()]) if not mine.empty else n
        spec = grp[grp["axis"].isin(SPECTRUM_AXES)]
        levels = sorted(spec["level"].unique())
        rows.append(
            {
                "run": run, "model": model, "dataset": dataset, "split": split,
                "samples": int(n.iloc[0]) if not n.empty else "not recorded",
                "levels": f"{len(levels)} ({levels[0]:g}–{levels[-1]:g})" if levels else "none",
                "seeds": seed_text(spec["seed"], pooled) if levels else "none",
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


# Decimals shown in the page's tables (the CSVs keep 6 significant digits). Three for every
# score: the seed std of a curve point is about 0.01 in the committed sweeps (0.0007 at the
# least), and one test sample moves an accuracy by 1/686 = 0.0015 on MOSI, so a fourth
# decimal is noise. No reported metric needs more (shares and r_m are in [0, 1] as well).
DECIMALS = 3


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{value:.{DECIMALS}f}"
    return str(value)


def _display_summary(summary: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """The summary as shown: constant columns left out, the best constant beside the scores."""
    cols = ["run", "model", "dataset", "split", "axis", "modalities", "pattern", "variant"]
    cols = [c for c in [*cols, "metric"] if c in ("run", "axis", "metric") or _varies(summary, c)]
    values = ["clean", "mean", "area", "area_over_clean", "n_levels", "n_seeds"]
    ref = pd.concat(
        [constants(df, m).assign(metric=m) for m in dict.fromkeys(summary["metric"])],
        ignore_index=True,
    )
    out = summary
    if not ref.empty:
        ref = ref.drop_duplicates(["dataset", "split", "metric"]).rename(
            columns={"value": "constant"}
        )
        out = summary.merge(ref[["dataset", "split", "metric", "constant"]], how="left")
        values.insert(1, "constant")
    out = out[[*cols, *values]]
    return out.rename(columns={"area_over_clean": "area/clean", "n_levels": "levels"})


def _varies(summary: pd.DataFrame, col: str) -> bool:
    """Whether a summary column tells rows apart; pattern only where an axis has several (each
    axis has its own default label, which would otherwise always 'vary')."""
    if col == "pattern":
        return several_patterns(summary)
    return bool(summary[col].nunique() > 1)


# Markdown's inline syntax: links and images ([ ]), emphasis, code spans, table cells,
# strikethrough, headings. A backslash makes each one a plain character (CommonMark §2.4).
_MD_SYNTAX = re.compile(r"([\\`*_\[\]|~#])")
# Bare URLs that GitHub's Markdown turns into links without any syntax ("www.x", "x://y").
_MD_AUTOLINK = re.compile(r"(?i)(://|\bwww\.)")


def _md(text: str) -> str:
    """Text for Markdown, inert: run labels, dataset names and paths come from files, and
    report.md must not turn them into images fetched from elsewhere or links that run
    script (``![x](http://…)``, ``[a](javascript:…)``). Raw HTML is escaped (&lt;), every
    character of Markdown's inline syntax gets a backslash, bare URLs are broken up (their
    ``:`` or ``.`` escaped), and line breaks (which would end a table row) become spaces."""
    text = html.escape(text, quote=False).replace("\n", " ").replace("\r", " ")
    text = _MD_SYNTAX.sub(r"\\\1", text)
    return _MD_AUTOLINK.sub(lambda m: "\\" + m[0] if m[0] == "://" else m[0][:-1] + "\\.", text)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional 'tabulate')."""
    head = "| " + " | ".join(_md(str(c)) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = [
        "| " + " | ".join(_md(_fmt(v)) for v in row) + " |"
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
.warn{background:#fff4e0;border:1px solid #e0b060;padding:0.25rem 1rem;margin:1rem 0}
"""


# -- the report -----------------------------------------------------------------------------


def _own(name: str) -> bool:
    """The entries a report writes (what --force may replace; anything else is kept)."""
    tables = ("data", "summary", "curves", "fixed_missing", "comparison")
    return (
        name in (MARKER, "report.html", "report.md")
        or name in {f"{t}.csv" for t in tables}
        or name.endswith((".png", ".pdf", ".svg"))  # the figures, in every format written
    )


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
    reference: str | None = None,
    samples: pd.DataFrame | None = None,
    pooled: bool = False,
    draws: int = 1000,
    formats: Sequence[str] = FORMATS,
    group_regex: str | None = DEFAULT_GROUP_REGEX,
    style: str = "screen",
    titles: bool | None = None,
    progress: Callable[..., None] | None = None,
) -> Report:
    """Write the report for ``results`` (a table from :func:`qamoe_core.evaluation.results.load`).

    ``metrics``: the metrics to plot and summarise (default: each dataset's primary metric,
    e.g. Has0_acc_2 for MOSI-like results). ``reference``: a run every other run is compared
    with (``report_compare``): a two-level bootstrap over clusters of test samples (videos,
    by ``group_regex``) and model seeds when ``samples`` (per-sample tables,
    ``samples.load_samples``) are given, Welch's t over model seeds otherwise.
    ``pooled``: the seeds are ``summary.pool_model_seeds`` seeds. The folder is
    built under a temporary name and renamed at the end; an existing report folder is
    replaced only with ``force``. ``formats``: the figure files (PNG always, for the page).
    ``style``: ``screen`` or ``paper`` (column widths, serif, print sizes, 300 dpi PNG);
    ``titles``: a title above each figure (default: on screen, not on paper). ``progress``:
    ``progress(n, total=None)``, a step per figure drawn and encoded, and for the tables.
    """
    out = Path(out_dir)
    _check_formats(formats)
    look = get_style(style, titles)
    rundir.check_target(out, KIND, force)  # before any work; again under the lock
    _check_inputs(out, sources)
    df = validate(results, "results")
    names = _checked_metrics(df, metrics)
    runs = list(dict.fromkeys(df["run"]))
    title = title or f"qamoe report: {', '.join(runs)}"
    warnings = coverage_warnings(df, names)
    for line in warnings:
        log.warning("%s", line)
    figures = _encoded_figures(df, names, pooled, formats, look, progress or _no_progress)
    compared = (reference, draws, group_regex) if reference is not None else None
    tables = _tables(df, names, samples, pooled, compared, progress or _no_progress)
    page = _Page(title, _sections(df, tables, names, figures), sources, warnings, formats)
    files = _report_files(page, figures, tables)
    _write_folder(out, files, force)
    report = Report(out, out / "report.html", out / "report.md", metrics=names, runs=runs)
    report.warnings = warnings
    if "comparison" in tables:
        report.comparisons = records(tables["comparison"][0])
    for stem, _, enc in figures:
        report.images[stem] = out / f"{stem}.png"
        report.vectors[stem] = [out / f"{stem}.{fmt}" for fmt in enc if fmt != "png"]
    report.tables = {n: out / f"{n}.csv" for n, (t, _) in tables.items() if not t.empty}
    log.info("wrote report to %s", out)
    return report


def _write_folder(out: Path, files: dict[str, bytes], force: bool) -> None:
    """The report folder with its marker, built aside and committed at once (base/rundir)."""
    with rundir.OutputFolder(out, KIND, force=force) as folder:
        (folder.path / MARKER).write_text(f"qamoe {__version__}\n")
        for name, data in files.items():
            (folder.path / name).write_bytes(data)


def _check_formats(formats: Sequence[str]) -> None:
    """Refuse a figure format the report cannot write."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise InputError(
            f"Unknown figure format(s) {', '.join(bad)}.",
            hint=f"Choose among {', '.join(FORMATS)}.",
        )


def _checked_metrics(df: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    """The metrics to report (default: each dataset's primary), each one present in ``df``."""
    if measured(df).empty:
        raise InputError(
            "The results hold only best-constant reference rows, no model's scores.",
            hint="Add the results files that `qamoe eval --out` wrote for the runs.",
        )
    names = list(metrics) if metrics else default_metrics(df)
    for m in names:
        check_metric(measured(df), m)
    return names


def _report_files(
    page: _Page, figures: Figures, tables: dict[str, tuple[pd.DataFrame, str]]
) -> dict[str, bytes]:
    """File name -> content: every figure in every format, the non-empty tables, the page."""
    files = {f"{stem}.{fmt}": data for stem, _, enc in figures for fmt, data in enc.items()}
    files |= {f"{name}.csv": _csv(t) for name, (t, _) in tables.items() if not t.empty}
    files["report.html"] = page.html(figures).encode("utf-8")
    files["report.md"] = page.markdown(figures).encode("utf-8")
    return files


def _csv(table: pd.DataFrame) -> bytes:
    text: str = csv_safe(table).to_csv(index=False, float_format="%.6g")
    return text.encode("utf-8")


# (file stem, caption, {format: bytes})
Figures = list[tuple[str, str, dict[str, bytes]]]


def draw_figures(
    df: pd.DataFrame, names: Sequence[str], pooled: bool, style: Style
) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) of every figure the report shows, all drawn with one
    :class:`Palette`, so a run looks the same in each; write them with ``encode(fig,
    formats, style)``."""
    # The r-controls are shown in the controls tables only: a curve each would double the
    # lines of every figure (the quality_shuffle control keeps its faint curves).
    df = df[~df["variant"].isin(R_VARIANTS)]
    palette = Palette(measured(df))
    drawn: list[tuple[str, str, Figure | None]] = []
    for m in names:
        fig = plot_reliability(df, m, palette, pooled, style=style)
        drawn.append((f"reliability_{_slug(m)}", f"{m} vs corruption level", fig))
    drawn.append(
        ("quality", "Mean quality score r_m vs level", plot_quality(df, palette, style=style))
    )
    fig = plot_residuals(df, palette, style=style)  # None unless eval recorded --residuals
    drawn.append(("quality_residuals", "Quality head: residual vs predicted σ²", fig))
    usage = df[df["metric"].str.startswith(USAGE_PREFIX)]
    keys = list(dict.fromkeys(usage[["run", "dataset"]].itertuples(index=False, name=None)))
    many = len({d for _, d in keys}) > 1
    for run, dataset in keys:
        stem = f"expert_usage_{_slug(run)}" + (f"_{_slug(dataset)}" if many else "")
        while any(stem == f[0] for f in drawn):  # "a b" and "a-b" share a slug
            stem += "_"
        fig = plot_expert_usage(df, run, dataset, style=style)
        drawn.append((stem, f"Expert usage ({run}, {dataset})", fig))
    fm = fixed_missing(df, names[0])
    fig = plot_fixed_missing(fm, df, names[0], palette, style=style)
    drawn.append(("fixed_missing", f"Fixed-missing protocol ({names[0]})", fig))
    return [(stem, cap, fig) for stem, cap, fig in drawn if fig is not None]


def _no_progress(n: int = 1, total: int | None = None) -> None:
    return None


def _encoded_figures(
    df: pd.DataFrame, names: Sequence[str], pooled: bool, formats: Sequence[str], look: Style,
    tick: Callable[..., None],
) -> list[tuple[str, str, dict[str, bytes]]]:  # fmt: skip
    """(stem, caption, {format: bytes}) for every figure of the report; ``tick``: one step
    for the drawing, one per figure encoded, one left for the tables."""
    drawn = draw_figures(df, names, pooled, look)
    tick(1, total=len(drawn) + 2)
    encoded = []
    for stem, cap, fig in drawn:
        encoded.append((stem, cap, encode(fig, formats, look)))
        tick(1)
    return encoded


def _tables(
    df: pd.DataFrame,
    names: Sequence[str],
    samples: pd.DataFrame | None,
    pooled: bool,
    compared: tuple[str, int, str | None] | None,
    tick: Callable[..., None],
) -> dict[str, tuple[pd.DataFrame, str]]:
    """name -> (table, method note); the note is only set for the comparison."""
    rows = measured(df)
    out: dict[str, tuple[pd.DataFrame, str]] = {
        "data": (data_table(df, samples, pooled), ""),
        "summary": (summarize(rows, names), ""),
        "fixed_missing": (fixed_missing(df, names[0]), ""),
        "curves": (
            pd.concat([curves(rows, m).assign(metric=m) for m in names], ignore_index=True),
            "",
        ),
    }
    if compared is not None:
        reference, draws, group_regex = compared
        comp = compare(df, reference, names[0], samples, draws=draws, group_regex=group_regex)
        out["comparison"] = (comp.table, comp.method)
    tick(1)
    return out


# A section is (heading, note, [(kind, payload)]), kind "img" (file stem), "table" (DataFrame).
Section = tuple[str, str, list[tuple[str, Any]]]

NOTES = {
    "summary": "Per run and spectrum axis: clean score, best constant (when recorded), mean "
    "over the grid, trapezoid area under the curve divided by the level span, and area ÷ "
    "clean (relative robustness; above 1 is worse for MAE). Seeds are averaged per level "
    "first.",
    "curves": "One checkpoint per run, evaluated at every level; each run keeps its colour, "
    "dash pattern and marker in every figure. Faint lines with open markers: "
    "quality_shuffle, the control with the quality scores permuted within each batch. "
    "Bands: ±1 std over the seeds the legend names.",
    "controls": "The same for the quality_shuffle control: each model again with its "
    "quality scores permuted within each batch. A model that uses its quality estimates "
    "loses more here than in the Summary above; one that ignores them loses the same.",
    "r_controls": "constant_r: each model again with its quality scores r fixed to their mean "
    "on the clean split; oracle_r: with r set from each sample's true corruption (the share of "
    "its steps kept times 1 − the noise level), the most a quality estimate could tell "
    "it. They are shown in these tables only, never in the figures.",
    "residuals": "Residuals (filled markers): the mean squared error of each modality's "
    "estimate against its clean target; open markers: the σ² the quality head predicts for it "
    "(recorded by `qamoe eval --residuals`). Where the residual rises with the level and σ² "
    "does not, r cannot follow the corruption.",
    "usage": "Left: each expert's share of the routing weight at the clean point. Then "
    "differences in share at each level: level − clean, and quality_shuffle − normal; red "
    "means more weight.",
}


def _constant_note(df: pd.DataFrame, names: Sequence[str]) -> str:
    if all(constants(df, m).empty for m in names):
        return (
            " No best-constant reference: these results hold no constant rows (older "
            "`qamoe eval` files), so no reference line is drawn."
        )
    return (
        " Dotted grey: the best constant prediction on the split's labels (the majority "
        "class for accuracies, the median for MAE), the score a model must beat."
    )


def _comparison_display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as shown: the same numbers as comparison.csv and ``--json``."""
    if table.empty:
        return table
    ci = [f"[{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else "n/a"
          for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)]  # fmt: skip
    cols = ["run", "reference", "dataset", "split", "axis", "modalities", "pattern", "metric"]
    cols = [c for c in cols if c in ("run", "reference", "axis") or table[c].nunique() > 1]
    out = table[[*cols, "mean", "reference_mean", "difference"]].copy()
    out["95% CI"] = ci
    out["p (Holm)"] = table["p_holm"]
    out["MDE"] = table["mde"]
    pairs = zip(table["n_seeds"], table["n_seeds_reference"], strict=True)
    out["seeds"] = [f"{a} vs {b}" for a, b in pairs]
    out["videos"] = ["n/a" if pd.isna(n) else str(int(n)) for n in table["n_clusters"]]
    out["note"] = table["note"]
    return out.rename(columns={"reference_mean": "reference mean"})


def _comparison_note(table: pd.DataFrame, method: str) -> str:
    """The method sentence, then a warning naming every difference below its MDE."""
    if table.empty:
        return "No curve is shared with the reference run."
    weak = table[table["note"] == BELOW_MDE]
    if weak.empty:
        return method
    names = "; ".join(f"{r.run} on {r.protocol}" for r in weak.itertuples())
    return f"{method} Not established (|difference| below the MDE for these seeds): {names}."


def _sections(
    df: pd.DataFrame,
    tables: dict[str, tuple[pd.DataFrame, str]],
    names: Sequence[str],
    figures: Figures,
) -> list[Section]:
    stems = [stem for stem, _, _ in figures]
    summary, fm = tables["summary"][0], tables["fixed_missing"][0]
    out: list[Section] = [("Data", "What was evaluated.", [("table", tables["data"][0])])]
    out += _summary_sections(summary, df)
    if "comparison" in tables:
        comp, method = tables["comparison"]
        shown = _comparison_display(comp)
        found: list[tuple[str, Any]] = [("table", shown)] if not shown.empty else []
        out.append(("Comparison with the reference", _comparison_note(comp, method), found))
    rel = [("img", s) for s in stems if s.startswith("reliability_")]
    if rel:
        out.append(("Reliability curves", NOTES["curves"] + _constant_note(df, names), rel))
    quality = [("img", s) for s in ("quality", "quality_residuals") if s in stems]
    if quality:
        note = "Mean r_m per modality." if "quality" in stems else ""
        if "quality_residuals" in stems:
            note = (note + " " + NOTES["residuals"]).strip()
        out.append(("Quality scores", note, quality))
    usage = [("img", s) for s in stems if s.startswith("expert_usage_")]
    if usage:
        out.append(("Expert usage", NOTES["usage"], usage))
    if not fm.empty:
        out += _fixed_missing_sections(fm, "fixed_missing" in stems, df, names[0])
    return out


def split_controls(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the models themselves (variant normal) and those of the controls
    (quality_shuffle, constant_r, oracle_r), which the page shows in a table of their own."""
    normal = table["variant"] == "normal"
    return table[normal], table[~normal]


def controls_note(controls: pd.DataFrame) -> str:
    """The note under a controls table: what each control in it does."""
    names = set(controls["variant"])
    parts = [NOTES["controls"]] if SHUFFLED in names else []
    parts += [NOTES["r_controls"]] if names & set(R_VARIANTS) else []
    return " ".join(parts)


def controls_title(controls: pd.DataFrame) -> str:
    """'quality_shuffle control', or 'quality_shuffle, oracle_r controls': the controls in a
    table, for its heading."""
    present = set(controls["variant"])
    names = [v for v in VARIANTS if v in present] + sorted(present - set(VARIANTS))
    return f"{', '.join(names)} control{'s' if len(names) > 1 else ''}"


def _summary_sections(summary: pd.DataFrame, df: pd.DataFrame) -> list[Section]:
    """The summary of the models, then that of the controls (when there are any)."""
    models, controls = split_controls(summary)
    out: list[Section] = []
    if not models.empty:
        out.append(("Summary", NOTES["summary"], [("table", _display_summary(models, df))]))
    if not controls.empty:
        shown = _display_summary(controls, df)
        title = f"Summary: {controls_title(controls)}"
        out.append((title, controls_note(controls), [("table", shown)]))
    return out


def _fixed_missing_sections(
    fm: pd.DataFrame, drawn: bool, df: pd.DataFrame, metric: str
) -> list[Section]:
    """The fixed-missing figure and the models' table; the controls' table after it."""
    same = [c for c in ("dataset", "split") if fm[c].nunique() <= 1]  # said in the Data table
    models, controls = split_controls(fm)
    models = models.drop(columns=["variant", *same])
    items: list[tuple[str, Any]] = [("img", "fixed_missing")] if drawn else []
    items += [("table", models)] if not models.empty else []
    note = f"{metric} with the named modalities removed entirely (none = the clean score)."
    out = [("Fixed-missing protocol", note + _constant_note(df, [metric]), items)]
    if not controls.empty:
        title = controls_title(controls)
        if set(controls["variant"]) == {SHUFFLED}:  # one control: its rows need no label
            note = f"The same for the {SHUFFLED} control (quality scores shuffled in each batch)."
            controls = controls.drop(columns=["variant", *same])
        else:
            note = "The same for each control (variant). " + controls_note(controls)
            controls = controls.drop(columns=same)
        out.append((f"Fixed-missing protocol: {title}", note, [("table", controls)]))
    return out


def _lede(data: pd.DataFrame) -> str:
    """One sentence naming the dataset, split, sample count and seeds (when they agree)."""
    parts = []
    for col, word in (("dataset", "Dataset"), ("split", "split"), ("samples", "samples")):
        values = list(dict.fromkeys(map(str, data[col])))
        joined = ", ".join(values)
        parts.append(f"{joined} {word}" if col == "samples" else f"{word} {joined}")
    seeds = list(dict.fromkeys(data["seeds"]))
    parts.append("seeds: " + (seeds[0] if len(seeds) == 1 else "see the Data table"))
    return "; ".join(parts) + "."


@dataclass
class _Page:
    title: str
    sections: list[Section]
    sources: Sequence[str]
    warnings: list[str]
    formats: Sequence[str] = ()

    @property
    def vector_note(self) -> str:
        vec = [f.upper() for f in self.formats if f != "png"]
        return f" Every figure is also in the folder as {' and '.join(vec)}." if vec else ""

    def lede(self) -> str:
        data = next(items[0][1] for h, _, items in self.sections if h == "Data")
        return _lede(data) if not data.empty else ""

    def html(self, figures: Figures) -> str:
        pngs = {stem: enc["png"] for stem, _, enc in figures}
        captions = {stem: cap for stem, cap, _ in figures}
        esc = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
            f"<p>{esc(self.lede())}</p>",
            f'<p class="note">Generated by qamoe {__version__}.{self.vector_note}</p>',
        ]
        if self.warnings:
            parts.append('<div class="warn"><b>Left out:</b><ul>')
            parts += [f"<li>{esc(w)}</li>" for w in self.warnings]
            parts.append("</ul></div>")
        for heading, note, items in self.sections:
            parts.append(f"<h2>{esc(heading)}</h2><p class='note'>{esc(note)}</p>")
            for kind, payload in items:
                if kind == "img":
                    data = base64.b64encode(pngs[payload]).decode("ascii")
                    alt = esc(captions.get(payload) or str(payload))
                    parts.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
                else:
                    parts.append(html_table(payload))
        if self.sources:
            parts.append("<h2>Sources</h2><ul>")
            parts += [f"<li><code>{esc(s)}</code></li>" for s in self.sources]
            parts.append("</ul>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def markdown(self, figures: Figures) -> str:
        captions = {stem: cap for stem, cap, _ in figures}
        lines = [f"# {_md(self.title)}", "", _md(self.lede()), ""]
        lines += [f"Generated by qamoe {__version__}.{self.vector_note}", ""]
        if self.warnings:
            lines += ["**Left out:**", ""] + [f"- {_md(w)}" for w in self.warnings] + [""]
        for heading, note, items in self.sections:
            lines += [f"## {heading}", "", _md(note), ""]
            for kind, payload in items:
                if kind == "img":
                    cap = _md(captions.get(payload) or str(payload))
                    lines += [f"![{cap}]({payload}.png)", ""]
                else:
                    lines += [markdown_table(payload), ""]
        if self.sources:
            lines += ["## Sources", ""] + [f"- <code>{_md(s)}</code>" for s in self.sources]
            lines.append("")
        return "\n".join(lines)
