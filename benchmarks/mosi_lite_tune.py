"""Validation-only tuning of QA-MoE's defaults on MOSI-lite (docs/results/mosi-lite).

    .venv/bin/python benchmarks/mosi_lite_tune.py [--data runs/mosi-lite-exp/mosilite.h5]
        [--work runs/mosi-lite-tune] [--seeds 3] [--jobs 2] [CANDIDATE ...]

Trains QA-MoE with each candidate change of the defaults (3 model seeds, ``qamoe train``),
and compares the candidates by the VALIDATION score the trainer selects on (Acc_2 at mixed
level 0.5) and by the validation loss there. The test split is never read by this script:
``qamoe train`` writes a test score to metrics.json for reference, and it is ignored here.
The feature file comes from ``benchmarks/mosi_lite_experiment.py`` (or ``qamoe extract
mosi-lite``). Prints one JSON object: per candidate, the per-seed and mean validation numbers.
Finished runs under ``--work`` are reused: after changing the defaults, use a new folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The experiment's job runner: one torch thread per command, finished runs skipped, logs kept.
from mosi_lite_experiment import REPO, Job, qamoe_exe, run_all, write_config

# name -> (model overrides, train overrides)
CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "dropout0.5": ({"dropout": 0.5}, {}),
    "clean_fraction0.3": ({}, {"clean_fraction": 0.3}),
    "unc_weight1.0": ({"options": {"unc_weight": 1.0}}, {}),
    "lr3e-4": ({}, {"lr": 3e-4}),
    "d_model64": ({"d_model": 64}, {}),
    "n_layers0": ({"n_layers": 0}, {}),
    "weight_decay0.1": ({}, {"weight_decay": 0.1}),
    "clean_input_target": ({"options": {"uncertainty_target": "clean_input"}}, {}),
    "no_unc_encoder_grad": ({"options": {"unc_encoder_grad": False}}, {}),
    "no_fuse_quality": ({"options": {"fuse_uses_quality": False}}, {}),
}


def train_job(qamoe: str, data: Path, work: Path, name: str, seed: int) -> Job:
    """The `qamoe train` of one candidate and seed (skipped when its run is finished)."""
    run = work / f"{name}-s{seed}"
    model, train = CANDIDATES[name]
    cfg = write_config(work / f"{name}.json", model, train)
    argv = [qamoe, "train", str(data), "--out", str(run), "--seed", str(seed),
            "--config", str(cfg), "--device", "cpu", "--quiet", "--force"]  # fmt: skip
    return Job(f"train {run.name}", argv, run / "metrics.json", work / "logs" / f"{run.name}.log")


def validation_of(run: Path) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    (level,) = m["val"]  # one validation level by default
    return {"val_score": m["val_score"], "val_loss": m["val"][level]["loss"],
            "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidates", nargs="*", help=f"subset of: {', '.join(CANDIDATES)}")
    ap.add_argument("--data", type=Path, default=REPO / "runs/mosi-lite-exp/mosilite.h5")
    ap.add_argument("--work", type=Path, default=REPO / "runs/mosi-lite-tune")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    names = args.candidates or list(CANDIDATES)
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        sys.exit(f"error: unknown candidate(s) {', '.join(unknown)}")
    if not args.data.exists():
        sys.exit(f"error: {args.data} not found; run benchmarks/mosi_lite_experiment.py first")
    args.work.mkdir(parents=True, exist_ok=True)
    qamoe = qamoe_exe()
    jobs = [(n, s) for n in names for s in range(args.seeds)]
    run_all([train_job(qamoe, args.data, args.work, n, s) for n, s in jobs], args.jobs, "tune")
    done = [validation_of(args.work / f"{n}-s{s}") for n, s in jobs]
    out: dict[str, Any] = {"selection": "Acc_2 on valid at mixed level 0.5", "candidates": {}}
    for name in names:
        rows = [r for (n, _), r in zip(jobs, done, strict=True) if n == name]
        out["candidates"][name] = {
            "val_score_mean": sum(r["val_score"] for r in rows) / len(rows),
            "val_loss_mean": sum(r["val_loss"] for r in rows) / len(rows),
            "per_seed": rows,
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a qamoe command failed: its log holds the details
        sys.exit(f"error: {exc}")
