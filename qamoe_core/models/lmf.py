"""LMF, Low-rank Multimodal Fusion (Liu et al., ACL 2018).

TFN's fused tensor times a weight tensor, computed without forming either: the weight is a
sum of ``rank`` outer products of modality factors W_m^(i), so the output is
Σ_i λ_i Π_m ([h_m; 1] · W_m^(i)) + b, linear in each modality's size instead of their product.
The output of the fusion is the prediction itself (no post-fusion network).

Faithful: subnetworks (as TFN's, models/subnets.py), factors, the learned rank weights λ and
bias (as the authors' release and MMSA), rank 3 and the sizes of MMSA's MOSI config (src/MMSA/
config/config_regression.json, "lmf"; text_out = text_hidden / 2 as MMSA sets it). Adapted:
the fusion outputs 2 units, prediction and log s²; the prediction is unbounded; one, two or
three modalities; MMSA's separate learning rate and weight decay for the factors
(factor_lr 0.001, weight_decay 0.005) are not used: our trainer has one AdamW for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import split_output
from qamoe_core.models.registry import register
from qamoe_core.models.subnets import build_subnets, embed, out_dim, with_one

OUTPUTS = 2  # prediction and log s²


@register
class LMF(MultimodalModel):
    name = "lmf"
    shared_encoders = False

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # MMSA's MOSI config for "lmf": hidden_dims [128, 16, 128], dropouts 0.3, rank 3.
        rank: int = option(3, 1, 256)
        text_hidden: int = option(128, 1, 4096)
        audio_hidden: int = option(16, 1, 4096)
        vision_hidden: int = option(128, 1, 4096)
        # 0: text_hidden // 2, as MMSA's LMF sets it.
        text_out: int = option(0, 0, 4096)
        text_dropout: float = option(0.3, 0.0, 0.9)
        audio_dropout: float = option(0.3, 0.0, 0.9)
        vision_dropout: float = option(0.3, 0.0, 0.9)

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o = self.options
        text_out = o.text_out or max(1, o.text_hidden // 2)
        hidden = {"text": o.text_hidden, "audio": o.audio_hidden, "vision": o.vision_hidden}
        drop = {"text": o.text_dropout, "audio": o.audio_dropout, "vision": o.vision_dropout}
        self.subnets = build_subnets(self.dims, hidden, text_out, drop)
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(o.rank, out_dim(m, hidden, text_out) + 1, OUTPUTS))
             for m in self.modalities}
        )  # fmt: skip
        self.rank_weights = nn.Parameter(torch.empty(1, o.rank))
        self.bias = nn.Parameter(torch.zeros(OUTPUTS))
        for factor in self.factors.values():
            nn.init.xavier_normal_(factor)  # as the authors' release
        nn.init.xavier_normal_(self.rank_weights)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: Any
    ) -> ModelOutput:
        h = embed(self, batch)
        fused = None  # (rank, B, OUTPUTS): Π_m [h_m; 1]·W_m^(i), one slice per rank
        for m in self.modalities:
            part = torch.einsum("bi,rio->rbo", with_one(h[m]), self.factors[m])
            fused = part if fused is None else fused * part
        assert fused is not None
        y = torch.einsum("r,rbo->bo", self.rank_weights[0], fused) + self.bias  # (B, OUTPUTS)
        pred, log_var = split_output(y, self.cfg.min_log_var, self.cfg.max_log_var)
        return self.finish(ModelOutput(pred, log_var), batch)
