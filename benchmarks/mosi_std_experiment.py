"""The experiment of docs/results/mosi-std: QA-MoE and its baselines on MOSI-std (text + audio).

    .venv/bin/python benchmarks/mosi_std_experiment.py [--work runs/mosi-std-exp]
        [--out docs/results/mosi-std] [--seeds 3] [--jobs 2] [--stages select,main,...]
        [--pooling sentence] [--cache-dir DIR] [--fresh]

Only ``qamoe`` commands do the work (extract, train, eval, report); the scheduling helpers
(Job, run_all, ...) are those of ``mosi_lite_experiment.py``. Stages (``--stages``):

- ``select``: defaults chosen WITHOUT test: a small grid of training settings, each trained
  on the 5 grouped CV folds of the std train+valid videos (``extract mosi --cv-fold K``),
  scored by the mean over folds of the valid MAE (clean and at level 0.5, averaged). The
  winner's settings are used by every model below (baselines included, so the comparison is
  not tuned for QA-MoE alone). The test scores those runs print are never read here.
- ``main``: QA-MoE and the three baselines, ``--seeds`` model seeds, swept on the mixed,
  missing and noise axes (levels 0..0.9, 3 corruption seeds; the quality-shuffle control)
  plus the fixed-missing subsets (``--drop-sets``).
- ``specialists``: QA-MoE trained at ONE mixed level (0, 0.3, 0.6, 0.9), evaluated there.
- ``ablations``: the ablations/choices of ``mosi_lite_experiment.ABLATIONS``.
- then the analysis: tables (``results.md``), ``summary.json`` and ``qamoe report``.

Finished jobs are skipped on a rerun (their output exists); ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.mosi_lite_experiment import (  # noqa: E402  (needs the path above)
    ABLATIONS,
    MODELS,
    SPECIALIST_LEVELS,
    Job,
    pooled_report,
    qamoe_exe,
    run_all,
    sweep_argv,
    train_argv,
    write_config,
)

STAGES = ("select", "main", "specialists", "ablations", "zoo")
# The published models (docs/models.md), trained with the same settings and seeds as MODELS.
ZOO = ("tfn", "lmf", "mult", "misa", "self-mm", "almt", "lnln")
MAIN = (*MODELS, *ZOO)  # configurations trained with ctx.seeds
# Training settings tried by grouped CV (train section of a config; every model reads them).
GRID: dict[str, dict[str, Any]] = {
    "default": {},
    "wd0.1": {"weight_decay": 0.1},
    "lr3e-4": {"lr": 3e-4},
    "lr3e-4-wd0.1": {"lr": 3e-4, "weight_decay": 0.1},
}
METRICS = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
# The README of ../shared/data/cmu-mosi-labels (frozen MiniLM sentence vector, CMU test).
ANCHORS = {
    "ridge": {"MAE": 0.950, "Corr": 0.694, "Non0_acc_2": 0.779, "Has0_acc_2": 0.767},
    "logistic (C by grouped CV)": {"Has0_acc_2": 0.789},
}


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.q = qamoe_exe()
        self.work: Path = args.work
        self.seeds = range(args.seeds)
        # specialists and ablations may use fewer model seeds when time is short
        self.extra_seeds = range(getattr(args, "extra_seeds", None) or args.seeds)

    def extract(self, out: Path, *extra: str) -> Job:
        argv = [
            self.q,
            "extract",
            "mosi",
            "--out",
            str(out),
            "--text-pooling",
            self.args.pooling,
            "--quiet",
            *extra,
        ]
        if self.args.cache_dir:
            argv += ["--cache-dir", str(self.args.cache_dir)]
        return Job(f"extract {out.name}", argv, out, self.work / "logs" / f"{out.stem}.log")

    def train(self, data: Path, run: Path, model: str, seed: int, cfg: Path) -> Job:
        argv = train_argv(self.q, data, run, model, seed, "--config", str(cfg))
        return Job(
            f"train {run.name}",
            argv,
            run / "metrics.json",
            self.work / "logs" / f"train-{run.parent.name}-{run.name}.log",
        )

    def eval(self, data: Path, run: Path, tag: str, *extra: str) -> Job:
        out = self.work / "results" / f"{tag}.csv"
        argv = sweep_argv(self.q, run, data, out, tag, *extra)
        return Job(f"eval {tag}", argv, out, self.work / "logs" / f"eval-{tag}.log")


def _val_score(run: Path) -> float:
    m = json.loads((run / "metrics.json").read_text())
    return (m["val_clean"]["MAE"] + m["val"]["0.5"]["MAE"]) / 2


def stage_select(ctx: Ctx) -> dict[str, Any]:
    """Grid x 5 grouped CV folds (model seed 0); returns the choice and every fold's score."""
    w = ctx.work
    folds = [w / "data" / f"std-cv{k}.h5" for k in range(1, 6)]
    run_all([ctx.extract(f, "--cv-fold", f.stem[-1]) for f in folds], 1, "extract cv")
    jobs = []
    for name, train in GRID.items():
        cfg = write_config(w / "configs" / f"grid-{name}.json", {}, train)
        jobs += [ctx.train(f, w / "select" / f"{name}-{f.stem}", "qamoe", 0, cfg) for f in folds]
    run_all(jobs, ctx.args.jobs, "select")
    scores = {n: [_val_score(w / "select" / f"{n}-{f.stem}") for f in folds] for n in GRID}
    best = min(scores, key=lambda n: statistics.mean(scores[n]))
    return {
        "criterion": "mean over 5 grouped CV folds of (valid clean MAE + valid@0.5 MAE)/2",
        "scores": scores,
        "chosen": best,
        "train": GRID[best],
    }


