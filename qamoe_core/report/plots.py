"""The figures of a report (``report.py``): reliability curves, quality scores, expert-usage
differences and the fixed-missing bars.

Every score figure carries the best-constant reference (``results.constant_rows``) as a
grey dotted line when the results hold it. Figures are drawn on ``matplotlib.figure.Figure``
objects directly (the Agg canvas, never pyplot), so building a report changes no global
matplotlib state and needs no display.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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
AXIS_STYLES = {"mixed": "-", "missing": "--", "noise": ":"}
# Lines that differ in these columns get their own colour; variant is shown by the dash.
IDENTITY = ("run", "dataset", "split", "modalities")
DPI = 110  # ~900 px wide for a 3-panel figure: sharp in a browser, small in base64
FORMATS = ("png", "pdf", "svg")  # PNG for the page, PDF and SVG for papers
CONSTANT_STYLE = {"color": "0.35", "ls": ":", "lw": 1.4}


class Palette:
    """One colour per line identity, stable across every figure of a report."""

    def __init__(self, df: pd.DataFrame) -> None:
        # Lines are drawn for spectrum axes only; drop rows name subsets, not lines.
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

    def run_color(self, run: str, dataset: str) -> str:
        key = next((k for k in self.keys if k[0] == run and k[1] == dataset), None)
        return self.color(key) if key else "k"

    def label(self, key: tuple[str, ...], variant: str = "normal") -> str:
        parts = dict(zip(IDENTITY, key, strict=True))
        text = parts["run"]
        extra = [parts[c] for c in self.varying if c != "run"]
        if extra:
            text += f" [{', '.join(extra)}]"
        if variant == SHUFFLED:
            text += f" ({SHUFFLED})"
        return text


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


def encode(fig: Figure, formats: Sequence[str] = FORMATS) -> dict[str, bytes]:
    """The figure as PNG and each of ``formats``; no timestamps, and SVG element ids hashed
    with a fixed salt (matplotlib draws them at random otherwise), so reruns give equal bytes."""
    import matplotlib

    out = {}
    for fmt in dict.fromkeys(["png", *formats]):  # the page embeds the PNG
        buf = io.BytesIO()
        meta = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
        # Constrained layout already fits everything; "tight" bbox would draw it twice.
        with matplotlib.rc_context({"svg.hashsalt": "qamoe"}):
            fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
        out[fmt] = buf.getvalue()
    return out


def _legend(fig: Figure, axes: Sequence[Any], extra: dict[str, Any] | None = None) -> None:
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    handles.update(extra or {})
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside lower center",  # constrained layout makes room for it
            ncol=min(3, len(handles)),
            frameon=False,
        )


def _constant_lines(ax: Any, df: pd.DataFrame, metric: str) -> None:
    many = df["dataset"].nunique() > 1
    for _, r in constants(df, metric).iterrows():
        where = f", {r['dataset']}" if many else ""
        ax.axhline(r["value"], **CONSTANT_STYLE, label=f"best constant{where}: {r['value']:.3f}")


def _xlim(ax: Any, levels: pd.Series) -> None:
    """The axis ends at the last level evaluated (a little margin so markers show)."""
    lo, hi = float(levels.min()), float(levels.max())
    pad = 0.02 * max(hi - lo, 0.05)
    ax.set_xlim(lo - pad, hi + pad)


def plot_reliability(
    df: pd.DataFrame, metric: str, palette: Palette, pooled: bool = False
) -> Figure | None:
    """Metric vs level, one panel per spectrum axis present; None if no spectrum rows. Where an
    axis was swept under several temporal patterns, one row of panels per pattern (the default
    patterns on top), so each axis's patterns lie one above the other, on one scale."""
    c = curves(df, metric)
    c = c[c["axis"].isin(SPECTRUM_AXES)]
    panels = pattern_panels(c)
    if not panels:
        return None
    cols = list(dict.fromkeys(a for a, _, _ in panels))
    rank = {a: 0 for a in cols}
    place = []
    for axis, _, _ in panels:  # the k-th pattern of an axis goes to row k
        place.append((rank[axis], cols.index(axis)))
        rank[axis] += 1
    n_rows = max(rank.values())
    fig = Figure(figsize=(4.2 * len(cols), 0.4 + 3.8 * n_rows), layout="constrained")
    grid = fig.subplots(n_rows, len(cols), sharey=True, squeeze=False)
    axs = [grid[r][k] for r, k in place]
    for r, k in itertools.product(range(n_rows), range(len(cols))):
        if (r, k) not in place:
            grid[r][k].set_axis_off()  # an axis swept under fewer patterns than another
    for ax, (axis, pattern, titled) in zip(axs, panels, strict=True):
        sub = c[(c["axis"] == axis) & (c["pattern"] == pattern)]
        for (*ident, variant), grp in sub.groupby([*IDENTITY, "variant"], sort=False):
            key = tuple(ident)
            grp = grp.sort_values("level")
            x, y, s = grp["level"].to_numpy(), grp["mean"].to_numpy(), grp["std"].to_numpy()
            color, dashed = palette.color(key), variant == SHUFFLED
            ax.plot(x, y, color=color, ls="--" if dashed else "-", marker="o", ms=3, lw=1.6,
                    label=palette.label(key, variant))  # fmt: skip
            if (s > 0).any():
                ax.fill_between(x, y - s, y + s, color=color, alpha=0.10 if dashed else 0.18, lw=0)
        _constant_lines(ax, df, metric)
        ax.set_title(AXIS_TITLES[axis] + (f"\npattern: {pattern}" if titled else ""), fontsize=10)
        ax.set_xlabel("level (0 = clean, 1 = gone)")
        _xlim(ax, sub["level"])
        ax.grid(alpha=0.3)
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    for row in grid:
        row[0].set_ylabel(f"{metric} ({direction})")
    sel = df[(df["metric"] == metric) & df["axis"].isin(SPECTRUM_AXES)]
    band = Patch(color="0.5", alpha=0.25)
    bands = {f"band: ±1 std over {seed_text(sel['seed'], pooled)}": band}
    fig.suptitle(f"{metric} vs corruption level")
    _legend(fig, axs, bands)
    return fig


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


