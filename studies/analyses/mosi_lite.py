"""The MOSI-lite analysis tables, read from a study folder of ``studies/mosi-lite.toml``.

    .venv/bin/python studies/analyses/mosi_lite.py runs/mosi-lite --out docs/results/mosi-lite

``qamoe study`` makes the table of mean ± sd and the comparison with the reference; this adds
what the write-up (docs/results/mosi-lite) reads beyond them, from the folder's sweeps
(``sweeps/ARM-sSEED.PROTOCOL.csv`` and the per-sample files beside them):

- ``summary.json``: Acc_2 per arm (clean, grid means per axis, mixed area/clean, the mixed
  curve, fixed missing, the quality-shuffle control), each specialist at its own level
  against the general QA-MoE there, whether r_m tracks its own modality (Spearman over level
  means and per sample), how r_m moves when every modality is corrupted, and the targets of
  issue #7; per model seed and as mean/std over seeds;
- ``tables.md``: the same as Markdown tables;
- ``pooled/ARM.csv``: the model seeds of one arm stacked into one results table (run = the
  arm; seed = 1000 x model seed + corruption seed), what ``qamoe report --pool-seeds`` does.

"±" is the sample standard deviation over MODEL seeds of a number first averaged over the
corruption seeds; Acc_2 is MOSI-lite's binary accuracy (in percent). The general arms are the
study's arms in file order, the specialists (``specialist-LEVEL``) apart; the baselines are
the arms whose model is not the reference's. The sweeps of the main protocol (default: the
study's first) make the general tables; the protocols ``only-text``, ``only-audio`` and
``only-vision`` (the reference with one modality corrupted) feed the r_m checks. It replaces
benchmarks/mosi_lite_analysis.py, which read the same sweeps from the experiment script's
work folder.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's 3.10 dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from qamoe_core.base.atomic import atomic_path  # noqa: E402
from qamoe_core.evaluation import results as R  # noqa: E402
from qamoe_core.evaluation import summary as S  # noqa: E402

METRIC = "Acc_2"
MODALITIES = ("text", "audio", "vision")
ALL = "text+audio+vision"
SPECIALIST = re.compile(r"^specialist-(\d\.\d)$")


class StudyError(Exception):
    """A folder this analysis cannot read; the message is one line with a hint."""


def read_study(folder: Path) -> dict[str, Any]:
    """Seeds, arms (name -> model, in the file's order), protocols and reference of the study
    that made ``folder``, as ``qamoe study`` recorded them."""
    if not (folder / "study.json").is_file() or not (folder / "study.toml").is_file():
        raise StudyError(
            f"{folder} is not a study folder (study.json or study.toml missing). "
            "hint: pass the --out folder of `qamoe study studies/mosi-lite.toml`"
        )
    plan = json.loads((folder / "study.json").read_text(encoding="utf-8"))["study"]
    with (folder / "study.toml").open("rb") as f:
        raw = tomllib.load(f)  # study.json sorts its keys; the file keeps the order
    return {
        "seeds": [int(s) for s in plan["seeds"]],
        "arms": {a: plan["arms"][a]["model"] for a in raw.get("arms", {})},
        "protocols": list(raw.get("protocols", {})),
        "reference": plan["compare"]["reference"],
    }


def stats(values: Iterable[float]) -> dict[str, Any]:
    v = [float(x) for x in values]
    arr = np.asarray(v, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if v else math.nan,
        "std": float(arr.std(ddof=1)) if len(v) > 1 else 0.0,
        "per_seed": v,
    }


def pct(s: dict[str, Any]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def load_runs(sweeps: Path, main: str) -> dict[str, pd.DataFrame]:
    """Every sweep of the folder, keyed ``ARM-sSEED`` for the main protocol and
    ``ARM-sSEED-PROTOCOL`` for the others (the names the tables below look up)."""
    runs = {}
    for path in sorted(sweeps.glob("*.csv")):
        label, _, protocol = path.stem.rpartition(".")
        runs[label if protocol == main else f"{label}-{protocol}"] = R.load(path)
    if not runs:
        raise StudyError(
            f"no sweeps in {sweeps}. hint: let the study finish (`qamoe study status FOLDER`)"
        )
    return runs


def curve(
    df: pd.DataFrame,
    axis: str,
    metric: str = METRIC,
    variant: str = "normal",
    modalities: str = ALL,
) -> pd.Series:
    """Level -> value averaged over corruption seeds (qamoe_core.evaluation.summary.curves)."""
    c = S.curves(df, metric)
    c = c[(c["axis"] == axis) & (c["variant"] == variant) & (c["modalities"] == modalities)]
    return c.set_index("level")["mean"].sort_index()


def clean_score(df: pd.DataFrame, metric: str = METRIC) -> float:
    sub = df[(df["axis"] == "clean") & (df["metric"] == metric) & (df["variant"] == "normal")]
    return float(sub["value"].mean())


def general_table(runs: dict[str, pd.DataFrame], names: list[str], seeds: list[int]) -> dict:
    """Per configuration: clean, grid mean per axis, area/clean (mixed), fixed-missing."""
    out: dict[str, Any] = {}
    for name in names:
        tags = [f"{name}-s{s}" for s in seeds if f"{name}-s{s}" in runs]
        if not tags:
            continue
        row: dict[str, Any] = {"seeds": len(tags)}
        row["clean"] = stats(clean_score(runs[t]) for t in tags)
        row["clean_f1"] = stats(clean_score(runs[t], "F1_score") for t in tags)
        for axis in R.SPECTRUM_AXES:
            row[f"{axis}_mean"] = stats(curve(runs[t], axis).mean() for t in tags)
        # Weighted F1 punishes a model that answers one class when the inputs are gone; the
        # low half of the grid leaves out the levels where that default answer dominates.
        row["mixed_mean_f1"] = stats(curve(runs[t], "mixed", "F1_score").mean() for t in tags)
        row["mixed_mean_upto_0.5"] = stats(curve(runs[t], "mixed").loc[:0.5].mean() for t in tags)
        row["mixed_area_over_clean"] = stats(
            S.trapezoid_area(c.index, c.values) / clean_score(runs[t])
            for t in tags
            for c in [curve(runs[t], "mixed")]
        )
        row["mixed_curve"] = {
            f"{lv:.1f}": stats(curve(runs[t], "mixed")[lv] for t in tags)
            for lv in curve(runs[tags[0]], "mixed").index
        }
        shuffled = [curve(runs[t], "mixed", variant="quality_shuffle") for t in tags]
        if all(len(c) for c in shuffled):
            row["mixed_mean_quality_shuffle"] = stats(c.mean() for c in shuffled)
            row["shuffle_effect_mixed"] = stats(
                c.mean() - curve(runs[t], "mixed").mean()
                for c, t in zip(shuffled, tags, strict=True)
            )
        drops: dict[str, Any] = {}
        for t in tags:
            sub = runs[t]
            sub = sub[
                (sub["axis"] == "drop") & (sub["metric"] == METRIC) & (sub["variant"] == "normal")
            ]
            for dropped, v in sub.groupby("modalities")["value"].mean().items():
                kept = R.join_modalities(set(MODALITIES) - set(str(dropped).split("+")))
                drops.setdefault(kept, []).append(float(v))
        row["fixed_missing"] = {k: stats(drops[k]) for k in sorted(drops)}  # by the kept ones
        out[name] = row
    return out


def specialists(runs: dict[str, pd.DataFrame], seeds: list[int]) -> dict[str, Any]:
    """Each specialist at its own level against the QA-MoE checkpoint at that level."""
    out: dict[str, Any] = {}
    levels = sorted(
        {m.group(1) for t in runs for m in [SPECIALIST.match(t.rsplit("-s", 1)[0])] if m}
    )
    for lv in levels:
        level = float(lv)
        spec = [
            curve(runs[f"specialist-{lv}-s{s}"], "mixed")[level]
            for s in seeds
            if f"specialist-{lv}-s{s}" in runs
        ]
        one = [curve(runs[f"qamoe-s{s}"], "mixed")[level] for s in seeds if f"qamoe-s{s}" in runs]
        s_spec, s_one = stats(spec), stats(one)
        gap = s_one["mean"] - s_spec["mean"]
        out[lv] = {"specialist": s_spec, "qamoe": s_one, "gap": gap, "within_1pt": gap >= -0.01}
    return out


def per_sample_tracking(samples: Path, m: str, seeds: list[int]) -> dict[str, Any] | None:
    """The same check per SAMPLE (``qamoe eval --per-sample``): Spearman between the level and
    r_m over every (sample, level, corruption seed) of the mixed sweep, the share of samples
    whose r_m at 0.9 is below their r_m at 0 (same corruption seed), and the largest change
    of any other modality's r for any sample."""
    rho, lower, other = [], [], []
    for s in seeds:
        path = samples / f"qamoe-s{s}.only-{m}.samples.csv.gz"
        if not path.exists():
            return None
        df = pd.read_csv(path)
        df = df[(df["axis"] == "mixed") & (df["variant"] == "normal")]
        rho.append(float(spearmanr(df["level"], df[f"quality_{m}"]).statistic))
        wide = df.pivot_table(index=["id", "seed"], columns="level", values=f"quality_{m}")
        lower.append(float((wide[0.9] < wide[0.0]).mean()))
        spans = []
        for o in MODALITIES:
            if o != m:
                w = df.pivot_table(index=["id", "seed"], columns="level", values=f"quality_{o}")
                spans.append(float((w.max(axis=1) - w.min(axis=1)).max()))
        other.append(max(spans))
    return {"spearman_own": stats(rho), "share_lower_at_0.9": stats(lower),
            "max_shift_others": stats(other)}  # fmt: skip


def quality_tracking(
    runs: dict[str, pd.DataFrame], seeds: list[int], samples: Path | None = None
) -> dict[str, Any]:
    """r_m under corruption of ONE modality: Spearman(level, r_m) for the corrupted one, and
    how far the others move (max |r(ℓ) − r(0)| over the grid); per level means, and per
    sample when ``samples`` holds the per-sample files; plus r_m per axis when every
    modality is corrupted."""
    out: dict[str, Any] = {"only_one_corrupted": {}, "all_corrupted": {}}
    for m in MODALITIES:
        own, other_shift = [], []
        for s in seeds:
            tag = f"qamoe-s{s}-only-{m}"
            if tag not in runs:
                continue
            c = curve(runs[tag], "mixed", f"quality_{m}", modalities=m)
            own.append(float(spearmanr(c.index, c.values).statistic))
            shifts = []
            for o in MODALITIES:
                if o != m:
                    co = curve(runs[tag], "mixed", f"quality_{o}", modalities=m)
                    shifts.append(float((co - co.iloc[0]).abs().max()))
            other_shift.append(max(shifts))
        if own:
            c0 = curve(runs[f"qamoe-s0-only-{m}"], "mixed", f"quality_{m}", modalities=m)
            out["only_one_corrupted"][m] = {
                "spearman_own": stats(own),
                "max_shift_others": stats(other_shift),
                "r_own_seed0": {f"{k:.1f}": round(float(v), 4) for k, v in c0.items()},
            }
            if samples is not None and (per := per_sample_tracking(samples, m, seeds)):
                out["only_one_corrupted"][m]["per_sample"] = per
    for axis in R.SPECTRUM_AXES:
        per_mod: dict[str, Any] = {}
        for m in MODALITIES:
            rhos, drops = [], []
            for s in seeds:
                tag = f"qamoe-s{s}"
                if tag not in runs:
                    continue
                c = curve(runs[tag], axis, f"quality_{m}")
                rhos.append(float(spearmanr(c.index, c.values).statistic))
                drops.append(float(c.iloc[-1] - c.iloc[0]))
            if rhos:
                per_mod[m] = {"spearman": stats(rhos), "r_change_0_to_0.9": stats(drops)}
        out["all_corrupted"][axis] = per_mod
    return out


def pool(runs: dict[str, pd.DataFrame], name: str, seeds: list[int]) -> pd.DataFrame | None:
    """The model seeds of one configuration as one run.

    (qamoe_core.evaluation.summary.pool_model_seeds)
    """
    parts = [runs[f"{name}-s{s}"] for s in seeds if f"{name}-s{s}" in runs]
    return S.pool_model_seeds(pd.concat(parts, ignore_index=True)) if parts else None


def md_table(title: str, columns: list[str], rows: dict[str, list[str]]) -> list[str]:
    """A Markdown section: a heading, then one row per model with the given cells."""
    out = ["", f"## {title}", "", "| model | " + " | ".join(columns) + " |"]
    out.append("|---" * (len(columns) + 1) + "|")
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return out


def markdown(summary: dict[str, Any]) -> str:
    g = summary["general"]
    lines = [
        "## Clean and spectrum accuracy (Acc_2 %, mean ± std over model seeds)",
        "",
        "| model | clean | mixed mean | missing mean | noise mean | mixed area/clean |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in g.items():
        lines.append(
            f"| {name} | {pct(row['clean'])} | {pct(row['mixed_mean'])} | "
            f"{pct(row['missing_mean'])} | {pct(row['noise_mean'])} | "
            f"{row['mixed_area_over_clean']['mean']:.3f} |"
        )
    lines += [
        "",
        "## Mixed axis per model seed, and two views less swayed by the default class",
        "",
        "| model | mixed mean per seed | mixed mean, levels 0-0.5 | mixed mean F1 |",
        "|---|---|---|---|",
    ]
    for name, row in g.items():
        per = " / ".join(f"{100 * v:.1f}" for v in row["mixed_mean"]["per_seed"])
        lines.append(
            f"| {name} | {per} | {pct(row['mixed_mean_upto_0.5'])} | {pct(row['mixed_mean_f1'])} |"
        )
    levels = list(next(iter(g.values()))["mixed_curve"])
    lines += md_table(
        "Mixed axis, every modality corrupted (Acc_2 %)",
        levels,
        {n: [f"{100 * r['mixed_curve'][lv]['mean']:.1f}" for lv in levels] for n, r in g.items()},
    )
    sets = list(next(iter(g.values()))["fixed_missing"])
    if sets:
        fm = {n: [pct(r["fixed_missing"][k]) if k in r["fixed_missing"] else "" for k in sets]
              for n, r in g.items()}  # fmt: skip
        lines += md_table("Fixed missing: modalities KEPT (Acc_2 %)", sets, fm)
    shuf = {n: r for n, r in g.items() if "shuffle_effect_mixed" in r}
    if shuf:
        lines += [
            "",
            "## Quality-shuffle control (mixed grid mean, points)",
            "",
            "| model | normal | quality shuffled | shuffled − normal |",
            "|---|---|---|---|",
        ]
        for name, row in shuf.items():
            eff = row["shuffle_effect_mixed"]
            lines.append(
                f"| {name} | {pct(row['mixed_mean'])} | "
                f"{pct(row['mixed_mean_quality_shuffle'])} | {pct(eff)} |"
            )
    if summary["specialists"]:
        lines += [
            "",
            "## One checkpoint vs specialists (mixed axis, Acc_2 %)",
            "",
            "| level | specialist | QA-MoE (one checkpoint) | gap | within 1 point |",
            "|---|---|---|---|---|",
        ]
        for lv, row in summary["specialists"].items():
            lines.append(
                f"| {lv} | {pct(row['specialist'])} | {pct(row['qamoe'])} | "
                f"{100 * row['gap']:+.1f} | {'yes' if row['within_1pt'] else 'no'} |"
            )
    q = summary["quality"]
    if q["only_one_corrupted"]:
        lines += [
            "",
            "## Does r_m track its own modality? (QA-MoE, mixed axis, one modality corrupted)",
            "",
            "Level means: Spearman over the 10 level means, and the largest move of another"
            " modality's mean r. Per sample: Spearman over every (sample, level, corruption"
            " seed), the share of samples whose r is lower at 0.9 than at 0, and the largest"
            " move of another modality's r for any sample.",
            "",
            "| corrupted | ρ (level means) | other mean r moves | ρ (per sample) |"
            " lower at 0.9 | other r moves (any sample) |",
            "|---|---|---|---|---|---|",
        ]
        for m, row in q["only_one_corrupted"].items():
            ps = row.get("per_sample")
            tail = (
                f" {ps['spearman_own']['mean']:+.2f} ± {ps['spearman_own']['std']:.2f} |"
                f" {100 * ps['share_lower_at_0.9']['mean']:.1f} % |"
                f" {ps['max_shift_others']['mean']:.3f} |"
                if ps
                else " | | |"
            )
            lines.append(
                f"| {m} | {row['spearman_own']['mean']:+.2f} ± {row['spearman_own']['std']:.2f} |"
                f" {row['max_shift_others']['mean']:.3f} |" + tail
            )
    lines += [
        "",
        "## r_m when every modality is corrupted (change from level 0 to 0.9)",
        "",
        "| axis | " + " | ".join(MODALITIES) + " |",
        "|---" * 4 + "|",
    ]
    for axis, per_mod in q["all_corrupted"].items():
        cells = [
            f"{per_mod[m]['r_change_0_to_0.9']['mean']:+.3f} "
            f"(ρ {per_mod[m]['spearman']['mean']:+.2f})"
            for m in MODALITIES
            if m in per_mod
        ]
        lines.append(f"| {axis} | " + " | ".join(cells) + " |")
    t = summary["targets"]
    lines += ["", "## Targets of issue #7", ""]
    for key, val in t.items():
        lines.append(f"- {key}: {val}")
    return "\n".join(lines) + "\n"


def targets_of(summary: dict[str, Any], reference: str, baselines: list[str]) -> dict[str, str]:
    """Issue #7's targets. Its second compares with the best baseline by mixed-grid mean on
    test: a check of a target, never a choice (the study names its reference beforehand)."""
    general = summary["general"]
    q = general[reference]
    targets = {
        "clean accuracy >= 77 %": f"{pct(q['clean'])} -> "
        f"{'met' if q['clean']['mean'] >= 0.77 else 'missed'}",
    }
    base = {n: general[n]["mixed_mean"]["mean"] for n in baselines if n in general}
    if base:
        best = max(base, key=lambda n: base[n])
        margin = q["mixed_mean"]["mean"] - base[best]
        targets["mixed-grid mean >= best baseline + 1 point"] = (
            f"QA-MoE {pct(q['mixed_mean'])} vs {best} {pct(general[best]['mixed_mean'])}: "
            f"{100 * margin:+.1f} points -> {'met' if margin >= 0.01 else 'missed'}"
        )
    if summary["specialists"]:
        ok = all(r["within_1pt"] for r in summary["specialists"].values())
        gaps = ", ".join(f"{lv}: {100 * r['gap']:+.1f}" for lv, r in summary["specialists"].items())
        targets["one checkpoint within 1 point of every specialist"] = (
            f"gaps {gaps} -> {'met' if ok else 'missed'}"
        )
    return targets


def analyse(folder: Path, out: Path, protocol: str | None = None) -> dict[str, Any]:
    """Write summary.json, tables.md and pooled/ for the study folder ``folder`` into ``out``
    and return the summary."""
    study = read_study(folder)
    main = protocol or study["protocols"][0]
    if main not in study["protocols"]:
        raise StudyError(
            f"the study has no protocol {main!r}. hint: one of {', '.join(study['protocols'])}"
        )
    ref, seeds = study["reference"], study["seeds"]
    runs = load_runs(folder / "sweeps", main)
    names = [a for a in study["arms"] if not SPECIALIST.match(a)]
    baselines = [a for a in names if study["arms"][a] != study["arms"][ref]]
    summary: dict[str, Any] = {
        "study": str(folder),
        "metric": METRIC,
        "general": general_table(runs, names, seeds),
        "specialists": specialists(runs, seeds),
        "quality": quality_tracking(runs, seeds, folder / "sweeps"),
    }
    summary["targets"] = targets_of(summary, ref, baselines)
    pooled = out / "pooled"
    pooled.mkdir(parents=True, exist_ok=True)
    for name in names:
        df = pool(runs, name, seeds)
        if df is not None:
            R.save(df, pooled / f"{name}.csv", force=True)
    for name, text in (("summary.json", json.dumps(summary, indent=2) + "\n"),
                       ("tables.md", markdown(summary))):  # fmt: skip
        with atomic_path(out / name, force=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="the study folder (qamoe study ... --out FOLDER)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables")
    ap.add_argument("--protocol", help="the general tables' protocol (default: the first)")
    args = ap.parse_args()
    try:
        summary = analyse(args.study, args.out, args.protocol)
    except StudyError as exc:
        msg, _, hint = str(exc).partition(" hint: ")
        sys.exit(f"error: {msg}" + (f"\nhint: {hint}" if hint else ""))
    print(json.dumps(summary["targets"], indent=2))


if __name__ == "__main__":
    main()
