"""The paper table of a study: per arm and column, mean ± sd over model seeds, and each arm
against the reference arm (Markdown, LaTeX booktabs, CSV).

A column is the clean point or one axis of a protocol (``PROTOCOL`` alone when it sweeps one
axis, else ``PROTOCOL/AXIS``; a drop protocol gives one column per dropped set,
``PROTOCOL/-audio+vision``). One model seed's value in a column is the mean over the
column's levels of the mean over its corruption seeds: corruption seeds are averaged within
a model seed first and never counted as replicates. The comparison of an arm with the
reference in one column and metric is :func:`compare_arms`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.evaluation.results import SPECTRUM_AXES

COLUMNS = (
    "dataset",
    "column",
    "metric",
    "arm",
    "n_seeds",
    "mean",
    "sd",
    "reference",
    "difference",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "mde",
)
# Rows that are not the arms' sweeps, and so compared with nothing: the validation score each
# training selected on (study/selection.py) and the anchors (study/anchors.py), whose arm is
# ANCHOR + its name (':' cannot appear in an arm's name).
VALID_COLUMN = "valid (selected)"
ANCHOR = "anchor:"
NOT_COMPARED = dict.fromkeys(COLUMNS[8:], math.nan)  # difference ... mde


@dataclass(frozen=True)
class Comparison:
    """One arm against the reference in one column and metric (NaN where undefined)."""

    difference: float  # mean(arm) - mean(reference) over model seeds
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    mde: float  # the difference detectable with 80 % power at these seeds


def compare_arms(values: Mapping[str, Sequence[float]], reference: str) -> dict[str, Comparison]:
    """Each arm of ``values`` (model-seed values) against ``reference``, unpaired.

    The statistics of ``qamoe report --reference`` (``qamoe_core.evaluation.stats``): Welch's
    t-interval (95 %, Welch–Satterthwaite df, exact t quantile) and two-sided p for
    mean(arm) − mean(reference); p-values Holm-adjusted over the arms compared here (one
    family: one column and metric); the minimum detectable difference at 80 % power,
    two-sided α = 0.05, from the exact power of the two-sample t-test (noncentral t) with
    the pooled sd of the two arms' values.
    """
    from qamoe_core.evaluation import stats

    ref = np.asarray(values[reference], dtype=np.float64)
    arms = [a for a in values if a != reference]
    rows: dict[str, tuple[float, float, float, float, float]] = {}
    for arm in arms:
        x = np.asarray(values[arm], dtype=np.float64)
        if not (x.size and ref.size):
            rows[arm] = (math.nan,) * 5
            continue
        est = stats.welch(x, ref)
        mde = stats.mde(stats.pooled_sd(x, ref), x.size, ref.size)
        rows[arm] = (est.difference, est.ci_low, est.ci_high, est.p, mde)
    adjusted = stats.holm([rows[a][3] for a in arms])
    return {a: Comparison(*rows[a][:4], float(adjusted[i]), rows[a][4]) for i, a in enumerate(arms)}


# --- values per model seed -----------------------------------------------------------------------


def column_name(protocol: str, axes: Sequence[str], axis: str, dropped: str = "") -> str:
    if axis == "drop":
        return f"{protocol}/-{dropped}"
    return protocol if len(axes) == 1 else f"{protocol}/{axis}"


def seed_values(
    frame: pd.DataFrame,
    protocol: str,
    axes: Sequence[str],
    metrics: Sequence[str],
    with_clean: bool,
) -> list[tuple[str, str, float]]:
    """(column, metric, value) of one model seed's sweep (one results table)."""
    normal = frame[(frame["variant"] == "normal") & frame["metric"].isin(metrics)]
    out: list[tuple[str, str, float]] = []
    for metric in metrics:
        rows = normal[normal["metric"] == metric]
        if with_clean:
            clean = rows[rows["axis"] == "clean"]["value"]
            out.append(("clean", metric, float(clean.mean()) if len(clean) else math.nan))
        for axis in (a for a in axes if a in SPECTRUM_AXES):
            sub = rows[rows["axis"] == axis]
            by_level = sub.groupby("level")["value"].mean()  # corruption seeds first
            out.append((column_name(protocol, axes, axis), metric, float(by_level.mean())))
        drop = rows[rows["axis"] == "drop"]
        for dropped, sub in drop.groupby("modalities", sort=True):
            name = column_name(protocol, axes, "drop", str(dropped))
            out.append((name, metric, float(sub["value"].mean())))
    return out


