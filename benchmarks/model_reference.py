"""The models' computation as it was before the speed-ups, kept as a reference.

``bench_model.py --compare-ref`` times it against the library's path in alternation, and
tests/models/test_fast_paths.py checks that both give the same outputs (to float
tolerance) on random inputs. Nothing in qamoe_core imports this file.

:func:`reference_path` swaps these functions into the library's modules and classes for the
duration of a ``with`` block, so the same model object (same weights) runs either path.
Each function below is the library's code as it stood before, unchanged but for its name.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qamoe_core.models import layers
from qamoe_core.models.layers import Block, Encoder, SelfAttention, segment_bounds, sinusoid
from qamoe_core.models.layers import valid_mask as _valid_mask
from qamoe_core.models.tokens import TokenEncoder, key_mask


def present_steps(x: Tensor, valid: Tensor | None = None) -> Tensor:
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


def segment_pool(
    x: Tensor, lengths: Tensor, segments: int, present: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    b, t, d = x.shape
    if segments <= 0 or t <= segments:
        valid = _valid_mask(lengths, t)
        return x, valid if present is None else valid & present
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


def attention_forward(
    self: SelfAttention, x: Tensor, attn_mask: Tensor, rows: Any = None
) -> Tensor:
    assert rows is None
    b, t, d = x.shape
    q, k, v = self.qkv(x).split(d, dim=2)
    q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
    p = self.dropout if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    y = y.transpose(1, 2).reshape(b, t, d)
    return self.proj(y)


def block_forward(self: Block, x: Tensor, attn_mask: Tensor, rows: Any = None) -> Tensor:
    assert rows is None
    x = x + self.drop(self.attn(self.ln1(x), attn_mask))
    return x + self.mlp(self.ln2(x))


def encoder_encode(self: Encoder, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
    present, coverage = None, None
    if self.mask_zero_steps:
        steps = _valid_mask(lengths, x.shape[1])  # (B, T)
        present = present_steps(x, steps) & steps
        coverage = present.sum(1).to(x.dtype) / lengths.clamp(min=1).to(x.dtype)
    x, valid = segment_pool(x, lengths, self.segments, present)  # (B, S, D), (B, S)
    valid = valid.clone()
    valid[:, 0] |= ~valid.any(1)
    w = self.proj.weight / self.in_std  # (d, D)
    bias = self.proj.bias - w @ self.in_mean
    pos = sinusoid(x.shape[1], w.shape[0], x.device, x.dtype)  # (S, d)
    h = self.drop(F.linear(x, w) + (bias + pos))
    attn_mask = torch.zeros(valid.shape, dtype=h.dtype, device=h.device)
    attn_mask = attn_mask.masked_fill(~valid, float("-inf"))[:, None, None, :]
    for block in self.blocks:
        h = block(h, attn_mask)
    h = self.ln_f(h)
    v = valid.to(h.dtype)
    return torch.einsum("bs,bsd->bd", v, h) / v.sum(1, keepdim=True), coverage  # (B, d)


def token_encoder_forward(
    self: TokenEncoder, x: Tensor, lengths: Tensor, standardise: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    steps = _valid_mask(lengths, x.shape[1])  # (B, T)
    present = present_steps(x, steps) & steps if self.mask_zero_steps else steps
    coverage = present.sum(1).to(x.dtype) / lengths.clamp(min=1).to(x.dtype)  # (B,)
    x = standardise(x) * present[:, :, None].to(x.dtype)  # left-out steps stay zero
    x, valid = segment_pool(x, lengths, self.segments, present)  # (B, S, D), (B, S)
    h = self.proj(x) + sinusoid(x.shape[1], self.tokens.shape[-1], x.device, x.dtype)
    b, k = x.shape[0], self.tokens.shape[1]
    h = torch.cat([self.tokens.expand(b, -1, -1), h], dim=1)  # (B, K + S, d)
    valid = torch.cat([valid.new_ones(b, k), valid], dim=1)
    mask = key_mask(valid, h.dtype)
    for block in self.blocks:
        h = block(h, mask)
    return self.ln(h[:, :k]), coverage  # (B, K, d), (B,)


# (owner, attribute, reference): classes get methods, modules get functions.
METHODS: tuple[tuple[type, str, Any], ...] = (
    (SelfAttention, "forward", attention_forward),
    (Block, "forward", block_forward),
    (Encoder, "encode", encoder_encode),
    (TokenEncoder, "forward", token_encoder_forward),
)
FUNCTIONS: dict[str, Any] = {"present_steps": present_steps, "segment_pool": segment_pool}


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within the block, every model computes as before the speed-ups (not thread-safe)."""
    modules = [m for n, m in list(sys.modules.items()) if n.startswith("qamoe_core.models")]
    functions = [
        (module, name)
        for module in modules
        for name in FUNCTIONS
        if getattr(module, name, None) is getattr(layers, name)
    ]
    saved: list[tuple[Any, str, Any]] = [(m, name, getattr(m, name)) for m, name in functions]
    saved += [(owner, name, owner.__dict__[name]) for owner, name, _ in METHODS]
    try:
        for module, name in functions:
            setattr(module, name, FUNCTIONS[name])
        for cls, name, ref in METHODS:
            setattr(cls, name, ref)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
