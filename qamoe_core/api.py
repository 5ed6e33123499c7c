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

A *batch* is the dict that :meth:`qamoe_core.data.store.FeatureFile.read` returns (numpy) or its
torch version: for each modality ``m`` the features ``m`` (B, T_m, D_m) float32 and lengths
``m_len`` (B,), optionally the keep mask ``m_keep`` (B, T_m) bool; ``index`` (B,) the rows'
numbers within their split; ``label`` (B,). Shapes below use B for the batch size. A batch
you pass in is checked exactly as the file reader checks what it reads
(:func:`qamoe_core.data.store.normalize_batch`): missing keys, anything but arrays or tensors,
non-integer lengths or lengths outside [0, T_m], float keep masks and NaN/inf features are a
one-line ``UsageError``; float64 features and int32 lengths are converted.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qamoe_core.base.apiargs import corrupt_args, names_arg, numbers_arg, path_arg, rows_arg
from qamoe_core.base.errors import UsageError

if TYPE_CHECKING:
    from qamoe_core.models.base import MultimodalModel

__all__ = [
    *("Run", "compute_metrics", "corrupt_batch", "load_results", "load_run", "predict"),
    *("read_batch", "write_report", "sweep", "train"),
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Run:
    """A trained run, ready to predict: the model (eval mode) and what it was trained on.

    ``meta`` is :func:`qamoe_core.runs.checkpoint.load_run`'s dict (dims, dataset, configs,
    metrics.json); the properties below are its most used entries.
    """

    model: MultimodalModel
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


def load_run(
    path: PathLike,
    *,
    device: str = "cpu",
    plugins: Sequence[str] = (),
    text_model: PathLike | None = None,
) -> Run:
    """Load the run folder written by ``qamoe train --out PATH`` (config.json and
    model.safetensors, or an older run's model.pt), or a folder of ``qamoe export``.

    ``device``: ``cpu`` (default), ``cuda`` or ``auto``. ``plugins``: the ``module:Class``
    plug-ins you allow this run to name (nothing named inside a file is imported otherwise;
    built-in models and installed ``qamoe.models`` entry points need none). ``text_model``:
    the encoder folder of a run trained with a pretrained text encoder (the path the run
    records is only a hint; its content hash must match). Raises CheckpointError naming a
    missing, damaged or refused file (weights are read with ``weights_only=True``).
    """
    from qamoe_core.runs.checkpoint import load_run as _load

    model, _, meta = _load(
        path_arg(path, "path"), device=device, plugins=plugins, text_model=text_model
    )
    return Run(model, meta)


def read_batch(source: PathLike, *, split: str = "test", rows: Any = None) -> dict[str, Any]:
    """The rows ``rows`` (a slice or indices; default all) of ``split`` of an HDF5 feature
    file as a numpy batch dict (with ``index`` and ``label``)."""
    from qamoe_core.data.store import FeatureFile

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
    first checked against the run (modalities, dims, kind of labels), then read in blocks that
    fit the memory budget; a batch must hold every modality of the run, with its dims.
    ``batch_size`` rows go through the model at a time; the result does not depend on it
    beyond float rounding.
    """
    the_run = _as_run(run)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"The 'batch_size' parameter must be an int >= 1. Got {batch_size!r}.")
    if isinstance(data, str | os.PathLike):
        scores = _predict_file(the_run, data, split, batch_size)
    else:
        scores = _forward(the_run, _check_batch(the_run, data), batch_size)
    if the_run.task == "binary":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores


def _check_batch(run: Run, batch: Any) -> dict[str, Any]:
    """``batch`` checked as the file reader checks what it reads (h5store.normalize_batch),
    and against the run: every modality the model reads, with the dims it was trained on."""
    from qamoe_core.data.store import normalize_batch

    out = normalize_batch(batch, "the batch", run.modalities, error=UsageError)
    for m, d in run.meta["dims"].items():
        if out[m].shape[2] != d:
            raise UsageError(
                f"the batch: '{m}' has {out[m].shape[2]} feature dims; the run was trained on {d}.",
                hint="Pass data extracted like the run's training file.",
            )
    return out


def _predict_file(run: Run, source: PathLike, split: str, batch_size: int) -> np.ndarray:
    """Scores for every row of ``split`` of a feature file, read in blocks that fit the
    memory budget (each block checked by the reader)."""
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.evaluation.sweep import check_compatible

    with FeatureFile(source) as f:
        check_compatible(run.model, f, run.task)
        rows = f.block_rows(split, max(batch_size, 4096), copies=4)
        parts = [_forward(run, b, batch_size) for b in f.iter_batches(split, rows)]
    return np.concatenate(parts)


def _forward(run: Run, batch: Mapping[str, Any], batch_size: int) -> np.ndarray:
    """The model's raw output (B,) float64 over a checked batch, ``batch_size`` rows at a time."""
    model = run.model
    device = next(model.parameters()).device
    n = int(batch[run.modalities[0]].shape[0])
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
    from qamoe_core.data.store import normalize_batch
    from qamoe_core.spectrum.engine import CorruptionSpec, apply_spec

    batch, split, modalities, drop, source, chain = corrupt_args(
        batch, split, modalities, drop, source, train_std, chain
    )
    spec = CorruptionSpec(
        level=level, axis=axis, modalities=modalities, drop=drop, noise_scale=noise_scale, seed=seed
    )

    if isinstance(batch, Mapping) and "index" not in batch:
        raise UsageError(
            "The batch has no 'index' (the rows' numbers in their split), which keys the draws.",
            hint="Read it with qamoe_core.read_batch or FeatureFile.read, which add it.",
        )
    batch = normalize_batch(batch, "the batch", error=UsageError)
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
    from qamoe_core.data.store import FeatureFile

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


def _config_arg(value: Any, cls: Any, name: str) -> Any:
    """A config object, a dict of its fields (checked as config.json's section is), or None."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(dict(value), name)
    raise UsageError(
        f"The '{name}_config' parameter must be a {cls.__name__} or a dict of its fields. "
        f"Got {type(value).__name__} instead.",
        hint=f"e.g. {name}_config={{'epochs': 5}}.",
    )


def train(
    data: PathLike,
    out: PathLike,
    *,
    model: str = "qamoe",
    model_config: Any = None,
    train_config: Any = None,
    force: bool = False,
    resume: bool = False,
    device: str = "cpu",
    plugins: Sequence[str] = (),
) -> dict[str, Any]:
    """``qamoe train DATA --out OUT``: the same training; returns metrics.json's content.
    ``model_config`` / ``train_config``: a ModelConfig / TrainConfig or a dict of fields."""
    from qamoe_core.config import ModelConfig, TrainConfig
    from qamoe_core.training.loop import train as _train

    return _train(
        path_arg(data, "data"), path_arg(out, "out"), model,
        _config_arg(model_config, ModelConfig, "model"),
        _config_arg(train_config, TrainConfig, "train"),
        resume=resume, force=force, device=device, plugins=plugins,
    )  # fmt: skip


def sweep(
    run: PathLike,
    data: PathLike,
    *,
    levels: str = "0:0.9:0.1",
    axis: str | Sequence[str] = ("mixed", "missing", "noise"),
    corruption_seeds: int = 3,
    split: str = "test",
    out: PathLike | None = None,
    force: bool = False,
    device: str = "cpu",
) -> Any:
    """``qamoe eval RUN --data DATA --sweep``: the results table (a pandas DataFrame, the
    schema of ``qamoe eval --out``), also written to ``out`` when given."""
    from qamoe_core.evaluation.plan import EvalConfig, parse_levels
    from qamoe_core.evaluation.results import save
    from qamoe_core.evaluation.sweep import evaluate_run

    if isinstance(corruption_seeds, bool) or not isinstance(corruption_seeds, int):
        raise UsageError(f"The 'corruption_seeds' parameter must be an int >= 1. "
                         f"Got {corruption_seeds!r}.")  # fmt: skip
    cfg = EvalConfig(split=split, sweep=True, levels=parse_levels(levels),
                     axes=tuple(names_arg(axis, "axis") or ()),
                     seeds=tuple(range(corruption_seeds)))  # fmt: skip
    table = evaluate_run(path_arg(run, "run"), path_arg(data, "data"), cfg, device=device).table
    if out is not None:
        save(table, path_arg(out, "out"), force=force)
    return table


def load_results(paths: PathLike | Sequence[PathLike]) -> Any:
    """Results tables (``qamoe eval --out``) as one pandas DataFrame, checked."""
    from qamoe_core.evaluation.results import load

    many = [paths] if isinstance(paths, str | os.PathLike) else paths
    return load([path_arg(p, "paths") for p in many])


def write_report(
    results: Any,
    out: PathLike,
    *,
    metrics: Sequence[str] | None = None,
    reference: str | None = None,
    style: str = "screen",
    force: bool = False,
) -> Any:
    """``qamoe report RESULTS --out OUT``: ``results`` is a DataFrame, a path or a list of
    paths; returns the Report (its ``html``, ``images`` and ``tables`` paths)."""
    from qamoe_core.report.build import build_report

    table = results if hasattr(results, "columns") else load_results(results)
    return build_report(table, path_arg(out, "out"), metrics=metrics, reference=reference,
                        style=style, force=force)  # fmt: skip
