"""The HDF5 feature store: one schema for every dataset qamoe reads or writes.

Layout (format "qamoe-features", version 1; docs/architecture.md has the full table)::

    /                      attrs: format, format_version, dataset, task, scheme, label_min,
                           label_max, created_by, extractor (JSON), modalities (JSON),
                           train_mean_<m>, train_std_<m> (D_m,), optional corruption (JSON)
    /<split>/ids           (N,)        UTF-8
    /<split>/label         (N,)        float32
    /<split>/<m>           (N, T, D)   float32, chunked along N, compressed
    /<split>/<m>_len       (N,)        int32
    /<split>/<m>_keep      (N, T)      bool, only in corrupted files
    /<split>/raw_text      (N,)        UTF-8, optional
    /<split>/text_ids      (N, T)      int32, optional

Reading is lazy: :class:`FeatureFile` touches only the rows asked for, so a MOSEI-sized file
never has to fit in memory. Writing goes through a temporary file renamed at the end.
Nothing here imports torch: the torch side (``H5Dataset``, ``to_torch``) is in
:mod:`qamoe_core.data.torchdata`, which imports this module (never the other way round).

Hostile or broken files are refused on open or read with one-line errors: anything but a
regular file (a FIFO would block forever), links or storage outside the file (an ExternalLink,
external raw storage or a virtual dataset would make qamoe read, and `corrupt` copy, any local
file), labels outside the declared range, feature magnitudes beyond MAX_ABS_FEATURE, ids that
are not UTF-8 and corruption records whose numbers are not numbers.

Sizes follow the file, never only its declared shapes (docs/security.md): on open, a group tree
deeper than MAX_DEPTH or with more than MAX_OBJECTS links, a large dataset whose chunks were
never written (it would read as fill values), a chunk too big to unpack, and a split with more
rows than its bookkeeping fits in :func:`qamoe_core.base.runtime.memory_budget` are refused; every
read is checked against the budget first (:meth:`FeatureFile.check_rows`), and commands pick
their block sizes with :meth:`FeatureFile.block_rows`. Features of any float width are read as
float32; lengths must be integers, keep masks booleans or 0/1 integers
(:func:`normalize_batch`, which the library API applies to batches it is given, too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qamoe_core.base import jsontext
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import DataFormatError, InputError, QamoeError, TooLargeError
from qamoe_core.base.names import MODALITIES, SCHEMES, SPLITS, TASKS
from qamoe_core.base.runtime import format_size, memory_budget
from qamoe_core.spectrum.record import ATTR, read_chain
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

FORMAT = "qamoe-features"
FORMAT_VERSION = 1
# Deflate at level 1 (with the shuffle filter on features): the same rows always compress to
# the same bytes, which `qamoe corrupt` promises for a seed. Not h5py's lzf, although it is
# faster: its bundled liblzf is built without INIT_HTAB, so it starts from a hash table
# left over from earlier calls, and an identical chunk sometimes compressed to a different
# (still valid) stream, a byte shorter or longer, shifting the rest of the file (the flaky
# two-process test). Measured on 92 MB of MOSI-shaped text features: write 1.05-1.12 s
# against lzf's 0.66-0.70 s, read about the same, 8% smaller. Deflate is also part of
# every HDF5 build, so files are readable beyond h5py. Files written with lzf still read.
COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}
# Root attribute: JSON [unk, cls, sep] of the tokenizer behind text_ids.
TEXT_SPECIAL_ATTR = "text_special_ids"
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: h5py's recommended range is 10 KiB to 1 MiB
_STR = h5py.string_dtype("utf-8")
# No extractor we know writes features beyond ~1e4 in magnitude; past 1e10 a value is a unit or
# encoding error (3e38 was once misread as "the model diverged"). Squares of 1e10 (1e20) and
# their sums over any feature dim still fit float32 (max 3.4e38), so checks stay meaningful.
MAX_ABS_FEATURE = 1e10
# Caps on the group tree walked on open (qamoe's own files: depth 2, about 40 links). A file
# beyond them is refused before anything else is read: 2,000 nested groups once took minutes.
MAX_DEPTH = 32
MAX_OBJECTS = 10_000
# A dataset declaring at least this many bytes must have all its storage written: unwritten
# chunks read as fill values, so a 190 KB file could declare gigabytes.
UNWRITTEN_MIN_BYTES = 16 << 20
# Bytes a command keeps per row of a split besides the features (ids as Python strings,
# labels, indices, predictions): the whole split's worth must fit in the memory budget.
ROW_BOOKKEEPING = 256
# Copies of a block that one read may hold at once (the HDF5 buffer and the result).
READ_COPIES = 2
BUDGET_HINT = (
    "Raise the budget with --memory-budget SIZE (or QAMOE_MEMORY_BUDGET, e.g. 16G) if the "
    "machine has the memory; a file whose declared shapes are implausible is damaged or forged."
)


@dataclass
class SplitArrays:
    """One split held in memory, ready to be written.

    ``features[m]`` is (N, T, D) float32 zero-padded after ``lengths[m]`` (N,) valid steps.
    """

    ids: Sequence[str]
    label: np.ndarray
    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    raw_text: Sequence[str] | None = None
    text_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)


def _chunk_rows(row_bytes: int, n: int) -> int:
    return int(max(1, min(n, CHUNK_BYTES // max(row_bytes, 1))))


def _json_attr(value: Any) -> Any:
    """HDF5 attrs hold scalars, strings and arrays; dicts and lists go in as JSON strings."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def check_finite(
    name: str, array: np.ndarray, where: str, error: type[QamoeError] = DataFormatError
) -> None:
    """Raise ``error`` if ``array`` holds NaN or inf, naming where and how many."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise error(
            f"{where}: '{name}' holds {int(bad.sum())} non-finite values (NaN or inf).",
            hint="Clean the source features, or let the importer replace them (MMSA audio -inf).",
        )


def check_lengths(
    name: str, lengths: np.ndarray, t: int, where: str, error: type[QamoeError] = DataFormatError
) -> None:
    """Raise ``error`` if a length lies outside [0, t] (the padded axis)."""
    if lengths.size and ((lengths < 0).any() or (lengths > t).any()):
        raise error(
            f"{where}: '{name}' holds lengths outside [0, {t}] "
            f"(min {int(lengths.min())}, max {int(lengths.max())}).",
            hint="Lengths count valid steps and cannot exceed the padded axis.",
        )


def check_magnitude(
    name: str, array: np.ndarray, where: str, error: type[QamoeError] = DataFormatError
) -> None:
    """Raise ``error`` if a finite value exceeds MAX_ABS_FEATURE in magnitude."""
    if not array.size:
        return
    # max and min, not abs(): no copy of a 32 MiB block (NaN was ruled out by check_finite)
    largest = max(float(array.max()), -float(array.min()))
    if largest > MAX_ABS_FEATURE:
        raise error(
            f"{where}: '{name}' holds values beyond ±{MAX_ABS_FEATURE:g} "
            f"(largest magnitude {largest:.3g}).",
            hint="Such values are an extraction or unit error; fix or rescale the source features.",
        )


def check_labels(label: np.ndarray, lo: float, hi: float, where: str) -> None:
    """Raise a DataFormatError if a label lies outside the file's declared [lo, hi]."""
    if label.size and (float(label.min()) < lo or float(label.max()) > hi):
        raise DataFormatError(
            f"{where}: labels lie in [{float(label.min()):g}, {float(label.max()):g}], outside "
            f"the declared label range [{lo:g}, {hi:g}].",
            hint="Fix the labels, or re-import with the true range (root attrs label_min/max).",
        )


