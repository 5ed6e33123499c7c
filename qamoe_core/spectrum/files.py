"""Materialise one point of the reliability spectrum as a new HDF5 file (`qamoe corrupt`).

Streams the source chunk by chunk (memory bounded by ``CHUNK_BYTES``, whatever the file size),
corrupts the chosen splits with :func:`qamoe_core.spectrum.engine.apply_spec` (keyed draws),
copies the other splits unchanged, and writes atomically. The output's bytes depend on neither
the block size nor the memory budget that may shrink it (:class:`_ChunkOrder`). The output
keeps the CLEAN source's train mean/std (noise of later corruptions and models'
normalisation must not be measured on corrupted data), appends this pass's record to the
chain of corruptions (:mod:`qamoe_core.spectrum.record`: the root attr ``corruption``, one
record per pass, each with the source file's sha256) and stores ``<m>_keep`` masks for every
split and modality.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qamoe_core.base.atomic import check_output
from qamoe_core.base.errors import InputError, UsageError
from qamoe_core.data.store import FeatureFile, FeatureWriter, file_sha256
from qamoe_core.spectrum import record as corruption_record
from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec

log = logging.getLogger(__name__)

# Feature bytes read per chunk. With the draws, torch temporaries and the output this keeps the
# working set near 5x this (~160 MiB) plus the interpreter and torch (~300 MiB): well under 1 GiB.
CHUNK_BYTES = 32 << 20
# Copies of a block alive at once (two blocks in the pipeline, each read, corrupted and
# written): blocks shrink so that these fit the memory budget (runtime.memory_budget).
_BLOCK_COPIES = 6
# Set by the writer or here.
_ROOT_OWNED = ("format", "format_version", "created_by", corruption_record.ATTR)


def _chunk_rows(row_bytes: int, n: int, store_rows: Sequence[int], requested: int | None) -> int:
    """Rows per read/write block: ``requested``, or ~CHUNK_BYTES aligned to the store's chunks.

    Aligning to a multiple of every dataset's HDF5 chunk (along N) means each compressed chunk
    is decoded once and written whole, never read back for a partial update.
    """
    if requested is not None:
        if requested < 1:
            raise UsageError(f"The 'chunk_rows' parameter must be >= 1. Got {requested}.")
        return min(requested, n)
    rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    align = math.lcm(*store_rows) if store_rows else 1
    if align <= rows:
        rows = rows // align * align
    return max(1, min(rows, n))


def _parse_splits(splits: str | Sequence[str] | None, available: tuple[str, ...]) -> list[str]:
    if splits is None:
        return list(available)
    items = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else list(splits)
    items = [s for s in items if s]
    if not items:
        raise UsageError(
            "The 'splits' parameter must name at least one split. Got none.",
            hint=f"e.g. --splits test (the file has {', '.join(available)}).",
        )
    for s in items:
        if s not in available:
            raise UsageError(
                f"The 'splits' parameter must name splits of the file "
                f"({', '.join(available)}). Got {s!r} instead.",
                hint="Split names are train, valid and test; comma-separate several.",
            )
    return [s for s in available if s in items]


class _Stats:
    """Per-modality tallies: dropped steps and realised noise in units of the train std."""

    def __init__(self) -> None:
        self.steps = 0  # valid steps still present before this pass
        self.dropped = 0  # of those, dropped by this pass
        self.noise_sq = 0.0  # sum over kept steps and dims of (added noise / s_d)^2
        self.noise_n = 0  # number of terms in noise_sq

    def update(
        self,
        x_in: np.ndarray,
        x_out: np.ndarray,
        keep_in: np.ndarray,
        keep: np.ndarray,
        inv_std: np.ndarray | None,
    ) -> None:
        self.steps += int(keep_in.sum())
        self.dropped += int((keep_in & ~keep).sum())
        if inv_std is not None:
            # Gather the kept steps first: ~3x less arithmetic than masking the padded array.
            diff = x_out[keep]  # (kept steps, D)
            diff -= x_in[keep]
            diff *= inv_std
            flat = diff.reshape(-1)
            self.noise_sq += float(np.dot(flat, flat))
            self.noise_n += diff.shape[0] * int((inv_std > 0).sum())

    def result(self, nominal_missing: float, nominal_noise: float) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "dropped": self.dropped,
            "missing_rate": self.dropped / self.steps if self.steps else 0.0,
            "noise_std": math.sqrt(self.noise_sq / self.noise_n) if self.noise_n else 0.0,
            "missing_rate_nominal": nominal_missing,
            "noise_std_nominal": nominal_noise,
        }


def _check_not_a_no_op(
    src: Path, stats: dict[str, _Stats], mods: list[str], splits: list[str]
) -> None:
    """Refuse (before the output is committed) a pass that found nothing left to corrupt."""
    for m in mods:
        if stats[m].steps == 0:
            raise InputError(
                f"'{src}': '{m}' has no kept step left in split(s) {', '.join(splits)} (an "
                "earlier corruption removed them all), so this pass would change nothing while "
                "its record claims the level.",
                hint=f"Leave '{m}' out with --modalities, or corrupt the clean file instead.",
            )


class _ChunkOrder:
    """Stores a split's chunked datasets (features, keep masks, text ids) one whole HDF5 chunk
    at a time, ordered by the row where the chunk ends (ties in the group's key order),
    whatever the blocks that bring the rows.

    HDF5 places a compressed chunk in the file when it stores it. A block that ended inside a
    chunk had it stored, then read back, extended and stored again (maybe elsewhere), and the
    order in which the datasets' chunks were placed followed the blocks: the bytes of the file
    changed with the block size, which the memory budget shrinks where memory is short. The
    rows of a chunk not yet complete wait here, copied (at most one chunk per dataset).
    """

    def __init__(self, group: h5py.Group, n: int) -> None:
        self.group, self.n = group, n
        self.size = {key: ds.chunks[0] for key, ds in group.items() if ds.chunks}
        # key -> (first row of its incomplete chunk, the rows so far in pieces)
        self.waiting: dict[str, tuple[int, list[np.ndarray]]] = {}

    def add(self, start: int, batch: Mapping[str, np.ndarray]) -> None:
        """Take rows ``start:start+B`` of ``batch`` (blocks in order); store what completes."""
        stop = start + len(batch["label"])
        ready: list[tuple[int, int, str, int, np.ndarray]] = []  # (end, rank, key, first, rows)
        for rank, (key, size) in enumerate(self.size.items()):
            if key not in batch:
                continue
            a, pieces = self.waiting.pop(key, (start, []))
            while a < stop:
                b = min(a + size, self.n)
                rows = batch[key][max(a, start) - start : b - start]
                if b > stop:  # a copy: a view would keep the whole block alive
                    self.waiting[key] = (a, [*pieces, rows.copy()])
                    break
                ready.append((b, rank, key, a, np.concatenate([*pieces, rows]) if pieces else rows))
                a, pieces = b, []
        for b, _, key, a, rows in sorted(ready, key=lambda r: r[:2]):
            self.group[key][a:b] = rows


def _stream_split(
    f: FeatureFile,
    w: FeatureWriter,
    split: str,
    process: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]],
    worker: ThreadPoolExecutor,
    chunk_rows: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    """Create ``split`` in the output and stream it through ``process`` block by block."""
    g = f.h5[split]
    n = f.n(split)
    shapes = {m: (g[m].shape[1], g[m].shape[2]) for m in f.modalities}
    w.create_split(
        split,
        n,
        shapes,
        text_ids_len=g["text_ids"].shape[1] if "text_ids" in g else None,
        raw_text="raw_text" in g,
        keep_masks=True,
    )
    gw = w.h5[split]
    row_bytes = sum(t * d * 4 for t, d in shapes.values())
    store_rows = [gw[m].chunks[0] for m in f.modalities if gw[m].chunks]
    rows = f.block_rows(split, _chunk_rows(row_bytes, n, store_rows, chunk_rows), _BLOCK_COPIES)
    # The strings (a heap in the file) and labels first and whole, so that their place in the
    # file does not depend on the blocks either; then lengths per block and chunks in order.
    w.write(split, 0, {"label": f.labels(split)}, ids=f.ids(split), raw_text=f.raw_text(split))
    chunks = _ChunkOrder(gw, n)

    def flush(start: int, stop: int, new: dict[str, np.ndarray]) -> None:
        w.write(split, start, {k: v for k, v in new.items() if k not in chunks.size})
        chunks.add(start, new)
        del new  # before progress(), where a caller may trim memory (runtime.trim_memory)
        if progress is not None:
            progress(stop - start)

    # A two-stage pipeline: the worker thread draws and corrupts block k while this thread
    # decodes block k+1 and encodes block k-1. numpy's generators, torch and HDF5's filters
    # release the GIL, so on 2 cores the compute hides behind the I/O. One worker keeps the
    # blocks (and the statistics they update) in order.
    pending: tuple[int, int, Future[dict[str, np.ndarray]]] | None = None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        job = worker.submit(process, split, f.read(split, slice(start, stop)))
        if pending is not None:
            flush(pending[0], pending[1], pending[2].result())
        pending = (start, stop, job)
    if pending is not None:
        flush(pending[0], pending[1], pending[2].result())


def _check_noise_has_effect(
    src: Path, spec: CorruptionSpec, train_std: dict[str, np.ndarray]
) -> None:
    """Refuse noise on a modality whose train std is 0 in every dimension."""
    for m, std in train_std.items():
        if not std.any():  # noise is level·scale·std: it would add nothing at all
            raise InputError(
                f"'{src}': the train std of '{m}' is 0 in every dimension, so noise at "
                f"level {spec.level:g} would leave it unchanged while the record claims it.",
                hint="The train split holds one constant value; re-extract it, or leave "
                f"'{m}' out with --modalities.",
            )


class _Pass:
    """One corruption pass over an open source file: its settings and running tallies."""

    def __init__(
        self, f: FeatureFile, src: Path, spec: CorruptionSpec, splits: str | Sequence[str] | None
    ) -> None:
        self.src, self.spec, self.modalities = src, spec, f.modalities
        try:
            self.resolved = spec.resolve(f.modalities)
        except InputError as exc:
            raise InputError(exc.message.replace("the data", f"'{src}'"), exc.hint) from None
        self.chosen = _parse_splits(splits, f.splits)
        for s in f.splits:  # before the output exists: a row too big for the memory budget
            f.block_rows(s, 1, _BLOCK_COPIES)
        self.targets = [m for m in self.resolved if spec.level > 0]
        self.train_std = {m: f.train_std(m) for m in self.targets} if spec.noise_std > 0 else {}
        _check_noise_has_effect(src, spec, self.train_std)
        self.inv_std = {
            m: np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
            for m, s in self.train_std.items()
        }
        self.chain = f.corruption
        self.special_ids = f.text_special_ids  # [UNK] etc. of the tokenizer behind text_ids
        self.stats = {m: _Stats() for m in f.modalities}
        self.tallied = [*self.targets, *spec.drop]  # the modalities with statistics

    def process(self, split: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Corrupt (or pass through) one block; runs in the worker thread."""
        valid = {
            m: np.arange(batch[m].shape[1])[None, :] < batch[f"{m}_len"][:, None]
            for m in self.modalities
        }  # (B, T) each
        if split not in self.chosen:  # copied unchanged, with keep masks like every other split
            new = dict(batch)
            for m in self.modalities:
                new[f"{m}_keep"] = valid[m] & batch.get(f"{m}_keep", True)
            return new
        new = apply_spec(batch, self.spec, split=split, train_std=self.train_std,
                         chain=len(self.chain), special_ids=self.special_ids)  # fmt: skip
        for m in self.tallied:
            keep_in = valid[m] & batch.get(f"{m}_keep", True)
            self.stats[m].update(batch[m], new[m], keep_in, new[f"{m}_keep"], self.inv_std.get(m))
        return new

    def record(self, source_sha256: str) -> dict[str, Any]:
        """This pass's entry in the output's corruption chain."""
        return corruption_record.make(
            self.spec, self.resolved, self.chosen, source_sha256, len(self.chain)
        )

    def write(
        self,
        f: FeatureFile,
        out: Path,
        force: bool,
        chunk_rows: int | None,
        progress: Callable[[int], None] | None,
    ) -> dict[str, Any]:
        """Stream every split of ``f`` into ``out`` (atomically); return the new record."""
        attrs = {k: v for k, v in f.attrs.items() if k not in _ROOT_OWNED}
        stop_hash = threading.Event()
        with ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as worker:
            # Hashing overlaps the streaming (hashlib drops the GIL); on an error it stops early
            # so that leaving the pool does not wait for a multi-GB hash.
            sha_future = hasher.submit(file_sha256, self.src, stop_hash)
            try:
                with FeatureWriter(out, force=force, attrs=attrs) as w:
                    for split in f.splits:
                        _stream_split(f, w, split, self.process, worker, chunk_rows, progress)
                    _check_not_a_no_op(self.src, self.stats, self.tallied, self.chosen)
                    record = self.record(sha_future.result())
                    w.set_attrs(**{corruption_record.ATTR: [*self.chain, record]})
            except BaseException:
                stop_hash.set()
                raise
        return record

    def modality_summary(self) -> dict[str, dict[str, Any]]:
        """Realised against nominal drop rate and noise of each modality with statistics."""
        spec = self.spec
        return {
            m: {
                **self.stats[m].result(
                    spec.missing_rate if m in self.targets else 1.0,
                    spec.noise_std if m in self.targets else 0.0,
                ),
                "dropped_whole": m in spec.drop,
            }
            for m in self.tallied
        }


def corrupt_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: CorruptionSpec,
    *,
    splits: str | Sequence[str] | None = None,
    force: bool = False,
    chunk_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``src`` corrupted at ``spec`` to ``out``; return a summary dict.

    ``splits``: which splits to corrupt (default all); the others are copied unchanged.
    ``chunk_rows``: rows per streamed block (default ~32 MiB aligned to the HDF5 chunks); the
    output bytes do not depend on it. ``progress(n)`` is called with rows done after each block
    (the CLI also hands memory back there: :func:`qamoe_core.base.runtime.trim_memory`).
    Refuses a pass that could change nothing while its record claims the level: noise on a
    modality whose train std is 0 everywhere, or a modality with no kept step left.
    Summary: per corrupted modality the realised ``missing_rate`` (dropped / valid steps) and
    ``noise_std`` (RMS of the added noise over kept steps, in train-std units; ≈ level ×
    noise_scale), plus the record appended to the file's corruption chain.
    """
    src, out = Path(src), Path(out)
    check_output(out, force, inputs=[src])  # fail before reading anything
    t0 = time.perf_counter()
    with FeatureFile(src) as f:
        run = _Pass(f, src, spec, splits)
        record = run.write(f, out, force, chunk_rows, progress)
        copied = [s for s in f.splits if s not in run.chosen]
    summary_mods = run.modality_summary()
    seconds = time.perf_counter() - t0
    log.info("corrupted %s -> %s in %.1fs", src, out, seconds)
    return {
        "source": str(src),
        "out": str(out),
        "spec": {**spec.to_dict(), "modalities": list(run.resolved)},
        "pattern": spec.pattern,
        "splits": run.chosen,
        "copied_splits": copied,
        "chain_length": len(run.chain) + 1,
        "record": record,
        "modalities": summary_mods,
        "seconds": seconds,
        "bytes": out.stat().st_size,
    }
