"""Issue #18 on real data: QA-MoE and early fusion on MOSI-std under the temporal patterns
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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.mosi_lite_experiment import Job, pooled_report, qamoe_exe, run_all, sweep_argv  # noqa: E402
from benchmarks.mosi_std_experiment import _cells, _ms, _read  # noqa: E402

MODELS = ("qamoe", "early-fusion")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs/mosi-std-token-exp")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/patterns-mosi-std")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    q, work = qamoe_exe(), args.work
    data = work / "data" / "std.h5"
    runs = [(m, s) for m in MODELS for s in range(args.seeds)]
    missing = [f"{m}-s{s}" for m, s in runs if not (work / "results" / f"{m}-s{s}.csv").exists()]
    if not data.exists() or missing:
        sys.exit(
            f"error: {work} lacks the token-level main stage ({', '.join(missing) or data}); "
            "run benchmarks/mosi_std_experiment.py --pooling token --stages main "
            f"--work {work} first"
        )
    jobs, files = [], {"random/white": [], "burst/correlated": []}
    for m, s in runs:
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
        for m in MODELS:
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    every = [Path(p) for paths in files.values() for p in paths]
    title = f"MOSI-std (token MiniLM + audio): patterns, {args.seeds} model seeds"
    pooled_report(q, every, args.out / "report", title, work / "logs" / "report-patterns.log")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as exc:  # a qamoe command failed: its log holds the details
        sys.exit(f"error: {exc}")
