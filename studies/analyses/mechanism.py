"""The mechanism study's analysis (issue 32), read from a study folder of
``studies/mechanism-mosi-std.toml``:

    .venv/bin/python studies/analyses/mechanism.py runs/mechanism-mosi-std \
        --out docs/results/mechanism

``qamoe study`` makes the paper table (mean ± sd, every arm against the reference); this adds
what the issue asks of the quality gate, from the folder's sweeps
(``sweeps/[DATASET/]ARM-sSEED.PROTOCOL.csv``), its ``table.csv`` and its ``anchors.json``:

1. the mechanism: r of a modality that is ABSENT (the drop protocol's ``quality_<m>`` of the
   dropped modality; and r at the missing axis's top level); Spearman(level, mean r_m) per
   modality on the noise and missing axes, beside the slope of the reference's MAE over the
   level (does the damage measurably hurt?); the quality-shuffle control's effect per axis;
   the constant-r and oracle-r controls against the normal pass; the no-gate arm against
   the reference;
2. the issue's targets, each "met", "not met" or "not established", with its numbers.

Every number is computed per MODEL seed (the corruption seeds and levels averaged first) and
then given as mean ± sd over the model seeds. A value is judged against a threshold by the
95 % t-interval of its mean over model seeds: met when the interval lies on the target's
side, not met when it lies on the other side, not established when it straddles the
threshold. Two sets of model-seed values are compared with Welch's interval and the minimum
detectable difference (``qamoe_core.evaluation.stats``) when they come from different
trained models (the no-gate arm against QA-MoE); when they come from the same models under
two evaluations (a control, the shuffle, a modality dropped), seed by seed with the paired
t-interval and its MDE (Welch's interval kept beside it for reference). The missing-axis
comparisons with the other arms are the study's own ``table.csv`` rows: the comparator is
never picked here.

Writes ``summary.json`` and ``tables.md`` into ``--out`` (atomically; replaced only with
``--force``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's 3.10 dependency
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from qamoe_core.base.atomic import atomic_path  # noqa: E402
from qamoe_core.base.errors import OutputExistsError, QamoeError  # noqa: E402
from qamoe_core.evaluation import results as R  # noqa: E402
from qamoe_core.evaluation import stats  # noqa: E402
from qamoe_core.study.table import ANCHOR, column_name  # noqa: E402

METRIC = "MAE"  # the mechanism's yardstick: lower is better, so a cost is a positive difference
AXES = ("missing", "noise")  # the axes of the r-tracking checks; mixed is reported if swept
R_CONTROLS = R.R_VARIANTS  # constant_r, oracle_r
ABSENT_R = 0.1  # r of an absent modality must fall below this
SPEARMAN = -0.5  # Spearman(level, r_m) must fall below this where the damage hurts
TOGETHER = "every modality corrupted together (the study corrupts no modality alone)"
TARGETS = {"MAE": ("max", 0.85), "Corr": ("min", 0.73), "Non0_acc_2": ("min", 0.83)}


class StudyError(Exception):
    """A folder this analysis cannot read; the message is one line, then ' hint: ...'."""


# --- the study and its sweeps --------------------------------------------------------------------


def read_study(folder: Path, dataset: str | None) -> dict[str, Any]:
    """The plan ``qamoe study`` recorded in ``folder`` (study.json; protocol and arm order from
    study.toml), with the dataset analysed and the no-gate arm."""
    try:
        return _read_study(folder, dataset)
    except (KeyError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:
        raise StudyError(
            f"{folder}: study.json or study.toml is not as `qamoe study` writes it "
            f"({type(exc).__name__}: {exc}). hint: rerun `qamoe study` over the folder"
        ) from None


def _read_study(folder: Path, dataset: str | None) -> dict[str, Any]:
    doc = _json(folder / "study.json")
    if (
        not (folder / ".qamoe-study").is_file()
        or not isinstance(doc, dict)
        or (doc.get("format") != "qamoe-study" or not (folder / "study.toml").is_file())
    ):
        raise StudyError(
            f"{folder} is not a study folder (no .qamoe-study, study.json and study.toml). "
            "hint: pass the --out folder of `qamoe study studies/mechanism-mosi-std.toml`"
        )
    plan = doc["study"]
    with (folder / "study.toml").open("rb") as f:
        raw = tomllib.load(f)  # study.json sorts its keys; the file keeps the order
    order = [p for p in raw.get("protocols", {}) if p in plan["protocols"]]
    datasets = list(plan["datasets"])
    if dataset is None and len(datasets) > 1:
        raise StudyError(
            f"the study has {len(datasets)} datasets. hint: pick one with --dataset "
            f"({', '.join(datasets)})"
        )
    ds = dataset or datasets[0]
    if ds not in datasets:
        raise StudyError(f"the study has no dataset {ds!r}. hint: one of {', '.join(datasets)}")
    ref = plan["compare"].get("reference")
    arms = plan["arms"]
    no_gate = [
        a for a, spec in arms.items()
        if spec.get("settings_from") == ref
        and spec.get("config", {}).get("model", {}).get("options", {}).get("quality_gate") is False
    ]  # fmt: skip
    return {
        "name": plan.get("name", folder.name),
        "seeds": [int(s) for s in plan["seeds"]],
        "arms": list(arms),
        "reference": ref,
        "no_gate": no_gate[0] if no_gate else None,
        "protocols": {p: plan["protocols"][p] for p in order},
        "dataset": ds,
        "sweeps": folder / "sweeps" / (ds if len(datasets) > 1 else ""),
    }


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _covers(protocol: Mapping[str, Any], arm: str) -> bool:
    return not protocol.get("arms") or arm in protocol["arms"]


def roles(study: dict[str, Any]) -> dict[str, Any]:
    """Which protocol gives what: the drop sets, each axis, the shuffle and r-controls (the
    first protocol in the file's order that covers the reference); refuses a study that
    lacks any of them, naming all that is missing."""
    ref, protocols = study["reference"], study["protocols"]
    ours = {p: d for p, d in protocols.items() if ref and _covers(d, ref)}
    missing: list[str] = []

    def first(what: str, test: Any) -> str | None:
        found = next((p for p, d in ours.items() if test(d)), None)
        if found is None:
            missing.append(what)
        return found

    got: dict[str, Any] = {"axis": {}, "shuffle": {}, "control": {}}
    if not ref or ref not in study["arms"]:
        missing.append("the reference arm ([compare] reference = a QA-MoE arm)")
    if study["no_gate"] is None:
        missing.append(f"the no-gate arm (settings_from = {ref!r}, quality_gate = false)")
    got["drop"] = first("a drop_sets protocol", lambda d: d.get("drop_sets"))
    for axis in (*AXES, "mixed"):
        if axis != "mixed" or any(axis in d["axes"] for d in ours.values()):
            got["axis"][axis] = first(f"the {axis} axis", lambda d, a=axis: a in d["axes"])
            got["shuffle"][axis] = first(
                f"the quality-shuffle control on the {axis} axis",
                lambda d, a=axis: a in d["axes"] and d.get("shuffle"),
            )
            for c in R_CONTROLS:
                got["control"][(c, axis)] = first(
                    f"the {c} control on the {axis} axis",
                    lambda d, a=axis, c=c: a in d["axes"] and c in d.get("controls", []),
                )
    ng = study["no_gate"]
    if ng is not None:
        got["no_gate_axis"] = {"clean": next(iter(protocols), None)}
        for axis in got["axis"]:
            got["no_gate_axis"][axis] = next(
                (p for p, d in ours.items() if axis in d["axes"] and _covers(d, ng)), None
            )
        missing += [f"the {axis} axis for {ng!r}" for axis, p in got["no_gate_axis"].items()
                    if p is None]  # fmt: skip
    if missing:
        raise StudyError(
            f"study {study['name']!r} lacks what the mechanism analysis needs: "
            f"{'; '.join(missing)}. hint: run it with studies/mechanism-mosi-std.toml"
        )
    return got


def load_sweeps(study: dict[str, Any], needed: Iterable[tuple[str, str]]) -> dict[tuple, Any]:
    """{(arm, seed, protocol): results table} for every (arm, protocol) in ``needed`` and every
    model seed; refuses an unfinished study, saying how many sweeps are missing."""
    keys = [(arm, s, p) for arm, p in dict.fromkeys(needed) for s in study["seeds"]]
    paths = {k: study["sweeps"] / f"{k[0]}-s{k[1]}.{k[2]}.csv" for k in keys}
    absent = [p for p in paths.values() if not p.is_file()]
    if absent:
        raise StudyError(
            f"the study is unfinished: {len(absent)} of {len(paths)} sweeps this analysis "
            f"reads are missing (e.g. {absent[0]}). hint: `qamoe study status "
            f"{study['sweeps'].parent}` lists its cells; rerun `qamoe study` to finish them"
        )
    return {k: R.load(path) for k, path in paths.items()}


# --- per model seed ------------------------------------------------------------------------------


def curve(df: pd.DataFrame, axis: str, metric: str, variant: str = "normal") -> pd.Series:
    """Level -> value averaged over corruption seeds (one model seed's sweep)."""
    sub = df[(df["axis"] == axis) & (df["metric"] == metric) & (df["variant"] == variant)]
    return sub.groupby("level")["value"].mean().sort_index()


def grid_mean(df: pd.DataFrame, axis: str, metric: str = METRIC, variant: str = "normal") -> float:
    c = curve(df, axis, metric, variant)
    return float(c.mean()) if len(c) else math.nan


def spearman(c: pd.Series) -> float:
    """Spearman(level, value); a flat curve (r does not move at all) counts as 0."""
    if len(c) < 2 or np.ptp(c.to_numpy()) == 0:
        return 0.0
    return float(st.spearmanr(c.index.to_numpy(), c.to_numpy()).statistic)


def slope(c: pd.Series) -> float:
    """Least-squares slope of the value over the level (per unit level)."""
    return float(np.polyfit(c.index.to_numpy(), c.to_numpy(), 1)[0]) if len(c) > 1 else math.nan


def clean(df: pd.DataFrame, metric: str) -> float:
    sub = df[(df["axis"] == "clean") & (df["metric"] == metric) & (df["variant"] == "normal")]
    return float(sub["value"].mean()) if len(sub) else math.nan


def dropped(df: pd.DataFrame, subset: str, metric: str) -> float:
    sub = df[(df["axis"] == "drop") & (df["metric"] == metric) & (df["variant"] == "normal")]
    sub = sub[sub["modalities"] == subset]
    return float(sub["value"].mean()) if len(sub) else math.nan


# --- over model seeds ----------------------------------------------------------------------------


def summary(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sd and the 95 % t-interval of the mean over model seeds (the interval is the mean
    itself when every seed agrees; undefined with one seed)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and math.isfinite(sd):
        half = float(st.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return {"mean": mean, "sd": sd, "ci_low": low, "ci_high": high, "n": n,
            "per_seed": [float(x) for x in v]}  # fmt: skip


def judge(s: Mapping[str, Any], side: str, threshold: float) -> str:
    """'met' / 'not met' / 'not established': where the interval of the mean lies against
    ``threshold``; ``side`` 'max' (the value must be at most it), 'below' (strictly less),
    'min' (at least it)."""
    low, high = s["ci_low"], s["ci_high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "not established"
    if side == "min":
        return "met" if low >= threshold else "not met" if high < threshold else "not established"
    if side == "below":
        return "met" if high < threshold else "not met" if low >= threshold else "not established"
    return "met" if high <= threshold else "not met" if low > threshold else "not established"


def paired_mde(sd: float, n: int, alpha: float = 0.05, target: float = 0.8) -> float:
    """The smallest true mean difference a two-sided one-sample (paired) t-test over ``n``
    model seeds detects with power ``target``: the noncentral t with df n − 1 and
    noncentrality delta / (sd / sqrt(n)), solved for delta (as stats.mde for two samples)."""
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    crit = st.t.ppf(1 - alpha / 2, n - 1)

    def power(delta: float) -> float:
        ncp = delta / (sd / math.sqrt(n))
        return float(st.nct.sf(crit, n - 1, ncp) + st.nct.cdf(-crit, n - 1, ncp))

    upper = sd / math.sqrt(n)
    while power(upper) < target:
        upper *= 2
    return float(optimize.brentq(lambda d: power(d) - target, 0.0, upper, xtol=1e-12))


def compare(a: Sequence[float], b: Sequence[float], same_models: bool = False) -> dict[str, Any]:
    """mean(a) − mean(b) over model seeds with its 95 % interval, p and MDE.

    Two arms (different trained models): Welch's interval and the two-sample MDE; a model
    seed number shares no randomness between architectures, so nothing is paired. The same
    models under two evaluations (a control, the shuffle, a modality dropped): a[i] and b[i]
    come from one trained model, so the difference is taken seed by seed and judged by the
    paired (one-sample) t-interval over model seeds, the MDE of that test beside it; Welch's
    interval, which ignores the pairing, is kept for reference."""
    est = stats.welch(a, b)
    paired = summary(x - y for x, y in zip(a, b, strict=True)) if len(a) == len(b) else None
    if same_models and paired is not None:
        d = np.asarray(paired["per_seed"])
        diff, low, high = paired["mean"], paired["ci_low"], paired["ci_high"]
        sd = paired["sd"]
        n = int(d.size)  # the one-sample t-test of the differences, written out
        ok = n > 1 and math.isfinite(sd) and sd > 0
        p_value = float(2 * st.t.sf(abs(diff) / (sd / math.sqrt(n)), n - 1)) if ok else math.nan
        mde, method = paired_mde(sd, int(d.size)), "paired t over model seeds (same models)"
    else:
        diff, low, high, p_value = est.difference, est.ci_low, est.ci_high, est.p
        mde, method = stats.mde(stats.pooled_sd(a, b), len(a), len(b)), "Welch over model seeds"
    verdict = (
        "costs more than the seed noise (interval above 0)"
        if low > 0
        else "helps beyond the seed noise (interval below 0)"
        if high < 0
        else "within the seed noise (interval includes 0)"
        if math.isfinite(low)
        else "not established (too few seeds)"
    )
    if math.isfinite(mde) and abs(diff) < mde:
        verdict += "; below the MDE"
    return {"difference": diff, "ci_low": low, "ci_high": high, "p": p_value, "mde": mde,
            "method": method, "verdict": verdict, "welch": {"ci_low": est.ci_low,
            "ci_high": est.ci_high, "p": est.p}, "within_model": paired}  # fmt: skip


# --- 1. the mechanism ----------------------------------------------------------------------------


def modalities_of(frames: Iterable[pd.DataFrame]) -> list[str]:
    seen: set[str] = set()
    for df in frames:
        seen |= R.run_modalities(df)
    return [m for m in R.MODALITIES if m in seen]


def absent_r(study: dict[str, Any], got: dict[str, Any], runs: dict, mods: list[str]) -> dict:
    """r_m of a modality that is gone: in each drop set that holds it, and at the top level of
    the missing axis (where that level is below 1, some steps remain: said beside it)."""
    ref, seeds = study["reference"], study["seeds"]
    frames = [runs[(ref, s, got["drop"])] for s in seeds]
    subsets = sorted({str(x) for df in frames for x in df.loc[df["axis"] == "drop", "modalities"]})
    out: dict[str, Any] = {"drop": {}, "missing_top": {}}
    for subset in subsets:
        for m in (m for m in subset.split("+") if m in mods):
            s = summary(dropped(df, subset, f"{R.QUALITY_PREFIX}{m}") for df in frames)
            out["drop"][f"{m} (dropped: {subset})"] = s | {"status": judge(s, "below", ABSENT_R)}
    frames = [runs[(ref, s, got["axis"]["missing"])] for s in seeds]
    for m in mods:
        curves = [curve(df, "missing", f"{R.QUALITY_PREFIX}{m}") for df in frames]
        top = float(max(c.index.max() for c in curves))
        s = summary(c[top] for c in curves)
        out["missing_top"][m] = s | {"level": top, "status": judge(s, "below", ABSENT_R)}
    return out


def single_protocol(study: dict[str, Any], axis: str, m: str) -> str | None:
    """A protocol that corrupts ONLY ``m`` on ``axis`` for the reference (None if none)."""
    for p, d in study["protocols"].items():
        if _covers(d, study["reference"]) and axis in d["axes"] and list(d["modalities"]) == [m]:
            return p
    return None


def tracking(study: dict[str, Any], got: dict[str, Any], runs: dict, mods: list[str]) -> dict:
    """Per axis and modality: Spearman(level, mean r_m), the slope of the reference's MAE over
    the level (from a protocol that corrupts m alone where the study has one, else with every
    modality corrupted together), and the target's judgement."""
    ref, seeds = study["reference"], study["seeds"]
    out: dict[str, Any] = {}
    for axis in AXES:
        frames = [runs[(ref, s, got["axis"][axis])] for s in seeds]
        per: dict[str, Any] = {}
        for m in mods:
            rho = summary(spearman(curve(df, axis, f"{R.QUALITY_PREFIX}{m}")) for df in frames)
            alone = single_protocol(study, axis, m)
            src = [runs[(ref, s, alone)] for s in seeds] if alone else frames
            sl = summary(slope(curve(df, axis, METRIC)) for df in src)
            hurts = "yes" if sl["ci_low"] > 0 else "no" if sl["ci_high"] <= 0 else "not measurably"
            status = (
                judge(rho, "below", SPEARMAN)
                if hurts == "yes"
                else f"not applicable (the {METRIC} does not measurably rise with the level)"
            )
            per[m] = {
                "spearman": rho,
                "mae_slope": sl,
                "mae_slope_from": f"{m} corrupted alone ({alone})" if alone else TOGETHER,
                "hurts": hurts,
                "status": status,
            }
        out[axis] = per
    return out


def effects(study: dict[str, Any], got: dict[str, Any], runs: dict) -> dict[str, Any]:
    """Per axis: the quality-shuffle control and the r-controls against the normal pass of the
    same sweeps, and the no-gate arm against the reference (also clean)."""
    ref, ng, seeds = study["reference"], study["no_gate"], study["seeds"]
    out: dict[str, Any] = {"shuffle": {}, **{c: {} for c in R_CONTROLS}, "no_gate": {}}
    for axis in got["axis"]:
        p = got["shuffle"][axis]
        normal = [grid_mean(runs[(ref, s, p)], axis) for s in seeds]
        shuffled = [grid_mean(runs[(ref, s, p)], axis, variant=R.SHUFFLED) for s in seeds]
        out["shuffle"][axis] = compare(shuffled, normal, same_models=True)
        for c in R_CONTROLS:
            p = got["control"][(c, axis)]
            normal = [grid_mean(runs[(ref, s, p)], axis) for s in seeds]
            controlled = [grid_mean(runs[(ref, s, p)], axis, variant=c) for s in seeds]
            both = {"normal": summary(normal), "control": summary(controlled)}
            out[c][axis] = compare(controlled, normal, same_models=True) | both
    for axis, p in got["no_gate_axis"].items():
        a = [_value(runs[(ng, s, p)], axis) for s in seeds]
        b = [_value(runs[(ref, s, p)], axis) for s in seeds]
        out["no_gate"][axis] = compare(a, b) | {"no_gate": summary(a), "reference": summary(b)}
    return out


def _value(df: pd.DataFrame, axis: str) -> float:
    return clean(df, METRIC) if axis == "clean" else grid_mean(df, axis)


def residuals(study: dict[str, Any], runs: dict, mods: list[str]) -> dict[str, Any]:
    """The quality head's diagnostic where the study asked for it (``residuals = true``): per
    axis and modality, the mean squared residual of μ_m against the clean target and the
    mean σ² the head predicts, at the lowest and the top level, and how each follows the level
    (Spearman). Empty when no protocol of the reference has it."""
    p = residual_protocol(study)
    if p is None:
        return {}
    ref, seeds = study["reference"], study["seeds"]
    frames = [runs[(ref, s, p)] for s in seeds]
    out: dict[str, Any] = {"protocol": p}
    for axis in (a for a in study["protocols"][p]["axes"] if a in R.SPECTRUM_AXES):
        per: dict[str, Any] = {}
        for m in mods:
            row: dict[str, Any] = {}
            for name, prefix in (("residual", R.RESIDUAL_PREFIX), ("sigma2", R.SIGMA2_PREFIX)):
                curves = [curve(df, axis, f"{prefix}{m}") for df in frames]
                if not all(len(c) for c in curves):
                    continue
                row[f"{name}_low"] = summary(c.iloc[0] for c in curves)
                row[f"{name}_top"] = summary(c.iloc[-1] for c in curves)
                row[f"{name}_spearman"] = summary(spearman(c) for c in curves)
            if row:
                per[m] = row
        out[axis] = per
    return out


def residual_protocol(study: dict[str, Any]) -> str | None:
    return next(
        (p for p, d in study["protocols"].items()
         if d.get("residuals") and _covers(d, study["reference"])),
        None,
    )  # fmt: skip


# --- 2. the targets ------------------------------------------------------------------------------


def targets(study: dict[str, Any], got: dict[str, Any], runs: dict, folder: Path,
            mods: list[str]) -> dict[str, Any]:  # fmt: skip
    """The issue's targets on the test split: each with its numbers and a status."""
    ref, seeds = study["reference"], study["seeds"]
    first = next(iter(study["protocols"]))
    out: dict[str, Any] = {}
    for metric, (side, thr) in TARGETS.items():
        s = summary(clean(runs[(ref, sd, first)], metric) for sd in seeds)
        word = "<=" if side == "max" else ">="
        out[f"clean {metric} {word} {thr:g}"] = s | {"status": judge(s, side, thr)}
    drop = [runs[(ref, sd, got["drop"])] for sd in seeds]
    text_only = "+".join(m for m in mods if m != "text")
    name = f"full model no worse than text-only (clean − {text_only} dropped, {METRIC})"
    if "text" in mods and len(mods) > 1:
        full = [clean(df, METRIC) for df in drop]
        c = compare(full, [dropped(df, text_only, METRIC) for df in drop], same_models=True)
        out[name] = c | {"status": judge(c, "max", 0.0)}
    else:
        out[name] = {"status": "not established (the data has no text-only drop set)"}
    out[f"text-dropped {METRIC} <= the best constant"] = _versus_constant(study, folder, drop)
    out["ahead of every other arm on the missing axis"] = _ahead(study, folder)
    return out


def _versus_constant(study: dict[str, Any], folder: Path, drop: list[pd.DataFrame]) -> dict:
    anchors = _json(folder / "anchors.json") or {}
    found = (anchors.get(study["dataset"]) or {}).get("anchors", {}).get("constant", {})
    constant = (found.get("scores") or {}).get(METRIC)
    s = summary(dropped(df, "text", METRIC) for df in drop)
    if constant is None:
        return s | {"constant": None, "status": "not established (no constant anchor: "
                    "add anchors = [\"constant\"] to the study's [compare])"}  # fmt: skip
    return s | {"constant": float(constant), "status": judge(s, "max", float(constant))}


def _ahead(study: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The study table's comparisons of every other arm with the reference on the missing
    axis (the first protocol that sweeps it for more arms than the reference): met when every
    arm is behind (interval above 0 and Holm p < 0.05), not met when one is ahead."""
    table = pd.read_csv(folder / "table.csv") if (folder / "table.csv").is_file() else None
    if table is None:
        raise StudyError(
            f"{folder / 'table.csv'} is missing: the study has not finished. hint: rerun "
            "`qamoe study` to finish it (`qamoe study status` lists what is left)"
        )
    rows = pd.DataFrame()
    for p, d in study["protocols"].items():
        if "missing" in d["axes"]:
            axes = (*d["axes"], *(("drop",) if d.get("drop_sets") else ()))
            col = column_name(p, axes, "missing")
            sel = table[(table["dataset"] == study["dataset"]) & (table["column"] == col)
                        & (table["metric"] == METRIC) & (table["arm"] != study["reference"])
                        & ~table["arm"].astype(str).str.startswith(ANCHOR)]  # fmt: skip
            if len(sel):
                rows = sel
                break
    if rows.empty:
        return {"status": "not established (table.csv compares no arm on the missing axis)"}
    keys = ("difference", "ci_low", "ci_high", "p_holm", "mde")
    found = {str(r["arm"]): {k: float(r[k]) for k in keys} for _, r in rows.iterrows()}
    # arm − reference in MAE: positive is the reference ahead
    ahead = all(a["ci_low"] > 0 and a["p_holm"] < 0.05 for a in found.values())
    behind = any(a["ci_high"] < 0 for a in found.values())
    extra = {str(r["arm"]): {"n_seeds": int(r["n_seeds"]), "column": str(r["column"])}
             for _, r in rows.iterrows()}  # fmt: skip
    arms = {a: v | extra[a] for a, v in found.items()}
    status = "met" if ahead else "not met" if behind else "not established"
    return {"arms": arms, "status": status}


# --- output --------------------------------------------------------------------------------------


def _ms(s: Mapping[str, Any], digits: int = 3) -> str:
    if not math.isfinite(s.get("mean", math.nan)):
        return "n/a"
    sd = s.get("sd", math.nan)
    return f"{s['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if math.isfinite(sd) else "")


def _ci(low: float, high: float, digits: int = 3, sign: str = "") -> str:
    """'[low, high]'; ``sign`` '+' for a difference."""
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]" if math.isfinite(low) else "n/a"


def _num(value: Any, fmt: str) -> str:
    """A number for a table; n/a where it is undefined (None or NaN)."""
    ok = isinstance(value, int | float) and math.isfinite(value)
    return format(value, fmt) if ok else "n/a"


def _effect_rows(title: str, head: str, per_axis: Mapping[str, Any]) -> list[str]:
    lines = ["", f"## {title}", ""]
    lines.append(
        f"| {head} | Δ {METRIC} | 95 % CI | p | MDE | test | within-model Δ (mean ± sd) | reading |"
    )
    lines.append("|---|---:|---:|---:|---:|---|---:|---|")
    for axis, c in per_axis.items():
        within = _ms(c["within_model"]) if c.get("within_model") else "n/a"
        lines.append(
            f"| {axis} | {c['difference']:+.3f} | {_ci(c['ci_low'], c['ci_high'], sign='+')} | "
            f"{_num(c['p'], '.3g')} | {_num(c['mde'], '.3f')} | {c['method']} | {within} | "
            f"{c['verdict']} |"
        )
    return lines


def markdown(s: dict[str, Any]) -> str:
    m = s["mechanism"]
    lines = [
        f"# Mechanism analysis: {s['study']} ({s['dataset']}, {s['n_seeds']} model seeds)",
        "",
        f"Reference {s['reference']!r}, no-gate arm {s['no_gate']!r}. Mean ± sd over model seeds"
        " (corruption seeds and levels averaged within each); a threshold is judged by the 95 %"
        " t-interval of the mean: met / not met when it lies on one side, not established"
        " when it straddles it. Δ = first − second with its 95 % interval and the MDE at 80 %"
        " power over model seeds: Welch between arms (different models), the paired t-interval"
        " where both sides are the same models (controls, shuffle, a modality dropped).",
        "",
        f"## r of an absent modality (target < {ABSENT_R})",
        "",
        "| where | mean r ± sd | 95 % CI | status |",
        "|---|---:|---:|---|",
    ]
    for key, r in m["absent_r"]["drop"].items():
        lines.append(f"| {key} | {_ms(r)} | {_ci(r['ci_low'], r['ci_high'])} | {r['status']} |")
    for mod, r in m["absent_r"]["missing_top"].items():
        lines.append(f"| {mod} at missing level {r['level']:g} | {_ms(r)} | "
                     f"{_ci(r['ci_low'], r['ci_high'])} | {r['status']} |")  # fmt: skip
    lines += ["", "A drop set removes the modality entirely; at a missing level below 1 a share"
              " of its steps remains, so r there need not be near 0."]  # fmt: skip
    lines += [
        "",
        f"## Does r_m follow the level? (Spearman target < {SPEARMAN} where the damage hurts)",
        "",
        f"| axis | modality | Spearman(level, r) | {METRIC} slope per unit level [95 % CI] "
        "| hurts | status |",
        "|---|---|---:|---:|---|---|",
    ]
    for axis, per in m["tracking"].items():
        for mod, t in per.items():
            sl = t["mae_slope"]
            lines.append(
                f"| {axis} | {mod} | {_ms(t['spearman'], 2)} | {_ms(sl)} "
                f"{_ci(sl['ci_low'], sl['ci_high'], sign='+')} | {t['hurts']} | {t['status']} |"
            )
    froms = sorted({t["mae_slope_from"] for per in m["tracking"].values() for t in per.values()})
    lines += ["", f"The {METRIC} slope comes from: {'; '.join(froms)}. A flat r counts as"
              " Spearman 0; \"hurts\": the slope's interval lies above 0."]  # fmt: skip
    e = m["effects"]
    lines += _effect_rows("Quality-shuffle control: shuffled − normal (grid mean)", "axis",
                          e["shuffle"])  # fmt: skip
    for c in R_CONTROLS:
        lines += _effect_rows(f"{c} control: {c} − normal (grid mean)", "axis", e[c])
    lines += _effect_rows(f"No gate: {s['no_gate']} − {s['reference']}", "axis", e["no_gate"])
    lines += _residual_rows(m["residuals"])
    lines += ["", "## Targets (issue 32)", "", "| target | numbers | status |", "|---|---|---|"]
    note = (
        "The missing-axis comparisons are the study table's rows (arm − reference, Welch's"
        " interval, Holm p, MDE): met when every arm's interval lies above 0 and its Holm p is"
        " below 0.05, not met when some arm's interval lies below 0."
    )
    for key, t in s["targets"].items():
        lines.append(f"| {key} | {_target_numbers(t)} | {t['status']} |")
    return "\n".join([*lines, "", note]) + "\n"


def _residual_rows(res: Mapping[str, Any]) -> list[str]:
    rows = [(axis, mod, r) for axis, per in res.items() if axis != "protocol"
            for mod, r in per.items() if "residual_low" in r and "sigma2_low" in r]  # fmt: skip
    if not rows:
        return []
    lines = [
        "",
        f"## Quality head: residual ‖μ − target‖² and predicted σ² ({res['protocol']})",
        "",
        "| axis | modality | residual, lowest → top level | σ², lowest → top level |"
        " ρ(level, residual) | ρ(level, σ²) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for axis, mod, r in rows:
        lines.append(
            f"| {axis} | {mod} | {_ms(r['residual_low'])} → {_ms(r['residual_top'])} | "
            f"{_ms(r['sigma2_low'])} → {_ms(r['sigma2_top'])} | "
            f"{_ms(r['residual_spearman'], 2)} | {_ms(r['sigma2_spearman'], 2)} |"
        )
    return lines


def _target_numbers(t: Mapping[str, Any]) -> str:
    if "arms" in t:
        return "; ".join(
            f"{a}: Δ {r['difference']:+.3f} {_ci(r['ci_low'], r['ci_high'], sign='+')}, p_holm "
            f"{r['p_holm']:.3g}, MDE {r['mde']:.3f}"
            for a, r in t["arms"].items()
        )
    if "difference" in t:
        ci = _ci(t["ci_low"], t["ci_high"], sign="+")
        return f"Δ {t['difference']:+.3f} {ci}, MDE {t['mde']:.3f}"
    if "mean" in t:
        const = f" vs constant {t['constant']:.3f}" if t.get("constant") is not None else ""
        return f"{_ms(t)} {_ci(t['ci_low'], t['ci_high'])}{const}"
    return ""


def _plain(value: Any) -> Any:
    """JSON-able: NaN as null, tuple keys as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


OUTPUTS = ("summary.json", "tables.md")


def analyse(
    folder: Path, out: Path, dataset: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Write summary.json and tables.md for the study folder ``folder`` into ``out`` (an
    existing one only with ``force``)."""
    for name in OUTPUTS:
        if (out / name).exists() and not force:
            raise OutputExistsError(out / name)
    study = read_study(folder, dataset)
    got = roles(study)
    ref, ng = study["reference"], study["no_gate"]
    mods_single = [
        p for axis in AXES for m in R.MODALITIES if (p := single_protocol(study, axis, m))
    ]
    needed = [(ref, next(iter(study["protocols"]))), (ref, got["drop"])]
    needed += [(ref, p) for p in (*got["axis"].values(), *got["shuffle"].values())]
    needed += [(ref, p) for p in (*got["control"].values(), *mods_single)]
    needed += [(a, p) for p in got["no_gate_axis"].values() for a in (ref, ng)]
    if (p := residual_protocol(study)) is not None:
        needed.append((ref, p))
    runs = load_sweeps(study, needed)
    mods = modalities_of(runs[(ref, s, got["drop"])] for s in study["seeds"])
    result: dict[str, Any] = {
        "study": study["name"],
        "dataset": study["dataset"],
        "reference": ref,
        "no_gate": ng,
        "n_seeds": len(study["seeds"]),
        "metric": METRIC,
        "mechanism": {
            "absent_r": absent_r(study, got, runs, mods),
            "tracking": tracking(study, got, runs, mods),
            "effects": effects(study, got, runs),
            "residuals": residuals(study, runs, mods),
        },
    }
    result["targets"] = targets(study, got, runs, folder, mods)
    result = _plain(result)
    out.mkdir(parents=True, exist_ok=True)
    texts = (json.dumps(result, indent=2) + "\n", markdown(result))
    for name, text in zip(OUTPUTS, texts, strict=True):
        with atomic_path(out / name, force=force) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="the study folder (qamoe study ... --out FOLDER)")
    ap.add_argument("--out", type=Path, required=True, help="folder for summary.json, tables.md")
    ap.add_argument("--dataset", help="the dataset analysed (required when the study has several)")
    ap.add_argument("--force", action="store_true", help="replace summary.json and tables.md")
    args = ap.parse_args()
    try:
        result = analyse(args.study, args.out, args.dataset, args.force)
    except StudyError as exc:
        msg, _, hint = str(exc).partition(" hint: ")
        sys.exit(f"error: {msg}" + (f"\nhint: {hint}" if hint else ""))
    except QamoeError as exc:  # a sweep that is not a results table, an output that exists
        sys.exit(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""))
    print(json.dumps({k: v["status"] for k, v in result["targets"].items()}, indent=2))


if __name__ == "__main__":
    main()
