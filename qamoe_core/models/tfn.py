"""TFN, the Tensor Fusion Network (Zadeh et al., EMNLP 2017).

Each modality is embedded by its subnetwork (models/subnets.py), extended with a constant 1,
and the embeddings are fused by their outer product, z = [h_t; 1] ⊗ [h_a; 1] ⊗ [h_v; 1]
(flattened): it holds every unimodal, bimodal and trimodal interaction term. Two ReLU layers
and an output layer then map z to the prediction.

Faithful: subnetworks, outer product, post-fusion network, the sizes and dropouts of MMSA's
MOSI config (src/MMSA/config/config_regression.json, "tfn"). Adapted: the output layer has a
second unit for log s² (every qamoe model reports a variance); the prediction is unbounded
(the original scaled a sigmoid into [-3, 3]); one, two or three modalities (the product runs
over those present); inputs as in subnets.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import LinearHead
from qamoe_core.models.registry import register
from qamoe_core.models.subnets import build_subnets, embed, out_dim, with_one


@register
class TFN(MultimodalModel):
    name = "tfn"
    shared_encoders = False

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # Sizes and dropouts: MMSA's MOSI config for "tfn" (hidden_dims [128, 32, 128],
        # text_out 32, post_fusion_dim 64, dropouts [0.3, 0.3, 0.3, 0.5]); the paper's
        # subnetworks have 32 ReLU units for audio and vision and a 128-unit text LSTM.
        text_hidden: int = option(128, 1, 4096)
        audio_hidden: int = option(32, 1, 4096)
        vision_hidden: int = option(128, 1, 4096)
        text_out: int = option(32, 1, 4096)
        post_fusion_dim: int = option(64, 1, 4096)
        text_dropout: float = option(0.3, 0.0, 0.9)
        audio_dropout: float = option(0.3, 0.0, 0.9)
        vision_dropout: float = option(0.3, 0.0, 0.9)
        post_fusion_dropout: float = option(0.5, 0.0, 0.9)

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o = self.options
        hidden = {"text": o.text_hidden, "audio": o.audio_hidden, "vision": o.vision_hidden}
        drop = {"text": o.text_dropout, "audio": o.audio_dropout, "vision": o.vision_dropout}
        self.subnets = build_subnets(self.dims, hidden, o.text_out, drop)
        fused = 1
        for m in self.modalities:
            fused *= out_dim(m, hidden, o.text_out) + 1
        p = o.post_fusion_dim
        self.post = nn.Sequential(
            nn.Dropout(o.post_fusion_dropout),
            nn.Linear(fused, p), nn.ReLU(),
            nn.Linear(p, p), nn.ReLU(),
        )  # fmt: skip
        self.head = LinearHead(p, cfg)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: Any
    ) -> ModelOutput:
        h = embed(self, batch)
        z = with_one(h[self.modalities[0]])  # (B, d_1 + 1)
        for m in self.modalities[1:]:  # (B, n) ⊗ (B, d_m + 1) -> (B, n·(d_m + 1))
            z = torch.einsum("bi,bj->bij", z, with_one(h[m])).flatten(1)
        pred, log_var = self.head(self.post(z))
        return self.finish(ModelOutput(pred, log_var), batch)
