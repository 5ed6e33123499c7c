"""The three-modality experiment of docs/results/mosi-bclstm-cv: bc-LSTM-CV (the 31 bc-LSTM
test videos, 5 folds by video), where text-CNN, openSMILE audio and 3D-CNN vision are all
honest.

    .venv/bin/python benchmarks/mosi_bclstm_cv_experiment.py [--work runs/mosi-bclstm-cv-exp]
        [--out docs/results/mosi-bclstm-cv] [--seeds 3] [--jobs 2] [--fresh]

For each fold K (``qamoe extract mosi --protocol bclstm-cv --fold K``: test = video group K,
valid = group K mod 5 + 1, train = the other three), QA-MoE and the three baselines are
trained with the repository defaults (the training settings that won the grouped-CV selection
of docs/results/mosi-std: ``default``; nothing is chosen here) for ``--seeds`` model seeds, and
swept on their fold's test videos (mixed / missing / noise, levels 0..0.9, 3 corruption seeds,
fixed-missing subsets). Every metric is averaged over the 5 folds inside a model seed, then
reported as mean ± sd over model seeds; the fold-to-fold spread is reported as well.

Anchors on the same folds: the train-mean constant, a ridge regression and a logistic
regression on the concatenated features (their strength chosen on the fold's valid videos).
The comparison (QA-MoE minus the best baseline, mixed-grid MAE) is over model seeds, unpaired:
Welch's t-interval with the exact quantile and the minimum detectable difference
(qamoe_core.evaluation.stats). ``qamoe report`` pools folds and model seeds into one band per model
(run label ``MODEL-s<10K+seed>``).

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
from benchmarks.mosi_lite_experiment import (  # noqa: E402
    MODELS,
    Job,
    pooled_report,
    qamoe_exe,
    run_all,
    sweep_argv,
    train_argv,
)
from benchmarks.mosi_std_experiment import (  # noqa: E402
    METRICS,
    _cells,
    _ms,
    _read,
    seed_comparison,
)

FOLDS = range(1, 6)


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work, self.q = args, args.work, qamoe_exe()
        self.seeds = range(args.seeds)

    def data(self, k: int) -> Path:
        return self.work / "data" / f"bc{k}.h5"

    def tag(self, model: str, k: int, seed: int) -> str:
        return f"{model}-s{10 * k + seed}"  # fold and seed, poolable by `report --pool-seeds`

    def results(self, model: str, k: int, seed: int) -> Path:
        return self.work / "results" / f"{self.tag(model, k, seed)}.csv"

    def jobs(self) -> tuple[list[Job], list[Job], list[Job]]:
        extract, train, evals = [], [], []
        for k in FOLDS:
            d = self.data(k)
            argv = [
                self.q,
                "extract",
                "mosi",
                "--protocol",
                "bclstm-cv",
                "--fold",
                str(k),
                "--out",
                str(d),
                "--quiet",
            ]
            extract.append(Job(f"extract fold {k}", argv, d, self.log(f"extract-{k}")))
            for model in MODELS:
                for s in self.seeds:
                    tag = self.tag(model, k, s)
                    run = self.work / "runs" / tag
                    argv = train_argv(self.q, d, run, model, s)
                    train.append(Job(f"train {tag}", argv, run / "metrics.json", self.log(tag)))
                    out = self.results(model, k, s)
                    argv = sweep_argv(self.q, run, d, out, tag, "--drop-sets")
                    evals.append(Job(f"eval {tag}", argv, out, self.log(f"eval-{tag}")))
        return extract, train, evals

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"


def fold_cells(ctx: Ctx, model: str, seed: int) -> dict[str, list[float]]:
    """Per fold (5 values): clean metrics, sweep-axis means and the single-modality MAEs."""
    out: dict[str, list[float]] = defaultdict(list)
    for k in FOLDS:
        rows = _read(ctx.results(model, k, seed))
        for m in METRICS:
            out[f"clean {m}"] += _cells(rows, m, axis="clean", variant="normal")
        for axis in ("mixed", "missing", "noise"):
            for m in ("MAE", "Has0_acc_2"):
                cells = _cells(rows, m, axis=axis, variant="normal")
                out[f"{axis} {m}"].append(statistics.mean(cells))
        for kept in ("text", "audio", "vision"):  # drop rows name the DROPPED modalities
            dropped = "+".join(x for x in ("text", "audio", "vision") if x != kept)
            cells = _cells(rows, "MAE", axis="drop", modalities=dropped, variant="normal")
            if cells:
                out[f"{kept} only MAE"].append(statistics.mean(cells))
    return out


def per_model(ctx: Ctx, model: str) -> dict[str, Any]:
    """mean ± sd over model seeds of the fold means; 'fold_sd' = mean over seeds of the
    sd over folds."""
    by_seed = [fold_cells(ctx, model, s) for s in ctx.seeds]
    out: dict[str, Any] = {}
    for key in by_seed[0]:
        means = [statistics.mean(c[key]) for c in by_seed]
        sds = [statistics.stdev(c[key]) for c in by_seed if len(c[key]) > 1]
        out[key] = {**_ms(means), "fold_sd": round(statistics.mean(sds), 4) if sds else None}
    return out


def anchors(ctx: Ctx) -> dict[str, Any]:
    """Constant, ridge and logistic regression on the concatenated (length-pooled) features,
    strength chosen on each fold's valid videos; metrics averaged over the 5 folds."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    from qamoe_core.data.store import FeatureFile
    from qamoe_core.metrics import compute

    def xy(f: FeatureFile, split: str) -> tuple[np.ndarray, np.ndarray]:
        b = f.read(split, slice(None))
        parts = []
        for m in ("text", "audio", "vision"):
            x, n = b[m], np.maximum(b[f"{m}_len"], 1)[:, None]
            parts.append(x.sum(axis=1) / n)
        return np.concatenate(parts, axis=1), b["label"]

    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for k in FOLDS:
        with FeatureFile(ctx.data(k)) as f:
            (xtr, ytr), (xva, yva), (xte, yte) = (xy(f, s) for s in ("train", "valid", "test"))
        sc = StandardScaler().fit(xtr)
        xtr, xva, xte = sc.transform(xtr), sc.transform(xva), sc.transform(xte)
        out["constant (train mean)"].append(compute(np.full_like(yte, ytr.mean()), yte, "mosi"))
        alpha = min(
            (1.0, 10.0, 100.0, 1000.0, 10000.0),
            key=lambda a: float(np.abs(Ridge(alpha=a).fit(xtr, ytr).predict(xva) - yva).mean()),
        )
        pred = Ridge(alpha=alpha).fit(xtr, ytr).predict(xte)
        out["ridge (alpha on valid)"].append({**compute(pred, yte, "mosi"), "alpha": alpha})
        ctr = (ytr >= 0).astype(int)
        c = max(
            (0.001, 0.01, 0.1, 1.0, 10.0),
            key=lambda c: float(
                (
                    LogisticRegression(C=c, max_iter=2000).fit(xtr, ctr).predict(xva) == (yva >= 0)
                ).mean()
            ),
        )
        acc = LogisticRegression(C=c, max_iter=2000).fit(xtr, ctr).predict(xte) == (yte >= 0)
        out["logistic (C on valid)"].append({"Has0_acc_2": float(acc.mean()), "C": c})
    summary: dict[str, Any] = {}
    for name, rows in out.items():
        means = {m: statistics.mean(float(r[m]) for r in rows) for m in rows[0] if m in METRICS}
        summary[name] = {m: round(v, 4) for m, v in means.items() if v == v}  # no NaN (Corr)
        for knob in ("alpha", "C"):  # the strength chosen on each fold's valid videos
            if knob in rows[0]:
                summary[name][f"{knob} per fold"] = [r[knob] for r in rows]
    return summary


