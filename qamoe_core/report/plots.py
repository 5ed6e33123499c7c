"""The figures of a report (``report.py``): reliability curves, quality scores, expert-usage
differences and the fixed-missing bars.

Every score figure carries the best-constant reference (``results.constant_rows``) as a
grey dotted line when the results hold it. Figures are drawn on ``matplotlib.figure.Figure``
objects directly (the Agg canvas, never pyplot), so building a report needs no display, and
each figure is drawn and written under its :class:`Style`'s settings (``Style.context``)
without changing matplotlib's global state.

Looks: each run keeps one :class:`RunStyle` in every figure of a report (:class:`Palette`):
the Okabe-Ito colours (safe for the common colour-vision deficiencies), then the same
colours again with the next dash pattern and marker (and bar hatch), so a report of more
than seven runs tells every run apart. The quality_shuffle control is the run's own line,
faint with open markers. The legend sits below the panels in as many columns as the
figure's width holds (measured with the renderer) and the figure grows by its height, so
no entry is ever clipped. ``SCREEN`` sizes figures per panel for a web page; ``PAPER``
sets them at one column (one panel column) or two columns wide, in a serif font at print
sizes, without figure titles (the caption's job).
"""

from __future__ import annotations

import io
import itertools
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import wraps
from typing import Any, TypeVar, cast

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from qamoe_core.base.errors import check_choice
from qamoe_core.base.names import MODALITIES
from qamoe_core.evaluation.results import (
    DEFAULT_PATTERN,
    QUALITY_PREFIX,
    SHUFFLED,
    SPECTRUM_AXES,
    USAGE_PREFIX,
)
from qamoe_core.evaluation.summary import SEED_STRIDE, constants, curves
from qamoe_core.metrics import higher_is_better

AXIS_TITLES = {
    "mixed": "mixed: steps dropped + noise",
    "missing": "missing: steps dropped",
    "noise": "noise: Gaussian, × train std",
}
# Lines that differ in these columns are different runs (their own RunStyle).
IDENTITY = ("run", "dataset", "split", "modalities")
FORMATS = ("png", "pdf", "svg")  # PNG for the page, PDF and SVG for papers
CONSTANT_STYLE = {"color": "0.45", "ls": ":"}  # as wide as the style's lines
BAND = Patch(color="0.5", alpha=0.25)

# Okabe & Ito (2008), without its yellow (too faint on white) and in an order that keeps the
# first colours far apart; black last, so the grey best-constant line stays unlike any run.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
# Runs 8-14 take the second dash pattern, 15-21 the third, ... (never the constant's dots).
DASHES: tuple[Any, ...] = ("-", (0, (5.0, 1.8)), (0, (6.0, 1.8, 1.2, 1.8)), (0, (2.4, 1.2)))
MARKERS = ("o", "s", "^", "D", "v", "P")
HATCHES = ("", "////", "....", "xxxx")  # the bars' dash pattern


@dataclass(frozen=True)
class Style:
    """How a report's figures look. Sizes in inches: ``panel`` = one panel's width and
    height on screen (its height on paper, where ``columns`` = the single- and double-column
    widths set the figure width); ``titles``: a title above each figure."""

    name: str
    dpi: int
    panel: tuple[float, float]
    columns: tuple[float, float] | None = None
    rc: Mapping[str, Any] = field(default_factory=dict)
    titles: bool = True
    legend_columns: int = 6
    min_width: float = 0.0  # screen: no narrower (room for a legend of two columns)

    def figsize(
        self, cols: int, rows: int, screen: tuple[float, float] | None = None
    ) -> tuple[float, float]:
        """The figure's size for ``cols`` x ``rows`` panels; ``screen`` = the screen size of
        one panel when a figure's panels differ from ``panel``."""
        top = 0.25 * self.rc.get("figure.titlesize", 12) / 10 if self.titles else 0.0
        if self.columns is None:
            w, h = screen or self.panel
            return max(w * cols, self.min_width), h * rows + top
        return self.columns[0] if cols <= 1 else self.columns[1], self.panel[1] * rows + top

    @contextmanager
    def context(self) -> Iterator[None]:
        """matplotlib's settings for this style, for drawing and writing its figures."""
        settings: dict[str, Any] = {**_RC, **self.rc}
        with matplotlib.rc_context(settings):  # type: ignore[arg-type]  # keys are rc names
            yield


