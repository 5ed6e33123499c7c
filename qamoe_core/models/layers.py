"""Shared building blocks: masks, temporal pooling, the per-modality Transformer encoder.

Legend of tensor dimensions: B batch, T time steps, S steps after compression, D input
features of a modality, d model width.

Every model can reuse these: :func:`valid_mask` (padding), :func:`present_steps` (the
``mask_zero_steps`` behaviour: an all-zero step is treated as padding), :func:`segment_pool`
(temporal compression over the valid steps), :func:`compact_steps` (present steps moved to
the front, for recurrent encoders), and :class:`Encoder` (compress -> standardise -> project ->
Transformer -> pooled vector), the encoder QA-MoE and the fusion baselines share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig


def valid_mask(lengths: Tensor, t: int) -> Tensor:
    """(B,) lengths -> (B, T) bool, True on valid steps."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def present_steps(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, T, D) -> (B, T) bool, True where a step has any non-zero value.

    Wide features (text: 768 dims) are first tested on their first 8 dims only: a step with a
    non-zero value there is present, and only the others are read in full (when few are, as
    in clean data: on 2 cores 0.7 ms instead of 18 ms for 256 x 50 x 768). With many
    candidates (heavily corrupted batches) one full pass is cheaper than gathering them.
    ``valid`` (B, T), optional: only these steps are read in full; the result is then
    meaningful on valid steps only (padding, zero by the schema, is never a candidate).
    """
    if x.shape[-1] < 64:
        return x.any(-1)
    head = x[..., :8].any(-1)
    unsure = ~head if valid is None else valid & ~head
    n_unsure = int(unsure.sum())
    if n_unsure == 0:
        return head
    if 4 * n_unsure > unsure.numel():
        return x.any(-1)
    present = head.clone()
    present[unsure] = x[unsure][:, 8:].any(-1)
    return present


def segment_bounds(lengths: Tensor, segments: int) -> Tensor:
    """(B,) lengths -> (B, S + 1) step boundaries: segment j covers steps [b_j, b_{j+1}).

    b_j = ceil(j·L/S), i.e. step t goes to segment floor(t·S/L): S equal shares of the VALID
    steps whatever the length (a 40-frame and a 500-frame clip both become S steps).
    """
    j = torch.arange(segments + 1, device=lengths.device)
    return (j[None, :] * lengths[:, None] + segments - 1) // segments


def segment_pool(
    x: Tensor, lengths: Tensor, segments: int, present: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean-pool each sample's VALID steps into ``segments`` equal segments.

    x (B, T, D), lengths (B,) -> (B, S, D) and a (B, S) bool mask of non-empty segments (a
    sample with L < S leaves some segments empty). ``present`` (B, T) bool, optional: only
    these steps count in a segment's mean (the others are zero and are left out of the
    count too), and a segment with none is empty. With segments = 0 or T <= segments it is
    the identity (sequence length 1 stays 1). Computed from a running sum along time, so it
    is one pass over x (a (B, S, T) averaging matmul would cost S times more memory traffic).
    """
    b, t, d = x.shape
    if segments <= 0 or t <= segments:
        valid = valid_mask(lengths, t)
        return x, valid if present is None else valid & present
    # Running sums in float64 would be exact but 2x the traffic; float32 over <= 10^4 steps of
    # standardisable features loses < 1e-5 relative, far below the corruption noise.
    csum = torch.cat([x.new_zeros(b, 1, d), x.cumsum(1)], dim=1)  # (B, T + 1, D)
    bounds = segment_bounds(lengths.clamp(max=t), segments)  # (B, S + 1)
    ends = csum.gather(1, bounds[:, :, None].expand(b, segments + 1, d))  # (B, S + 1, D)
    if present is None:
        counts = (bounds[:, 1:] - bounds[:, :-1]).to(x.dtype)  # (B, S)
    else:
        seen = torch.cat([present.new_zeros(b, 1, dtype=x.dtype), present.to(x.dtype).cumsum(1)], 1)
        at = seen.gather(1, bounds)  # (B, S + 1): present steps before each boundary
        counts = at[:, 1:] - at[:, :-1]
    pooled = (ends[:, 1:] - ends[:, :-1]) / counts.clamp(min=1.0)[:, :, None]
    return pooled, counts > 0


_SINUSOID_CACHE: dict[tuple[int, int, str, torch.dtype], Tensor] = {}


