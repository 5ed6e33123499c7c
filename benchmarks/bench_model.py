"""Speed of QA-MoE (or a baseline) on the mosi synthetic preset at full unaligned lengths.

Prints one JSON object: inference samples/s at batch 256, a training epoch through the real
trainer (corruption + clean pass + backward + validation), peak memory, FLOPs per sample
(torch.utils.flop_counter), the achieved GFLOP/s, a large float32 matmul's GFLOP/s measured
in the same run (this CPU's practical limit) and their ratio, plus the top ops of a profile.

    python benchmarks/bench_model.py                      # defaults, 2 threads
    python benchmarks/bench_model.py --data mosi.h5 --config cfg.json --model late-fusion
    python benchmarks/bench_model.py --accuracy --epochs 15   # accuracy cost of compression
    python benchmarks/bench_model.py --all --out docs/results/models-bench.json  # every model
    python benchmarks/bench_model.py --compare-ref        # library path vs the code before
    python benchmarks/bench_model.py --all --compare-ref --out docs/results/models-bench.json

Timing: every measurement repeats for a few seconds and reports the median batch time (and
the best): on a shared machine the median is what a user sees, the best what the code can do.
The matmul limit is measured just before and after the model, so both see the same load.

--compare-ref: the library's forward and the reference path (benchmarks/model_reference.py:
the computation as it was before the speed-ups, same model, same weights) are timed batch by
batch in alternation, with one large matmul between rounds, so that all three see the same
load; the speed-up is the median of the per-round ratios, and the largest difference of their
predictions is reported. The load average is printed with every number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qamoe_core.config import ModelConfig, TrainConfig, from_json  # noqa: E402
from qamoe_core.data.store import FeatureFile  # noqa: E402
from qamoe_core.data.torchdata import to_torch  # noqa: E402
from qamoe_core.models import build_model, names  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from model_reference import reference_path  # noqa: E402


def timed(fn: Callable[[], Any], seconds: float, min_reps: int = 5) -> dict[str, float]:
    """Median and best wall time of fn() over ~seconds (after one warm-up call)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "best": min(times), "reps": len(times)}


def matmul_gflops(n: int, seconds: float) -> dict[str, float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timed(lambda: a @ b, seconds)
    flops = 2 * n**3
    return {"median": flops / t["median"] / 1e9, "best": flops / t["best"] / 1e9}


def model_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(batch)
    return int(counter.get_total_flops())


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compare_paths(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], args: argparse.Namespace
) -> dict[str, Any]:
    """The library's path ("new") against the reference ("reference"), in alternation."""
    paths: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "new": contextlib.nullcontext, "reference": reference_path,
    }  # fmt: skip
    b = next(iter(batch.values())).shape[0]
    n = args.matmul_n
    a, m = torch.randn(n, n), torch.randn(n, n)
    times: dict[str, list[float]] = {k: [] for k in paths}
    mm: list[float] = []
    out = {}
    load_before = load()
    with torch.inference_mode():
        for name, path in paths.items():
            with path():
                out[name] = model(batch)  # warm-up, and the outputs compared below
        start = time.perf_counter()
        while len(mm) < 10 or time.perf_counter() - start < 2 * args.seconds:
            for name, path in paths.items():
                with path():
                    t0 = time.perf_counter()
                    model(batch)
                    times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            a @ m
            mm.append(time.perf_counter() - t0)
    mm_gflops = 2 * n**3 / statistics.median(mm) / 1e9
    result: dict[str, Any] = {"matmul_gflops": round(mm_gflops, 1), "rounds": len(mm)}
    for name, path in paths.items():
        with path():
            flops = model_flops(model, batch) / b
        t = statistics.median(times[name])
        result[name] = {
            "samples_per_s": round(b / t, 1),
            "samples_per_s_best": round(b / min(times[name]), 1),
            "flops_per_sample_M": round(flops / 1e6, 2),
            "achieved_gflops": round(flops * b / t / 1e9, 1),
            "ratio_to_matmul": round(flops * b / t / 1e9 / mm_gflops, 3),
        }
    ratios = [r / t for t, r in zip(times["new"], times["reference"], strict=True)]
    result["speedup"] = round(statistics.median(ratios), 3)
    # The new path's speed counted in the reference's FLOPs (it may skip masked steps).
    ref_flops = result["reference"]["flops_per_sample_M"] * 1e6
    new_t = statistics.median(times["new"])
    result["new"]["ratio_at_reference_flops"] = round(ref_flops * b / new_t / 1e9 / mm_gflops, 3)
    diff = {
        f: float((getattr(out["new"], f) - getattr(out["reference"], f)).abs().max())
        for f in ("prediction", "log_var")
    }  # fmt: skip
    result["max_abs_diff"] = diff
    result["load_average"] = {"before": load_before, "after": load()}
    return result


