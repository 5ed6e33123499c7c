"""The accuracy experiment of docs/results/text-finetune: QA-MoE on frozen MiniLM features vs
the same model with MiniLM fine-tuned from the token ids, on MOSI-std (CMU standard folds,
text + audio).

    .venv/bin/python benchmarks/text_finetune_experiment.py [--work runs/text-ft-exp]
        [--out docs/results/text-finetune] [--seeds 3] [--jobs 2] [--data FILE]
        [--stages select,main] [--cache-dir DIR]

One file serves both models: ``qamoe extract mosi`` (token level, the default) stores the
frozen MiniLM token states AND the ids. Only ``qamoe`` commands do the work.

- ``select`` (validation only): the fine-tuning settings in ``CANDIDATES``, model seed 0,
  scored on the CMU valid split by (valid clean MAE + valid@0.5 MAE) / 2, the criterion of
  docs/results/mosi-std's selection. The frozen model keeps the defaults chosen there
  ("default" won its grouped-CV grid). The test scores of these runs are never read here.
- ``main``: frozen and the chosen fine-tuned model, ``--seeds`` model seeds each, swept on
  the test split (mixed / missing / noise, levels 0..0.9, 3 corruption seeds); both curves
  in one ``qamoe report``; seconds per epoch from each run's history.

Finished jobs are skipped on a rerun (their output exists).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.mosi_lite_experiment import (  # noqa: E402
    Job,
    pooled_report,
    run_all,
    sweep_argv,
    train_argv,
    write_config,
)
from benchmarks.mosi_std_experiment import (  # noqa: E402
    METRICS,
    _cells,
    _ms,
    _read,
    _val_score,
    constant_anchor,
    seed_comparison,
)

FROZEN = {"text_encoder": "features"}
# Fine-tuning settings tried on validation: the encoder's learning rate around BERT's
# recommended 2e-5..5e-5 (Devlin et al. 2019), top 2 of MiniLM's 6 layers (the speed design
# of docs/text-encoder.md), and the whole encoder once.
CANDIDATES: dict[str, dict[str, Any]] = {
    "ft2-lr2e-5": {"text_encoder": "pretrained", "fine_tune_layers": 2, "text_lr": 2e-5},
    "ft2-lr5e-5": {"text_encoder": "pretrained", "fine_tune_layers": 2, "text_lr": 5e-5},
    "ft2-lr1e-4": {"text_encoder": "pretrained", "fine_tune_layers": 2, "text_lr": 1e-4},
    "ftall-lr5e-5": {"text_encoder": "pretrained", "fine_tune_layers": -1, "text_lr": 5e-5},
}
STAGES = ("select", "main")


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work = args, args.work
        exe = Path(sys.executable).with_name("qamoe")
        if not exe.exists():
            sys.exit(f"error: {exe} not found; run 'bash scripts/setup.sh' first")
        self.q = str(exe)

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def extract(self, out: Path) -> Job:
        argv = [self.q, "extract", "mosi", "--out", str(out), "--quiet"]
        if self.args.cache_dir:
            argv += ["--cache-dir", str(self.args.cache_dir)]
        return Job("extract", argv, out, self.log("extract"))

    def train(self, data: Path, run: Path, seed: int, cfg: Path) -> Job:
        argv = train_argv(self.q, data, run, "qamoe", seed, "--config", str(cfg))
        return Job(f"train {run.name}", argv, run / "metrics.json", self.log(f"train-{run.name}"))

    def eval(self, data: Path, run: Path, tag: str) -> Job:
        out = self.work / "results" / f"{tag}.csv"
        argv = sweep_argv(self.q, run, data, out, tag)
        return Job(f"eval {tag}", argv, out, self.log(f"eval-{tag}"))


def stage_select(ctx: Ctx, data: Path) -> dict[str, Any]:
    jobs = []
    for name, model in CANDIDATES.items():
        cfg = write_config(ctx.work / "configs" / f"{name}.json", model, {})
        jobs.append(ctx.train(data, ctx.work / "select" / name, 0, cfg))
    run_all(jobs, ctx.args.jobs, "select")
    scores = {n: round(_val_score(ctx.work / "select" / n), 4) for n in CANDIDATES}
    best = min(scores, key=scores.__getitem__)
    return {
        "criterion": "(CMU valid clean MAE + valid@0.5 MAE) / 2, model seed 0",
        "scores": scores,
        "epoch_seconds": {n: epoch_seconds(ctx.work / "select" / n) for n in CANDIDATES},
        "chosen": best,
        "model": CANDIDATES[best],
    }


def epoch_seconds(run: Path) -> dict[str, float]:
    """Wall seconds of the first epoch (fills the cache) and the median of the others."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    secs = [float(r["seconds"]) for r in rows if "seconds" in r]
    rest = secs[1:] or secs
    return {"first": round(secs[0], 1), "median_after": round(statistics.median(rest), 1),
            "epochs": len(secs)}  # fmt: skip