# -- the batch contract, checked in one place ---------------------------------------------------
# What each kind of array may hold: numpy dtype kinds ("b" bool, "i"/"u" integers, "f" floats).
_KINDS = {"features": "f", "lengths": "iu", "keep": "biu", "label": "iuf", "index": "iu"}
_BATCH_HINT = "Batches follow docs/architecture.md's batch contract (files: data/README.md)."
_KIND_WORDS = {
    "features": "floats",
    "lengths": "integers",
    "keep": "booleans (or 0/1 integers)",
    "label": "numbers",
    "index": "integers",
}


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _kind(value: Any) -> str:
    """The numpy dtype kind of an ndarray or a torch tensor ("f", "i", "u", "b", "c", ...)."""
    if isinstance(value, np.ndarray):
        return str(value.dtype.kind)
    dtype = value.dtype
    if dtype.is_floating_point:
        return "f"
    if dtype.is_complex:
        return "c"
    return "b" if str(dtype) == "torch.bool" else "i"


def _numpy(value: Any) -> np.ndarray:
    """An ndarray view (or CPU copy) of an ndarray or a torch tensor, for checks."""
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()


def _cast(value: Any, kind: str) -> Any:
    """``value`` as float32 ("f"), int64 ("i") or bool ("b"), numpy or torch as it came."""
    if isinstance(value, np.ndarray):
        return value.astype({"f": np.float32, "i": np.int64, "b": bool}[kind], copy=False)
    return {"f": value.float, "i": value.long, "b": value.bool}[kind]()


def _batch_array(
    batch: Mapping[str, Any], key: str, role: str, shape: tuple[int | None, ...], where: str,
    error: type[QamoeError],
) -> Any:  # fmt: skip
    """``batch[key]`` if it is an ndarray or tensor of ``role``'s kinds and of ``shape``
    (None: any size); else ``error`` in one line naming the key."""
    if key not in batch:
        raise error(f"{where} has no '{key}'.",
                    hint=f"{_BATCH_HINT[:-1]}; read_batch returns a complete one.")  # fmt: skip
    value = batch[key]
    if not (isinstance(value, np.ndarray) or _is_tensor(value)):
        raise error(f"{where}: '{key}' is a {type(value).__name__}, not a numpy array or "
                    "torch tensor.", hint="Convert it with numpy.asarray.")  # fmt: skip
    got = tuple(value.shape)
    fits = len(got) == len(shape)
    fits = fits and all(w is None or g == w for g, w in zip(got, shape, strict=True))
    if not fits or _kind(value) not in _KINDS[role]:
        want = "(" + ", ".join("?" if w is None else str(w) for w in shape) + ")"
        raise error(
            f"{where}: '{key}' must hold {_KIND_WORDS[role]} of shape {want}; it holds "
            f"{value.dtype} of shape {got}.",
            hint=_BATCH_HINT,
        )
    return value


def _normalize_modality(
    batch: Mapping[str, Any], m: str, n: int | None, where: str, error: type[QamoeError],
    out: dict[str, Any],
) -> int:  # fmt: skip
    """Check modality ``m``'s features, lengths and keep mask into ``out``; return the rows."""
    x = _batch_array(batch, m, "features", (n, None, None), where, error)
    n, t = int(x.shape[0]), int(x.shape[1])
    if t == 0 or x.shape[2] == 0:
        raise error(f"{where}: '{m}' has shape {tuple(x.shape)}; a modality needs at least one "
                    "time step and one feature dimension.", hint=_BATCH_HINT)  # fmt: skip
    lens = _batch_array(batch, f"{m}_len", "lengths", (n,), where, error)
    check_lengths(f"{m}_len", _numpy(lens), t, where, error)
    values = _numpy(x)
    check_finite(m, values, where, error)
    check_magnitude(m, values, where, error)
    out[m], out[f"{m}_len"] = _cast(x, "f"), _cast(lens, "i")
    if f"{m}_keep" in batch:
        keep = _batch_array(batch, f"{m}_keep", "keep", (n, t), where, error)
        flags = _numpy(keep)
        if flags.dtype.kind != "b" and flags.size and (flags.min() < 0 or flags.max() > 1):
            raise error(f"{where}: '{m}_keep' holds values other than 0 and 1 "
                        f"({flags.min()} to {flags.max()}).", hint=_BATCH_HINT)  # fmt: skip
        out[f"{m}_keep"] = _cast(keep, "b")
    return n