def build_jobs(ctx: Ctx, data: Path, chosen: dict[str, Any], stages: set[str]) -> tuple:
    w = ctx.work
    base = write_config(w / "configs" / "chosen.json", {}, chosen)
    general: list[tuple[str, str, Path]] = []
    if "main" in stages:
        general += [(m, m, base) for m in MODELS]
    if "zoo" in stages:
        general += [(m, m, base) for m in ZOO]
    if "ablations" in stages:
        general += [
            (n, "qamoe", write_config(w / "configs" / f"{n}.json", over, chosen))
            for n, over in ABLATIONS.items()
        ]
    train, evals = [], []
    for name, model, cfg in general:
        for s in ctx.seeds if name in MAIN else ctx.extra_seeds:
            run = w / "runs" / f"{name}-s{s}"
            train.append(ctx.train(data, run, model, s, cfg))
            evals.append(ctx.eval(data, run, f"{name}-s{s}", "--drop-sets"))
    if "specialists" in stages:
        for lv in SPECIALIST_LEVELS:
            spec = {
                "train_levels": [lv, lv],
                "clean_fraction": 1.0 if lv == 0 else 0.0,
                "val_levels": [lv],
            }
            cfg = write_config(w / "configs" / f"specialist-{lv:.1f}.json", {}, chosen | spec)
            for s in ctx.extra_seeds:
                run = w / "runs" / f"specialist-{lv:.1f}-s{s}"
                train.append(ctx.train(data, run, "qamoe", s, cfg))
                evals.append(
                    ctx.eval(
                        data,
                        run,
                        run.name,
                        "--axis",
                        "mixed",
                        "--levels",
                        f"{lv:g}",
                        "--no-shuffle",
                    )
                )
    return train, evals


# -- analysis ---------------------------------------------------------------------------------
def _read(path: Path) -> list[dict[str, str]]:
    """Rows of a results file as strings, through results.load, so files of either schema
    read alike (schema 2: a drop row's modalities are the DROPPED ones)."""
    from qamoe_core.evaluation.results import load

    df = load(path)
    return [{k: str(v) for k, v in row.items()} for row in df.to_dict("records")]


def _cells(rows: list[dict[str, str]], metric: str, **where: str) -> list[float]:
    return [
        float(r["value"])
        for r in rows
        if r["metric"] == metric and all(r[k] == v for k, v in where.items())
    ]


def _ms(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "sd": round(sd, 4), "n": len(values)}


