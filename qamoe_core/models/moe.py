"""The mixture of experts: SwiGLU experts, a top-k router with quality input, the MoE block.

Legend: B batch, d model width, E experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig


class SwiGLUExperts(nn.Module):
    """E SwiGLU FFNs (Shazeer 2020) held as stacked weights.

    x (B, d) -> (B, E, d): every expert on every sample. On CPU at these sizes one wide matmul
    for all experts is faster than gathering each expert's samples; the router's zero weights
    then remove the unselected outputs (and their gradients).
    """

    def __init__(self, d: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.e, self.hidden = num_experts, hidden
        self.w_in = nn.Linear(d, num_experts * 2 * hidden, bias=False)
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, d))
        nn.init.normal_(self.w_out, std=1.0 / math.sqrt(hidden))

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        gate, up = self.w_in(x).view(b, self.e, 2, self.hidden).unbind(2)  # (B, E, hidden) x2
        a = F.silu(gate) * up
        y = torch.bmm(a.transpose(0, 1), self.w_out)  # (E, B, hidden) @ (E, hidden, d)
        return y.transpose(0, 1)  # (E, B, d) -> (B, E, d)


class Router(nn.Module):
    """logits = W_s·content (+ W_q·r) + b; softmax; keep top-k; renormalise."""

    def __init__(self, in_dim: int, num_experts: int, top_k: int, n_quality: int) -> None:
        super().__init__()
        self.content = nn.Linear(in_dim, num_experts)
        self.quality = nn.Linear(n_quality, num_experts, bias=False) if n_quality else None
        self.e, self.k = num_experts, top_k

    def forward(self, content: Tensor, r: Tensor | None) -> tuple[Tensor, Tensor]:
        """-> gates (B, E) (top-k, summing to 1) and the Switch load-balancing loss."""
        logits = self.content(content)
        if self.quality is not None and r is not None:
            logits = logits + self.quality(r)
        probs = logits.softmax(-1)  # (B, E)
        if self.k < self.e:
            top = probs.topk(self.k, dim=-1).indices
            chosen = torch.zeros_like(probs).scatter_(1, top, 1.0)  # (B, E) one-hot of top-k
        else:
            chosen = torch.ones_like(probs)
        gates = probs * chosen
        gates = gates / gates.sum(-1, keepdim=True)
        # Switch Transformer (Fedus et al. 2022, eq. 4) with top-k: E·Σ_e f_e·P_e, where f_e is
        # the share of assignments to expert e; 1.0 when routing is uniform.
        frac = chosen.mean(0) / self.k
        balance = self.e * (frac * probs.mean(0)).sum()
        return gates, balance


class MoE(nn.Module):
    """x (B, d) -> x + Σ_e g_e·Expert_e(LN(x)); the residual keeps a path past the experts."""

    def __init__(self, cfg: ModelConfig, route_dim: int, n_quality: int, top_k: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.router = Router(route_dim, cfg.num_experts, top_k, n_quality)
        self.experts = SwiGLUExperts(cfg.d_model, cfg.expert_mult * cfg.d_model, cfg.num_experts)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, route_in: Tensor, r: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        gates, balance = self.router(route_in, r)  # (B, E)
        y = torch.einsum("be,bed->bd", gates, self.experts(self.ln(x)))
        return x + self.drop(y), gates, balance