def normalize_batch(
    batch: Mapping[str, Any], where: str, modalities: Iterable[str] | None = None,
    error: type[QamoeError] = DataFormatError,
) -> dict[str, Any]:  # fmt: skip
    """Check a batch against the batch contract (docs/architecture.md) and return it with the
    contract's dtypes: features float32, lengths and indices int64, keep masks bool, labels
    float32 (numpy stays numpy, torch stays torch; the input is not modified).

    The one check of every batch: :meth:`FeatureFile.read` applies it to what it reads, and the
    library API (``predict``, ``corrupt_batch``) to the batches it is given. Refused with one
    line naming ``where`` and the key: a missing modality or length, anything but arrays or
    tensors, features that are not floats of shape (B, T >= 1, D >= 1), NaN/inf or absurd
    features, lengths that are not integers in [0, T], keep masks that are not booleans or 0/1,
    rows that differ between keys. ``modalities`` None: those of text/audio/vision present.
    """
    if not isinstance(batch, Mapping):
        raise error(f"{where} is a {type(batch).__name__}, not a dict of arrays (a batch).",
                    hint="Read one with qamoe_core.read_batch.")  # fmt: skip
    mods = tuple(m for m in MODALITIES if m in batch) if modalities is None else tuple(modalities)
    if not mods:
        raise error(f"{where} holds no modality (text, audio or vision).",
                    hint="Pass a batch as read_batch() returns it, or a feature file.")  # fmt: skip
    out = dict(batch)
    n: int | None = None
    for m in mods:
        n = _normalize_modality(batch, m, n, where, error, out)
    for key, role in (("label", "label"), ("index", "index")):
        if key in batch:
            value = _batch_array(batch, key, role, (n,), where, error)
            out[key] = _cast(value, "f" if role == "label" else "i")
    if "label" in out:
        check_finite("label", _numpy(out["label"]), where, error)
    if "text_ids" in batch:
        ids = _batch_array(batch, "text_ids", "index", (n, None), where, error)
        out["text_ids"] = _cast(ids, "i")
    return out


def validate_split_arrays(split: str, arrays: SplitArrays, where: str = "input") -> None:
    """Check one in-memory split against the schema; every message names split and key."""
    n = len(arrays.label)
    if n == 0:
        raise DataFormatError(f"{where}: split '{split}' is empty.")
    if len(arrays.ids) != n:
        raise DataFormatError(
            f"{where}: split '{split}' has {len(arrays.ids)} ids but {n} labels.",
            hint="ids, label and every modality must have the same first dimension.",
        )
    check_finite("label", np.asarray(arrays.label, dtype=np.float64), f"{where} [{split}]")
    if not arrays.features:
        raise DataFormatError(f"{where}: split '{split}' has no modality.")
    for m, feats in arrays.features.items():
        if m not in MODALITIES:
            raise DataFormatError(
                f"{where}: split '{split}' has an unknown modality '{m}'.",
                hint=f"Modalities are named {', '.join(MODALITIES)}.",
            )
        if feats.ndim != 3:
            raise DataFormatError(
                f"{where}: '{split}/{m}' must be 3-D (N, T, D); got shape {feats.shape}."
            )
        if feats.shape[0] != n:
            raise DataFormatError(
                f"{where}: '{split}/{m}' has {feats.shape[0]} samples but '{split}/label' has {n}.",
                hint="Every modality must have one row per label.",
            )
        if m not in arrays.lengths:
            raise DataFormatError(f"{where}: '{split}/{m}_len' (valid lengths) is missing.")
        lens = np.asarray(arrays.lengths[m])
        if lens.shape != (n,):
            raise DataFormatError(
                f"{where}: '{split}/{m}_len' must have shape ({n},); got {lens.shape}."
            )
        if (lens < 0).any() or (lens > feats.shape[1]).any():
            raise DataFormatError(
                f"{where}: '{split}/{m}_len' holds lengths outside [0, {feats.shape[1]}] "
                f"(max {int(lens.max())}), longer than the padded axis.",
                hint="Lengths count valid time steps and cannot exceed T.",
            )
        check_finite(m, feats, f"{where} [{split}]")


