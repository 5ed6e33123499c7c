"""docs/results/patterns-mosi-std: QA-MoE and early fusion on MOSI-std under the temporal patterns
(burst missingness, AR(1)-correlated noise) beside the default ones (random steps, white).

    .venv/bin/python benchmarks/mosi_std_patterns.py [--work runs/mosi-std-token-exp]
        [--out docs/results/patterns-mosi-std] [--seeds 3] [--jobs 2]

It reuses the checkpoints and default-pattern sweeps of ``mosi_std_experiment.py --pooling
token --stages main`` (run it first with the same ``--work``): token-level MiniLM text, where
"steps" are word pieces, so a burst removes a run of neighbouring tokens; the audio is one
utterance vector, where a burst and a random drop are the same thing. For each model seed it
runs ``qamoe eval --sweep --pattern burst,correlated`` (burst mean 5 steps, rho 0.9: the
defaults), then one ``qamoe report --pool-seeds`` over both patterns, and writes the grid
means per (model, axis, pattern) to ``summary.json``.

``--train-patterns F[,F...]`` adds both models trained with ``burst_fraction =
correlated_fraction = F`` (with F = 0.5 half of the training draws that drop steps drop runs
and half of the noisy ones are AR(1)), swept under both patterns too (run names ``MODEL-ptF``),
plus valid-split sweeps for the choice.

``--select-patterns 0,0.25,0.5`` chooses that share without the test split: both models, model
seed 0, trained on each of the 5 grouped CV folds of the std train+valid videos (``extract
mosi --cv-fold K``) for each share, scored by the fold's valid mixed-grid MAE averaged over
the two pattern families; writes ``cv_selection.json`` and stops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import mosi_std_experiment as exp  # noqa: E402
from benchmarks.mosi_lite_experiment import (  # noqa: E402
    Job,
    pooled_report,
    qamoe_exe,
    run_all,
    sweep_argv,
    write_config,
)
from benchmarks.mosi_std_experiment import _cells, _ms, _read, seed_comparison  # noqa: E402

MODELS = ("qamoe", "early-fusion")
# The two pattern families: eval arguments, and the short name in file names
PATTERNS = {"random/white": (), "burst/correlated": ("--pattern", "burst,correlated")}


def _ctx(work: Path, seeds: int) -> exp.Ctx:
    """The MOSI-std experiment's job builder (token-level text) over ``work``."""
    return exp.Ctx(argparse.Namespace(work=work, seeds=seeds, pooling="token", cache_dir=None))


def _pattern_config(ctx: exp.Ctx, frac: float) -> Path:
    """The main stage's defaults with burst/correlated training draws at share ``frac``."""
    train = {"burst_fraction": frac, "correlated_fraction": frac}
    return write_config(ctx.work / "configs" / f"patterns-{frac:g}.json", {}, train)


def _valid_sweeps(ctx: exp.Ctx, data: Path, run: Path, tag: str) -> dict[str, Job]:
    """Mixed-axis sweeps of ``run`` on the valid split, one per pattern family."""
    valid = ("--split", "valid", "--axis", "mixed", "--no-shuffle")
    return {
        pat: ctx.eval(data, run, f"{tag}-{pat.split('/')[0]}", *valid, *extra)
        for pat, extra in PATTERNS.items()
    }


def _mixed_mae(path: Path) -> float:
    return statistics.mean(_cells(_read(path), "MAE", axis="mixed", variant="normal"))


def train_on_patterns(ctx: exp.Ctx, data: Path, frac: float, jobs: int) -> None:
    """``MODEL-ptF-sS``: trained with ``_pattern_config``, each swept under the default
    pattern (the burst sweep follows with the others)."""
    cfg = _pattern_config(ctx, frac)
    train, sweep = [], []
    for m in MODELS:
        for s in ctx.seeds:
            run = ctx.work / "runs" / f"{m}-pt{frac:g}-s{s}"
            train.append(ctx.train(data, run, m, s, cfg))
            sweep.append(ctx.eval(data, run, run.name, "--no-shuffle"))
    run_all(train, jobs, "train patterns")
    run_all(sweep, jobs, "eval patterns-trained")


def valid_grid(ctx: exp.Ctx, data: Path, models: list[str], jobs: int) -> dict[str, Any]:
    """Mixed-grid MAE on the VALID split, per model and pattern (mean of the model seeds) and
    pattern-trained minus default-trained over the model seeds (Welch, unpaired): the
    evidence a choice may rest on."""
    plan = {(m, s): _valid_sweeps(ctx, data, ctx.work / "runs" / f"{m}-s{s}", f"{m}-s{s}-valid")
            for m in models for s in ctx.seeds}  # fmt: skip
    run_all([j for by_pat in plan.values() for j in by_pat.values()], jobs, "valid sweeps")
    cell = {(m, pat): [_mixed_mae(plan[(m, s)][pat].done_when) for s in ctx.seeds]
            for m in models for pat in PATTERNS}  # fmt: skip
    out: dict[str, Any] = {
        m: {pat: _ms(cell[(m, pat)])["mean"] for pat in PATTERNS} for m in models
    }
    for m in (m for m in models if "-pt" in m):
        base = m.split("-pt")[0]
        for pat in PATTERNS:
            out[f"{m} - {base}, {pat}"] = seed_comparison(cell[(m, pat)], cell[(base, pat)])
    return out