def paired(ctx: Ctx, a: str, b: str) -> dict[str, Any]:
    """Mixed-grid MAE of ``a`` minus ``b``: folds averaged inside each model seed, then the
    model seeds compared unpaired (Welch, ``seed_comparison``)."""
    va, vb = (
        [statistics.mean(fold_cells(ctx, n, s)["mixed MAE"]) for s in ctx.seeds] for n in (a, b)
    )
    return {"a": a, "b": b, **seed_comparison(va, vb)}


COLUMNS = (
    "clean MAE",
    "clean Corr",
    "clean Has0_acc_2",
    "clean Non0_acc_2",
    "clean Non0_F1_score",
    "clean Mult_acc_7",
    "mixed MAE",
    "mixed Has0_acc_2",
    "noise MAE",
    "missing MAE",
    "text only MAE",
    "audio only MAE",
    "vision only MAE",
)


def write_table(summary: dict[str, Any], out: Path) -> None:
    """results.md: models (mean ± sd over model seeds; [fold sd]) and the anchors."""
    pct = ("Has0", "Non0", "acc_7")
    fmt = lambda key, v: f"{100 * v:.1f}" if any(p in key for p in pct) else f"{v:.3f}"  # noqa: E731
    head = "| model | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in summary["models"].items():
        cells = [
            f"{fmt(c, r[c]['mean'])} ± {fmt(c, r[c]['sd'])} [{fmt(c, r[c]['fold_sd'])}]"
            for c in COLUMNS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, a in summary["anchors"].items():
        cells = [
            fmt(c, a[c.split()[1]]) if c.startswith("clean ") and c.split()[1] in a else "—"
            for c in COLUMNS
        ]
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    p = summary["paired_qamoe_vs_best"]
    lines += [
        "",
        f"QA-MoE minus {p['b']} (best baseline on the mixed grid), mixed-grid MAE over "
        f"model seeds (by seed: {p['per_seed']}): mean {p['mean']:+.4f}, 95 % Welch "
        f"t-interval {p['ci95']}, p {p['p']}, MDE {p['mde']} (80 % power).",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs/mosi-bclstm-cv-exp")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/mosi-bclstm-cv")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    ctx = Ctx(args)
    if args.fresh and ctx.work.exists():
        shutil.rmtree(ctx.work)
    for sub in ("data", "results", "logs"):
        (ctx.work / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    extract, train, evals = ctx.jobs()
    run_all(extract, 1, "extract")
    run_all(train, args.jobs, "train")
    run_all(evals, args.jobs, "eval")
    models = {m: per_model(ctx, m) for m in MODELS}
    best = min(MODELS[1:], key=lambda m: models[m]["mixed MAE"]["mean"])
    summary = {
        "protocol": "bclstm-cv, 5 folds by video; defaults (no selection)",
        "seeds": args.seeds,
        "anchors": anchors(ctx),
        "models": models,
        "best_baseline_mixed": best,
        "paired_qamoe_vs_best": paired(ctx, "qamoe", best),
        "seconds_this_invocation": round(time.perf_counter() - t0, 1),  # finished jobs skip
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_table(summary, args.out)
    files = [ctx.results(m, k, s) for m in MODELS for k in FOLDS for s in ctx.seeds]
    title = f"QA-MoE on MOSI bc-LSTM-CV (5 folds x {args.seeds} model seeds pooled)"
    pooled_report(ctx.q, files, args.out / "report", title, ctx.log("report"))
    print(json.dumps({k: summary[k] for k in ("anchors", "paired_qamoe_vs_best")}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a qamoe command failed: its log holds the details
        sys.exit(f"error: {exc}")
