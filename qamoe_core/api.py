"""The library's public face: load a run, predict, corrupt a batch, compute metrics.

(``compute_metrics``, not ``metrics``: ``qamoe_core.metrics`` is the module that defines
them, and a package attribute cannot be both.)

Four functions cover what a script needs without the command line::

    import qamoe_core as qa

    run = qa.load_run("runs/qamoe")                      # the folder of `qamoe train --out`
    p = qa.predict(run, "syn.h5", split="test")          # (N,) scores or probabilities
    batch = qa.read_batch("syn.h5", split="test")        # the split as a batch dict
    noisy = qa.corrupt_batch(batch, level=0.4, split="test", source="syn.h5")
    qa.compute_metrics(qa.predict(run, noisy), batch["label"], run.scheme)

A *batch* is the dict that :meth:`qamoe_core.h5store.FeatureFile.read` returns (numpy) or its
torch version: for each modality ``m`` the features ``m`` (B, T_m, D_m) float32 and lengths
``m_len`` (B,), optionally the keep mask ``m_keep`` (B, T_m) bool; ``index`` (B,) the rows'
numbers within their split; ``label`` (B,). Shapes below use B for the batch size.

Predictions for binary tasks are probabilities (the sigmoid of the model's logit, in float64),
not bare logits: a probability reads the same whatever the model, and thresholding it at 0.5
is the decision the metrics use. Regression tasks return the predicted sentiment score on the
label's scale (MOSI/MOSEI [-3, 3], SIMS [-1, 1]). :func:`compute_metrics` takes either, as
:func:`predict` returns it.

This module imports torch; ``import qamoe_core`` alone does not (the names are re-exported
lazily), so that the command line's help stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamoe_core.apiargs import corrupt_args, numbers_arg, path_arg, rows_arg
from qamoe_core.errors import UsageError

__all__ = ["Run", "compute_metrics", "corrupt_batch", "load_run", "predict", "read_batch"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Run:
    """A trained run, ready to predict: the model (eval mode) and what it was trained on.

    ``meta`` is :func:`qamoe_core.checkpoint.load_run`'s dict (dims, dataset, configs,
    metrics.json); the properties below are its most used entries.
    """

    model: torch.nn.Module
    meta: dict[str, Any]

    @property
    def path(self) -> Path:
        return Path(self.meta["path"])

    @property
    def task(self) -> str:
        """``regression`` or ``binary``."""
        return str(self.meta["task"])

    @property
    def scheme(self) -> str:
        """The metric scheme of the training data: ``mosi``, ``sims`` or ``binary``."""
        return str(self.meta["scheme"])

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta["dims"])


def load_run(path: PathLike, *, device: str = "cpu") -> Run:
    """Load the run folder written by ``qamoe train --out PATH`` (config.json + model.pt).

    ``device``: ``cpu`` (default), ``cuda`` or ``auto``. Raises CheckpointError naming a
    missing or damaged file (weights are read with ``weights_only=True``).
    """
    from qamoe_core.checkpoint import load_run as _load

    model, _, meta = _load(path_arg(path, "path"), device=device)
    return Run(model, meta)


def read_batch(source: PathLike, *, split: str = "test", rows: Any = None) -> dict[str, Any]:
    """The rows ``rows`` (a slice or indices; default all) of ``split`` of an HDF5 feature
    file as a numpy batch dict (with ``index`` and ``label``)."""
    from qamoe_core.h5store import FeatureFile

    with FeatureFile(path_arg(source, "source")) as f:
        return f.read(split, rows_arg(rows))


def _as_run(run: Run | PathLike) -> Run:
    return run if isinstance(run, Run) else load_run(path_arg(run, "run"))


def predict(
    run: Run | PathLike,
    data: Mapping[str, Any] | PathLike,
    *,
    split: str = "test",
    batch_size: int = 256,
) -> np.ndarray:
    """Predict every sample of ``data``: a batch dict, or an HDF5 file (then its ``split``).

    Returns a (B,) float64 array: probabilities in [0, 1] of the positive class for a binary
    run (the sigmoid of the model's logit), predicted scores for a regression run. A file is
    first checked against the run (modalities, dims, kind of labels). ``batch_size`` rows go
    through the model at a time; the result does not depend on it beyond float rounding.
    """
    the_run = _as_run(run)
    if batch_size < 1:
        raise UsageError(f"The 'batch_size' parameter must be >= 1. Got {batch_size}.")
    if isinstance(data, Mapping):
        batch = data
    else:
        from qamoe_core.evaluate import check_compatible
        from qamoe_core.h5store import FeatureFile

        with FeatureFile(data) as f:
            check_compatible(the_run.model, f, the_run.task)
            batch = f.read(split, slice(None))
    scores = _forward(the_run.model, batch, batch_size)
    if the_run.task == "binary":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores


def _forward(model: torch.nn.Module, batch: Mapping[str, Any], batch_size: int) -> np.ndarray:
    """The model's raw output (B,) float64 over ``batch``, ``batch_size`` rows at a time."""
    device = next(model.parameters()).device
    first = next((m for m in ("text", "audio", "vision") if m in batch), None)
    if first is None:
        raise UsageError(
            "The batch holds no modality (text, audio or vision).",
            hint="Pass a batch as read_batch() returns it, or a feature file.",
        )
    n = int(batch[first].shape[0])
    out = np.empty(n, dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            part = _tensors(batch, slice(s, s + batch_size), device)
            out[s : s + batch_size] = model(part).prediction.double().cpu().numpy()
    return out


def _tensors(batch: Mapping[str, Any], rows: slice, device: torch.device) -> dict[str, Any]:
    """Rows of a numpy or torch batch as tensors on ``device``; without the label (so the
    model computes no loss) and without strings (ids, raw text)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "label":
            continue
        if isinstance(value, torch.Tensor):
            out[key] = value[rows].to(device)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[key] = torch.from_numpy(np.ascontiguousarray(value[rows])).to(device)
    return out


def corrupt_batch(
    batch: Mapping[str, Any],
    *,
    level: float,
    split: str,
    axis: str = "mixed",
    modalities: Sequence[str] | None = None,
    seed: int = 0,
    drop: Sequence[str] = (),
    noise_scale: float = 1.0,
    source: PathLike | None = None,
    train_std: Mapping[str, Any] | None = None,
    chain: int | None = None,
) -> dict[str, Any]:
    """Corrupt ``batch`` exactly as ``qamoe corrupt`` corrupts the same rows of the same file.

    ``batch`` must carry ``index`` (its rows' numbers in ``split``, as :func:`read_batch` and
    ``FeatureFile.read`` give): each row's randomness is keyed by (seed, split, modality,
    corruption-chain position, row), which is what makes the result independent of how rows
    are batched, and the reason the training-time ``spectrum.corrupt_batch`` (fresh torch
    draws at per-sample levels) gives other values for the same seed. ``level``, ``axis``,
    ``modalities`` (None: all; a list, or "audio,vision"), ``seed``, ``drop`` and
    ``noise_scale`` mean what the flags of ``qamoe corrupt`` mean.

    Noise is scaled by the per-dimension std of the clean TRAIN split, and a file already
    corrupted continues its chain; ``source`` (the file the batch was read from) supplies
    both, or pass ``train_std`` ({m: (D_m,)}) and ``chain`` (default 0) yourself.

    Returns a new batch dict (numpy in, numpy out; torch in, torch out) with ``m_keep``
    (B, T_m) for every modality; the input is not modified.
    """
    from qamoe_core.spectrum import CorruptionSpec, apply_spec

    batch, split, modalities, drop, source, chain = corrupt_args(
        batch, split, modalities, drop, source, train_std, chain
    )
    spec = CorruptionSpec(
        level=level,
        axis=axis,
        modalities=modalities,
        drop=drop,
        noise_scale=noise_scale,
        seed=seed,
    )
    if "index" not in batch:
        raise UsageError(
            "The batch has no 'index' (the rows' numbers in their split), which keys the draws.",
            hint="Read it with qamoe_core.read_batch or FeatureFile.read, which add it.",
        )
    if source is not None:
        train_std, chain = _file_context(source, spec, train_std, chain)
    elif spec.noise_std > 0 and train_std is None:
        raise UsageError(
            "Noise is scaled by the train split's std: give source= (the feature file) or "
            "train_std=.",
            hint="e.g. corrupt_batch(batch, level=0.4, split='test', source='syn.h5').",
        )
    return apply_spec(batch, spec, split=split, train_std=train_std, chain=chain or 0)


def _file_context(
    source: PathLike, spec: Any, train_std: Mapping[str, Any] | None, chain: int | None
) -> tuple[Mapping[str, Any] | None, int]:
    """(train std per modality, chain position) as `qamoe corrupt` takes them from ``source``."""
    from qamoe_core.h5store import FeatureFile

    with FeatureFile(source) as f:
        if train_std is None and spec.noise_std > 0:
            train_std = {m: f.train_std(m) for m in spec.resolve(f.modalities)}
        return train_std, len(f.corruption) if chain is None else chain


def compute_metrics(pred: Any, truth: Any, scheme: str) -> dict[str, float]:
    """MMSA-compatible metrics of predictions ``pred`` (B,) against labels ``truth`` (B,).

    ``scheme``: ``mosi`` (also MOSEI), ``sims`` or ``binary`` (``Run.scheme`` names the
    run's). For ``binary``, ``pred`` are probabilities as :func:`predict` returns them
    (> 0.5 is positive, exactly 0.5 negative, as a logit of exactly 0 is). Returns
    ``{name: value}`` in MMSA's order; see :mod:`qamoe_core.metrics` for each definition.
    """
    from qamoe_core.metrics import compute

    if scheme == "binary":
        p = numbers_arg(pred, "pred")
        if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1):
            raise UsageError(
                "Binary predictions must be probabilities in [0, 1]; these look like logits.",
                hint="Pass what predict() returns, or use qamoe_core.metrics.compute for logits.",
            )
        pred = p - 0.5  # compute() reads binary scores on the logit scale: only the sign counts
    return compute(pred, truth, scheme)
