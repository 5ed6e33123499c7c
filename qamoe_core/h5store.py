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
:mod:`qamoe_core.torchdata`, which imports this module (never the other way round).

Hostile or broken files are refused on open or read with one-line errors: anything but a
regular file (a FIFO would block forever), links or storage outside the file (an ExternalLink,
external raw storage or a virtual dataset would make qamoe read, and `corrupt` copy, any local
file), labels outside the declared range, feature magnitudes beyond MAX_ABS_FEATURE, ids that
are not UTF-8 and corruption records whose numbers are not numbers.
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

from qamoe_core.atomic import atomic_path
from qamoe_core.errors import DataFormatError, InputError
from qamoe_core.names import MODALITIES, SCHEMES, SPLITS, TASKS
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

FORMAT = "qamoe-features"
FORMAT_VERSION = 1
# lzf is h5py's built-in fast codec: ~3x faster than gzip to write for a modest size cost, which
# keeps `corrupt` streaming at disk speed. Files stay readable by any h5py.
COMPRESSION = "lzf"
# Root attribute: JSON [unk, cls, sep] of the tokenizer behind text_ids.
TEXT_SPECIAL_ATTR = "text_special_ids"
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: h5py's recommended range is 10 KiB to 1 MiB
_STR = h5py.string_dtype("utf-8")
# No extractor we know writes features beyond ~1e4 in magnitude; past 1e10 a value is a unit or
# encoding error (3e38 was once misread as "the model diverged"). Squares of 1e10 (1e20) and
# their sums over any feature dim still fit float32 (max 3.4e38), so checks stay meaningful.
MAX_ABS_FEATURE = 1e10


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


def check_finite(name: str, array: np.ndarray, where: str) -> None:
    """Raise a DataFormatError if ``array`` holds NaN or inf, naming where and how many."""
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataFormatError(
            f"{where}: '{name}' holds {int(bad.sum())} non-finite values (NaN or inf).",
            hint="Clean the source features, or let the importer replace them (MMSA audio -inf).",
        )


def check_lengths(name: str, lengths: np.ndarray, t: int, where: str) -> None:
    """Raise a DataFormatError if a length lies outside [0, t] (the padded axis)."""
    if (lengths < 0).any() or (lengths > t).any():
        raise DataFormatError(
            f"{where}: '{name}' holds lengths outside [0, {t}] "
            f"(min {int(lengths.min())}, max {int(lengths.max())}).",
            hint="Lengths count valid steps and cannot exceed the padded axis.",
        )


def check_block(batch: Mapping[str, np.ndarray], modalities: Iterable[str], where: str) -> None:
    """NaN/inf labels or features and impossible lengths in one block of rows (as
    :meth:`FeatureFile.read` returns it, which checks every block it reads)."""
    check_finite("label", batch["label"], where)
    for m in modalities:
        check_lengths(f"{m}_len", batch[f"{m}_len"], batch[m].shape[1], where)
        check_finite(m, batch[m], where)
        check_magnitude(m, batch[m], where)


