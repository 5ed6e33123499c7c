"""Argument checks for the library API (``api.py``): a wrong type or value is one
:class:`~qamoe_core.base.errors.UsageError` naming the parameter, what it takes and what it got,
never a TypeError or AttributeError from deep inside numpy, h5py or os.

No torch import: torch tensors are recognised by their ``numpy``/``detach`` methods.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError, UsageError, check_choice
from qamoe_core.base.names import SPLITS

__all__ = [
    *("batch_arg", "chain_arg", "corrupt_args", "names_arg", "numbers_arg", "path_arg"),
    "rows_arg",
]


def _got(value: Any) -> str:
    """``value`` for a message: its type, and its repr cut to one short line."""
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def path_arg(value: Any, name: str) -> Path:
    """A file or folder path: str or os.PathLike (pathlib.Path)."""
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        return Path(value)
    raise UsageError(
        f"The '{name}' parameter must be a path (str or pathlib.Path). Got {_got(value)} instead.",
        hint=f"e.g. {name}='runs/qamoe' or {name}=Path('data.h5').",
    )


def rows_arg(rows: Any) -> slice | np.ndarray:
    """``read_batch``'s rows: None (all), a slice of ints, or a 1-D sequence of row numbers
    (a boolean mask would be read as the rows 0 and 1: refused, with the fix)."""
    hint = "e.g. rows=slice(0, 64), rows=[0, 5, 9], or rows=np.flatnonzero(mask) for a mask."
    if rows is None:
        return slice(None)
    if isinstance(rows, slice):
        parts = (rows.start, rows.stop, rows.step)
        if all(p is None or isinstance(p, int | np.integer) for p in parts) and rows.step != 0:
            return rows
        raise UsageError(f"The 'rows' slice must hold whole numbers. Got {rows!r}.", hint=hint)
    try:
        arr = np.asarray(rows)
    except (TypeError, ValueError):  # ragged nesting
        arr = np.asarray(None)
    empty = arr.ndim == 1 and arr.size == 0
    if not empty and (arr.ndim != 1 or arr.dtype.kind not in "iu"):
        what = "a boolean mask" if arr.dtype.kind == "b" else _got(rows)
        raise UsageError(
            f"The 'rows' parameter must be a slice or a 1-D sequence of row numbers (integers). "
            f"Got {what} instead.",
            hint=hint,
        )
    return arr.astype(np.int64)


def batch_arg(batch: Any) -> Mapping[str, Any]:
    if isinstance(batch, Mapping):
        return batch
    raise UsageError(
        f"The 'batch' parameter must be a dict of arrays (as read_batch returns). "
        f"Got {_got(batch)} instead.",
        hint="Read one with qamoe_core.read_batch('data.h5', split='test').",
    )


def names_arg(value: Any, name: str) -> tuple[str, ...] | None:
    """Modality names: None, a list of names, or one string of comma-separated names (as
    the command line takes them); the names themselves are checked by CorruptionSpec."""
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UsageError(
        f"The '{name}' parameter must be a list of modality names. Got {_got(value)} instead.",
        hint=f"e.g. {name}=['audio', 'vision'].",
    )


def chain_arg(chain: Any) -> int | None:
    """The corruption-chain position: None or a whole number >= 0."""
    if chain is None or (
        isinstance(chain, int | np.integer) and not isinstance(chain, bool) and chain >= 0
    ):
        return None if chain is None else int(chain)
    raise UsageError(
        f"The 'chain' parameter must be an integer >= 0. Got {_got(chain)} instead.",
        hint="It counts the corruptions a file had before (0 for a clean file); or pass source=.",
    )


def numbers_arg(value: Any, name: str) -> np.ndarray:
    """A numeric array (numpy, torch, list) as float64, or an InputError naming ``name``."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"The '{name}' values must be numbers; got {_got(value)}.",
            hint=f"Pass {name} as a 1-D array of floats, as predict() returns.",
        ) from None
    return arr


def corrupt_args(
    batch: Any, split: Any, modalities: Any, drop: Any, source: Any, train_std: Any, chain: Any
) -> tuple[
    Mapping[str, Any], str, tuple[str, ...] | None, tuple[str, ...], Path | None, int | None
]:
    """``corrupt_batch``'s arguments checked: (batch, split, modalities, drop, source, chain).
    Level, axis, seed and noise_scale are CorruptionSpec's to check."""
    if train_std is not None and not isinstance(train_std, Mapping):
        raise UsageError(
            f"The 'train_std' parameter must be a dict {{modality: (D_m,) array}}. "
            f"Got {_got(train_std)} instead.",
            hint="Or pass source= (the feature file), which supplies it.",
        )
    return (
        batch_arg(batch),
        check_choice(split, SPLITS, "split"),
        names_arg(modalities, "modalities"),
        names_arg(drop, "drop") or (),
        None if source is None else path_arg(source, "source"),
        chain_arg(chain),
    )