def build(
    sweeps: Sequence[tuple[Any, str, Path]],
    protocols: Mapping[str, Sequence[str]],
    metrics: Mapping[str, Sequence[str]],
    reference: str | None,
    pools: Sequence[Any] = (),
) -> pd.DataFrame:
    """The tidy table. ``sweeps``: (cell, protocol, results file) for every sweep cell;
    ``protocols``: each protocol's axes (with "drop" for drop subsets), in study order;
    ``metrics``: the metrics of each dataset; ``pools``: datasets that are the folds of one
    cross-validation (pools.py), each given as one dataset whose seed values are averaged
    over its folds."""
    from qamoe_core.evaluation.results import load
    from qamoe_core.study.pools import pooled

    first = next(iter(protocols), "")
    values: list[dict[str, Any]] = []
    for cell, protocol, path in sweeps:
        frame = load(path)
        for column, metric, value in seed_values(
            frame, protocol, protocols[protocol], metrics[cell.dataset], protocol == first
        ):
            values.append(
                {
                    "dataset": cell.dataset,
                    "arm": cell.arm,
                    "seed": cell.seed,
                    "column": column,
                    "metric": metric,
                    "value": value,
                }
            )
    return summarize(pooled(pd.DataFrame(values), pools), reference)


def summarize(values: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """Mean ± sd per (dataset, column, metric, arm), with the comparison to ``reference``."""
    rows = []
    order = ["dataset", "column", "metric"]
    for (ds, column, metric), grp in values.groupby(order, sort=False):
        by_arm = {
            a: g.sort_values("seed")["value"].tolist() for a, g in grp.groupby("arm", sort=False)
        }
        found = compare_arms(by_arm, reference) if reference and reference in by_arm else {}
        for arm, vals in by_arm.items():
            arr = np.asarray(vals, dtype=np.float64)
            row = {
                "dataset": ds,
                "column": column,
                "metric": metric,
                "arm": arm,
                "n_seeds": len(vals),
                "mean": float(arr.mean()),
                "sd": float(arr.std(ddof=1)) if len(vals) > 1 else math.nan,
                "reference": reference or "",
            }
            comp = found.get(arm)
            for key in ("difference", "ci_low", "ci_high", "p", "p_holm", "mde"):
                row[key] = getattr(comp, key) if comp is not None else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


# --- rendering -----------------------------------------------------------------------------------


def _num(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _mean_sd(row: Any, digits: int) -> str:
    if not math.isfinite(row["sd"]):
        return _num(row["mean"], digits)
    return f"{_num(row['mean'], digits)} ± {_num(row['sd'], digits)}"


def _compared(g: pd.DataFrame, reference: str | None) -> pd.DataFrame:
    """The rows of ``g`` compared with the reference: its other arms, in the columns where the
    reference has a value (a protocol may leave the reference out: ``arms``)."""
    if not reference:
        return g.iloc[0:0]
    ref_columns = set(g[g["arm"] == reference]["column"]) - {VALID_COLUMN}
    arms = g["arm"].astype(str)
    return g[(arms != reference) & g["column"].isin(ref_columns) & ~arms.str.startswith(ANCHOR)]


def _arm_name(arm: str, reference: str | None, ref_mark: str) -> str:
    """An arm's name in a table; an anchor is named '(anchor)' (rendered in italics)."""
    if arm.startswith(ANCHOR):
        return f"{arm[len(ANCHOR) :]} (anchor)"
    return f"{arm}{ref_mark}" if arm == reference else arm


def _blocks(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(dataset, metric, rows) in table order."""
    return [(str(ds), str(m), g) for (ds, m), g in df.groupby(["dataset", "metric"], sort=False)]


def _note(df: pd.DataFrame, reference: str | None, extra: str = "") -> str:
    arms = df[~df["arm"].astype(str).str.startswith(ANCHOR)]
    seeds = sorted(set(arms["n_seeds"].astype(int)))
    text = (
        f"Mean ± sd over {'/'.join(map(str, seeds))} model seeds; a seed's value is the "
        "mean over the column's levels of the mean over its corruption seeds."
    )
    if reference:
        text += (
            f" Δ = arm − {reference} (the reference), with Welch's 95 % interval over "
            "model seeds; p Holm-adjusted over the arms compared in each column; MDE: "
            "the smallest difference detected with 80 % power at these seeds."
        )
    return f"{text} {extra}" if extra else text


def markdown(
    df: pd.DataFrame, title: str, reference: str | None, digits: int, extra: str = ""
) -> str:
    """``extra``: a sentence after the table's note (the tuned arms' budget)."""
    from qamoe_core.metrics import higher_is_better

    lines = [f"# {title}", "", _note(df, reference, extra), ""]
    multi = df["dataset"].nunique() > 1
    for ds, metric, g in _blocks(df):
        lower = metric == "loss" or not higher_is_better(metric)
        arrow = "lower is better" if lower else "higher is better"
        lines += [f"## {ds + ': ' if multi else ''}{metric} ({arrow})", ""]
        cols = list(dict.fromkeys(g["column"]))
        lines += ["| arm | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for arm, rows in g.groupby("arm", sort=False):
            cells = {r["column"]: _mean_sd(r, digits) for _, r in rows.iterrows()}
            name = _arm_name(str(arm), reference, " (reference)")
            name = f"*{name}*" if str(arm).startswith(ANCHOR) else name
            lines.append(f"| {name} | " + " | ".join(cells.get(c, "") for c in cols) + " |")
        comp = _compared(g, reference)
        if len(comp):
            lines += [
                "",
                "| arm | column | Δ | 95 % CI | p (Holm) | MDE |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for _, r in comp.iterrows():
                below = " (Δ below MDE)" if abs(r["difference"]) < r["mde"] else ""
                ci = f"[{_num(r['ci_low'], digits)}, {_num(r['ci_high'], digits)}]"
                lines.append(
                    f"| {r['arm']} | {r['column']} | {_num(r['difference'], digits)} | "
                    f"{ci} | {_p(r['p_holm'])} | {_num(r['mde'], digits)}{below} |"
                )
        lines.append("")
    return "\n".join(lines)


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _tex_num(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"${value:.{digits}f}$"


def latex(df: pd.DataFrame, reference: str | None, digits: int, extra: str = "") -> str:
    """One booktabs tabular per dataset and metric: mean ± sd, then Δ [CI] per arm."""
    out = [f"% {_note(df, reference, extra)}", "% Needs \\usepackage{booktabs}.", ""]
    multi = df["dataset"].nunique() > 1
    for ds, metric, g in _blocks(df):
        cols = list(dict.fromkeys(g["column"]))
        head = f"{tex_escape(ds)}: " if multi else ""
        out += [
            f"% {head}{tex_escape(metric)}",
            "\\begin{tabular}{l" + "r" * len(cols) + "}",
            "\\toprule",
            f"{head}{tex_escape(metric)} & " + " & ".join(tex_escape(c) for c in cols) + " \\\\",
            "\\midrule",
        ]
        for arm, rows in g.groupby("arm", sort=False):
            vals = {r["column"]: r for _, r in rows.iterrows()}
            cells = [
                (
                    f"${vals[c]['mean']:.{digits}f} \\pm {vals[c]['sd']:.{digits}f}$"
                    if c in vals and math.isfinite(vals[c]["sd"])
                    else _tex_num(vals[c]["mean"], digits)
                    if c in vals
                    else ""
                )
                for c in cols
            ]
            name = tex_escape(_arm_name(str(arm), reference, " (ref.)"))
            name = f"\\textit{{{name}}}" if str(arm).startswith(ANCHOR) else name
            out.append(f"{name} & " + " & ".join(cells) + " \\\\")
        comp = _compared(g, reference)
        if len(comp):
            out.append("\\midrule")
            for arm, rows in comp.groupby("arm", sort=False):
                vals = {r["column"]: r for _, r in rows.iterrows()}
                cells = [_tex_delta(vals[c], digits) if c in vals else "" for c in cols]
                out.append(f"$\\Delta$ {tex_escape(arm)} & " + " & ".join(cells) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def _tex_delta(r: Any, digits: int) -> str:
    d = _tex_num(r["difference"], digits)
    if not math.isfinite(r["ci_low"]):
        return d
    return f"{d} {{\\scriptsize[${r['ci_low']:.{digits}f}$, ${r['ci_high']:.{digits}f}$]}}"


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.10g", lineterminator="\n")
