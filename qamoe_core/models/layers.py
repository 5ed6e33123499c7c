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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig

# Rows.of packs the steps a layer keeps when at most this share of them is kept.
PACK_BELOW = 0.85


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
        return _any_nonzero(x)
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


def _any_nonzero(x: Tensor) -> Tensor:
    """(..., D) -> (...) bool: x.any(-1), computed as a sum of |x| (a step is present iff the
    sum is > 0, or NaN): for narrow features (D = 20: 256 x 500 steps in 0.9 ms instead of
    3.2 ms on one core) the matrix-vector product beats any()'s strided reduction. A sum of
    non-negative terms is never below its largest, so no non-zero value is lost."""
    total = x.abs() @ x.new_ones(x.shape[-1])
    return (total > 0) | total.isnan()


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
    these steps count in a segment's mean (the others, zero, are left out of the count
    too), and a segment with none is empty. With segments = 0 or T <= segments it is the
    identity (sequence length 1 stays 1). Step t < L goes to segment floor(t·S/L)
    (:func:`segment_bounds`).
    """
    t = x.shape[1]
    if segments <= 0 or t <= segments:
        valid = valid_mask(lengths, t)
        return x, valid if present is None else valid & present
    lengths = lengths.clamp(max=t)
    if x.device.type == "cpu":
        sums, counts = _segment_sums_indexed(x, lengths, segments, present)
    else:  # index_add adds in no fixed order on a GPU: running sums keep results repeatable
        sums, counts = _segment_sums_running(x, lengths, segments, present)
    return sums / counts.clamp(min=1.0)[:, :, None], counts > 0


def _segment_sums_indexed(
    x: Tensor, lengths: Tensor, segments: int, present: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(B, S, D) sums and (B, S) counts of segment_pool by one index_add over the steps, the
    steps left out going to a spare row: one pass over x, exact sums (on one core 4x faster
    than differences of running sums for 256 x 500 x 20)."""
    b, t, d = x.shape
    step = torch.arange(t, device=x.device)
    keep = step[None, :] < lengths[:, None]  # (B, T)
    if present is not None:
        keep = keep & present
    seg = step[None, :] * segments // lengths.clamp(min=1)[:, None]  # (B, T) floor(t·S/L)
    spare = b * segments
    row = torch.arange(b, device=x.device)[:, None] * segments + seg
    index = torch.where(keep, row, spare).flatten()  # (B·T,) row of B·S + 1 each step adds to
    sums = x.new_zeros(spare + 1, d).index_add_(0, index, x.reshape(b * t, d))
    counts = torch.bincount(index, minlength=spare + 1)[:spare].view(b, segments).to(x.dtype)
    return sums[:spare].view(b, segments, d), counts


def _segment_sums_running(
    x: Tensor, lengths: Tensor, segments: int, present: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The same from running sums along time (differences at the segment bounds)."""
    b, _, d = x.shape
    # Running sums in float64 would be exact but 2x the traffic; float32 over <= 10^4 steps of
    # standardisable features loses < 1e-5 relative, far below the corruption noise.
    if present is not None:
        x = x * present[:, :, None].to(x.dtype)
    csum = torch.cat([x.new_zeros(b, 1, d), x.cumsum(1)], dim=1)  # (B, T + 1, D)
    bounds = segment_bounds(lengths, segments)  # (B, S + 1)
    ends = csum.gather(1, bounds[:, :, None].expand(b, segments + 1, d))  # (B, S + 1, D)
    if present is None:
        counts = (bounds[:, 1:] - bounds[:, :-1]).to(x.dtype)  # (B, S)
    else:
        seen = torch.cat([present.new_zeros(b, 1, dtype=x.dtype), present.to(x.dtype).cumsum(1)], 1)
        at = seen.gather(1, bounds)  # (B, S + 1): present steps before each boundary
        counts = at[:, 1:] - at[:, :-1]
    return ends[:, 1:] - ends[:, :-1], counts


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


def key_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) bool -> (B, 1, 1, T) additive attention mask (-inf on invalid keys). Additive
    rather than boolean: SDPA's CPU kernel runs ~20 % faster with it (it converts a boolean
    one)."""
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid, float("-inf"))[:, None, None, :]


