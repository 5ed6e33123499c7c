"""MISA: Modality-Invariant and -Specific Representations (Hazarika et al., ACM MM 2020).

Each modality's utterance vector u_m is split into a shared part s_m = E_c(u_m) (ONE encoder
for all modalities, pushed to agree across modalities) and a private part p_m = E_m(u_m)
(one encoder per modality, pushed to differ from the shared parts and from each other). A
decoder must rebuild u_m from s_m + p_m, so neither part can collapse. The 2M vectors are
fused by one Transformer layer over them, concatenated, and fed to the head.

Losses (weights from MMSA's MOSI configuration, thuiar/MMSA config_regression.json "misa":
diff_weight 0.1, sim_weight 0.3, recon_weight 1.0, use_cmd_sim true, hidden_size 128):
- similarity: central moment discrepancy (CMD, Zellinger et al. 2017; 5 moments, as MISA)
  between the shared parts of every pair of modalities;
- difference: soft orthogonality ||A^T B||_F^2 of batch-centred, L2-normalised matrices,
  between each modality's shared and private parts and between private parts;
- reconstruction: MSE between u_m and its reconstruction.

Adapted: u_m comes from our shared per-modality Transformer encoder (the paper uses BERT for
text and LSTMs for audio and vision), so MISA sees the same features, padding masks and
``mask_zero_steps`` behaviour as every other model here. With one modality the similarity
loss has no pair and is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead
from qamoe_core.models.registry import register


@dataclass(frozen=True)
class MISAOptions(ModelOptions):
    # MMSA config_regression.json, "misa" / "mosi".
    diff_weight: float = option(0.1, 0.0, 100.0)
    sim_weight: float = option(0.3, 0.0, 100.0)
    recon_weight: float = option(1.0, 0.0, 100.0)
    cmd_moments: int = option(5, 1, 10)  # MISA's CMD uses 5 central moments
    fusion_heads: int = option(2, 1, 64)  # MISA's fusion Transformer layer has 2 heads


def cmd(x: Tensor, y: Tensor, moments: int) -> Tensor:
    """Central moment discrepancy between two batches of vectors (B, d) in [0, 1]^d."""
    mx, my = x.mean(0), y.mean(0)
    cx, cy = x - mx, y - my
    loss = torch.linalg.vector_norm(mx - my)
    for k in range(2, moments + 1):
        loss = loss + torch.linalg.vector_norm(cx.pow(k).mean(0) - cy.pow(k).mean(0))
    return loss


def orthogonality(a: Tensor, b: Tensor) -> Tensor:
    """Soft orthogonality of two (B, d) batches: mean of (Â^T B̂)² over the d × d entries."""
    a = F.normalize(a - a.mean(0), dim=1)
    b = F.normalize(b - b.mean(0), dim=1)
    return (a.t() @ b).pow(2).mean()


@register
class MISA(MultimodalModel):
    """u_m -> shared s_m and private p_m -> Transformer over the 2M parts -> head."""

    name = "misa"
    Options = MISAOptions

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o: MISAOptions = self.options
        d, n = cfg.d_model, len(self.dims)
        # Sigmoid outputs keep the parts in [0, 1], the range CMD's bound assumes (as MISA).
        self.shared = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        self.private = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities}
        )
        self.decode = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})
        if d % o.fusion_heads:
            raise ValueError(f"d_model {d} must be divisible by fusion_heads {o.fusion_heads}")
        self.fuse = nn.TransformerEncoderLayer(
            d, o.fusion_heads, dim_feedforward=2 * d, dropout=cfg.encoder_dropout,
            batch_first=True,
        )  # fmt: skip
        self.mlp = nn.Sequential(nn.Linear(2 * n * d, d), nn.GELU(), nn.Dropout(cfg.dropout))
        self.head = TwoBranchHead(cfg)

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        u = self.encode(batch)  # {m: (B, d)}
        s = {m: self.shared(u[m]) for m in self.modalities}
        p = {m: self.private[m](u[m]) for m in self.modalities}
        parts = torch.stack([*s.values(), *p.values()], dim=1)  # (B, 2M, d)
        fused = self.fuse(parts).flatten(1)  # (B, 2M·d)
        pred, lv = self.head(self.mlp(fused))
        out = self.finish(ModelOutput(pred, lv), batch)
        if out.loss is None:
            return out
        return out._replace(loss=out.loss + self.auxiliary_loss(u, s, p))

    def auxiliary_loss(
        self, u: dict[str, Tensor], s: dict[str, Tensor], p: dict[str, Tensor]
    ) -> Tensor:
        o: MISAOptions = self.options
        mods = self.modalities
        diff = torch.stack(
            [orthogonality(s[m], p[m]) for m in mods]
            + [orthogonality(p[a], p[b]) for a, b in combinations(mods, 2)]
        ).sum()
        recon = torch.stack([F.mse_loss(self.decode[m](s[m] + p[m]), u[m]) for m in mods]).mean()
        loss = o.diff_weight * diff + o.recon_weight * recon
        pairs = list(combinations(mods, 2))
        if pairs:
            sim = torch.stack([cmd(s[a], s[b], o.cmd_moments) for a, b in pairs]).mean()
            loss = loss + o.sim_weight * sim
        return loss
