"""What training reads and scores: a split in memory or lazily, the fixed validation
levels, and prediction/scoring helpers (used by the trainer; evaluation has its own)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import qamoe_core.runs.checkpoint as ckpt
from qamoe_core.base.errors import TooLargeError
from qamoe_core.base.runtime import format_size, memory_budget
from qamoe_core.config import TrainConfig
from qamoe_core.data.store import BUDGET_HINT, FeatureFile
from qamoe_core.data.torchdata import H5Dataset, to_torch
from qamoe_core.metrics import compute, higher_is_better
from qamoe_core.models.base import MultimodalModel
from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


# Float32 copies of a batch alive during a step (the read, the corrupted copy, input-sized
# activations and their gradients), and of the model's weights (weights, gradients, AdamW's two
# moments, EMA, best and last copies, the checkpoint being written).
BATCH_COPIES = 8
WEIGHT_COPIES = 8
# A split is held in memory (when in_memory_gib allows) only if this many copies of it fit the
# memory budget: train, valid and test may all be held at once.
SPLIT_COPIES = 4


def _split_gib(f: FeatureFile, split: str) -> float:
    n = f.n(split)
    return sum(n * f.seq_lens[m] * f.dims[m] * 4 for m in f.modalities) / 2**30


def check_fits(f: FeatureFile, d_model: int, batch_size: int) -> None:
    """Refuse, before anything is built, a file whose batches or whose model (every model
    projects each modality's D features to ``d_model``: at least sum(D) x d_model weights)
    would pass the memory budget; one line naming the file, the key, its declared shape and
    the budget."""
    for split in ("train", "valid"):
        f.check_rows(split, min(batch_size, f.n(split)), BATCH_COPIES, "a batch of")
    need = sum(f.dims.values()) * d_model * 4 * WEIGHT_COPIES
    budget = memory_budget()
    if need > budget:
        m = max(f.dims, key=lambda k: f.dims[k])
        shape = f.h5["train"][m].shape
        raise TooLargeError(
            f"'{f.path}': 'train/{m}' declares shape {shape}: a model projecting "
            f"{sum(f.dims.values()):,} input features to d_model {d_model} needs about "
            f"{format_size(need)} to train, beyond the memory budget of {format_size(budget)}.",
            hint=BUDGET_HINT,
        )


class SplitData:
    """One split, in memory when small enough, else read lazily from the HDF5 file.

    ``batches(indices, batch_size)`` yields batch dicts of torch tensors on ``device``.
    """

    def __init__(self, f: FeatureFile, split: str, device: torch.device, max_gib: float) -> None:
        self.split, self.device, self.n = split, device, f.n(split)
        self.memory: Batch | None = None
        self.dataset: H5Dataset | None = None
        fits = self.n * f.row_bytes(split) * SPLIT_COPIES <= memory_budget()
        if fits and _split_gib(f, split) <= max_gib:  # FeatureFile.read checks what it reads
            self.memory = to_torch(f.read(split, slice(None)), device)
        else:
            log.info("reading split '%s' lazily (%.1f GiB)", split, _split_gib(f, split))
            self.dataset = H5Dataset(f.path, split)

    def batches(self, indices: list[int] | np.ndarray, batch_size: int) -> Iterator[Batch]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.memory is not None:
            for start in range(0, len(idx), batch_size):
                sel = torch.from_numpy(idx[start : start + batch_size]).to(self.device)
                yield {k: v.index_select(0, sel) for k, v in self.memory.items()}
            return
        assert self.dataset is not None
        chunks = [idx[s : s + batch_size].tolist() for s in range(0, len(idx), batch_size)]
        # Its own generator: a DataLoader otherwise draws a seed from the global RNG, which
        # would shift the dropout stream and make lazy and in-memory runs differ.
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=0,
                            generator=torch.Generator())  # fmt: skip
        for batch in loader:  # H5Dataset.__getitems__ reads each chunk in one HDF5 call
            yield {k: v.to(self.device) for k, v in batch.items()}


@torch.no_grad()
def predict(
    model: MultimodalModel, batches: Iterator[Batch] | list[Batch]
) -> dict[str, np.ndarray]:
    """Run ``model`` (eval mode) over batches: prediction, label and task loss per sample."""
    was = model.training
    model.eval()
    preds, labels, losses = [], [], []
    for batch in batches:
        out = model(batch)
        preds.append(out.prediction.float().cpu())
        labels.append(batch["label"].float().cpu())
        if out.loss_task is not None:
            losses.append(out.loss_task.float().cpu().repeat(len(batch["label"])))
    model.train(was)
    return {
        "pred": torch.cat(preds).numpy(),
        "label": torch.cat(labels).numpy(),
        "loss": torch.cat(losses).numpy() if losses else np.zeros(0),
    }


def score(result: Mapping[str, np.ndarray], scheme: str, metric: str) -> tuple[float, dict]:
    """(selection score, all metrics) for predictions from :func:`predict`."""
    metrics = ckpt.plain(compute(result["pred"], result["label"], scheme))
    metrics["loss"] = float(result["loss"].mean()) if len(result["loss"]) else math.nan
    return float(metrics[metric]), metrics


def better(new: float, best: float | None, metric: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    lower = metric == "loss" or not higher_is_better(metric)
    return new < best if lower else new > best


class ValidationSet:
    """The validation split at one fixed spectrum level (keyed draws: the same every epoch).

    Cached in memory when the split is; otherwise corrupted again, identically, on each pass
    (a MOSEI-sized validation copy per level would not fit).
    """

    def __init__(
        self, data: SplitData, level: float, spec: CorruptionSpec | None, train_std: Any, bs: int,
        text_options: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.data, self.level, self.spec, self.train_std, self.bs = data, level, spec, train_std, bs
        self.text_options = dict(text_options or {})  # MultimodalModel.spectrum_options
        self.cache = list(self._make()) if data.memory is not None else None

    def _make(self) -> Iterator[Batch]:
        for batch in self.data.batches(np.arange(self.data.n), self.bs):
            if self.spec is not None:
                batch = apply_spec(batch, self.spec, split="valid", train_std=self.train_std,
                                   **self.text_options)  # fmt: skip
            yield batch

    def batches(self) -> Iterator[Batch] | list[Batch]:
        return self.cache if self.cache is not None else self._make()


def validation_sets(
    data: SplitData, f: FeatureFile, cfg: TrainConfig, train_std: Mapping[str, Any], bs: int,
    text_options: Mapping[str, Any] | None = None,
) -> list[ValidationSet]:  # fmt: skip
    mods = tuple(m for m in cfg.corrupt_modalities if m in f.modalities)
    out = []
    for level in cfg.val_levels:
        spec = None
        if level > 0 and mods:
            spec = CorruptionSpec(level=level, axis=cfg.axis, modalities=mods,
                                  noise_scale=cfg.noise_scale, seed=cfg.val_seed)  # fmt: skip
        out.append(ValidationSet(data, level, spec, train_std, bs, text_options))
    return out
