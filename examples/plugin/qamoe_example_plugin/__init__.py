"""A minimal qamoe model plug-in: the contract of qamoe_core/models/__init__.py, nothing more.

Each modality: standardise, take the mean of its usable steps (padding and, with
``mask_zero_steps``, all-zero steps left out), project to ``hidden``; then an MLP over the
concatenation and qamoe's two-branch head. It builds its own encoder
(``shared_encoders = False``) to show how a model reads the batch directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead
from qamoe_core.models.layers import masked_mean, usable_steps


class MeanPoolModel(MultimodalModel):
    name = "mean-pool"
    shared_encoders = False  # reads the raw batch; TRAIN statistics via self.standardise

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # Width of each modality's projection: an arbitrary small value for the example.
        hidden: int = option(32, 1, 4096)

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        h = self.options.hidden
        self.proj = nn.ModuleDict({m: nn.Linear(d, h) for m, d in self.dims.items()})
        self.mlp = nn.Sequential(nn.Linear(h * len(self.dims), cfg.d_model), nn.GELU())
        self.head = TwoBranchHead(cfg)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: Any
    ) -> ModelOutput:
        parts = []
        for m in self.modalities:
            x, lengths = batch[m], batch[f"{m}_len"]
            keep = usable_steps(x, lengths, self.cfg.mask_zero_steps)  # (B, T)
            parts.append(self.proj[m](masked_mean(self.standardise(m, x), keep)))
        pred, log_var = self.head(self.mlp(torch.cat(parts, dim=-1)))
        return self.finish(ModelOutput(pred, log_var), batch)