def per_model(ctx: Ctx, name: str) -> dict[str, Any] | None:
    """Clean test metrics and sweep means of one configuration, over model seeds."""
    seeds = ctx.seeds if name in MAIN else ctx.extra_seeds
    files = [ctx.work / "results" / f"{name}-s{s}.csv" for s in seeds]
    if not all(f.exists() for f in files):
        return None
    out: dict[str, list[float]] = defaultdict(list)
    for f in files:
        rows = _read(f)
        for m in METRICS:
            out[f"clean {m}"] += _cells(rows, m, axis="clean", variant="normal")
        for axis in ("mixed", "missing", "noise"):
            for m in ("MAE", "Has0_acc_2"):
                out[f"{axis} {m}"].append(
                    statistics.mean(_cells(rows, m, axis=axis, variant="normal"))
                )
        shuffled = _cells(rows, "MAE", axis="mixed", variant="quality_shuffle")
        if shuffled:
            out["mixed MAE shuffled"].append(statistics.mean(shuffled))
        for kept, dropped in (("text", "audio"), ("audio", "text")):  # drop rows: the DROPPED
            out[f"{kept} only MAE"].append(
                statistics.mean(
                    _cells(rows, "MAE", axis="drop", modalities=dropped, variant="normal")
                )
            )
    return {k: _ms(v) for k, v in out.items()}


def constant_anchor(data: Path) -> dict[str, Any]:
    """The best constant predictors fitted on train: its mean and its median."""
    import numpy as np

    from qamoe_core.data.store import FeatureFile
    from qamoe_core.metrics import compute

    with FeatureFile(data) as f:
        train = f.read("train", slice(None))["label"]
        test = f.read("test", slice(None))["label"]
    out = {}
    for name, c in (("train mean", float(train.mean())), ("train median", float(np.median(train)))):
        m = compute(np.full_like(test, c), test, "mosi")
        out[name] = {
            "value": round(c, 3),
            **{k: round(m[k], 4) for k in ("MAE", "Has0_acc_2", "Non0_acc_2")},
        }
    return out


def paired(ctx: Ctx, a: str, b: str) -> dict[str, Any] | None:
    """Mixed-grid mean MAE of ``a`` minus ``b`` over the model seeds (corruption seeds and
    levels averaged inside each seed), compared unpaired by :func:`seed_comparison`."""
    va, vb = [], []
    for s in ctx.seeds:
        fa, fb = (ctx.work / "results" / f"{n}-s{s}.csv" for n in (a, b))
        if not (fa.exists() and fb.exists()):
            return None
        ma, mb = (
            statistics.mean(_cells(_read(f), "MAE", axis="mixed", variant="normal"))
            for f in (fa, fb)
        )
        va.append(ma)
        vb.append(mb)
    return {"a": a, "b": b, **seed_comparison(va, vb)}


def seed_comparison(a: list[float], b: list[float]) -> dict[str, Any]:
    """mean(a) − mean(b), one value per model seed on each side, compared UNPAIRED (two
    arms share nothing through a seed number): Welch's 95 % t-interval with the exact t
    quantile, its p-value, and the minimum detectable difference at 80 % power for these seeds
    (qamoe_core.evaluation.stats, the statistics of ``qamoe report --reference``).
    ``per_seed`` lists a − b by seed number for reading only; the interval does not pair them.
    NaN interval and
    MDE with fewer than two seeds a side."""
    from qamoe_core.evaluation import stats

    est = stats.welch(a, b)
    mde = stats.mde(stats.pooled_sd(a, b), len(a), len(b))
    return {
        "per_seed": [round(x - y, 4) for x, y in zip(a, b, strict=False)],
        "mean": round(est.difference, 4),
        "ci95": [round(est.ci_low, 4), round(est.ci_high, 4)],
        "p": round(est.p, 4),
        "mde": round(mde, 4),
        "method": "Welch t over model seeds (unpaired; exact t quantile)",
    }


def specialists(ctx: Ctx) -> dict[str, Any]:
    """MAE of each specialist at its own level against the general QA-MoE at that level."""
    out = {}
    for lv in SPECIALIST_LEVELS:
        spec, gen = [], []
        for s in ctx.extra_seeds:
            fs = ctx.work / "results" / f"specialist-{lv:.1f}-s{s}.csv"
            fg = ctx.work / "results" / f"qamoe-s{s}.csv"
            if not (fs.exists() and fg.exists()):
                break
            axis = {"axis": "clean"} if lv == 0 else {"axis": "mixed", "level": f"{lv:g}"}
            spec += _cells(_read(fs), "MAE", variant="normal", **axis)
            gen += _cells(_read(fg), "MAE", variant="normal", **axis)
        if spec and gen:
            out[f"{lv:.1f}"] = {"specialist": _ms(spec), "qamoe": _ms(gen)}
    return out


