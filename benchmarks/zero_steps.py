"""Does leaving zeroed steps out of the encoders (``mask_zero_steps``) help, and when?

    .venv/bin/python benchmarks/zero_steps.py [--seeds 3] [--epochs 12] [--work DIR]
        [--preset small]

The spectrum drops a time step by zeroing it. For centred features (the built-in synthetic
dataset's default) a zero step sits at the feature mean, so dropping steps shrinks the pooled
encoding towards the mean; for features with offsets, as real extractors' outputs have, a zero
step is far from every real input. This script measures both cases on the synthetic 'small'
preset (centred, and ``--offset mosi-lite``): QA-MoE and early fusion, each with the switch
off and on, ``--seeds`` model seeds, trained as `qamoe train` does (spectrum-sampled
corruption, selection on the validation split at mixed level 0.5).

Prints one JSON object: per dataset and configuration, the validation MAE the trainer selected
on (mean, std and values over seeds; the number to choose by), and test MAE on the mixed axis
(corruption seed 0) clean, at 0.5, at 0.9 and averaged over 0.0-0.9 (for information).
Trains 2 x 4 x seeds models: about 10 minutes on 2 cores with 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qamoe_core.config import ModelConfig, TrainConfig  # noqa: E402
from qamoe_core.data.synthetic import MOSI_LITE_OFFSET, write_synthetic  # noqa: E402
from qamoe_core.evaluation.plan import EvalConfig  # noqa: E402
from qamoe_core.evaluation.summary import curves  # noqa: E402
from qamoe_core.evaluation.sweep import Evaluation  # noqa: E402
from qamoe_core.training.loop import train  # noqa: E402

DATASETS: dict[str, float | dict[str, float]] = {
    "centred": 0.0,
    "mosi-lite-offset": MOSI_LITE_OFFSET,
}
CONFIGS = {  # name -> (model, mask_zero_steps)
    "qamoe": ("qamoe", False),
    "qamoe+mask": ("qamoe", True),
    "early-fusion": ("early-fusion", False),
    "early-fusion+mask": ("early-fusion", True),
}
LEVELS = tuple(round(0.1 * i, 1) for i in range(10))


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "values": [round(v, 4) for v in values],
    }


def _test_mae(run_dir: Path, data: Path) -> dict[str, float]:
    cfg = EvalConfig(sweep=True, levels=LEVELS, seeds=(0,), axes=("mixed",), quality_shuffle=False)
    c = curves(Evaluation.from_run(run_dir, data, cfg).run().table, "MAE")
    by_level = c[(c["axis"] == "mixed") & (c["variant"] == "normal")].set_index("level")["mean"]
    return {
        "clean": float(by_level.loc[0.0]),
        "at_0.5": float(by_level.loc[0.5]),
        "at_0.9": float(by_level.loc[0.9]),
        "grid_mean": float(by_level.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--preset", default="small", help="synthetic preset (tiny: a smoke test)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="qamoe-zero-steps-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"preset": args.preset, "epochs": args.epochs, "seeds": args.seeds}
    for ds, offset in DATASETS.items():
        data = work / f"{ds}.h5"
        if not data.exists():
            write_synthetic(data, preset=args.preset, seed=0, offset=offset)
        results: dict[str, Any] = {}
        for name, (model, mask) in CONFIGS.items():
            val, test = [], []
            for seed in range(args.seeds):
                run_dir = work / ds / f"{name}-s{seed}"
                if not (run_dir / "metrics.json").exists():
                    train(
                        data,
                        run_dir,
                        model,
                        ModelConfig(mask_zero_steps=mask),
                        TrainConfig(epochs=args.epochs, seed=seed),
                        force=True,
                        device="cpu",
                    )
                metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
                val.append(float(metrics["val_score"]))
                test.append(_test_mae(run_dir, data))
            results[name] = {
                "val_mae": _stats(val),
                "test_mae_mixed": {k: _stats([t[k] for t in test]) for k in test[0]},
            }
            print(f"{ds} {name}: val MAE {results[name]['val_mae']['mean']}", file=sys.stderr)
        out[ds] = results
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
