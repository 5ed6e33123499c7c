"""Fusion baselines for QA-MoE (docs/design.md §3): late fusion, early fusion, a dense MoE.

All three share QA-MoE's encoders (same compression, same width) so that a comparison
isolates the fusion, and return the same :class:`~qamoe_core.models.base.ModelOutput`
(quality None; routing None except for the dense MoE; loss_unc None: no quality head).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead, task_loss
from qamoe_core.models.moe import MoE
from qamoe_core.models.quality_mech import task_dropout
from qamoe_core.models.registry import register


@register
class LateFusion(MultimodalModel):
    """Average of unimodal predictions: each modality has its own two-branch head.

    Each unimodal head is trained on its own task loss (the mean over modalities), so each is
    a real unimodal model; the prediction is their average and the variance their mean.
    """

    name = "late-fusion"

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        self.heads = nn.ModuleDict({m: TwoBranchHead(cfg) for m in self.dims})

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        h = self.encode(batch)
        preds, lvs = zip(*(self.heads[m](h[m]) for m in self.modalities), strict=True)
        pred_m = torch.stack(preds, -1)  # (B, M)
        lv_m = torch.stack(lvs, -1)  # (B, M)
        out = ModelOutput(pred_m.mean(-1), lv_m.exp().mean(-1).log())
        if "label" not in batch:
            return out
        label = batch["label"].to(pred_m.dtype)
        lt = torch.stack(
            [
                task_loss(pred_m[:, i], lv_m[:, i], label, self.task, self.cfg.nll_weight)
                for i in range(len(self.modalities))
            ]
        ).mean()
        return out._replace(loss=lt, loss_task=lt)


@register
class EarlyFusion(MultimodalModel):
    """Concatenate the pooled encodings -> MLP -> two-branch head."""

    name = "early-fusion"

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # [ours] The robustness tools QA-MoE has, for a fair comparator (the mechanism study):
        # dropout on the task path's inputs (each value; each whole modality of a sample, as
        # quality_mech.task_dropout draws them) and presence flags, each modality's coverage
        # (the share of its steps present, with mask_zero_steps) joined to the fused vector.
        # Defaults off: early fusion as it always was.
        input_dropout: float = option(0.0, 0.0, 0.9)
        modality_dropout: float = option(0.0, 0.0, 0.9)
        presence: bool = option(False)

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        d, n = cfg.d_model, len(self.dims)
        n_in = n * d + (n if self.options.presence else 0)
        self.mlp = nn.Sequential(nn.Linear(n_in, d), nn.GELU(), nn.Dropout(cfg.dropout))
        self.head = TwoBranchHead(cfg)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        o = self.options
        inputs = batch
        if self.training and (o.input_dropout or o.modality_dropout):
            inputs = {**batch, **task_dropout(batch, self.modalities, o.input_dropout,
                                              o.modality_dropout)}  # fmt: skip
        h, coverage = self.encode_with_coverage(inputs)
        x = self.concat(h)  # (B, M·d)
        if o.presence:
            ones = x.new_ones(x.shape[0])
            cov = [coverage[m] for m in self.modalities]
            flags = [ones if c is None else c.to(x.dtype) for c in cov]
            x = torch.cat([x, torch.stack(flags, 1)], 1)  # (B, M·d + M)
        pred, lv = self.head(self.mlp(x))
        return self.finish(ModelOutput(pred, lv), batch)


@register
class DenseMoE(MultimodalModel):
    """QA-MoE without quality: no quality head or prior, content-only router, every expert
    active (top_k = num_experts), the same SwiGLU experts, residual and head."""

    name = "dense-moe"

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # λ_bal: the load-balancing loss's weight, QA-MoE's default (Fedus et al., 2022).
        balance_weight: float = option(0.01, 0.0, 1e6)

    loss_weights: ClassVar[Mapping[str, str]] = {"loss_balance": "balance_weight"}

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        d, n = cfg.d_model, len(self.dims)
        self.fuse = nn.Linear(n * d, d)
        self.moe = MoE(cfg, n * d, n_quality=0, top_k=cfg.num_experts)
        self.head = TwoBranchHead(cfg)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        x = self.concat(self.encode(batch))  # (B, M·d)
        y, gates, balance = self.moe(self.fuse(x), x, None)
        pred, lv = self.head(y)
        out = ModelOutput(pred, lv, routing=gates, loss_balance=balance)
        return self.finish(out, batch)