def check_magnitude(name: str, array: np.ndarray, where: str) -> None:
    """Raise a DataFormatError if a finite value exceeds MAX_ABS_FEATURE in magnitude."""
    if not array.size:
        return
    # max and min, not abs(): no copy of a 32 MiB block (NaN was ruled out by check_finite)
    largest = max(float(array.max()), -float(array.min()))
    if largest > MAX_ABS_FEATURE:
        raise DataFormatError(
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
                compression=COMPRESSION,
                shuffle=True,
            )
            g.create_dataset(f"{m}_len", shape=(n,), dtype=np.int32)
            if keep_masks:
                g.create_dataset(
                    f"{m}_keep",
                    shape=(n, t),
                    dtype=bool,
                    chunks=(rows, t),
                    compression=COMPRESSION,
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
                compression=COMPRESSION,
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


def _check_self_contained(h5: h5py.File, where: str) -> None:
    """Refuse links and storage outside the file: reading them would read any local file."""
    found: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append(f"'{name}' is an external link to '{link.filename}'")
        elif isinstance(link, h5py.HardLink):
            obj = h5.get(name)
            if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
                found.append(f"'{name}' stores its data outside the file")

    h5.visititems_links(visit)
    if found:
        raise DataFormatError(
            f"{where}: {found[0]}; qamoe reads only self-contained files"
            f"{f' ({len(found)} such objects)' if len(found) > 1 else ''}.",
            hint="Rebuild the file with `qamoe extract`; qamoe never writes such links.",
        )


# Numeric fields of a corruption record (spectrum.CorruptionSpec and corrupt.py's extras).
_RECORD_NUMBERS = ("level", "noise_scale", "seed", "burst_mean", "noise_rho", "chain_index")
_RECORD_NAME_LISTS = ("modalities", "drop", "splits")


def _check_record(record: dict[str, Any], k: int, where: str) -> None:
    """One-line errors for a corruption record whose numbers or name lists are malformed."""
    for key in _RECORD_NUMBERS:
        value = record.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataFormatError(
                f"{where}: corruption record {k} has a non-numeric '{key}' ({value!r}).",
                hint="It is written by `qamoe corrupt`; re-create the corrupted copy.",
            )
    for key in _RECORD_NAME_LISTS:
        value = record.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise DataFormatError(
                f"{where}: corruption record {k} has '{key}' = {value!r}, not a list of names.",
                hint="It is written by `qamoe corrupt`; re-create the corrupted copy.",
            )


# The hint of most structural errors raised on open.
_DAMAGED = "The file is damaged or was not written by qamoe; re-import it."


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
            mods = json.loads(a["modalities"])
        except (TypeError, ValueError):
            mods = None
        if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
            raise DataFormatError(
                f"{where}: the root attr 'modalities' is not a JSON list of names "
                f"(got {a['modalities']!r}).",
                hint=_DAMAGED,
            )
        self.modalities = tuple(mods)

    def _check_split_rows(self, s: str, where: str) -> int:
        """Check split ``s``'s ids and labels; return its number of rows."""
        g = self.h5[s]
        for key in ("ids", "label"):
            if key not in g:
                raise DataFormatError(f"{where}: '{s}/{key}' is missing.", hint=_DAMAGED)
        label = g["label"]
        n = label.shape[0] if label.ndim >= 1 else 0
        if label.ndim != 1 or label.dtype.kind not in "fiu" or n == 0:
            raise DataFormatError(
                f"{where}: '{s}/label' must be a non-empty 1-D array of numbers; it has "
                f"shape {label.shape} and dtype {label.dtype}.",
                hint=_DAMAGED,
            )
        if g["ids"].shape[0] != n:
            raise DataFormatError(
                f"{where}: '{s}/ids' has {g['ids'].shape[0]} rows, not {n}.", hint=_DAMAGED
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
        shape = g[m].shape
        if len(shape) != 3 or shape[0] != n or g[m].dtype.kind != "f":
            raise DataFormatError(
                f"{where}: '{s}/{m}' has shape {shape} and dtype {g[m].dtype}; "
                f"expected floats of shape ({n}, T, D).",
                hint=_DAMAGED,
            )
        keep = g.get(f"{m}_keep")
        if keep is not None and keep.shape != shape[:2]:
            raise DataFormatError(
                f"{where}: '{s}/{m}_keep' has shape {keep.shape}, expected {shape[:2]}.",
                hint=_DAMAGED,
            )
        if g[f"{m}_len"].shape != (n,):
            raise DataFormatError(f"{where}: '{s}/{m}_len' must have shape ({n},).", hint=_DAMAGED)
        if self.dims.setdefault(m, shape[2]) != shape[2]:
            raise DataFormatError(
                f"{where}: '{s}/{m}' has dim {shape[2]}, other splits {self.dims[m]}.",
                hint="All splits must come from one feature extractor; re-import.",
            )
        self.seq_lens[m] = max(self.seq_lens.get(m, 0), shape[1])

    def validate_data(self, block_rows: int = 1024) -> None:
        """Scan every row (in blocks) for NaN/inf and lengths beyond the padded axis."""
        for s in self.splits:
            for start in range(0, self.n(s), block_rows):
                self.read(s, slice(start, start + block_rows))  # read() checks each block

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
            value = json.loads(raw)
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
        raw = self.attrs.get("corruption")
        if raw is None:
            return []
        try:
            chain = json.loads(raw)
        except (TypeError, ValueError):
            chain = None
        if not isinstance(chain, list) or not all(isinstance(r, dict) for r in chain):
            raise DataFormatError(
                f"'{self.path}': the 'corruption' attribute is not a JSON list of records.",
                hint="It is written by `qamoe corrupt`; re-create the corrupted copy.",
            )
        for k, record in enumerate(chain):
            _check_record(record, k, f"'{self.path}'")
        return chain

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

    def read(self, split: str, rows: slice | np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """Read some rows of a split as a batch dict (see docs/architecture.md).

        Every block is checked on the way (:func:`check_block`): NaN/inf or impossible lengths
        in a file from anywhere are named here, not met later as a "diverged" loss.
        """
        g = self._split(split)
        n = self.n(split)
        order: np.ndarray | None = None
        if isinstance(rows, slice):
            idx = np.arange(n)[rows]
            sel: slice | np.ndarray = rows if (rows.step in (None, 1)) else idx
        else:
            idx = np.asarray(rows, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InputError(f"Row index out of range for split '{split}' ({n} rows).")
            # h5py wants increasing, unique indices: read sorted, then restore the order asked.
            uniq, order = np.unique(idx, return_inverse=True)
            sel = uniq
        batch: dict[str, np.ndarray] = {}
        keys = ["label", "text_ids"]
        for m in self.modalities:
            keys += [m, f"{m}_len", f"{m}_keep"]
        for key in keys:
            if key not in g:
                continue
            try:
                value = g[key][sel]
            except (KeyError, OSError, RuntimeError) as exc:  # h5py's word for damaged bytes
                raise DataFormatError(
                    f"'{self.path}': reading '{split}/{key}' failed "
                    f"({' '.join(str(exc).split())[:160]}).",
                    hint="The file is damaged (truncated or overwritten); re-create it.",
                ) from None
            if order is not None:
                value = value[order]
            if key.endswith("_len") or key == "text_ids":
                value = value.astype(np.int64)
            batch[key] = value
        batch["index"] = idx
        where = f"'{self.path}' [{split}]"
        check_block(batch, self.modalities, where)
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