class Rows(NamedTuple):
    """The kept steps of a padded (B, T) batch, for running the per-step layers on them alone.

    Padding and masked steps are never attended to and never pooled, so what a layer computes
    for them is thrown away: a text batch of mosi (50 steps, 44 % padding or dropped) spends
    almost half its projections and MLPs there. Packed, the per-step layers (projections,
    LayerNorm, MLP) see the N kept rows (N, c); only attention unpacks them to (B, T, c).
    """

    flat: Tensor  # (N,) flat positions b·T + t of the kept steps, in order
    sample: Tensor  # (N,) b of each kept step
    step: Tensor  # (N,) t of each kept step
    shape: tuple[int, int]  # (B, T)

    @staticmethod
    def of(keep: Tensor, most: float = PACK_BELOW) -> Rows | None:
        """Rows of ``keep`` (B, T) bool, or None when more than ``most`` of the steps are kept
        (then gathering costs more than it saves)."""
        index = keep.flatten().nonzero().squeeze(1)
        if index.numel() > most * keep.numel() or keep.numel() == 0:
            return None
        t = keep.shape[1]
        return Rows(index, index // t, index % t, (keep.shape[0], t))

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...) the kept steps."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.flat)

    def unpack(self, rows: Tensor) -> Tensor:
        """(N, c) -> (B, T, c), zeros at the steps left out."""
        b, t = self.shape
        out = rows.new_zeros(b * t, rows.shape[1])
        return out.index_copy_(0, self.flat, rows).view(b, t, rows.shape[1])


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows: Rows | None = None) -> Tensor:
        """x (B, T, d), or with ``rows`` the kept steps (N, d) -> the same shape."""
        qkv = self.qkv(x)  # (B, T, 3d), or (N, 3d) unpacked to (B, T, 3d): zeros elsewhere
        if rows is not None:
            qkv = rows.unpack(qkv)
        b, t, d = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = qkv.split(d, dim=2)
        # (B, T, d) -> (B, H, T, d/H)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, H, T, d/H) -> (B, T, d)
        return self.proj(y if rows is None else rows.pack(y))


class Block(nn.Module):
    """Pre-LN Transformer block. forward(x (B, T, d), additive key mask (B, 1, 1, T), rows):
    with :class:`Rows`, x holds the kept steps only (N, d), and so does the result."""

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

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows: Rows | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask, rows))
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """One modality: compress -> standardise+project -> positions -> Transformer -> pooled h.

    forward(x (B, T, D), lengths (B,)) -> h (B, d), LayerNorm-ed (unit scale, which makes the
    uncertainty residuals comparable across modalities and training time).
    Input standardisation uses the TRAIN mean/std of the feature file (buffers, saved with the
    weights), folded into the projection so it costs no extra pass over the input. When many
    steps are masked (padding, dropped steps), the per-step layers run on the kept ones only
    (:class:`Rows`); the result is the same.
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
        rows = Rows.of(valid) if self.blocks else None
        h = self._embed(x, rows)  # (B, S, d), or (N, d) packed
        attn_mask = key_mask(valid, h.dtype)  # built once for all layers
        for block in self.blocks:
            h = block(h, attn_mask, rows)
        h = self.ln_f(h)
        if rows is not None:
            h = rows.unpack(h)  # (B, S, d), zero at the steps left out
        v = valid.to(h.dtype)
        return torch.einsum("bs,bsd->bd", v, h) / v.sum(1, keepdim=True), coverage  # (B, d)

    def _embed(self, x: Tensor, rows: Rows | None) -> Tensor:
        """Standardise, project, add positions: (B, S, D) -> (B, S, d), or the kept rows."""
        # W·((x - m)/s) + b == (W/s)·x + (b - W·(m/s)): standardise inside the matmul.
        w = self.proj.weight / self.in_std  # (d, D)
        bias = self.proj.bias - w @ self.in_mean
        pos = sinusoid(x.shape[1], w.shape[0], x.device, x.dtype)  # (S, d)
        if rows is None:  # one pass adds bias and position
            return self.drop(F.linear(x, w) + (bias + pos))
        # (N, d): bias and position of each kept step accumulated by the matmul itself
        return self.drop(torch.addmm((bias + pos).index_select(0, rows.step), rows.pack(x), w.t()))


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
