"""Benchmark `corrupt` on a large MOSEI-shaped file against a plain chunked h5py copy.

Builds a synthetic file with MOSEI's unaligned shapes (text 50x768, audio 500x74, vision
500x35; the split proportions of MMSA's MOSEI release) streamed through FeatureWriter, then in
the SAME run times, each in a fresh subprocess (so peak RSS is per task):

- ``copy``: a plain chunked h5py copy (same chunks and filters, blocks of the same size);
- ``corrupt``: ``corrupt_file`` at level 0.4 on the mixed axis (drops and noise on every
  modality, every split), once per temporal pattern (``--patterns``; default the plain
  random+white point, burst drops, AR(1)-correlated noise, and both), run as `qamoe corrupt`
  runs it (one torch thread, memory trimmed after each block: qamoe_core/base/runtime.py);

and prints JSON with seconds, MB/s of uncompressed feature data, the ratio corrupt/copy
throughput per pattern (goal >= 0.5) and each subprocess's peak RSS (goal < 1 GiB). Files are
deleted at the end unless --keep.

    python benchmarks/bench_corrupt.py                 # 25000 rows, ~5.4 GB on disk
    python benchmarks/bench_corrupt.py --rows 1500     # a quick check (~330 MB)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SHAPES = {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)}  # MMSA MOSEI unaligned_50
MIN_LEN = {"text": 8, "audio": 40, "vision": 40}
SPLIT_FRACTION = {"train": 16326 / 22856, "valid": 1871 / 22856, "test": 4659 / 22856}
BLOCK = 128  # rows generated at a time while building


def build(path: Path, rows: int, seed: int = 0) -> dict[str, float]:
    """Stream a MOSEI-shaped file of ``rows`` samples (all splits) through FeatureWriter."""
    from qamoe_core.data.store import FeatureWriter

    rng = np.random.default_rng(seed)
    scale = {m: rng.uniform(0.5, 2.0, size=d).astype(np.float32) for m, (_, d) in SHAPES.items()}
    attrs = {
        "dataset": "bench-mosei",
        "task": "regression",
        "scheme": "mosi",
        "label_min": -3.0,
        "label_max": 3.0,
        "extractor": {"name": "benchmark", "seed": seed},
        "modalities": list(SHAPES),
    }
    t0 = time.perf_counter()
    with FeatureWriter(path, force=True, attrs=attrs) as w:
        for split, frac in SPLIT_FRACTION.items():
            n = max(1, round(rows * frac))
            w.create_split(split, n, SHAPES)
            for start in range(0, n, BLOCK):
                b = min(BLOCK, n - start)
                batch: dict[str, np.ndarray] = {
                    "label": rng.uniform(-3, 3, size=b).astype(np.float32)
                }
                for m, (t, d) in SHAPES.items():
                    lens = rng.integers(MIN_LEN[m], t + 1, size=b)
                    x = rng.standard_normal((b, t, d), dtype=np.float32)  # (B, T, D)
                    x *= scale[m]
                    x *= np.arange(t)[None, :, None] < lens[:, None, None]  # zero padding
                    batch[m] = x
                    batch[f"{m}_len"] = lens.astype(np.int32)
                w.write(split, start, batch, ids=[f"{split}_{start + i}" for i in range(b)])
        w.compute_train_stats()
    return {"build_seconds": time.perf_counter() - t0}


def feature_bytes(path: Path) -> int:
    """Uncompressed bytes of all feature arrays (what both tasks decode and re-encode)."""
    with h5py.File(path, "r") as f:
        return sum(int(np.prod(f[s][m].shape)) * 4 for s in f for m in SHAPES if m in f[s])


def plain_copy(src: Path, dst: Path) -> None:
    """Chunked h5py copy with the source's own layout, ~32 MiB blocks (as corrupt reads)."""
    from qamoe_core.spectrum.files import CHUNK_BYTES

    with h5py.File(src, "r") as fi, h5py.File(dst, "w") as fo:
        fo.attrs.update(dict(fi.attrs))
        for s in fi:
            gi, go = fi[s], fo.create_group(s)
            go.attrs.update(dict(gi.attrs))
            row_bytes = sum(int(np.prod(gi[m].shape[1:])) * 4 for m in SHAPES)
            chunk_rows = [gi[m].chunks[0] for m in SHAPES]
            rows = max(1, CHUNK_BYTES // row_bytes)
            rows = max(math.lcm(*chunk_rows), rows // math.lcm(*chunk_rows) * math.lcm(*chunk_rows))
            for name, di in gi.items():
                do = go.create_dataset(
                    name,
                    shape=di.shape,
                    dtype=di.dtype,
                    chunks=di.chunks,
                    compression=di.compression,
                    compression_opts=di.compression_opts,
                    shuffle=di.shuffle,
                )
                for start in range(0, di.shape[0], rows):
                    do[start : start + rows] = di[start : start + rows]


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited from the
    parent across fork+exec, so each subprocess reports only its own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def worker(task: str, src: Path, dst: Path, arg: str) -> None:
    """Run one task in this process and print its JSON (seconds, peak RSS)."""
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if task == "build":
        build(dst, int(arg))
    elif task == "copy":
        plain_copy(src, dst)
    else:
        from qamoe_core.base import runtime
        from qamoe_core.spectrum.engine import CorruptionSpec, parse_pattern
        from qamoe_core.spectrum.files import corrupt_file

        level, _, pattern = arg.partition(":")
        spec = CorruptionSpec(level=float(level), **parse_pattern(pattern))
        with runtime.torch_threads(1):  # as `qamoe corrupt` does: the pipeline brings parallelism
            summary = corrupt_file(
                src, dst, spec, force=True, progress=lambda n: runtime.trim_memory()
            )
        mods = summary["modalities"]
        extra = {
            "pattern": spec.pattern,
            "missing_rate": {m: round(v["missing_rate"], 4) for m, v in mods.items()},
            "noise_std": {m: round(v["noise_std"], 4) for m, v in mods.items()},
        }
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime  # all threads; robust to a loaded machine
    result = {"task": task, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak_rss_mib()}
    print(json.dumps({**result, **extra}))


def run_worker(task: str, src: Path, dst: Path, arg: object) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", task, str(src), str(dst), str(arg)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rows", type=int, default=25000, help="samples in all (MOSEI has 22856); 25000 ~ 5.4 GB"
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "qamoe-bench",
        help="folder for the files (needs ~3x the file size free)",
    )
    p.add_argument("--level", type=float, default=0.4, help="corruption level (mixed axis)")
    p.add_argument(
        "--patterns",
        default=";burst;correlated;burst,correlated",
        help="';'-separated --pattern values to time ('' = random+white)",
    )
    p.add_argument("--keep", action="store_true", help="keep the files afterwards")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        task, src, dst, arg = args.worker
        worker(task, Path(src), Path(dst), arg)
        return

    made_dir = not args.dir.exists()
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / "bench-src.h5"
    copy_out, corrupt_out = args.dir / "bench-copy.h5", args.dir / "bench-corrupt.h5"
    try:
        result: dict[str, Any] = {"rows": args.rows, "level": args.level}
        result["build"] = run_worker("build", src, src, args.rows)
        result["file_bytes"] = src.stat().st_size
        fbytes = feature_bytes(src)
        result["feature_bytes_uncompressed"] = fbytes
        # copy / corrupt per pattern / copy: page-cache warmth and load hit every task.
        copies = [run_worker("copy", src, copy_out, "-")]
        corrupt = [
            run_worker("corrupt", src, corrupt_out, f"{args.level}:{pattern}")
            for pattern in args.patterns.split(";")
        ]
        copies.append(run_worker("copy", src, copy_out, "-"))
        best_copy = min(c["seconds"] for c in copies)
        best_cpu = min(c["cpu_seconds"] for c in copies)
        result.update(copy=copies, corrupt=corrupt)
        result["copy_mb_s"] = fbytes / best_copy / 1e6
        for c in corrupt:
            c["mb_s"] = fbytes / c["seconds"] / 1e6
            c["throughput_ratio"] = best_copy / c["seconds"]  # vs the FASTER copy
            c["cpu_time_ratio"] = best_cpu / c["cpu_seconds"]  # same, in CPU time
        result["corrupt_out_bytes"] = corrupt_out.stat().st_size
        result["ok"] = all(
            c["throughput_ratio"] >= 0.5 and c["peak_rss_mib"] < 1024 for c in corrupt
        )
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            for path in (src, copy_out, corrupt_out):
                path.unlink(missing_ok=True)
            if made_dir:
                shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
