"""Distributed training set-up under ``torchrun`` (env RANK, WORLD_SIZE, LOCAL_RANK).

gloo on CPU, nccl on GPUs; a single process when WORLD_SIZE is unset or 1. Only rank 0
writes outputs; every helper here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from qamoe_core.base.errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read torchrun's environment (single process when WORLD_SIZE is unset or 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers.") from None
    return DistInfo(rank, world, local)


def setup(info: DistInfo, device: torch.device) -> bool:
    """Initialise the process group if needed; True if this call created it."""
    if info.world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def barrier(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision for everyone (early stopping must stop every rank together)."""
    if info.world_size <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def seed_for(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from (seed, parts): independent streams per epoch and purpose."""
    words = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)