class FeatureWriter:
    """Streaming writer: create splits, write row blocks, then commit by renaming.

    Use as a context manager; leaving it with an exception deletes the temporary file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, force: bool = False, attrs: Mapping[str, Any]
    ) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path, force=force)
        self._attrs = dict(attrs)
        self.h5: h5py.File

    def __enter__(self) -> FeatureWriter:
        tmp = self._ctx.__enter__()
        self.h5 = h5py.File(tmp, "w")
        root = {"format": FORMAT, "format_version": FORMAT_VERSION}
        root["created_by"] = f"qamoe {__version__}"
        root.update(self._attrs)
        self.set_attrs(**root)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        failed: Exception | None = None
        if exc_type is None:
            # h5py's close() swallows write errors (a full disk, a file-size limit): flush
            # first, which raises them, so a damaged file is never renamed into place.
            try:
                self.h5.flush()
            except Exception as error:
                failed = error
        try:
            self.h5.close()
        finally:
            if failed is None:
                return self._ctx.__exit__(exc_type, exc, tb)  # noqa: B012
            # Removes the temporary; raises a clearer error for a full disk, else returns.
            self._ctx.__exit__(type(failed), failed, failed.__traceback__)
            raise failed

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.h5.attrs[key] = _json_attr(value)

    def create_split(
        self,
        split: str,
        n: int,
        shapes: Mapping[str, tuple[int, int]],
        *,
        text_ids_len: int | None = None,
        raw_text: bool = False,
        keep_masks: bool = False,
    ) -> None:
        """Declare a split of ``n`` rows with ``shapes[m] = (T, D)`` per modality."""
        if split not in SPLITS:
            raise InputError(f"Unknown split '{split}'.", hint=f"Splits are {', '.join(SPLITS)}.")
        g = self.h5.create_group(split)
        g.create_dataset("ids", shape=(n,), dtype=_STR)
        g.create_dataset("label", shape=(n,), dtype=np.float32)
        for m, (t, d) in shapes.items():
            rows = _chunk_rows(t * d * 4, n)
            g.create_dataset(
                m,
                shape=(n, t, d),
                dtype=np.float32,
                chunks=(rows, t, d),
                **COMPRESSION,
                shuffle=True,
            )
            g.create_dataset(f"{m}_len", shape=(n,), dtype=np.int32)
            if keep_masks:
                g.create_dataset(
                    f"{m}_keep",
                    shape=(n, t),
                    dtype=bool,
                    chunks=(rows, t),
                    **COMPRESSION,
                )
        if raw_text:
            g.create_dataset("raw_text", shape=(n,), dtype=_STR)
        if text_ids_len is not None:
            rows = _chunk_rows(text_ids_len * 4, n)
            g.create_dataset(
                "text_ids",
                shape=(n, text_ids_len),
                dtype=np.int32,
                chunks=(rows, text_ids_len),
                **COMPRESSION,
            )
        g.attrs["n"] = n

    def write(
        self,
        split: str,
        start: int,
        batch: Mapping[str, np.ndarray],
        *,
        ids: Sequence[str] | None = None,
        raw_text: Sequence[str] | None = None,
    ) -> None:
        """Write rows ``start:start+B`` of ``split`` from a batch dict (see the batch contract)."""
        g = self.h5[split]
        stop = start + len(batch["label"])
        for key, value in batch.items():
            if key == "index" or key not in g:
                continue
            g[key][start:stop] = value
        if ids is not None:
            g["ids"][start:stop] = list(ids)
        if raw_text is not None:
            g["raw_text"][start:stop] = list(raw_text)

    def compute_train_stats(self, block_rows: int = 512) -> None:
        """Store per-dimension mean/std over VALID steps of the train split (float64 sums)."""
        if "train" not in self.h5:
            log.warning("no train split: train_mean/train_std not stored")
            return
        g = self.h5["train"]
        for m in MODALITIES:
            if m not in g:
                continue
            ds = g[m]
            n, _, d = ds.shape
            total = np.zeros(d)
            total_sq = np.zeros(d)
            count = 0
            for start in range(0, n, block_rows):
                x = ds[start : start + block_rows].astype(np.float64)
                lens = g[f"{m}_len"][start : start + block_rows]
                valid = np.arange(x.shape[1])[None, :] < lens[:, None]  # (B, T)
                sel = x[valid]  # (valid steps, D)
                total += sel.sum(0)
                total_sq += (sel**2).sum(0)
                count += sel.shape[0]
            mean = total / max(count, 1)
            var = np.maximum(total_sq / max(count, 1) - mean**2, 0.0)
            self.h5.attrs[f"train_mean_{m}"] = mean.astype(np.float32)
            self.h5.attrs[f"train_std_{m}"] = np.sqrt(var).astype(np.float32)


def _check_write_args(splits: Mapping[str, SplitArrays], task: str, scheme: str) -> None:
    """Refuse an unknown task or scheme, or splits without a train split."""
    if task not in TASKS:
        raise InputError(f"The 'task' parameter must be one of {TASKS}. Got {task!r} instead.")
    if scheme not in SCHEMES:
        raise InputError(f"The 'scheme' parameter must be one of {SCHEMES}. Got {scheme!r}.")
    if "train" not in splits:
        raise DataFormatError(
            "The dataset has no 'train' split.",
            hint="The train split is needed for the per-dimension std that scales noise.",
        )


def _common_modalities(
    splits: Mapping[str, SplitArrays], task: str, label_range: tuple[float, float]
) -> tuple[str, ...]:
    """Validate every split and return the modalities (and dims) they must all share."""
    modalities: tuple[str, ...] | None = None
    dims: dict[str, int] = {}
    for name, arrays in splits.items():
        validate_split_arrays(name, arrays)
        mods = tuple(m for m in MODALITIES if m in arrays.features)
        if modalities is None:
            modalities = mods
            dims = {m: arrays.features[m].shape[2] for m in mods}
        elif mods != modalities:
            raise DataFormatError(
                f"Split '{name}' has modalities {mods} but the first split has {modalities}."
            )
        for m in mods:
            if arrays.features[m].shape[2] != dims[m]:
                raise DataFormatError(
                    f"'{name}/{m}' has feature dim {arrays.features[m].shape[2]}, "
                    f"other splits have {dims[m]}."
                )
        if task == "binary" and not np.isin(arrays.label, (0.0, 1.0)).all():
            raise DataFormatError(f"'{name}/label' must be 0 or 1 for a binary task.")
        check_labels(np.asarray(arrays.label), *label_range, f"input [{name}]")
    assert modalities is not None
    return modalities


def _write_split(w: FeatureWriter, name: str, a: SplitArrays, modalities: tuple[str, ...]) -> None:
    """Create split ``name`` in the writer and store all its arrays in one block."""
    shapes = {m: (a.features[m].shape[1], a.features[m].shape[2]) for m in modalities}
    tid = a.text_ids
    w.create_split(
        name,
        len(a),
        shapes,
        text_ids_len=None if tid is None else tid.shape[1],
        raw_text=a.raw_text is not None,
    )
    batch: dict[str, np.ndarray] = {"label": np.asarray(a.label, np.float32)}
    for m in modalities:
        batch[m] = np.asarray(a.features[m], np.float32)
        batch[f"{m}_len"] = np.asarray(a.lengths[m], np.int32)
    if tid is not None:
        batch["text_ids"] = np.asarray(tid, np.int32)
    w.write(name, 0, batch, ids=list(a.ids), raw_text=a.raw_text)


def write_features(
    path: str | os.PathLike[str],
    splits: Mapping[str, SplitArrays],
    *,
    dataset: str,
    task: str,
    scheme: str,
    label_range: tuple[float, float],
    extractor: Mapping[str, Any],
    force: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Validate in-memory splits and write them as one atomic HDF5 file; returns the path."""
    _check_write_args(splits, task, scheme)
    modalities = _common_modalities(splits, task, label_range)
    root = {
        "dataset": dataset,
        "task": task,
        "scheme": scheme,
        "label_min": float(label_range[0]),
        "label_max": float(label_range[1]),
        "extractor": dict(extractor),
        "modalities": list(modalities),
    }
    root.update(attrs or {})
    with FeatureWriter(path, force=force, attrs=root) as w:
        for name in SPLITS:
            if name in splits:
                _write_split(w, name, splits[name], modalities)
        w.compute_train_stats()
    log.info("wrote %s", path)
    return Path(path)