def analyse(ctx: Ctx, data: Path, selection: dict[str, Any] | None) -> dict[str, Any]:
    names = [*MAIN, *ABLATIONS]
    models = {n: r for n in names if (r := per_model(ctx, n)) is not None}
    baselines = [m for m in MAIN[1:] if m in models]
    best = min(baselines, key=lambda m: models[m]["mixed MAE"]["mean"]) if baselines else None
    return {
        "data": str(data),
        "seeds": len(ctx.seeds),
        "extra_seeds": len(ctx.extra_seeds),
        "selection": selection,
        "constant": constant_anchor(data),
        "anchors_readme": ANCHORS,
        "models": models,
        "best_baseline_mixed": best,
        "paired_qamoe_vs_best": paired(ctx, "qamoe", best) if best else None,
        "specialists": specialists(ctx),
    }


def _fmt(cell: dict[str, float] | None, pct: bool = False) -> str:
    if cell is None:
        return "—"
    k = 100.0 if pct else 1.0
    return f"{cell['mean'] * k:.{1 if pct else 3}f} ± {cell['sd'] * k:.{1 if pct else 3}f}"


def write_tables(summary: dict[str, Any], out: Path) -> None:
    cols = [
        ("clean MAE", False),
        ("clean Corr", False),
        ("clean Has0_acc_2", True),
        ("clean Has0_F1_score", True),
        ("clean Non0_acc_2", True),
        ("clean Non0_F1_score", True),
        ("clean Mult_acc_7", True),
        ("mixed MAE", False),
        ("mixed Has0_acc_2", True),
        ("missing MAE", False),
        ("noise MAE", False),
        ("text only MAE", False),
        ("audio only MAE", False),
    ]
    lines = [
        f"Test split, mean ± sd over {summary['seeds']} model seeds (ablations: "
        f"{summary['extra_seeds']}) (sweeps: mean over "
        "levels 0..0.9 and 3 corruption seeds). Accuracies and F1 in %.",
        "",
        "| model | " + " | ".join(c for c, _ in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, r in summary["models"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c), p) for c, p in cols) + " |")
    q = summary["models"].get("qamoe", {})
    if "mixed MAE shuffled" in q:
        lines += [
            "",
            f"Quality-shuffle control (QA-MoE, mixed MAE): normal "
            f"{_fmt(q['mixed MAE'])}, shuffled {_fmt(q['mixed MAE shuffled'])}.",
        ]
    lines += [
        "",
        "```json",
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "constant",
                    "anchors_readme",
                    "selection",
                    "paired_qamoe_vs_best",
                    "specialists",
                )
            },
            indent=1,
        ),
        "```",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs/mosi-std-exp")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/mosi-std")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--extra-seeds", type=int, default=None, help="for specialists/ablations")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated: {STAGES}")
    ap.add_argument("--pooling", default="sentence", choices=("sentence", "token"))
    ap.add_argument("--cache-dir", type=Path, default=None, help="MiniLM cache (qamoe default)")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    if stages - set(STAGES):
        sys.exit(f"error: unknown stages {sorted(stages - set(STAGES))}; choose from {STAGES}")
    ctx = Ctx(args)
    if args.fresh and ctx.work.exists():
        shutil.rmtree(ctx.work)
    for sub in ("results", "data"):
        (ctx.work / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = ctx.work / "data" / "std.h5"
    run_all([ctx.extract(data)], 1, "extract")
    sel_file = ctx.work / "selection.json"
    selection = json.loads(sel_file.read_text()) if sel_file.exists() else None
    if "select" in stages and selection is None:
        selection = stage_select(ctx)
        sel_file.write_text(json.dumps(selection, indent=2))
    chosen = selection["train"] if selection else {}
    train, evals = build_jobs(ctx, data, chosen, stages)
    run_all(train, args.jobs, "train")
    run_all(evals, args.jobs, "eval")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = analyse(ctx, data, selection)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_tables(summary, args.out)
    files = [ctx.work / "results" / f"{m}-s{s}.csv" for m in MAIN for s in ctx.seeds]
    if any(f.exists() for f in files):
        title = f"QA-MoE on MOSI-std ({len(ctx.seeds)} model seeds x 3 corruption seeds)"
        pooled_report(ctx.q, files, args.out / "report", title, ctx.work / "logs/report.log")
    print(json.dumps({k: summary[k] for k in ("selection", "paired_qamoe_vs_best")}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a qamoe command failed: its log holds the details
        sys.exit(f"error: {exc}")
