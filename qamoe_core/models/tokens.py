"""Token-based building blocks shared by ALMT and LNLN (no model is registered here).

Legend: B batch, T input steps, S steps after temporal compression, K learnable tokens,
d model width.

* :class:`TokenEncoder`: one modality's sequence -> K summary tokens. K learnable tokens are
  put in front of the (compressed, standardised, projected) steps and a small Transformer
  runs over both; the K outputs in front are the modality's tokens (B, K, d). This is how
  ALMT (Zhang et al. 2023, §3.1) and LNLN (Zhang et al. 2024) turn sequences of any length
  into a fixed number of tokens. Padding, and with ``mask_zero_steps`` all-zero steps, are
  masked as keys; the tokens themselves are always valid, so no attention row is empty.
* :class:`Attend` / :class:`CrossBlock`: pre-LN cross-attention (queries from one sequence,
  keys/values from another), the block followed by an MLP.
* :class:`LanguageGuided`: ALMT's adaptive hyper-modality learning (AHL) and its fusion
  transformer: language tokens at several depths attend to audio and vision tokens, the
  results accumulate in a learnable hyper-modality; then the language tokens attend to the
  hyper-modality and their mean is the fused representation (B, d).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.layers import (
    Block,
    FeatureStats,
    Rows,
    key_mask,
    present_steps,
    segment_pool,
    sinusoid,
    valid_mask,
)


class TokenEncoder(nn.Module):
    """x (B, T, D) raw features, lengths (B,), the model's TRAIN statistics of them
    (:class:`~qamoe_core.models.layers.FeatureStats`) -> tokens (B, K, d) and coverage (B,).

    coverage: the share of valid steps that are present (all ones without mask_zero_steps),
    which LNLN's completeness check is trained to predict (see lnln.py). As in the shared
    Encoder, standardising is folded into the projection, and when many steps are masked the
    per-step layers run on the kept ones only (:class:`~qamoe_core.models.layers.Rows`).
    """

    def __init__(self, dim: int, cfg: ModelConfig, n_tokens: int, depth: int, segments: int):
        super().__init__()
        self.segments, self.mask_zero_steps = segments, cfg.mask_zero_steps
        self.proj = nn.Linear(dim, cfg.d_model)
        self.tokens = nn.Parameter(torch.randn(1, n_tokens, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, lengths: Tensor, stats: FeatureStats) -> tuple[Tensor, Tensor]:
        steps = valid_mask(lengths, x.shape[1])  # (B, T)
        # Presence is read on the raw features (a dropped step is all zero there), before
        # standardising moves zeros to -mean/std.
        present = present_steps(x, steps) & steps if self.mask_zero_steps else steps
        coverage = present.sum(1).to(x.dtype) / lengths.clamp(min=1).to(x.dtype)  # (B,)
        # Only kept steps are read from here on: the others never enter a segment's mean, and
        # as keys they are masked (the tokens, always valid, are the only outputs).
        x, valid = segment_pool(x, lengths, self.segments, present)  # (B, S, D), (B, S)
        b, k = x.shape[0], self.tokens.shape[1]
        valid = torch.cat([valid.new_ones(b, k), valid], dim=1)  # (B, K + S)
        rows = Rows.of(valid)
        h = self._embed(x, stats, rows)  # (B, K + S, d), or the kept rows (N, d)
        mask = key_mask(valid, h.dtype)
        for block in self.blocks:
            h = block(h, mask, rows)
        # Each sample's K tokens lead its rows, in order.
        h = h[:, :k] if rows is None else h[rows.step < k].view(b, k, -1)
        return self.ln(h), coverage  # (B, K, d), (B,)

    def _embed(self, x: Tensor, stats: FeatureStats, rows: Rows | None) -> Tensor:
        """Tokens, then the steps standardised, projected and with positions: (B, K + S, d),
        or with ``rows`` the kept ones (N, d)."""
        # W·((x - m)/s) + b == (W/s)·x + (b - W·(m/s)): standardise inside the matmul.
        w = self.proj.weight / stats.in_std  # (d, D)
        bias = self.proj.bias - w @ stats.in_mean
        pos = sinusoid(x.shape[1], w.shape[0], x.device, x.dtype)  # (S, d)
        b, s = x.shape[0], x.shape[1]
        k = self.tokens.shape[1]
        if rows is None:
            return torch.cat([self.tokens.expand(b, -1, -1), F.linear(x, w) + (bias + pos)], 1)
        is_step = rows.step >= k
        step = rows.step[is_step] - k
        at = rows.sample[is_step] * s + step  # rows of x (B·S, D)
        h = x.new_empty(rows.flat.shape[0], w.shape[0])
        h[~is_step] = self.tokens[0].index_select(0, rows.step[~is_step])
        h[is_step] = torch.addmm(
            (bias + pos).index_select(0, step), x.reshape(b * s, -1).index_select(0, at), w.t()
        )
        return h


def token_encoders(
    cfg: ModelConfig, dims: Mapping[str, int], n_tokens: int, depth: int
) -> nn.ModuleDict:
    """One :class:`TokenEncoder` per modality of ``dims`` (text compressed by
    ``cfg.text_segments``, the others by ``cfg.segments``, as the shared encoders are)."""
    return nn.ModuleDict(
        {m: TokenEncoder(d, cfg, n_tokens, depth,
                         cfg.text_segments if m == "text" else cfg.segments)
         for m, d in dims.items()}
    )  # fmt: skip


class CrossAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.q, self.kv = nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, source: Tensor) -> Tensor:
        b, t, d = x.shape
        k, v = self.kv(source).split(d, dim=2)
        q = self.q(x)
        # (B, T, d) -> (B, H, T, d/H)
        q, k, v = (
            z.view(b, -1, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v)
        )
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, T, d/H)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Attend(nn.Module):
    """Normalised cross-attention only: queries x (B, T, d), keys/values source (B, S, d)
    -> (B, T, d) (no residual: the caller decides where the answer goes)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_x, self.ln_s = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CrossAttention(cfg.d_model, cfg.n_heads, cfg.encoder_dropout)

    def forward(self, x: Tensor, source: Tensor) -> Tensor:
        return self.attn(self.ln_x(x), self.ln_s(source))