def _decode(values: np.ndarray, where: str = "input") -> list[str]:
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{where} holds bytes that are not UTF-8 text (at byte {exc.start} of a value).",
            hint="Ids and texts must be UTF-8; re-import the data with `qamoe extract`.",
        ) from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _too_big_tree(where: str, what: str) -> TooLargeError:
    return TooLargeError(
        f"{where}: {what}; qamoe walks at most {MAX_DEPTH} levels and {MAX_OBJECTS:,} objects "
        "(its own files hold about 40 at depth 2).",
        hint="The file is damaged or forged; a feature file needs only the three split groups.",
    )


def _links(group: h5py.Group, prefix: str, where: str) -> Iterator[tuple[str, Any]]:
    """(path, link) of each link in ``group``, without following them."""
    try:
        for name in group:
            yield f"{prefix}{name}", group.get(name, getlink=True)
    except (KeyError, OSError, RuntimeError) as exc:
        raise DataFormatError(
            f"{where}: the group '/{prefix}' cannot be listed "
            f"({' '.join(str(exc).split())[:120]}).",
            hint=_DAMAGED,
        ) from None


def _check_self_contained(h5: h5py.File, where: str) -> None:
    """Walk the group tree (depth-first, each group once, within MAX_DEPTH and MAX_OBJECTS) and
    refuse links and storage outside the file: reading them would read any local file."""
    found: list[str] = []
    soft: list[tuple[h5py.Group, str, str]] = []
    stack: list[tuple[h5py.Group, str, int]] = [(h5, "", 0)]
    seen: set[Any] = {h5.id}
    count = 0
    while stack:
        group, prefix, depth = stack.pop()
        count += len(group)  # the group's link count, known without listing them
        if count > MAX_OBJECTS:
            raise _too_big_tree(where, f"'/{prefix.rstrip('/')}' holds {len(group):,} links "
                                f"(more than {MAX_OBJECTS:,} objects in all)")  # fmt: skip
        for path, link in _links(group, prefix, where):
            if isinstance(link, h5py.ExternalLink):
                found.append(f"'{path}' is an external link to '{link.filename}'")
            if isinstance(link, h5py.SoftLink):
                soft.append((group, path, link.path))
            if not isinstance(link, h5py.HardLink):
                continue  # soft links name a path inside the file: nothing new to walk
            obj = group[path.rsplit("/", 1)[-1]]
            if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
                found.append(f"'{path}' stores its data outside the file")
            elif isinstance(obj, h5py.Group) and obj.id not in seen:
                if depth + 1 > MAX_DEPTH:
                    raise _too_big_tree(where, f"'{path}' lies {depth + 1} groups deep")
                seen.add(obj.id)
                stack.append((obj, f"{path}/", depth + 1))
    if found:
        raise DataFormatError(
            f"{where}: {found[0]}; qamoe reads only self-contained files"
            f"{f' ({len(found)} such objects)' if len(found) > 1 else ''}.",
            hint="Rebuild the file with `qamoe extract`; qamoe never writes such links.",
        )
    _check_soft_links(soft, where)  # only now: one could lead through an external link


def _check_soft_links(soft: list[tuple[h5py.Group, str, str]], where: str) -> None:
    """Refuse a soft link that leads nowhere: dangling, or a cycle (HDF5 gives up after 16
    hops with a RuntimeError that every later read of the key would raise)."""
    for group, path, target in soft:
        try:
            leads = group.get(path.rsplit("/", 1)[-1]) is not None
        except (KeyError, OSError, RuntimeError):
            leads = False
        if not leads:
            raise DataFormatError(
                f"{where}: '{path}' is a soft link to {target!r} that leads nowhere (it is "
                "dangling, or a cycle of links).",
                hint=_DAMAGED,
            )


# The hint of most structural errors raised on open.
_DAMAGED = "The file is damaged or was not written by qamoe; re-import it."


def _shape_text(ds: h5py.Dataset) -> str:
    return f"shape {ds.shape} {ds.dtype}"


