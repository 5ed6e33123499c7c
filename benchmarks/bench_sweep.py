"""Time a full spectrum sweep (10 levels x 3 seeds x 3 axes) on the mosi synthetic preset.

    .venv/bin/python benchmarks/bench_sweep.py [--data mosi.h5] [--run runs/NAME] [--threads 2]

Without ``--run`` it times an untrained QA-MoE with the default ModelConfig: the weights do
not change the cost. Without ``--data`` it writes the mosi preset (686 test samples at MOSI's
unaligned shapes: text 50x768, audio 375x5, vision 500x20) to a temporary folder first (not
timed). Prints one JSON object: wall and CPU time of the sweep with and without the
quality-shuffle control, per grid point, and where the time goes (reading, random draws,
corruption, model, metrics; timers around those stages of the first sweep). The machine's load
average is printed too: on shared cores the wall time grows with it, the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qamoe_core.config import ModelConfig  # noqa: E402
from qamoe_core.data.store import FeatureFile  # noqa: E402
from qamoe_core.data.synthetic import write_synthetic  # noqa: E402
from qamoe_core.evaluation import sweep as ev  # noqa: E402
from qamoe_core.evaluation.plan import EvalConfig  # noqa: E402
from qamoe_core.models.registry import build_model  # noqa: E402
from qamoe_core.runs.checkpoint import load_run  # noqa: E402


def _model(data: Path, run: Path | None) -> tuple[torch.nn.Module, str]:
    if run is not None:
        model, _, meta = load_run(run)
        return model, str(meta["model_name"])
    with FeatureFile(data) as f:
        dims, task = dict(f.dims), ("binary" if f.scheme == "binary" else "regression")
    torch.manual_seed(0)
    return build_model("qamoe", ModelConfig(), dims, task), "qamoe (untrained)"


def _timed(fn: Any, bucket: dict[str, float], key: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - t0

    return wrapper


def _sweep(
    model: torch.nn.Module, data: Path, cfg: EvalConfig, device: str, breakdown: bool
) -> dict[str, Any]:
    """One timed sweep; with ``breakdown`` the stage functions are wrapped with timers."""
    bucket: dict[str, float] = {}
    names = ("_draws", "apply_draws", "_forward", "_table")
    labels = ("random_draws", "corruption", "model", "metrics")
    saved = {name: getattr(ev, name) for name in names}
    saved_read = FeatureFile.read
    try:
        if breakdown:
            for name, label in zip(names, labels, strict=True):
                setattr(ev, name, _timed(saved[name], bucket, label))
            FeatureFile.read = _timed(saved_read, bucket, "read_hdf5")  # type: ignore[method-assign]
        wall0, cpu0 = time.perf_counter(), time.process_time()
        res = ev.evaluate_model(model, data, cfg, device=device)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        for name, fn in saved.items():
            setattr(ev, name, fn)
        FeatureFile.read = saved_read  # type: ignore[method-assign]
    points = res.info["points"]
    out: dict[str, Any] = {
        "seconds": round(wall, 2),
        # CPU time of this process (all threads): robust to other jobs sharing the cores.
        "cpu_seconds": round(cpu, 2),
        "points": points,
        "seconds_per_point": round(wall / points, 3),
        "samples_per_s": round(res.info["n_samples"] * points / wall, 1),
        "under_60s": wall < 60.0,
    }
    if breakdown:
        bucket["other"] = wall - sum(bucket.values())
        out["breakdown_seconds"] = {k: round(v, 2) for k, v in bucket.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, help="a mosi-preset HDF5 file (written if absent)")
    ap.add_argument("--run", type=Path, help="a checkpoint directory (default: untrained QA-MoE)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-breakdown", action="store_true", help="do not time the stages")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())

    tmp = None
    data = args.data
    t0 = time.perf_counter()
    if data is None or not data.exists():
        if data is None:
            tmp = tempfile.TemporaryDirectory()
            data = Path(tmp.name) / "mosi.h5"
        write_synthetic(data, preset="mosi", seed=0)
    write_s = time.perf_counter() - t0
    model, name = _model(data, args.run)

    cfg = EvalConfig(sweep=True)  # 10 levels x 3 seeds x 3 axes, shuffle control on
    with FeatureFile(data) as f:
        n = f.n(cfg.split)
    timings = {
        "with_shuffle": _sweep(model, data, cfg, args.device, breakdown=not args.no_breakdown),
        "no_shuffle": _sweep(
            model, data, EvalConfig(sweep=True, quality_shuffle=False), args.device, False
        ),
    }
    out = {
        "benchmark": "sweep",
        "preset": "mosi",
        "n_test_samples": n,
        "grid": {"levels": list(cfg.levels), "seeds": list(cfg.seeds), "axes": list(cfg.axes)},
        "model": name,
        "threads": args.threads,
        "device": args.device,
        "data_write_seconds": round(write_s, 1),
        **timings,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
    }
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