def sinusoid(t: int, d: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(T, d) fixed sinusoidal positions (Vaswani et al. 2017): no maximum length to store.
    Cached per shape and device (they are constants)."""
    key = (t, d, str(device), dtype)
    if key not in _SINUSOID_CACHE:
        pos = torch.arange(t, dtype=torch.float64)[:, None]
        freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
        pe = torch.zeros(t, d, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
        _SINUSOID_CACHE[key] = pe.to(device=device, dtype=dtype)
    return _SINUSOID_CACHE[key]


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, d) -> (B, H, T, d/H)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, H, T, d/H) -> (B, T, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LN Transformer block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.encoder_dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.ffn_mult * d, bias=False),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * d, d, bias=False),
            nn.Dropout(cfg.encoder_dropout),
        )
        self.drop = nn.Dropout(cfg.encoder_dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """One modality: compress -> standardise+project -> positions -> Transformer -> pooled h.

    forward(x (B, T, D), lengths (B,)) -> h (B, d), LayerNorm-ed (unit scale, which makes the
    uncertainty residuals comparable across modalities and training time).
    Input standardisation uses the TRAIN mean/std of the feature file (buffers, saved with the
    weights), folded into the projection so it costs no extra pass over the input.
    """

    in_mean: Tensor
    in_std: Tensor

    def __init__(self, dim: int, cfg: ModelConfig, segments: int) -> None:
        super().__init__()
        self.segments = segments
        self.mask_zero_steps = cfg.mask_zero_steps
        self.register_buffer("in_mean", torch.zeros(dim))
        self.register_buffer("in_std", torch.ones(dim))
        self.proj = nn.Linear(dim, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.encoder_dropout)

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.in_mean) / self.in_std

    def pooled_input(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, D) standardised mean of the valid input steps (the clean_input target)."""
        valid = valid_mask(lengths, x.shape[1]).to(x.dtype)  # (B, T)
        mean = torch.einsum("bt,btd->bd", valid, x) / valid.sum(1, keepdim=True).clamp(min=1)
        return self.standardise(mean)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.encode(x, lengths)[0]

    def encode(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """h (B, d), and with mask_zero_steps the coverage (B,): the share of the valid steps
        that are present (not all zero), the amount of evidence the mask hides from h."""
        # An all-zero step carries nothing (the spectrum's dropped steps, a frame with no face):
        # with mask_zero_steps it is left out like padding, instead of entering as a real input
        # (-mean/std after standardisation: an outlier wherever features have an offset).
        present, coverage = None, None
        if self.mask_zero_steps:
            steps = valid_mask(lengths, x.shape[1])  # (B, T)
            present = present_steps(x, steps) & steps  # padding is never a candidate
            coverage = present.sum(1).to(x.dtype) / lengths.clamp(min=1).to(x.dtype)
        x, valid = segment_pool(x, lengths, self.segments, present)  # (B, S, D), (B, S)
        # A sample with no valid step (length 0, or every step zero) keeps one zero step, so
        # attention over an all-masked row cannot produce NaN.
        valid = valid.clone()
        valid[:, 0] |= ~valid.any(1)
        # W·((x - m)/s) + b == (W/s)·x + (b - W·(m/s)): standardise inside the matmul.
        w = self.proj.weight / self.in_std  # (d, D)
        bias = self.proj.bias - w @ self.in_mean
        pos = sinusoid(x.shape[1], w.shape[0], x.device, x.dtype)  # (S, d)
        h = self.drop(F.linear(x, w) + (bias + pos))  # (B, S, d); one pass adds bias and position
        # (B, 1, 1, S) additive mask over keys, built once for all layers: SDPA's CPU kernel
        # runs ~20 % faster with a float mask than with a boolean one (it converts it).
        attn_mask = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
        attn_mask = attn_mask.masked_fill(~valid, float("-inf"))[:, None, None, :]
        for block in self.blocks:
            h = block(h, attn_mask)
        h = self.ln_f(h)
        v = valid.to(h.dtype)
        return torch.einsum("bs,bsd->bd", v, h) / v.sum(1, keepdim=True), coverage  # (B, d)


def usable_steps(x: Tensor, lengths: Tensor, mask_zero_steps: bool) -> Tensor:
    """(B, T, D), (B,) -> (B, T) bool: the steps a model should read. Valid (not padding),
    and with ``mask_zero_steps`` also present (not all zero: a dropped step, a frame with no
    face), the same rule as :class:`Encoder`."""
    steps = valid_mask(lengths, x.shape[1])
    return present_steps(x, steps) & steps if mask_zero_steps else steps


def compact_steps(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Move each sample's kept steps to the front, in time order, and zero the rest.

    x (B, T, D), keep (B, T) bool -> (B, T, D) and the new lengths (B,). A recurrent encoder
    then skips masked steps by packing on these lengths, as attention skips them by masking.
    """
    lengths = keep.sum(1)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept first
    out = x.gather(1, order[:, :, None].expand_as(x))
    return out * valid_mask(lengths, x.shape[1])[:, :, None].to(x.dtype), lengths


def masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    """(B, T, D), (B, T) bool -> (B, D): the mean of the kept steps (zeros where none is)."""
    w = keep.to(x.dtype)
    return torch.einsum("bt,btd->bd", w, x) / w.sum(1, keepdim=True).clamp(min=1.0)


class FeatureStats(nn.Module):
    """The TRAIN mean/std (D,) of one modality's features, saved with the weights, for
    models that standardise their inputs without the shared :class:`Encoder` (which holds
    the same two buffers itself)."""

    in_mean: Tensor
    in_std: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("in_mean", torch.zeros(dim))
        self.register_buffer("in_std", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.in_mean) / self.in_std
