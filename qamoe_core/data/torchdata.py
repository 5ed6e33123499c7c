"""The bridge from the HDF5 store to torch: a lazy Dataset over one split, and batch conversion.

Kept apart from :mod:`qamoe_core.data.store` so that reading, writing and validating feature files
(and every ``qamoe`` command's start-up) never pays torch's ~1.5 s import. The dependency runs
one way, torchdata -> h5store: import these names from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamoe_core.data.store import FeatureFile


class H5Dataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """One split as a torch Dataset that reads rows lazily (the file opens per worker).

    ``__getitems__`` reads a whole batch of indices in one HDF5 call, which DataLoader uses
    automatically (torch's default collate then stacks the per-sample dicts).
    """

    def __init__(self, path: str | os.PathLike[str], split: str) -> None:
        self.path = Path(path)
        self.split = split
        with FeatureFile(self.path) as f:
            self._n = f.n(split)
        self._file: FeatureFile | None = None

    def __len__(self) -> int:
        return self._n

    def _f(self) -> FeatureFile:
        if self._file is None:  # opened lazily so each DataLoader worker has its own handle
            self._file = FeatureFile(self.path)
        return self._file

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self._f().read(self.split, np.array([i]))
        return {k: torch.from_numpy(np.asarray(v[0])) for k, v in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        batch = self._f().read(self.split, np.asarray(indices))
        return [
            {k: torch.from_numpy(np.asarray(v[j])) for k, v in batch.items()}
            for j in range(len(indices))
        ]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state


def to_torch(
    batch: Mapping[str, np.ndarray], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Numpy batch dict -> torch tensors on ``device`` (string ids are dropped)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(device)
    return out
