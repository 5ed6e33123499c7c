"""Temporal corruption patterns on the synthetic set (docs/results/patterns): one command, a
few minutes.

    .venv/bin/python benchmarks/patterns_demo.py [--work runs/patterns-demo]
        [--out docs/results/patterns] [--epochs 5] [--seeds 2] [--fresh]

Runs ``qamoe`` commands as a user would, one at a time with one torch thread (shared CPUs):

1. ``qamoe extract synthetic --preset small --offset mosi-lite``;
2. ``qamoe train`` of QA-MoE, early fusion, and a QA-MoE whose training corruption draws
   burst missingness and correlated noise for 30% of its corrupted samples each
   (``burst_fraction`` / ``correlated_fraction`` = 0.3 via ``--config``);
3. ``qamoe eval --sweep`` of each under the default patterns (random steps, white noise) and
   under ``--pattern burst,correlated`` (burst mean 5 steps, AR(1) rho 0.9: the defaults);
4. ``qamoe report`` over all six results files: one panel per (axis, pattern).

The reliability figure and the summary table are copied to ``--out``; everything else stays
under ``--work``. Finished steps are skipped on a rerun; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "qamoe": ("qamoe", None),
    "early-fusion": ("early-fusion", None),
    # [ours] 0.3 each: most corrupted samples still see the default patterns.
    "qamoe-patterns": ("qamoe", {"train": {"burst_fraction": 0.3, "correlated_fraction": 0.3}}),
}
PATTERNS = {"random": [], "burst": ["--pattern", "burst,correlated"]}


def qamoe(*args: str, log: Path) -> None:
    """One ``qamoe`` command, its output to ``log``; exits with its tail on failure."""
    exe = Path(sys.executable).with_name("qamoe")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with log.open("w") as f:
        proc = subprocess.run([str(exe), *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        sys.exit(f"error: qamoe {args[0]} failed (exit {proc.returncode}): {tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "patterns-demo")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "patterns")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2, help="corruption seeds per point")
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    work = args.work
    if args.fresh and work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = work / "small.h5"
    if not data.exists():
        qamoe("extract", "synthetic", "--out", str(data), "--preset", "small", "--offset",
              "mosi-lite", "--quiet", log=work / "logs" / "extract.log")  # fmt: skip
    timings["extract"] = time.perf_counter() - t0
    results = []
    for run, (model, config) in RUNS.items():
        t = time.perf_counter()
        run_dir = work / run
        if not (run_dir / "metrics.json").exists():
            extra: list[str] = []
            if config is not None:
                cfg = work / f"{run}.json"
                cfg.write_text(json.dumps(config))
                extra = ["--config", str(cfg)]
            qamoe("train", str(data), "--out", str(run_dir), "--model", model, "--epochs",
                  str(args.epochs), "--device", "cpu", "--force", "--quiet", *extra,
                  log=work / "logs" / f"train-{run}.log")  # fmt: skip
        timings[f"train {run}"] = time.perf_counter() - t
        for name, flags in PATTERNS.items():
            t = time.perf_counter()
            out = work / "results" / f"{run}-{name}.csv"
            out.parent.mkdir(exist_ok=True)
            if not out.exists():
                qamoe("eval", str(run_dir), "--data", str(data), "--sweep", "--name", run,
                      "--corruption-seeds", str(args.seeds), "--no-shuffle", "--device", "cpu",
                      "--out", str(out), "--quiet", *flags,
                      log=work / "logs" / f"eval-{run}-{name}.log")  # fmt: skip
            timings[f"eval {run} {name}"] = time.perf_counter() - t
            results.append(str(out))
    report = work / "report"
    qamoe("report", *results, "--out", str(report), "--force", "--figures", "png",
          "--title", "Temporal patterns on synthetic/small (MOSI-lite offsets)",
          log=work / "logs" / "report.log")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    copied = [*sorted(report.glob("reliability_*.png")), report / "summary.csv"]
    for p in copied:
        shutil.copyfile(p, args.out / p.name)
    timings["total"] = time.perf_counter() - t0
    print(json.dumps({"report": str(report), "copied": [p.name for p in copied],
                      "seconds": {k: round(v, 1) for k, v in timings.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