class CrossBlock(nn.Module):
    """Pre-LN cross-attention block: x (B, T, d) attends to source (B, S, d), then an MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.attend, self.ln_m = Attend(cfg), nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d)
        )

    def forward(self, x: Tensor, source: Tensor) -> Tensor:
        x = x + self.attend(x, source)
        return x + self.mlp(self.ln_m(x))


class LanguageGuided(nn.Module):
    """ALMT's AHL + fusion: language tokens (B, K, d) and the other modalities' tokens
    {m: (B, K, d)} -> fused (B, d).

    The language tokens pass through ``levels - 1`` self-attention blocks; at each of the
    ``levels`` depths (input included) they query every other modality, and the answers are
    added to the hyper-modality tokens (initialised from a learned tensor). The fusion blocks
    then let the final language tokens attend to the hyper-modality.
    """

    def __init__(self, cfg: ModelConfig, others: Sequence[str], n_tokens: int, levels: int,
                 fusion_depth: int) -> None:  # fmt: skip
        super().__init__()
        d = cfg.d_model
        self.others = tuple(others)
        self.hyper = nn.Parameter(torch.randn(1, n_tokens, d) * 0.02)
        self.language = nn.ModuleList(Block(cfg) for _ in range(levels - 1))
        self.ahl = nn.ModuleList(
            nn.ModuleDict({m: Attend(cfg) for m in self.others}) for _ in range(levels)
        )
        self.fusion = nn.ModuleList(CrossBlock(cfg) for _ in range(fusion_depth))
        self.ln = nn.LayerNorm(d)

    def forward(self, lang: Tensor, others: dict[str, Tensor]) -> Tensor:
        b = lang.shape[0]
        no_mask = torch.zeros(b, 1, 1, lang.shape[1], dtype=lang.dtype, device=lang.device)
        hyper = self.hyper.expand(b, -1, -1)
        for i, level in enumerate(self.ahl):
            cross = cast(nn.ModuleDict, level)
            if i > 0:
                lang = self.language[i - 1](lang, no_mask)
            for m in self.others:
                hyper = hyper + cross[m](lang, others[m])  # (B, K, d)
        for block in self.fusion:
            lang = block(lang, hyper)
        return self.ln(lang).mean(1)  # (B, d)
