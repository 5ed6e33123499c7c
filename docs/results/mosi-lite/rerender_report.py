"""Re-render report/ from the committed pooled tables, without retraining or re-sweeping.

pooled/<config>.csv holds the model seeds of one configuration stacked as one run (seed =
1000 x model seed + corruption seed). This splits each back into the per-seed files the
experiment gave `qamoe report --pool-seeds` (run <config>-s<model seed>, seed = corruption
seed), under the same relative paths, so the report's Sources list is unchanged, then runs the
experiment's report command (benchmarks/mosi_lite_experiment.py, pooled_report) on them with
PNG figures only, as the folder always had.

    .venv/bin/python docs/results/mosi-lite/rerender_report.py [OUT]   (default: report/ here)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SHOWN = ("qamoe", "early-fusion", "late-fusion", "dense-moe", "qamoe-no-gate")  # as the experiment
TITLE = "QA-MoE on MOSI-lite (3 model seeds x 3 corruption seeds)"


def unpool(tmp: Path) -> list[str]:
    """Write the per-seed files under ``tmp``; their paths relative to it."""
    results = tmp / "runs" / "mosi-lite-exp4" / "results"
    results.mkdir(parents=True)
    files = []
    for name in SHOWN:
        df = pd.read_csv(HERE / "pooled" / f"{name}.csv", dtype=str, keep_default_na=False)
        seed = df["seed"].astype(int)
        for model_seed in sorted(set(seed // 1000)):
            rows = seed // 1000 == model_seed
            part = df[rows].assign(
                run=f"{name}-s{model_seed}", seed=(seed[rows] % 1000).astype(str)
            )
            path = results / f"{name}-s{model_seed}.csv"
            part.to_csv(path, index=False)
            files.append(str(path.relative_to(tmp)))
    return files


def main() -> None:
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE / "report"
    with tempfile.TemporaryDirectory() as tmp:
        files = unpool(Path(tmp))
        argv = [sys.executable, "-m", "qamoe_cli.main", "report", *files, "--pool-seeds",
                "--out", str(out), "--force", "--figures", "png", "--title", TITLE]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(argv, cwd=tmp, check=True, env=env)


if __name__ == "__main__":
    main()