_RC = {
    "svg.hashsalt": "qamoe",  # SVG element ids are random otherwise: reruns give equal bytes
    "pdf.fonttype": 42,  # TrueType in the PDF: the text stays text (journals ask for it)
    "legend.frameon": False,
    "legend.handlelength": 3.0,  # long enough to show the dash patterns
}
SCREEN = Style(
    "screen",
    dpi=110,  # ~900 px wide for a 3-panel figure: sharp in a browser, small in base64
    panel=(4.2, 3.6),
    rc={"axes.titlesize": 10, "legend.fontsize": 9, "figure.titlesize": 12,
        "lines.linewidth": 1.6, "lines.markersize": 3.5},
    min_width=5.6,
)  # fmt: skip
PAPER = Style(
    "paper",
    dpi=300,
    panel=(0.0, 2.0),
    # One column and the full text width of the common two-column templates (IEEE 3.5 / 7.16
    # in, CVPR 3.25 / 6.875, ACL 3.03 / 6.3): scaled to fit, a 7 pt label stays 6.4-7.4 pt.
    columns=(3.3, 6.9),
    rc={"font.family": "serif",
        # Times where installed, else matplotlib's own STIX (also a Times design).
        "font.serif": ["Times New Roman", "Times", "Nimbus Roman", "TeX Gyre Termes",
                       "STIXGeneral", "DejaVu Serif"],
        "mathtext.fontset": "stix", "font.size": 8, "axes.titlesize": 8,
        "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "figure.titlesize": 9, "lines.linewidth": 1.1,
        "lines.markersize": 2.8, "axes.linewidth": 0.6, "grid.linewidth": 0.4,
        "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5,
        "ytick.major.size": 2.5, "patch.linewidth": 0.4, "hatch.linewidth": 0.5,
        "legend.columnspacing": 1.2, "legend.handlelength": 2.6},
    titles=False,
    legend_columns=4,
)  # fmt: skip
STYLES = {s.name: s for s in (SCREEN, PAPER)}


def get_style(name: str = "screen", titles: bool | None = None) -> Style:
    """The style named (``screen`` or ``paper``); ``titles`` overrides its default."""
    style = STYLES[check_choice(name, tuple(STYLES), "style")]
    return style if titles is None else replace(style, titles=titles)


F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Draw under the ``style`` keyword's settings (fonts and sizes are fixed at drawing)."""

    @wraps(fn)
    def draw(*args: Any, style: Style = SCREEN, **kw: Any) -> Any:
        with style.context():
            return fn(*args, style=style, **kw)

    return cast(F, draw)


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (so its renderer can measure text), constrained layout."""
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@dataclass(frozen=True)
class RunStyle:
    """One run's look: colour, dash pattern, marker, and the hatch of its bars."""

    color: str
    dash: Any
    marker: str
    hatch: str

    def line(self, control: bool = False) -> dict[str, Any]:
        """Keywords for ``ax.plot``; a control is the run's line, faint with open markers."""
        kw = {"color": self.color, "ls": self.dash, "marker": self.marker}
        if control:
            kw |= {"mfc": "none", "alpha": 0.6, "lw": 0.7 * matplotlib.rcParams["lines.linewidth"]}
        return kw

    def bar(self) -> dict[str, Any]:
        return {"facecolor": self.color, "hatch": self.hatch, "edgecolor": "white"}


def run_style(i: int) -> RunStyle:
    """The look of the i-th run: each colour once, then each again with the next dash
    pattern, marker and hatch (7 x 4 dash patterns, 84 looks before one repeats)."""
    cycle = i // len(COLOURS)
    return RunStyle(
        COLOURS[i % len(COLOURS)],
        DASHES[cycle % len(DASHES)],
        MARKERS[cycle % len(MARKERS)],
        HATCHES[cycle % len(HATCHES)],
    )


