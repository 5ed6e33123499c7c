"""Seconds per training epoch and inference samples/s of PretrainedTextEncoder
(docs/text-encoder.md).

Workload: the 1284 MOSI-std training utterances (train videos of
../shared/data/cmu-mosi-labels/std_folds.csv), transcripts from
../shared/data/mosi-lite/transcripts.csv tokenized by the encoder's own tokenizer. One
step = encoder + a linear regression head on the pooled vector, MSE on a random target,
backward, AdamW; batch 32, shuffled, each batch padded to its longest utterance.

Modes: frozen with every layer cached, top-2 with and without the lower-state cache, full
fine-tuning, and a reference (frozen, no cache: the whole encoder runs every step).
For cached modes the first epoch (which fills the cache) is reported apart from the steady
epochs. ``--max-batches N`` times only N batches per epoch and extrapolates; the JSON says so.

    python benchmarks/bench_text_encoder.py [--threads 2] [--epochs 1] [--max-batches N]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qamoe_core.text.encoder import LowerStateCache, PretrainedTextEncoder  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BATCH = 32
MAX_TOKENS = 128


def train_transcripts() -> list[str]:
    folds_csv = DATA / "cmu-mosi-labels" / "std_folds.csv"
    with folds_csv.open(encoding="utf-8") as handle:
        folds = {row["video_id"]: row["split"] for row in csv.DictReader(handle)}
    with (DATA / "mosi-lite" / "transcripts.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return [text for seg, text, *_ in rows if folds.get(seg.rsplit("_", 1)[0]) == "train"]


def tokenize(enc: PretrainedTextEncoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = enc.tokenizer(
        [t.lower() for t in texts],
        padding=True,
        truncation=True,
        max_length=MAX_TOKENS,
        return_tensors="pt",
    )
    return batch["input_ids"], batch["attention_mask"].sum(1)


def batches(lengths: torch.Tensor, epoch: int, bucket: bool) -> list[torch.Tensor]:
    """Shuffled batches; ``bucket`` groups similar lengths (less padding), order still random."""
    gen = torch.Generator().manual_seed(epoch)
    order = torch.randperm(len(lengths), generator=gen)
    if not bucket:
        return list(order.split(BATCH))
    # sort by length plus a little noise so batches differ between epochs
    noisy = lengths[order].float() + torch.rand(len(order), generator=gen) * 4
    chunks = list(order[noisy.argsort()].split(BATCH))
    return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]


def padded_tokens(lengths: torch.Tensor, bucket: bool) -> int:
    return sum(int(lengths[b].max()) * len(b) for b in batches(lengths, 0, bucket))


def pooled_for(enc, cache, ids, lengths):  # type: ignore[no-untyped-def]
    t = int(lengths.max())
    ids = ids[:, :t]
    if cache is None:
        return enc(ids, lengths).pooled
    return enc.upper(cache.states(ids, lengths), lengths).pooled


def run_epoch(enc, cache, head, opt, ids, lengths, epoch, scale, bucket):  # type: ignore[no-untyped-def]
    enc.train()
    order = batches(lengths, epoch, bucket)
    start, cpu = time.perf_counter(), time.process_time()
    for index in order:
        pred = head(pooled_for(enc, cache, ids[index], lengths[index])).squeeze(-1)
        loss = (pred - torch.linspace(-3, 3, len(index))).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # process CPU seconds too: on a loaded machine wall time mostly measures the others
    return (time.perf_counter() - start) * scale, (time.process_time() - cpu) * scale


def inference(enc, cache, ids, lengths, bucket, repeats=3):  # type: ignore[no-untyped-def]
    """Samples/s of the best of ``repeats`` passes (least disturbed by other processes)."""
    enc.eval()
    best = math.inf
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for index in batches(lengths, 999, bucket):
                pooled_for(enc, cache, ids[index], lengths[index])
            best = min(best, time.perf_counter() - start)
    return len(ids) / best


def bench_mode(name, k, use_cache, ids, lengths, args):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    enc = PretrainedTextEncoder(None, fine_tune_layers=k)
    cache = LowerStateCache(enc) if use_cache else None
    head = torch.nn.Linear(enc.hidden_size, 1)
    groups = [{"params": head.parameters(), "lr": 1e-3}]
    if enc.trainable_parameters():
        groups.append({"params": enc.trainable_parameters(), "lr": 2e-5})
    opt = torch.optim.AdamW(groups)
    epochs, cpus = [], []
    for epoch in range(args.epochs + (1 if use_cache else 0)):
        secs, cpu = run_epoch(enc, cache, head, opt, ids, lengths, epoch, args.scale, args.bucket)
        epochs.append(round(secs, 2))
        cpus.append(round(cpu, 2))
        print(f"{name} epoch {epoch}: {secs:.2f} s, cpu {cpu:.2f} s", file=sys.stderr)
    result = {
        "fine_tune_layers": k,
        "cache": use_cache,
        # the best steady epoch: on a shared machine the minimum is the least disturbed one
        "seconds_per_epoch": min(epochs[1:] if use_cache else epochs),
        "cpu_seconds_per_epoch": min(cpus[1:] if use_cache else cpus),
        "epochs_seconds": epochs,
        "epochs_cpu_seconds": cpus,
        "infer_samples_per_s_clean": round(inference(enc, cache, ids, lengths, args.bucket)),
    }
    if use_cache:
        result["first_epoch_fills_cache_seconds"] = epochs[0]
        result["cache_entries"] = len(cache)  # type: ignore[arg-type]
        # a corrupted input misses the cache: its inference speed is the uncached one
        result["infer_samples_per_s_uncached"] = round(
            inference(enc, None, ids, lengths, args.bucket)
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="steady epochs per mode")
    parser.add_argument("--max-batches", type=int, default=0, help="0 = whole epoch")
    parser.add_argument("--bucket", action="store_true", help="length-bucketed batches")
    parser.add_argument("--modes", default="reference,frozen,top2_cache,top2_nocache,full")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = train_transcripts()
    probe = PretrainedTextEncoder(None, fine_tune_layers=0)
    all_ids, all_lengths = tokenize(probe, texts)
    # a subset: the same max_batches*BATCH utterances every epoch (so the cache fills and
    # hits as in a full run); epoch seconds are scaled up to the full 1284
    keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(7))
    keep = keep[: args.max_batches * BATCH] if args.max_batches else keep
    ids, lengths = all_ids[keep], all_lengths[keep]
    args.scale = len(texts) / len(keep)
    modes = {
        "reference": (0, False),
        "frozen": (0, True),
        "top2_cache": (2, True),
        "top2_nocache": (2, False),
        "full": ("all", False),
    }
    load_before = os.getloadavg()
    results = {m: bench_mode(m, *modes[m], ids, lengths, args) for m in args.modes.split(",")}
    out = {
        "workload": {
            "utterances": len(texts),
            "source": "MOSI std train fold (std_folds.csv) x mosi-lite transcripts.csv",
            "tokens_mean": round(float(lengths.float().mean()), 1),
            "tokens_max": int(lengths.max()),
            "batch": BATCH,
            "batches_per_epoch": math.ceil(len(texts) / BATCH),
            "bucketed_by_length": args.bucket,
            "padded_tokens_per_epoch_random": padded_tokens(all_lengths, False),
            "padded_tokens_per_epoch_bucketed": padded_tokens(all_lengths, True),
            "real_tokens_per_epoch": int(all_lengths.sum()),
            "step": "encoder + Linear(H,1) head, MSE, backward, AdamW (text_lr 2e-5, head 1e-3)",
        },
        "encoder": {"dir": str(probe.model_dir), "hash": probe.content_hash, "layers": 6},
        "threads": args.threads,
        "extrapolated": bool(args.max_batches),
        "extrapolation": (
            f"timed on a fixed random subset of {len(keep)} utterances ({args.max_batches} "
            f"batches) per epoch, seconds multiplied by {args.scale:.2f}; inference samples/s "
            "measured on that subset"
            if args.max_batches
            else "none: whole epochs timed"
        ),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
