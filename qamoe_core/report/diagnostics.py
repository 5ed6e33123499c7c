"""The quality-head diagnostic figure (issue 32): does the σ² QA-MoE predicts follow the
residual it actually makes?

``qamoe eval --sweep --residuals`` records, per point, the mean squared residual of each
modality's estimate μ_m against its clean target (``residual_<m>``) and the mean σ² the head
predicts for it (``sigma2_<m>``). Drawn against the level, per axis and modality: where the
residual grows with the level and σ² stays flat, r = 1/(1 + σ²/τ) cannot follow the
corruption, whatever the router does with it.
"""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from qamoe_core.base.names import MODALITIES
from qamoe_core.evaluation.results import RESIDUAL_PREFIX, SIGMA2_PREFIX, SPECTRUM_AXES
from qamoe_core.evaluation.summary import curves
from qamoe_core.report.plots import (
    IDENTITY,
    SCREEN,
    Palette,
    Style,
    _title,
    fit_legend,
    modality_panels,
    styled,
)


def residual_modalities(df: pd.DataFrame) -> list[str]:
    """The modalities with both diagnostic metrics in ``df`` (none: no figure)."""
    names = set(df["metric"])
    return [m for m in MODALITIES if {f"{RESIDUAL_PREFIX}{m}", f"{SIGMA2_PREFIX}{m}"} <= names]


def _curves(df: pd.DataFrame, mods: list[str]) -> pd.DataFrame:
    """Mean residual and σ² per (run, axis, level), column ``modality`` and ``kind``."""
    frames = []
    for m, (kind, prefix) in itertools.product(
        mods, (("residual", RESIDUAL_PREFIX), ("sigma2", SIGMA2_PREFIX))
    ):
        c = curves(df, f"{prefix}{m}")
        c = c[c["axis"].isin(SPECTRUM_AXES) & (c["variant"] == "normal")]
        frames.append(c.assign(modality=m, kind=kind))
    return pd.concat(frames, ignore_index=True)


@styled
def plot_residuals(df: pd.DataFrame, palette: Palette, *, style: Style = SCREEN) -> Figure | None:
    """Residual (filled markers) and predicted σ² (open markers) vs level: a column per
    modality, a row per spectrum axis (and pattern); one colour per run. None without the
    diagnostic rows."""
    mods = residual_modalities(df)
    if not mods:
        return None
    made = modality_panels(_curves(df, mods), mods, style)
    if made is None:
        return None
    fig, panels = made
    keys: list[tuple[str, ...]] = []
    for ax, sub in panels:
        for (*ident, kind), grp in sub.groupby([*IDENTITY, "kind"], sort=False):
            key = tuple(ident)
            grp = grp.sort_values("level")
            look = palette.style(key).line(control=kind == "sigma2")
            ax.plot(grp["level"], grp["mean"], **look, label=palette.label(key))
            keys.append(key)
    size = matplotlib.rcParams["axes.labelsize"]
    fig.supylabel("mean over samples and dims (standardised units)", fontsize=size)
    _title(fig, "Quality head: actual residual vs predicted σ²", style)
    fit_legend(fig, palette.entries(list(dict.fromkeys(keys))), _kinds(), style)
    return fig


def _kinds() -> dict[str, Any]:
    """Legend entries for the two kinds of line."""
    return {
        "filled: residual (μ − clean target)²": Line2D([], [], color="0.3", marker="o"),
        "open: predicted σ²": Line2D([], [], color="0.3", marker="o", mfc="none", alpha=0.6),
    }