class Palette:
    """One :class:`RunStyle` per line identity, the same in every figure of a report."""

    def __init__(self, df: pd.DataFrame) -> None:
        # Lines are drawn for spectrum axes only; drop rows name subsets, not lines.
        lines = df[df["axis"].isin(SPECTRUM_AXES)]
        lines = lines if not lines.empty else df
        keys = lines[list(IDENTITY)].drop_duplicates().itertuples(index=False, name=None)
        self.keys = list(keys)
        self.styles = {k: run_style(i) for i, k in enumerate(self.keys)}
        # Only the columns that vary appear in labels.
        self.varying = [c for i, c in enumerate(IDENTITY) if len({k[i] for k in self.keys}) > 1]
        if "run" not in self.varying:
            self.varying.insert(0, "run")

    def style(self, key: tuple[str, ...]) -> RunStyle:
        return self.styles.get(key, RunStyle("k", "-", "o", ""))

    def color(self, key: tuple[str, ...]) -> str:
        return self.style(key).color

    def run_key(self, run: str, dataset: str) -> tuple[str, ...]:
        """The first identity of ``run`` on ``dataset`` (for figures keyed by run alone)."""
        key = next((k for k in self.keys if k[0] == run and k[1] == dataset), None)
        return key or (run, dataset, "", "")

    def label(self, key: tuple[str, ...], variant: str = "normal") -> str:
        parts = dict(zip(IDENTITY, key, strict=True))
        text = parts["run"]
        extra = [parts[c] for c in self.varying if c != "run"]
        if extra:
            text += f" [{', '.join(extra)}]"
        if variant == SHUFFLED:
            text += f" ({SHUFFLED})"
        return text

    def entries(self, keys: Sequence[tuple[str, ...]], bars: bool = False) -> dict[str, Any]:
        """Legend entries for the runs among ``keys``, in the palette's order."""
        shown = set(keys)
        out: dict[str, Any] = {}
        for k in sorted(shown, key=lambda k: self.keys.index(k) if k in self.keys else 1 << 30):
            s = self.style(k)
            out[self.label(k)] = Patch(**s.bar()) if bars else Line2D([], [], **s.line())
        return out


def control_entry() -> dict[str, Any]:
    """The one legend entry that explains every faint, open-marker line."""
    proxy = Line2D([], [], **RunStyle("0.3", "-", "o", "").line(control=True))
    return {f"faint, open markers: {SHUFFLED} control": proxy}