def plot_quality(df: pd.DataFrame, palette: Palette) -> Figure | None:
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
        shown = list(dict.fromkeys(c["pattern"])) if several_patterns(c) else []
        for (*ident, axis, pattern), grp in c.groupby([*IDENTITY, "axis", "pattern"], sort=False):
            key, tail = tuple(ident), f" · {pattern}" if shown else ""
            marker = "osD^v"[shown.index(pattern) % 5] if shown else "o"
            grp = grp.sort_values("level")
            ax.plot(grp["level"], grp["mean"], color=palette.color(key), ls=AXIS_STYLES[axis],
                    marker=marker, ms=3, label=f"{palette.label(key)} · {axis}{tail}")  # fmt: skip
        ax.set_title(f"{m}", fontsize=10)
        ax.set_xlabel("level")
        if not c.empty:
            _xlim(ax, c["level"])
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("mean quality score r = 1/(1+σ²)")
    fig.suptitle("Mean quality score r_m vs corruption level")
    _legend(fig, axs)
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


def plot_expert_usage(df: pd.DataFrame, run: str, dataset: str) -> Figure | None:
    """The clean routing share per expert, then differences: level − clean per axis, and
    quality_shuffle − normal per axis (one diverging colour scale centred on 0)."""
    sub = df[(df["run"] == run) & (df["dataset"] == dataset)]
    sub = sub[sub["metric"].str.startswith(USAGE_PREFIX)]
    if sub[sub["axis"].isin(SPECTRUM_AXES)].empty:
        return None
    sub = sub.assign(expert=sub["metric"].str.slice(len(USAGE_PREFIX)).astype(int))
    # One pattern per axis (the default where swept): shares under several would average.
    first = {a: p for a, p, _ in reversed(pattern_panels(sub[sub["axis"].isin(SPECTRUM_AXES)]))}
    keep = sub["axis"].map(first).fillna(sub["pattern"]) == sub["pattern"]
    sub = sub[keep]
    clean, diffs = usage_differences(sub)
    axes_present = list(dict.fromkeys(a for a, _ in diffs))
    kinds = [k for k in ("level", "shuffle") if any(kk == k for _, kk in diffs)]
    limit = max(float(np.nanmax(np.abs(d.to_numpy()))) for d in diffs.values()) or 1e-6
    fig = Figure(figsize=(2.6 + 3.6 * len(axes_present), 2.9 * len(kinds) + 0.8),
                 layout="constrained")  # fmt: skip
    grid = fig.add_gridspec(len(kinds), len(axes_present) + 1)
    bar = fig.add_subplot(grid[:, 0])
    bar.barh([str(e) for e in clean.index], clean.to_numpy(), color="0.45")
    bar.invert_yaxis()
    bar.set_title("clean share", fontsize=10)
    bar.set_ylabel("expert")
    image, cells = None, []
    for i, kind in enumerate(kinds):
        for j, axis in enumerate(axes_present):
            ax = fig.add_subplot(grid[i, j + 1])
            cells.append(ax)
            d = diffs.get((axis, kind))
            if d is None:
                ax.set_axis_off()
                continue
            image = ax.imshow(d.to_numpy().T, aspect="auto", cmap="RdBu_r", vmin=-limit,
                              vmax=limit, origin="upper")  # fmt: skip
            ax.set_yticks(range(d.shape[1]), [str(e) for e in d.columns], fontsize=7)
            step = max(1, len(d.index) // 6)
            ticks = list(range(0, len(d.index), step))
            ax.set_xticks(ticks, [f"{d.index[t]:.2g}" for t in ticks])
            what = "level − clean" if kind == "level" else f"{SHUFFLED} − normal"
            ax.set_title(f"{axis}: {what}", fontsize=10)
            ax.set_xlabel("level")
    if image is not None:
        fig.colorbar(image, ax=cells, label="difference in routing share", shrink=0.9)
    fig.suptitle(f"Expert usage: {run} ({dataset})")
    return fig


def plot_fixed_missing(
    table: pd.DataFrame, df: pd.DataFrame, metric: str, palette: Palette
) -> Figure | None:
    """Grouped bars: the metric per dropped subset, one colour per run (normal variant)."""
    if table.empty:
        return None
    rows = table[table["variant"] == "normal"]
    subsets = [c for c in table.columns if c not in ("run", "dataset", "split", "variant")]
    if rows.empty or not subsets:
        return None
    fig = Figure(figsize=(max(5.0, 1.0 * len(subsets) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    x = np.arange(len(subsets))
    many = rows["dataset"].nunique() > 1
    for i, (_, r) in enumerate(rows.iterrows()):
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            [r[s] for s in subsets],
            width,
            color=palette.run_color(r["run"], r["dataset"]),
            label=f"{r['run']} [{r['dataset']}]" if many else r["run"],
        )
    _constant_lines(ax, df, metric)
    ax.set_xticks(x, [s.replace("+", "\n+") for s in subsets], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_xlabel("modalities dropped")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Fixed-missing protocol: {metric}")
    return fig