def select_on_cv(work: Path, fracs: list[float], jobs: int) -> dict[str, Any]:
    """Per model and share: mean over the 5 CV folds of the valid mixed-grid MAE (both pattern
    families averaged), every fold's score, and the share with the lowest mean."""
    ctx = _ctx(work / "cv", 1)
    folds = [ctx.work / "data" / f"std-cv{k}.h5" for k in range(1, 6)]
    (ctx.work / "data").mkdir(parents=True, exist_ok=True)
    (ctx.work / "results").mkdir(parents=True, exist_ok=True)
    run_all([ctx.extract(f, "--cv-fold", f.stem[-1]) for f in folds], 1, "extract cv")
    train, plan = [], {}
    for m in MODELS:
        for frac in fracs:
            cfg = _pattern_config(ctx, frac)
            for f in folds:
                run = ctx.work / "runs" / f"{m}-f{frac:g}-{f.stem}"
                train.append(ctx.train(f, run, m, 0, cfg))
                plan[(m, frac, f.stem)] = _valid_sweeps(ctx, f, run, run.name)
    run_all(train, jobs, "train cv")
    run_all([j for by_pat in plan.values() for j in by_pat.values()], jobs, "valid cv")
    result: dict[str, Any] = {
        "criterion": "mean over 5 grouped CV folds (model seed 0) of the valid mixed-grid MAE, "
        "random/white and burst/correlated averaged",
    }
    for m in MODELS:
        per = {f"{frac:g}": [round(statistics.mean(_mixed_mae(j.done_when)
                                                   for j in plan[(m, frac, f.stem)].values()), 4)
                             for f in folds]
               for frac in fracs}  # fmt: skip
        means = {k: round(statistics.mean(v), 4) for k, v in per.items()}
        result[m] = {"per_fold": per, "mean": means, "chosen": min(means, key=means.__getitem__)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs/mosi-std-token-exp")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/patterns-mosi-std")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--train-patterns", default=None, metavar="F,F,...",
                    help="also train both models with each burst/correlated share F")  # fmt: skip
    ap.add_argument("--select-patterns", default=None, metavar="F,F,...",
                    help="choose the share on grouped CV folds instead (then stop)")  # fmt: skip
    args = ap.parse_args()
    q, work = qamoe_exe(), args.work
    if args.select_patterns:
        fracs = [float(x) for x in args.select_patterns.split(",")]
        sel = select_on_cv(work, fracs, args.jobs)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cv_selection.json").write_text(json.dumps(sel, indent=2) + "\n")
        print(json.dumps({m: sel[m]["mean"] for m in MODELS}, indent=1))
        return
    data = work / "data" / "std.h5"
    runs = [(m, s) for m in MODELS for s in range(args.seeds)]
    missing = [f"{m}-s{s}" for m, s in runs if not (work / "results" / f"{m}-s{s}.csv").exists()]
    if not data.exists() or missing:
        sys.exit(
            f"error: {work} lacks the token-level main stage ({', '.join(missing) or data}); "
            "run benchmarks/mosi_std_experiment.py --pooling token --stages main "
            f"--work {work} first"
        )
    models, ctx = list(MODELS), _ctx(work, args.seeds)
    for frac in [float(x) for x in args.train_patterns.split(",")] if args.train_patterns else ():
        train_on_patterns(ctx, data, frac, args.jobs)
        models += [f"{m}-pt{frac:g}" for m in MODELS]
    jobs, files = [], {"random/white": [], "burst/correlated": []}
    for m, s in [(m, s) for m in models for s in range(args.seeds)]:
        tag = f"{m}-s{s}"
        out = work / "results" / f"{tag}-burst.csv"
        argv = sweep_argv(
            q, work / "runs" / tag, data, out, tag, "--pattern", "burst,correlated", "--no-shuffle"
        )
        jobs.append(Job(f"eval {tag} burst", argv, out, work / "logs" / f"eval-{tag}-burst.log"))
        files["random/white"].append(work / "results" / f"{tag}.csv")
        files["burst/correlated"].append(out)
    run_all(jobs, args.jobs, "eval burst")
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for pattern, paths in files.items():
        for m in models:
            for axis in ("mixed", "missing", "noise"):
                for metric in ("MAE", "Has0_acc_2"):
                    means = [
                        statistics.mean(_cells(_read(p), metric, axis=axis, variant="normal"))
                        for p in paths
                        if p.name.startswith(f"{m}-s")
                    ]
                    key = f"{axis} {metric}"
                    summary.setdefault(m, {}).setdefault(key, {})[pattern] = _ms(means)["mean"]
                    top = [
                        statistics.mean(
                            _cells(_read(p), metric, axis=axis, variant="normal", level="0.9")
                        )
                        for p in paths
                        if p.name.startswith(f"{m}-s")
                    ]
                    summary[m].setdefault(f"{key} @0.9", {})[pattern] = _ms(top)["mean"]
    if args.train_patterns:
        summary["valid mixed MAE"] = valid_grid(ctx, data, models, args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    every = [p for paths in files.values() for p in paths]
    title = f"MOSI-std (token MiniLM + audio): patterns, {args.seeds} model seeds"
    pooled_report(q, every, args.out / "report", title, work / "logs" / "report-patterns.log")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a qamoe command failed: its log holds the details
        sys.exit(f"error: {exc}")