def profile_top(model: torch.nn.Module, batch: dict[str, torch.Tensor], k: int = 10) -> list:
    from torch.profiler import ProfilerActivity, profile

    reps = 3
    with torch.inference_mode():
        model(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                model(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "ms_per_batch": round(e.self_cpu_time_total / 1e3 / reps, 2),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls_per_batch": e.count // reps,
        }
        for e in events[:k]
    ]


def ensure_data(path: Path | None, preset: str) -> Path:
    if path is not None:
        return path
    from qamoe_core.data.synthetic import write_synthetic

    cache = Path(tempfile.gettempdir()) / f"qamoe-bench-{preset}.h5"
    if not cache.exists():
        print(f"writing the synthetic '{preset}' preset to {cache} ...", file=sys.stderr)
        write_synthetic(cache, preset=preset, seed=0)
    return cache


def bench_speed(args: argparse.Namespace, mcfg: ModelConfig, data: Path) -> dict[str, Any]:

    with FeatureFile(data) as f:
        dims = {m: int(f.dims[m]) for m in f.modalities}
        n_test = f.n("test")
        batch = to_torch(f.read("test", slice(0, min(args.batch, n_test))))
        batch.pop("label")
        means = {m: torch.from_numpy(f.train_mean(m)) for m in f.modalities}
        stds = {m: torch.from_numpy(f.train_std(m)) for m in f.modalities}
        shapes = {m: list(f.h5["test"][m].shape[1:]) for m in f.modalities}
        n_train = f.n("train")
    b = batch["text_len"].shape[0] if "text_len" in batch else next(iter(batch.values())).shape[0]
    torch.manual_seed(0)
    model = build_model(args.model, mcfg, dims, "regression")
    model.set_feature_stats(means, stds)
    model.eval()

    def infer() -> None:
        with torch.inference_mode():
            model(batch)

    if args.compare_ref:
        return bench_compare(args, mcfg, data, model, batch, n_train)
    mm_before = matmul_gflops(args.matmul_n, args.seconds / 2)
    t_inf = timed(infer, args.seconds)
    mm_after = matmul_gflops(args.matmul_n, args.seconds / 2)
    flops = model_flops(model, batch) / b
    mm = statistics.mean([mm_before["median"], mm_after["median"]])
    achieved = flops * b / t_inf["median"] / 1e9
    result: dict[str, Any] = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "data": {"file": str(data), "shapes": shapes, "batch": b},
        "config": mcfg.to_dict(),
        "inference_samples_per_s": round(b / t_inf["median"], 1),
        "inference_samples_per_s_best": round(b / t_inf["best"], 1),
        "flops_per_sample_M": round(flops / 1e6, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_gflops": round(mm, 1),
        "matmul_gflops_best": round(max(mm_before["best"], mm_after["best"]), 1),
        "ratio_to_matmul": round(achieved / mm, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "profile_top_ops": profile_top(model, batch) if args.profile else None,
    }
    if args.mask_cost:
        result["mask_zero_steps_cost"] = mask_cost(args, mcfg, dims, means, stds, batch)
    if args.train_epoch:
        result.update(train_epoch(args, mcfg, data, n_train))
    result["peak_rss_MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_average"] = load()
    return result


def bench_compare(
    args: argparse.Namespace,
    mcfg: ModelConfig,
    data: Path,
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    n_train: int,
) -> dict[str, Any]:
    """--compare-ref: inference on both paths in alternation, then a training epoch on each."""
    b = next(iter(batch.values())).shape[0]
    result = {"model": args.model, "threads": torch.get_num_threads(), "batch": b}
    result["inference"] = compare_paths(model, batch, args)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    if args.train_epoch:
        for name, path in (("new", contextlib.nullcontext), ("reference", reference_path)):
            with path():
                result[f"train_{name}"] = train_epoch(args, mcfg, data, n_train)
    return result


def train_epoch(
    args: argparse.Namespace, mcfg: ModelConfig, data: Path, n_train: int
) -> dict[str, Any]:
    """One epoch through the real trainer (corruption, clean pass, backward, validation)."""
    from qamoe_core.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        tcfg = TrainConfig(epochs=1, patience=1)
        t0 = time.perf_counter()
        train(data, Path(tmp) / "run", args.model, mcfg, tcfg, device="cpu")
        total = time.perf_counter() - t0
        history = json.loads((Path(tmp) / "run" / "history.jsonl").read_text().splitlines()[0])
    return {
        "train_epoch_s": round(history["seconds"], 2),
        "train_samples_per_s": round(n_train / history["seconds"], 1),
        "train_call_s": round(total, 2),  # includes loading, validation copies, test eval
        "load_average": load(),
    }


def mask_cost(
    args: argparse.Namespace,
    mcfg: ModelConfig,
    dims: dict[str, int],
    means: dict[str, torch.Tensor],
    stds: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Inference with mask_zero_steps on and off, timed batch by batch in alternation, so
    that both see the same machine load; the ratio is the median of the per-pair ratios."""
    models = {}
    for flag in (True, False):
        torch.manual_seed(0)
        m = build_model(args.model, mcfg.override(mask_zero_steps=flag), dims, "regression")
        m.set_feature_stats(means, stds)
        models[flag] = m.eval()
    b = next(iter(batch.values())).shape[0]
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for m in models.values():
            m(batch)  # warm-up
        start = time.perf_counter()
        while len(times[True]) < 10 or time.perf_counter() - start < args.seconds * 2:
            for flag, m in models.items():
                t0 = time.perf_counter()
                m(batch)
                times[flag].append(time.perf_counter() - t0)
    ratios = [on / off for on, off in zip(times[True], times[False], strict=True)]
    return {
        "with_mask_samples_per_s": round(b / statistics.median(times[True]), 1),
        "without_mask_samples_per_s": round(b / statistics.median(times[False]), 1),
        "time_ratio_with_over_without": round(statistics.median(ratios), 3),
        "pairs": len(ratios),
    }


def quality_by_level(run: Path, data: Path, levels: tuple[float, ...]) -> dict[str, Any]:
    """Mean r_m on the validation split at each mixed level (None for models without r)."""
    from qamoe_core.runs.checkpoint import load_run
    from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec

    model, _, _ = load_run(run)
    with FeatureFile(data) as f:
        batch = f.read("valid", slice(None))
        std = {m: f.train_std(m) for m in f.modalities}
    out: dict[str, Any] = {}
    for level in levels:
        spec = CorruptionSpec(level=level, seed=123)
        corrupted = apply_spec(batch, spec, split="valid", train_std=std) if level > 0 else batch
        with torch.inference_mode():
            q = model(to_torch(corrupted)).quality
        out[f"{level:g}"] = (
            None if q is None else {m: round(float(v.mean()), 3) for m, v in q.items()}
        )
    return out


def bench_accuracy(args: argparse.Namespace, mcfg: ModelConfig, data: Path) -> dict[str, Any]:
    """Train the same model with several temporal compressions; validation and test scores,
    and (QA-MoE) the mean quality score at a few corruption levels."""
    from qamoe_core.training.loop import train

    rows = []
    for segments in args.segments:
        cfg = mcfg.override(segments=segments)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            tcfg = TrainConfig(epochs=args.epochs, seed=args.seed)
            res = train(data, Path(tmp) / "run", args.model, cfg, tcfg, device="cpu")
            seconds = time.perf_counter() - t0
            quality = quality_by_level(Path(tmp) / "run", data, (0.0, 0.25, 0.5, 0.75, 1.0))
        rows.append({
            "segments": segments,
            "val_score": res["val_score"],
            "select_metric": res["select_metric"],
            "val_clean": res["val_clean"],
            "test_clean": res.get("test_clean"),
            "best_epoch": res["best_epoch"],
            "quality_by_level": quality,
            "seconds": round(seconds, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"model": args.model, "data": str(data), "epochs": args.epochs, "runs": rows}


TABLE_KEYS = (
    "model", "inference_samples_per_s", "inference_samples_per_s_best", "train_epoch_s",
    "train_samples_per_s", "flops_per_sample_M", "achieved_gflops", "matmul_gflops",
    "ratio_to_matmul", "parameters", "load_average",
)  # fmt: skip


def shapes_of(data: Path) -> dict[str, list[int]]:
    with FeatureFile(data) as f:
        return {m: list(f.h5["test"][m].shape[1:]) for m in f.modalities}


def bench_all(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """One row per registered built-in model (defaults, options included), as one table."""
    rows = []
    for name in names():
        args.model = name
        row = bench_speed(args, ModelConfig(), data)
        rows.append(row if args.compare_ref else {k: row.get(k) for k in TABLE_KEYS})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.compare_ref:
        return {
            "what": "Every built-in model with its defaults on the synthetic mosi preset at full "
            "unaligned lengths (test split, batch 256), the library's forward ('new') against "
            "the computation before the speed-ups ('reference', benchmarks/model_reference.py) "
            "timed in alternation with a 2048² float32 matmul between rounds: samples/s "
            "(median and best), FLOPs per sample (torch flop counter) of each path, the "
            "achieved share of the matmul's GFLOP/s, the median per-round speed-up, the "
            "largest difference of the predictions, and one training epoch on each path.",
            "command": shlex.join(["python", *sys.argv]),
            "threads": torch.get_num_threads(),
            "data_shapes": shapes_of(data),
            "machine_note": args.note,
            "rows": rows,
        }
    return {
        "what": "Every built-in model with its defaults on the synthetic mosi preset at full "
        "unaligned lengths (test split, batch 256): inference samples/s (median and best), one "
        "training epoch through the real trainer, FLOPs per sample (torch flop counter) and the "
        "achieved share of a 2048² float32 matmul's GFLOP/s measured in the same run.",
        "command": "nice python benchmarks/bench_model.py --all --out "
        "docs/results/models-bench.json",
        "threads": torch.get_num_threads(),
        "data_shapes": row["data"]["shapes"],
        "machine_note": args.note,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="feature file (default: synthetic)")
    ap.add_argument("--preset", default="mosi", help="synthetic preset when --data is not given")
    ap.add_argument("--model", default="qamoe")
    ap.add_argument("--config", type=Path, default=None, help="JSON with a 'model' section")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--no-train-epoch", dest="train_epoch", action="store_false")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument(
        "--no-mask-cost", dest="mask_cost", action="store_false",
        help="skip timing mask_zero_steps on against off",
    )  # fmt: skip
    ap.add_argument("--accuracy", action="store_true", help="accuracy cost of compression")
    ap.add_argument("--segments", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="every built-in model, one table")
    ap.add_argument(
        "--compare-ref", action="store_true",
        help="time the library's forward against the reference path (the code before the "
        "speed-ups, benchmarks/model_reference.py) in alternation",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--note", default="", help="a note on the machine (e.g. its load)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mcfg = from_json(args.config)[0] if args.config else ModelConfig()
    data = ensure_data(args.data, args.preset)
    if args.all:
        args.profile = args.mask_cost = False
        out = bench_all(args, data)
    elif args.accuracy:
        out = bench_accuracy(args, mcfg, data)
    else:
        out = bench_speed(args, mcfg, data)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