def seed_text(seeds: Sequence[int], pooled: bool) -> str:
    """What a band spans: '3 corruption seeds (0-2)' or '3 model × 2 corruption seeds'."""
    seeds = sorted(set(int(s) for s in seeds))
    if pooled or any(s >= SEED_STRIDE for s in seeds):
        models = sorted({s // SEED_STRIDE for s in seeds})
        corr = sorted({s % SEED_STRIDE for s in seeds})
        return (
            f"{len(models)} model seed{'s' * (len(models) > 1)} ({_span(models)}) × "
            f"{len(corr)} corruption seed{'s' * (len(corr) > 1)} ({_span(corr)})"
        )
    return f"{len(seeds)} corruption seed{'s' * (len(seeds) > 1)} ({_span(seeds)})"


def _span(values: Sequence[int]) -> str:
    if len(values) > 2 and list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def encode(
    fig: Figure, formats: Sequence[str] = FORMATS, style: Style = SCREEN
) -> dict[str, bytes]:
    """The figure as PNG and each of ``formats``, under ``style``'s settings; no timestamps,
    and SVG element ids hashed with a fixed salt, so reruns give equal bytes."""
    out = {}
    for fmt in dict.fromkeys(["png", *formats]):  # the page embeds the PNG
        buf = io.BytesIO()
        meta = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
        # Constrained layout already fits everything; "tight" bbox would draw it twice.
        with style.context():
            fig.savefig(buf, format=fmt, dpi=style.dpi, metadata=meta)
        out[fmt] = buf.getvalue()
    return out


def fit_legend(fig: Figure, runs: Mapping[str, Any], keys: Mapping[str, Any], style: Style) -> Any:
    """One legend below the panels: the ``runs``, then the ``keys`` (control, constant,
    band). Of the layouts as narrow as the figure (measured with the renderer): 1 to
    ``style.legend_columns`` columns, each with the labels as written and with the keys
    wrapped at the longest run name, the lowest one (fewer wraps, then more columns, on a
    tie); if none fits, one column wrapped until it does. The figure grows by the legend's
    height, so the panels keep theirs. None without entries."""
    entries = {**runs, **keys}
    if not entries:
        return None
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    room = 0.97 * fig.bbox.width
    handles, labels = list(entries.values()), list(entries)
    at = max([24, *map(len, runs)])
    best: tuple[float, int, int] | None = None
    for ncol, wrap in itertools.product(range(min(len(labels), style.legend_columns)), (0, at)):
        text = [textwrap.fill(t, wrap) if wrap and t in keys else t for t in labels]
        leg = fig.legend(handles, text, loc="outside lower center", ncols=ncol + 1)
        box = leg.get_window_extent(renderer)
        leg.remove()
        if box.width <= room and (best is None or (box.height, wrap, -ncol) < best):
            best = (box.height, wrap, -ncol)
    if best is None:
        leg = _wrapped_legend(fig, handles, labels, room)
    else:
        text = [textwrap.fill(t, best[1]) if best[1] and t in keys else t for t in labels]
        leg = fig.legend(handles, text, loc="outside lower center", ncols=1 - best[2])
    height = leg.get_window_extent(renderer).height / fig.dpi
    fig.set_figheight(fig.get_figheight() + height + 0.05)
    return leg


def _wrapped_legend(fig: Figure, handles: list[Any], labels: list[str], room: float) -> Any:
    """A one-column legend whose labels are wrapped until it is narrower than ``room``."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    while True:
        leg = fig.legend(handles, labels, loc="outside lower center", ncols=1)
        width = leg.get_window_extent(renderer).width
        chars = max(len(line) for t in labels for line in t.splitlines())
        if width <= room or chars <= 8:  # 8 characters a line: as narrow as a label goes
            return leg
        leg.remove()
        wrap = max(8, min(chars - 1, int(chars * room / width)))
        labels = [textwrap.fill(t, wrap) for t in labels]


def _title(fig: Figure, text: str, style: Style) -> None:
    if style.titles:
        fig.suptitle(text)


def _constant_lines(ax: Any, df: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The best-constant line(s) of ``metric``; their legend entries."""
    many = df["dataset"].nunique() > 1
    out = {}
    for _, r in constants(df, metric).iterrows():
        where = f", {r['dataset']}" if many else ""
        label = f"best constant{where}: {r['value']:.3f}"
        out[label] = ax.axhline(r["value"], **CONSTANT_STYLE, label=label)
    return out


def _xlim(ax: Any, levels: pd.Series) -> None:
    """The axis ends at the last level evaluated (a little margin so markers show)."""
    lo, hi = float(levels.min()), float(levels.max())
    pad = 0.02 * max(hi - lo, 0.05)
    ax.set_xlim(lo - pad, hi + pad)


@styled
def plot_reliability(
    df: pd.DataFrame, metric: str, palette: Palette, pooled: bool = False, *, style: Style = SCREEN
) -> Figure | None:
    """Metric vs level, one panel per spectrum axis present; None if no spectrum rows. Where an
    axis was swept under several temporal patterns, one row of panels per pattern (the default
    patterns on top), so each axis's patterns lie one above the other, on one scale."""
    c = curves(df, metric)
    c = c[c["axis"].isin(SPECTRUM_AXES)]
    panels = pattern_panels(c)
    if not panels:
        return None
    fig, grid, axs = _pattern_grid(panels, style)
    drawn: list[tuple[tuple[str, ...], str]] = []
    constant: dict[str, Any] = {}
    for ax, (axis, pattern, titled) in zip(axs, panels, strict=True):
        sub = c[(c["axis"] == axis) & (c["pattern"] == pattern)]
        drawn += _draw_curves(ax, sub, palette)
        constant |= _constant_lines(ax, df, metric)
        ax.set_title(AXIS_TITLES[axis] + (f"\npattern: {pattern}" if titled else ""))
        ax.set_xlabel("level (0 = clean, 1 = gone)")
        _xlim(ax, sub["level"])
        ax.grid(alpha=0.3)
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    for row in grid:
        row[0].set_ylabel(f"{metric} ({direction})")
    sel = df[(df["metric"] == metric) & df["axis"].isin(SPECTRUM_AXES)]
    keys = control_entry() if any(v == SHUFFLED for _, v in drawn) else {}
    keys |= constant | {f"band: ±1 std over {seed_text(sel['seed'], pooled)}": BAND}
    _title(fig, f"{metric} vs corruption level", style)
    fit_legend(fig, palette.entries([k for k, _ in drawn]), keys, style)
    return fig


def _pattern_grid(
    panels: Sequence[tuple[str, str, bool]], style: Style
) -> tuple[Figure, Any, list[Any]]:
    """The figure, its grid of axes and the axes of each panel: the k-th pattern of an axis
    in row k (a cell without a panel is switched off); one y scale for all."""
    cols = list(dict.fromkeys(a for a, _, _ in panels))
    rank = {a: 0 for a in cols}
    place = []
    for axis, _, _ in panels:
        place.append((rank[axis], cols.index(axis)))
        rank[axis] += 1
    n_rows = max(rank.values())
    fig = new_figure(style.figsize(len(cols), n_rows))
    grid = fig.subplots(n_rows, len(cols), sharey=True, squeeze=False)
    for r, k in itertools.product(range(n_rows), range(len(cols))):
        if (r, k) not in place:
            grid[r][k].set_axis_off()  # an axis swept under fewer patterns than another
    return fig, grid, [grid[r][k] for r, k in place]


def _draw_curves(ax: Any, sub: pd.DataFrame, palette: Palette) -> list[tuple[Any, str]]:
    """One line per run and variant with its ±1 std band; the (run key, variant) drawn."""
    drawn = []
    for (*ident, variant), grp in sub.groupby([*IDENTITY, "variant"], sort=False):
        key, control = tuple(ident), variant == SHUFFLED
        grp = grp.sort_values("level")
        x, y, s = grp["level"].to_numpy(), grp["mean"].to_numpy(), grp["std"].to_numpy()
        look = palette.style(key)
        ax.plot(x, y, **look.line(control), label=palette.label(key, variant))
        if (s > 0).any():
            ax.fill_between(x, y - s, y + s, color=look.color, alpha=0.1 if control else 0.18, lw=0)
        drawn.append((key, variant))
    return drawn


def pattern_panels(c: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(axis, pattern, name the pattern in the title) per panel: axes in SPECTRUM_AXES order,
    each axis's default pattern first, then the others by name. With one pattern per axis the
    titles stay the axis names (the output of reports before patterns)."""
    pairs = set(zip(c["axis"], c["pattern"], strict=True))
    many = several_patterns(c)
    return [
        (a, p, many)
        for a in SPECTRUM_AXES
        for p in sorted((p for b, p in pairs if b == a), key=lambda p: (p != DEFAULT_PATTERN[a], p))
    ]


def several_patterns(c: pd.DataFrame) -> bool:
    """Whether some axis of ``c`` was swept under more than one temporal pattern."""
    spec = c[c["axis"].isin(SPECTRUM_AXES)]
    return bool(len(spec)) and int(spec.groupby("axis")["pattern"].nunique().max()) > 1


def _quality_curves(df: pd.DataFrame, mods: Sequence[str]) -> pd.DataFrame:
    """Mean quality per modality (column ``modality``), normal variant, spectrum axes."""
    frames = []
    for m in mods:
        c = curves(df, f"{QUALITY_PREFIX}{m}")
        c = c[c["axis"].isin(SPECTRUM_AXES) & (c["variant"] == "normal")]
        frames.append(c.assign(modality=m))
    return pd.concat(frames, ignore_index=True)


def modality_panels(
    c: pd.DataFrame, mods: list[str], style: Style
) -> tuple[Figure, list[tuple[Any, pd.DataFrame]]] | None:
    """A figure with a column of panels per modality and a row per spectrum axis (and
    pattern), each titled, gridded and limited to its levels, the bottom row labelled; with
    each panel's rows of the curves ``c``. None when ``c`` has no panel."""
    rows = pattern_panels(c)
    if not rows:
        return None
    fig = new_figure(style.figsize(len(mods), len(rows), screen=(4.2, 3.0)))
    grid = fig.subplots(len(rows), len(mods), sharey=True, squeeze=False)
    panels = []
    for (i, (axis, pattern, titled)), (j, m) in itertools.product(enumerate(rows), enumerate(mods)):
        ax = grid[i][j]
        sub = c[(c["modality"] == m) & (c["axis"] == axis) & (c["pattern"] == pattern)]
        ax.set_title(f"{m} · {axis}" + (f" · {pattern}" if titled else ""))
        if not sub.empty:
            _xlim(ax, sub["level"])
        ax.grid(alpha=0.3)
        panels.append((ax, sub))
    for ax in grid[-1]:
        ax.set_xlabel("level")
    return fig, panels


@styled
def plot_quality(df: pd.DataFrame, palette: Palette, *, style: Style = SCREEN) -> Figure | None:
    """Mean quality score r_m vs level: a column of panels per modality, a row per spectrum
    axis (and pattern); one line per run. None without quality rows."""
    mods = [m for m in MODALITIES if f"{QUALITY_PREFIX}{m}" in set(df["metric"])]
    if not mods:
        return None
    made = modality_panels(_quality_curves(df, mods), mods, style)
    if made is None:
        return None
    fig, panels = made
    keys = []
    for ax, sub in panels:
        for ident, grp in sub.groupby(list(IDENTITY), sort=False):
            key = tuple(ident)
            grp = grp.sort_values("level")
            ax.plot(
                grp["level"], grp["mean"], **palette.style(key).line(), label=palette.label(key)
            )
            keys.append(key)
    fig.supylabel("mean quality score r = 1/(1+σ²)", fontsize=matplotlib.rcParams["axes.labelsize"])
    _title(fig, "Mean quality score r_m vs corruption level", style)
    fit_legend(fig, palette.entries(keys), {}, style)
    return fig


def _usage_grid(sub: pd.DataFrame, axis: str, variant: str) -> pd.DataFrame:
    cell = sub[(sub["axis"] == axis) & (sub["variant"] == variant)]
    return cell.pivot_table(index="level", columns="expert", values="value", aggfunc="mean")


def usage_differences(sub: pd.DataFrame) -> tuple[pd.Series, dict[tuple[str, str], pd.DataFrame]]:
    """The clean routing share per expert, and per (axis, kind) a level x expert table of
    differences: kind "level" = level − clean, kind "shuffle" = quality_shuffle − normal."""
    clean_rows = sub[(sub["axis"] == "clean") & (sub["variant"] == "normal")]
    if clean_rows.empty:  # no clean point: the lowest level of the spectrum stands in
        spec = sub[sub["variant"] == "normal"]
        clean_rows = spec[spec["level"] == spec["level"].min()]
    clean = clean_rows.groupby("expert")["value"].mean()
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for axis in [a for a in SPECTRUM_AXES if a in set(sub["axis"])]:
        normal = _usage_grid(sub, axis, "normal")
        out[(axis, "level")] = normal - clean
        shuffled = _usage_grid(sub, axis, SHUFFLED)
        if not shuffled.empty:
            out[(axis, "shuffle")] = shuffled - normal
    return clean, out


def _usage_rows(df: pd.DataFrame, run: str, dataset: str) -> pd.DataFrame | None:
    """The run's routing shares with an ``expert`` column, one pattern per axis (the default
    where swept: shares under several would average); None without spectrum rows."""
    sub = df[(df["run"] == run) & (df["dataset"] == dataset)]
    sub = sub[sub["metric"].str.startswith(USAGE_PREFIX)]
    if sub[sub["axis"].isin(SPECTRUM_AXES)].empty:
        return None
    sub = sub.assign(expert=sub["metric"].str.slice(len(USAGE_PREFIX)).astype(int))
    first = {a: p for a, p, _ in reversed(pattern_panels(sub[sub["axis"].isin(SPECTRUM_AXES)]))}
    keep = sub["axis"].map(first).fillna(sub["pattern"]) == sub["pattern"]
    return sub[keep]


def thin_ticks(labels: Sequence[str], room: float, size: Any, across: bool = True) -> list[int]:
    """Which of ``labels`` to show so that none touches the next one along ``room`` inches:
    every k-th, k from the widest label at the tick font ``size`` (its height when the
    labels are stacked, ``across`` False)."""
    if not labels:
        return []
    points = FontProperties(size=size).get_size_in_points()
    # Average glyph ~0.55 font sizes wide, plus one font size between labels; stacked
    # labels need 1.5 font sizes each.
    widest = max(len(t) for t in labels) * 0.55 + 1.0 if across else 1.5
    fit = max(1, int(room * 72 / (widest * points)))
    return list(range(0, len(labels), math.ceil(len(labels) / fit)))


def _panel_title(head: str, tail: str, width: float) -> str:
    """'head: tail' on one line where it fits a panel ``width`` inches wide, else on two."""
    points = FontProperties(size=matplotlib.rcParams["axes.titlesize"]).get_size_in_points()
    text = f"{head}: {tail}"
    return text if len(text) * 0.55 * points <= width * 72 else f"{head}:\n{tail}"


def _heatmap(ax: Any, d: pd.DataFrame, limit: float, panel: tuple[float, float]) -> Any:
    """One difference map (experts down, levels across) with ticks that do not collide."""
    image = ax.imshow(d.to_numpy().T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                      origin="upper")  # fmt: skip
    rc = matplotlib.rcParams
    experts = [str(e) for e in d.columns]
    rows = thin_ticks(experts, panel[1], rc["ytick.labelsize"], across=False)
    ax.set_yticks(rows, [experts[i] for i in rows])
    levels = [f"{v:g}" for v in d.index]
    cols = thin_ticks(levels, panel[0], rc["xtick.labelsize"])
    ax.set_xticks(cols, [levels[i] for i in cols])
    ax.set_xlabel("level")
    return image


@styled
def plot_expert_usage(
    df: pd.DataFrame, run: str, dataset: str, *, style: Style = SCREEN
) -> Figure | None:
    """The clean routing share per expert, then differences: level − clean per axis, and
    quality_shuffle − normal per axis (one diverging colour scale centred on 0)."""
    sub = _usage_rows(df, run, dataset)
    if sub is None:
        return None
    clean, diffs = usage_differences(sub)
    diffs = {k: d for k, d in diffs.items() if d.notna().to_numpy().any()}
    if clean.empty or not diffs:  # e.g. shares of the shuffle control only: nothing to draw
        return None
    axes_present = list(dict.fromkeys(a for a, _ in diffs))
    kinds = [k for k in ("level", "shuffle") if any(kk == k for _, kk in diffs)]
    limit = max(float(np.nanmax(np.abs(d.to_numpy()))) for d in diffs.values()) or 1e-6
    n = len(axes_present)
    w, h = style.figsize(n, len(kinds), screen=(3.6, 2.9))
    fig = new_figure((w + (2.6 if style.columns is None else 0.0), h))
    # The panel's size in inches, less the share bar, colour bar and labels (for the ticks).
    panel = (0.8 * fig.get_figwidth() / (n + 1.2), 0.75 * h / len(kinds))
    grid = fig.add_gridspec(len(kinds), n + 1, width_ratios=[0.7] + [1.0] * n)
    bar = fig.add_subplot(grid[:, 0])
    bar.barh([str(e) for e in clean.index], clean.to_numpy(), color="0.45")
    bar.invert_yaxis()
    bar.set_title("clean share")
    bar.set_ylabel("expert")
    image, cells = None, []
    for (i, kind), (j, axis) in itertools.product(enumerate(kinds), enumerate(axes_present)):
        ax = fig.add_subplot(grid[i, j + 1])
        cells.append(ax)
        d = diffs.get((axis, kind))
        if d is None:
            ax.set_axis_off()
            continue
        image = _heatmap(ax, d, limit, panel)
        what = "level − clean" if kind == "level" else f"{SHUFFLED} − normal"
        ax.set_title(_panel_title(axis, what, panel[0]))
    if image is not None:
        fig.colorbar(image, ax=cells, label="difference in routing share", shrink=0.9)
    _title(fig, f"Expert usage: {run} ({dataset})", style)
    return fig


@styled
def plot_fixed_missing(
    table: pd.DataFrame, df: pd.DataFrame, metric: str, palette: Palette, *, style: Style = SCREEN
) -> Figure | None:
    """Grouped bars: the metric per dropped subset, one look per run (normal variant)."""
    if table.empty:
        return None
    rows = table[table["variant"] == "normal"]
    subsets = [c for c in table.columns if c not in ("run", "dataset", "split", "variant")]
    if rows.empty or not subsets:
        return None
    wide = len(subsets) * len(rows) > 24  # more bars than one column holds legibly
    fig = new_figure(style.figsize(2 if wide else 1, 1, screen=(max(5.0, len(subsets) + 2), 3.8)))
    ax = fig.subplots()
    width = 0.8 / len(rows)
    x = np.arange(len(subsets))
    keys = []
    for i, (_, r) in enumerate(rows.iterrows()):
        key = palette.run_key(r["run"], r["dataset"])
        keys.append(key)
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [r[s] for s in subsets], width,
               **palette.style(key).bar(), label=palette.label(key))  # fmt: skip
    constant = _constant_lines(ax, df, metric)
    ax.set_xticks(x, [s.replace("+", "\n+") for s in subsets])
    ax.set_ylabel(metric)
    ax.set_xlabel("modalities dropped")
    ax.grid(axis="y", alpha=0.3)
    _title(fig, f"Fixed-missing protocol: {metric}", style)
    fit_legend(fig, palette.entries(keys, bars=True), constant, style)
    return fig