def _check_storage(ds: h5py.Dataset, key: str, where: str) -> None:
    """Refuse a dataset whose chunks are too big to unpack within the memory budget, or whose
    declared size the file does not store (unwritten storage reads as fill values)."""
    itemsize = ds.dtype.itemsize
    budget = memory_budget()
    if ds.chunks is not None and 2 * math.prod(ds.chunks) * itemsize > budget:
        raise TooLargeError(
            f"{where}: '{key}' ({_shape_text(ds)}) is stored in chunks of {ds.chunks} "
            f"({format_size(math.prod(ds.chunks) * itemsize)} each), and reading any row "
            f"unpacks a whole chunk: beyond the memory budget of {format_size(budget)}.",
            hint=BUDGET_HINT,
        )
    declared = ds.size * itemsize
    if declared < UNWRITTEN_MIN_BYTES:
        return
    if ds.chunks is None:
        stored, expected = int(ds.id.get_storage_size() > 0), 1
    else:
        expected = math.prod(-(-s // c) for s, c in zip(ds.shape, ds.chunks, strict=True))
        stored = int(ds.id.get_num_chunks())
    if stored < expected:
        raise DataFormatError(
            f"{where}: '{key}' declares {_shape_text(ds)} ({format_size(declared)}) but the "
            f"file stores {stored} of its {expected} chunk(s); the rest would read as fill "
            "values (an unfinished or forged file).",
            hint=_DAMAGED,
        )


class FeatureFile:
    """Lazy, read-only access to a qamoe HDF5 file. Validates its structure on open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(
                f"The file '{self.path}' does not exist.",
                hint="Create one with `qamoe extract synthetic --out data.h5`.",
            )
        if self.path.is_dir():
            raise InputError(f"'{self.path}' is a directory, not an HDF5 file.")
        if not stat.S_ISREG(self.path.stat().st_mode):  # stat, not open: a FIFO would block
            raise InputError(
                f"'{self.path}' is not a regular file (a pipe, socket or device).",
                hint="Give the path of an HDF5 file written by `qamoe extract`.",
            )
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError:
            raise DataFormatError(
                f"'{self.path}' is not an HDF5 file (or it is damaged).",
                hint="qamoe reads files written by `qamoe extract`.",
            ) from None
        try:
            self._check()
        except BaseException:
            self.h5.close()
            raise
        self._sha: str | None = None

    # -- structure -----------------------------------------------------------------------
    def _check(self) -> None:
        """Validate the structure on open and set the attributes it describes."""
        where = f"'{self.path}'"
        self._check_format(where)
        _check_self_contained(self.h5, where)
        self._read_root_attrs(where)
        self.splits = tuple(s for s in SPLITS if s in self.h5)
        if not self.splits:
            raise DataFormatError(
                f"{where} has no split (expected groups train, valid, test).", hint=_DAMAGED
            )
        self.dims: dict[str, int] = {}
        self.seq_lens: dict[str, int] = {}
        for s in self.splits:
            n = self._check_split_rows(s, where)
            for m in self.modalities:
                self._check_modality(s, m, n, where)
            self._check_extras(s, n, where)

    def _check_format(self, where: str) -> None:
        """Refuse a file whose root attrs do not name this format and version."""
        a = self.h5.attrs
        if a.get("format") != FORMAT:
            raise DataFormatError(
                f"{where} is not a qamoe feature file (root attr 'format' is "
                f"{a.get('format')!r}, expected {FORMAT!r}).",
                hint="Import your data with `qamoe extract` first.",
            )
        try:
            version = int(a.get("format_version", -1))
        except (TypeError, ValueError):
            version = -1
        if version != FORMAT_VERSION:
            raise DataFormatError(
                f"{where} has format_version {version}; this qamoe reads {FORMAT_VERSION}.",
                hint="Re-import the data with this version of qamoe.",
            )

    def _read_root_attrs(self, where: str) -> None:
        """Check and read the root attrs: dataset, task, scheme and the modality list."""
        a = self.h5.attrs
        for key in ("dataset", "task", "scheme", "modalities"):
            if key not in a:
                raise DataFormatError(f"{where} lacks the root attr '{key}'.", hint=_DAMAGED)
        self.attrs: dict[str, Any] = {k: a[k] for k in a}
        for key, value in self.attrs.items():  # h5py decodes bad bytes to lone surrogates
            if isinstance(value, str) and not _utf8(value):
                raise DataFormatError(
                    f"{where}: the root attr '{key}' holds bytes that are not UTF-8 text.",
                    hint=_DAMAGED,
                )
        self.dataset = str(a["dataset"])
        self.task = str(a["task"])
        self.scheme = str(a["scheme"])
        for key, value, allowed in (("task", self.task, TASKS), ("scheme", self.scheme, SCHEMES)):
            if value not in allowed:
                raise DataFormatError(
                    f"{where}: the root attr '{key}' is {value!r}; qamoe knows "
                    f"{', '.join(allowed)}.",
                    hint=_DAMAGED,
                )
        try:
            mods = jsontext.loads(a["modalities"])
        except (TypeError, ValueError):
            mods = None
        if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
            raise DataFormatError(
                f"{where}: the root attr 'modalities' is not a JSON list of names "
                f"(got {a['modalities']!r}).",
                hint=_DAMAGED,
            )
        unknown = [m for m in mods if m not in MODALITIES]
        if unknown or len(set(mods)) != len(mods):
            what = f"names '{unknown[0]}'" if unknown else "names a modality twice"
            raise DataFormatError(
                f"{where}: the root attr 'modalities' ({a['modalities']!r}) {what}; it lists "
                f"each of {', '.join(MODALITIES)} at most once.",
                hint=_DAMAGED,
            )
        self.modalities = tuple(mods)

    def _dataset(self, s: str, key: str, kinds: str, what: str, where: str) -> h5py.Dataset:
        """``s/key``, refused in one line unless it is a dataset of the dtype ``kinds`` whose
        storage passes :func:`_check_storage`."""
        ds = self.h5[s].get(key)
        if not isinstance(ds, h5py.Dataset):
            raise DataFormatError(f"{where}: '{s}/{key}' is missing.", hint=_DAMAGED)
        kind = "s" if h5py.check_string_dtype(ds.dtype) is not None else ds.dtype.kind
        if kind not in kinds or ds.ndim == 0:
            raise DataFormatError(
                f"{where}: '{s}/{key}' has shape {ds.shape} and dtype {ds.dtype}; it must hold "
                f"{what}.",
                hint=_DAMAGED,
            )
        _check_storage(ds, f"{s}/{key}", where)
        return ds

    def _check_split_rows(self, s: str, where: str) -> int:
        """Check split ``s``'s ids and labels; return its number of rows."""
        label = self._dataset(s, "label", "fiu", "numbers", where)
        ids = self._dataset(s, "ids", "s", "UTF-8 strings", where)
        n = label.shape[0]
        if label.ndim != 1 or n == 0:
            raise DataFormatError(
                f"{where}: '{s}/label' must be a non-empty 1-D array of numbers; it has "
                f"shape {label.shape}.",
                hint=_DAMAGED,
            )
        if ids.shape != (n,):
            raise DataFormatError(
                f"{where}: '{s}/ids' has shape {ids.shape}, not ({n},).", hint=_DAMAGED
            )
        budget, need = memory_budget(), n * (ROW_BOOKKEEPING + ids.dtype.itemsize)
        if need > budget:
            raise TooLargeError(
                f"{where}: split '{s}' declares {n:,} rows ('{s}/label' {_shape_text(label)}); "
                f"its ids, labels and per-row results alone take about {format_size(need)}, "
                f"beyond the memory budget of {format_size(budget)}.",
                hint=BUDGET_HINT,
            )
        return int(n)

    def _check_modality(self, s: str, m: str, n: int, where: str) -> None:
        """Check ``s/m``, its lengths and keep mask; record its dim and padded length."""
        g = self.h5[s]
        if m not in g or f"{m}_len" not in g:
            raise DataFormatError(
                f"{where}: modality '{m}' is missing from split '{s}' "
                f"(expected '{s}/{m}' and '{s}/{m}_len').",
                hint="The file is incomplete; re-import it.",
            )
        shape = self._dataset(s, m, "f", "floats", where).shape
        if len(shape) != 3 or shape[0] != n or 0 in shape[1:]:
            raise DataFormatError(
                f"{where}: '{s}/{m}' has shape {shape}; expected ({n}, T, D) with at least one "
                "time step (T) and one feature dimension (D).",
                hint=_DAMAGED,
            )
        if self._dataset(s, f"{m}_len", "iu", "integer lengths", where).shape != (n,):
            raise DataFormatError(f"{where}: '{s}/{m}_len' must have shape ({n},).", hint=_DAMAGED)
        if f"{m}_keep" in g:
            keep = self._dataset(s, f"{m}_keep", "biu", "booleans (or 0/1 integers)", where)
            if keep.shape != shape[:2]:
                raise DataFormatError(
                    f"{where}: '{s}/{m}_keep' has shape {keep.shape}, expected {shape[:2]}.",
                    hint=_DAMAGED,
                )
        if self.dims.setdefault(m, shape[2]) != shape[2]:
            raise DataFormatError(
                f"{where}: '{s}/{m}' has dim {shape[2]}, other splits {self.dims[m]}.",
                hint="All splits must come from one feature extractor; re-import.",
            )
        self.seq_lens[m] = max(self.seq_lens.get(m, 0), shape[1])

    def _check_extras(self, s: str, n: int, where: str) -> None:
        """The optional ``text_ids`` (N, T >= 1) integers and ``raw_text`` (N,) strings."""
        for key, kinds, what in (("text_ids", "iu", "integer token ids"),
                                 ("raw_text", "s", "UTF-8 strings")):  # fmt: skip
            if key not in self.h5[s]:
                continue
            shape = self._dataset(s, key, kinds, what, where).shape
            if shape[0] != n or len(shape) != (2 if key == "text_ids" else 1) or 0 in shape:
                raise DataFormatError(
                    f"{where}: '{s}/{key}' has shape {shape}; expected ({n}"
                    f"{', T' if key == 'text_ids' else ''}) with T >= 1.",
                    hint=_DAMAGED,
                )

    def validate_data(self, block_rows: int = 1024) -> None:
        """Scan every row (in blocks) for NaN/inf and lengths beyond the padded axis."""
        for s in self.splits:
            rows = self.block_rows(s, block_rows)
            for start in range(0, self.n(s), rows):
                self.read(s, slice(start, start + rows))  # read() checks each block

    # -- the memory budget -----------------------------------------------------------------
    def row_bytes(self, split: str) -> int:
        """Bytes of one row of ``split`` as :meth:`read` returns it (features as float32)."""
        g = self._split(split)
        total = 4 + 8  # label, index
        for m in self.modalities:
            t, d = g[m].shape[1:]
            total += t * d * 4 + 8 + (t if f"{m}_keep" in g else 0)
        if "text_ids" in g:
            total += g["text_ids"].shape[1] * 8
        return int(total)

    def check_rows(self, split: str, rows: int, copies: float = READ_COPIES,
                   what: str = "reading") -> None:  # fmt: skip
        """Refuse (TooLargeError, one line naming the file, the largest key, its declared shape
        and the budget) when ``copies`` copies of ``rows`` rows pass the memory budget."""
        need, budget = rows * self.row_bytes(split) * copies, memory_budget()
        if need <= budget:
            return
        g = self._split(split)
        m = max(self.modalities, key=lambda k: math.prod(g[k].shape[1:]))
        raise TooLargeError(
            f"'{self.path}': {what} {rows:,} row(s) of split '{split}' at once needs about "
            f"{format_size(need)} ('{split}/{m}' declares {_shape_text(g[m])}), beyond the "
            f"memory budget of {format_size(budget)}.",
            hint=BUDGET_HINT,
        )

    def block_rows(self, split: str, wanted: int, copies: float = READ_COPIES) -> int:
        """Rows of ``split`` to read at once: ``wanted``, or fewer so that ``copies`` copies
        of them stay within the memory budget; a row that alone does not fit is refused."""
        fit = int(memory_budget() // (self.row_bytes(split) * copies))
        if fit < 1:
            self.check_rows(split, 1, copies)  # raises
        return max(1, min(int(wanted), fit))

    # -- accessors -----------------------------------------------------------------------
    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    def _split(self, split: str) -> h5py.Group:
        if split not in self.splits:
            raise InputError(
                f"'{self.path}' has no split '{split}'.",
                hint=f"It has: {', '.join(self.splits)}.",
            )
        return self.h5[split]

    def n(self, split: str) -> int:
        return int(self._split(split)["label"].shape[0])

    @property
    def text_special_ids(self) -> tuple[int, int, int] | None:
        """(unk, cls, sep) of the tokenizer that wrote ``text_ids`` (attribute
        ``text_special_ids``, JSON [unk, cls, sep]); None when not recorded (BERT's 100,
        101, 102 are then assumed, which MMSA's and MiniLM's vocabularies use)."""
        raw = self.attrs.get(TEXT_SPECIAL_ATTR)
        if raw is None:
            return None
        try:
            value = jsontext.loads(raw)
        except (TypeError, ValueError):
            value = None
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            raise DataFormatError(
                f"'{self.path}': the '{TEXT_SPECIAL_ATTR}' attribute is {raw!r}, not a JSON "
                "list of three token ids [unk, cls, sep].",
                hint="It is written by the importer with the text_ids; re-import the data.",
            )
        return value[0], value[1], value[2]

    @property
    def corruption(self) -> list[dict[str, Any]]:
        """The corruption chain, one record per pass (spectrum.record); [] for a clean file."""
        return read_chain(self.attrs.get(ATTR), f"'{self.path}'")

    @property
    def label_range(self) -> tuple[float, float]:
        """The declared (label_min, label_max); (-3, 3), MOSI's scale, when not stored."""
        try:
            lo = float(self.attrs.get("label_min", -3.0))
            hi = float(self.attrs.get("label_max", 3.0))
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise DataFormatError(
                f"'{self.path}': the root attrs label_min/label_max are not two numbers with "
                f"min <= max (got {self.attrs.get('label_min')!r}, "
                f"{self.attrs.get('label_max')!r}).",
                hint="Re-import the data with `qamoe extract`, which stores them.",
            )
        return lo, hi

    def _stat(self, kind: str, modality: str) -> np.ndarray:
        key = f"train_{kind}_{modality}"
        if key not in self.attrs:
            raise DataFormatError(
                f"'{self.path}' has no {key} (per-dimension train statistics).",
                hint="Re-import the data with `qamoe extract`, which stores them.",
            )
        value = np.asarray(self.attrs[key], dtype=np.float32)
        if (
            value.shape != (self.dims[modality],)
            or not np.isfinite(value).all()
            or (kind == "std" and (value < 0).any())
        ):
            raise DataFormatError(
                f"'{self.path}': the stored train {kind} of '{modality}' is not "
                f"{self.dims[modality]} finite{' non-negative' if kind == 'std' else ''} values.",
                hint="Re-extract the file: qamoe extract computes it from the train split.",
            )
        return value

    def train_std(self, modality: str) -> np.ndarray:
        """Per-dimension std (D,) over valid steps of the TRAIN split."""
        return self._stat("std", modality)

    def train_mean(self, modality: str) -> np.ndarray:
        return self._stat("mean", modality)

    def ids(self, split: str) -> list[str]:
        return _decode(self._split(split)["ids"][:], f"'{self.path}': '{split}/ids'")

    def raw_text(self, split: str) -> list[str] | None:
        g = self._split(split)
        where = f"'{self.path}': '{split}/raw_text'"
        return _decode(g["raw_text"][:], where) if "raw_text" in g else None

    def labels(self, split: str) -> np.ndarray:
        """Every label of ``split`` as float32 (the split's size was checked on open)."""
        return np.asarray(self._split(split)["label"][:], dtype=np.float32)

    def _selection(
        self, split: str, rows: slice | np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, slice | np.ndarray, np.ndarray | None]:
        """(row numbers, what to hand h5py, the order to restore) for ``rows``."""
        n = self.n(split)
        if isinstance(rows, slice):
            idx = np.arange(n)[rows]
            return idx, (rows if rows.step in (None, 1) else idx), None
        idx = np.asarray(rows)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise InputError(
                f"Rows of split '{split}' must be a slice or a 1-D sequence of integers; got "
                f"{idx.dtype} of shape {idx.shape}."
            )
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"Row index out of range for split '{split}' ({n} rows).")
        # h5py wants increasing, unique indices: read sorted, then restore the order asked.
        uniq, order = np.unique(idx, return_inverse=True)
        return idx, uniq, order

    def _read_key(self, split: str, key: str, sel: slice | np.ndarray) -> np.ndarray:
        ds = self.h5[split][key]
        try:  # features of any float width arrive as float32, converted by HDF5 as it reads
            is_feature = key in self.modalities and ds.dtype != np.float32
            return (ds.astype(np.float32) if is_feature else ds)[sel]
        except (KeyError, OSError, RuntimeError, ValueError) as exc:  # damaged bytes
            raise DataFormatError(
                f"'{self.path}': reading '{split}/{key}' failed "
                f"({' '.join(str(exc).split())[:160]}).",
                hint="The file is damaged (truncated or overwritten); re-create it.",
            ) from None

    def read(self, split: str, rows: slice | np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """Read some rows of a split as a batch dict (see docs/architecture.md).

        The rows must fit the memory budget (:meth:`check_rows`), and every block is checked
        on the way (:func:`normalize_batch`): NaN/inf, impossible lengths or keep masks in a
        file from anywhere are named here, not met later as a "diverged" loss.
        """
        g = self._split(split)
        idx, sel, order = self._selection(split, rows)
        self.check_rows(split, len(idx))
        raw: dict[str, np.ndarray] = {}
        keys = ["label", "text_ids"]
        for m in self.modalities:
            keys += [m, f"{m}_len", f"{m}_keep"]
        for key in keys:
            if key in g:
                value = self._read_key(split, key, sel)
                raw[key] = value if order is None else value[order]
        raw["index"] = idx
        where = f"'{self.path}' [{split}]"
        batch = normalize_batch(raw, where, self.modalities)
        check_labels(batch["label"], *self.label_range, where)
        return batch

    def iter_batches(self, split: str, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Contiguous row blocks of a split, in order."""
        n = self.n(split)
        for start in range(0, n, batch_size):
            yield self.read(split, slice(start, min(n, start + batch_size)))

    def sha256(self) -> str:
        """SHA-256 of the file's bytes (read in 4 MiB blocks; cached)."""
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha


def file_sha256(path: str | os.PathLike[str], stop: threading.Event | None = None) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks (the one place qamoe hashes a file).

    With ``stop``, gives up and returns '' once it is set (a hash running beside a job that
    failed need not finish reading a multi-GB file).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            if stop is not None and stop.is_set():
                return ""
            digest.update(block)
    return digest.hexdigest()


def load_split(path: str | os.PathLike[str], split: str) -> dict[str, np.ndarray]:
    """A whole split in memory as one batch dict (for datasets that fit)."""
    with FeatureFile(path) as f:
        return f.read(split, slice(None))


def validate(path: str | os.PathLike[str], deep: bool = True) -> None:
    """Check a file against the schema; with ``deep`` also scan values (NaN/inf, lengths)."""
    with FeatureFile(path) as f:
        if deep:
            f.validate_data()