def summarise(ctx: Ctx, names: dict[str, str], data: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"constant": constant_anchor(data), "models": {}, "paired": {}}
    seeds = range(ctx.args.seeds)
    per: dict[str, dict[str, list[float]]] = {}
    for label, tag in names.items():
        cells: dict[str, list[float]] = {}
        for s in seeds:
            rows = _read(ctx.work / "results" / f"{tag}-s{s}.csv")
            for m in METRICS:
                cells.setdefault(f"clean {m}", []).extend(
                    _cells(rows, m, axis="clean", variant="normal")
                )
            for axis in ("mixed", "missing", "noise"):
                for m in ("MAE", "Has0_acc_2"):
                    cells.setdefault(f"{axis} {m}", []).append(
                        statistics.mean(_cells(rows, m, axis=axis, variant="normal"))
                    )
        per[label] = cells
        out["models"][label] = {k: _ms(v) for k, v in cells.items()}
        out["models"][label]["epoch_seconds"] = [
            epoch_seconds(ctx.work / "runs" / f"{tag}-s{s}") for s in seeds
        ]
    a, b = list(names)
    for key in ("clean MAE", "clean Non0_acc_2", "clean Corr", "mixed MAE", "mixed Has0_acc_2"):
        out["paired"][f"{b} - {a}: {key}"] = seed_comparison(per[b][key], per[a][key])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs/text-ft-exp")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/text-finetune")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--data", type=Path, default=None, help="an `extract mosi` file to reuse")
    ap.add_argument("--cache-dir", type=Path, default=None, help="MiniLM cache (qamoe default)")
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    if stages - set(STAGES):
        sys.exit(f"error: unknown stages {sorted(stages - set(STAGES))}; choose from {STAGES}")
    ctx = Ctx(args)
    t0 = time.perf_counter()
    data = args.data or ctx.work / "data" / "std-token.h5"
    if args.data is None:
        data.parent.mkdir(parents=True, exist_ok=True)
        run_all([ctx.extract(data)], 1, "extract")
    sel_file = ctx.work / "selection.json"
    selection = json.loads(sel_file.read_text()) if sel_file.exists() else None
    if "select" in stages and selection is None:
        selection = stage_select(ctx, data)
        sel_file.write_text(json.dumps(selection, indent=2))
    if "main" not in stages or selection is None:
        print(json.dumps(selection, indent=1))
        return
    names = {"frozen MiniLM features": "frozen", f"fine-tuned ({selection['chosen']})": "tuned"}
    configs = {"frozen": FROZEN, "tuned": selection["model"]}
    train, evals = [], []
    for tag, model in configs.items():
        cfg = write_config(ctx.work / "configs" / f"main-{tag}.json", model, {})
        for s in range(args.seeds):
            run = ctx.work / "runs" / f"{tag}-s{s}"
            train.append(ctx.train(data, run, s, cfg))
            evals.append(ctx.eval(data, run, f"{tag}-s{s}"))
    run_all(train, args.jobs, "train")
    (ctx.work / "results").mkdir(parents=True, exist_ok=True)
    run_all(evals, args.jobs, "eval")
    summary = summarise(ctx, names, data)
    summary["selection"] = selection
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = [ctx.work / "results" / f"{t}-s{s}.csv" for t in configs for s in range(args.seeds)]
    title = f"QA-MoE on MOSI-std: frozen vs fine-tuned MiniLM ({args.seeds} model seeds)"
    pooled_report(ctx.q, files, args.out / "report", title, ctx.log("report"))
    print(json.dumps(summary["paired"], indent=1))


if __name__ == "__main__":
    main()
