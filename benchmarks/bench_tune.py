"""Time `qamoe tune`: the tuner's overhead over the trainings it runs, and --jobs 2 against
--jobs 1 on the same trials, in one run.

    .venv/bin/python benchmarks/bench_tune.py [--preset small | --data FILE] [--model M]
        [--trials 6] [--folds 3] [--epochs 3] [--work DIR] [--out RESULT.json]

Two tunings of the same request: ``--jobs 1`` (the trainings run one by one in the tuner's
process) and ``--jobs 2`` (two child processes at a time, dividing the tuner's threads:
``runtime.job_env``). Both use
the random sampler and no pruning, so they draw and run the same trials whatever finishes first
(the script checks that the settings are the same and the scores agree). Without ``--data`` the
synthetic preset is written to the work folder first (not timed).

Overhead (``--jobs 1``): the tuning's wall time minus the seconds its trainings took (each
training's ``train()`` call, ``cells/*/done.json``), over the latter; and the same for the trial
loop alone (``loop_overhead_fraction``: Optuna, the cells, trials.csv after each trial),
without the fixed costs of a tuning's start and end (checks, fold files, the report and its
imports: seconds, whatever the budget), which ``stages`` lists. ``--jobs 2``: the wall time
and the speed-up; the children's seconds include each one's interpreter and torch start-up,
shown apart (child seconds minus the training loop's own ``train_seconds``). Prints one JSON
object (and writes it with ``--out``); the load average is in it, since on shared cores every
wall time grows with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qamoe_core.base.runtime import usable_cores as cores  # noqa: E402
from qamoe_core.data.synthetic import write_synthetic  # noqa: E402
from qamoe_core.tuning.api import run_tuning  # noqa: E402
from qamoe_core.tuning.plan import TuneSettings  # noqa: E402

SPACE = """[train.lr]
low = 1e-4
high = 1e-2
log = true

[model.dropout]
low = 0.0
high = 0.5
"""


def _cells(out: Path) -> dict[str, float]:
    """Seconds of every training (the call or the child) and of its training loop alone."""
    calls = loops = 0.0
    for done in out.glob("cells/*/done.json"):
        calls += float(json.loads(done.read_text())["seconds"])
        metrics = json.loads((done.parent / "run" / "metrics.json").read_text())
        loops += float(metrics["train_seconds"])
    return {"trainings": len(list(out.glob("cells/*/done.json"))), "cell_seconds": calls,
            "train_loop_seconds": loops}  # fmt: skip


def _trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tune(args: argparse.Namespace, data: Path, work: Path, jobs: int) -> dict[str, Any]:
    out = work / f"jobs{jobs}"
    shutil.rmtree(out, ignore_errors=True)
    settings = TuneSettings(
        data, out, args.model, work / "space.toml", trials=args.trials, folds=args.folds,
        sampler="random", pruner="none", seed=0, jobs=jobs, config=work / "base.json",
        device="cpu",
    )  # fmt: skip
    t0 = time.perf_counter()
    result = run_tuning(settings)
    wall = time.perf_counter() - t0
    return {"jobs": jobs, "wall_seconds": wall, "stages": result.seconds,
            "best_trial": result.best_trial, "best_cv": result.mean, **_cells(out)}  # fmt: skip


def _same_trials(work: Path) -> bool:
    one, two = _trials(work / "jobs1"), _trials(work / "jobs2")
    params = [k for k in one[0] if k.startswith(("model.", "train."))]
    same = [[r[k] for k in params] for r in one] == [[r[k] for k in params] for r in two]
    close = all(abs(float(a["mean"]) - float(b["mean"])) <= 1e-3 * abs(float(a["mean"]))
                for a, b in zip(one, two, strict=True))  # fmt: skip
    return same and close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", default="early-fusion")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-tune")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = work / f"{args.preset}.h5"
        write_synthetic(data, preset=args.preset, seed=0, force=True)
    (work / "space.toml").write_text(SPACE)
    (work / "base.json").write_text(json.dumps({"train": {"epochs": args.epochs}}))
    one = _tune(args, data, work, 1)
    two = _tune(args, data, work, 2)
    one["overhead_seconds"] = one["wall_seconds"] - one["cell_seconds"]
    one["overhead_fraction"] = one["overhead_seconds"] / one["cell_seconds"]
    # the trial loop alone (without the fixed start and end: checks, fold files, report)
    one["loop_overhead_fraction"] = one["stages"]["loop"] / one["cell_seconds"] - 1
    two["startup_seconds"] = two["cell_seconds"] - two["train_loop_seconds"]
    result = {
        "data": str(data), "model": args.model, "trials": args.trials, "folds": args.folds,
        "epochs": args.epochs, "jobs1": one, "jobs2": two,
        "speedup_jobs2": one["wall_seconds"] / two["wall_seconds"],
        "same_trials": _same_trials(work), "cores": cores(),
        "load_average": list(os.getloadavg()), "python": platform.python_version(),
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
