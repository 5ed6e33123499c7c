"""MulT, the Multimodal Transformer for unaligned sequences (Tsai et al., ACL 2019).

Each modality's sequence is projected to width d (a temporal convolution), given sinusoidal
positions, and, for every ordered pair (source -> target), a crossmodal transformer lets the
target's steps attend to the source's: 6 directional pairs for three modalities. A target's
crossmodal outputs are concatenated and read by a self-attention transformer ("memory");
its last step summarises the target. The summaries go through a residual two-layer block and
an output layer. Unaligned sequences need no word alignment: attention spans any lengths.

Faithful: the structure above, pre-LayerNorm layers with a scaled embedding (x·√d), ReLU
FFNs of 4d, a causal mask in the memory transformers (MMSA's ``attn_mask``), the sizes and
dropouts of MMSA's MOSI config (src/MMSA/config/config_regression.json, "mult": d 50, 10
heads, 4 levels, attention dropout 0.3/0.2/0.0 by source modality, embed 0.2, text 0.5,
output 0.5); at least 3 memory layers as MMSA's code. Adapted: padding and (with
``mask_zero_steps``) all-zero steps are masked as keys, the summary is the last USABLE step;
sequences longer than ``max_steps`` are mean-pooled into that many segments first (default
50, MOSI's aligned length: at 375-500 frames attention runs far below 200 samples/s on
2 CPU cores; 0 keeps full length); kernel-1 projections (the authors' release; MMSA's MOSI
config uses 5 with no padding, which a length-1 sequence cannot pass); one modality (no
pair) feeds its projection straight to the memory transformer; 2 outputs (log s² too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.base.errors import ConfigError
from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import LinearHead
from qamoe_core.models.layers import segment_pool, sinusoid, usable_steps
from qamoe_core.models.registry import register


class AttentionLayer(nn.Module):
    """Pre-LN layer: x + Attn(LN(x), LN(kv)), then x + FFN(LN(x)). kv None: self-attention."""

    def __init__(self, d: int, heads: int, attn_drop: float, relu_drop: float, res_drop: float):
        super().__init__()
        self.heads, self.attn_drop = heads, attn_drop
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.kv, self.proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(relu_drop),
                                 nn.Linear(4 * d, d))  # fmt: skip
        self.drop = nn.Dropout(res_drop)

    def forward(self, x: Tensor, mask: Tensor, kv: Tensor | None = None) -> Tensor:
        """x (B, Tq, d), kv (B, Tk, d), mask (B, 1, Tq, Tk) additive."""
        b, tq, d = x.shape
        q_in = self.ln_attn(x)
        k_in = q_in if kv is None else self.ln_attn(kv)  # one LayerNorm, as the authors'
        q = self.q(q_in).view(b, tq, self.heads, -1).transpose(1, 2)
        k, v = (z.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
                for z in self.kv(k_in).chunk(2, dim=-1))  # fmt: skip
        p = self.attn_drop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, tq, d)))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


class MulTEncoder(nn.Module):
    """x·√d + positions -> dropout -> layers -> LayerNorm (the authors' TransformerEncoder)."""

    def __init__(self, d: int, heads: int, layers: int, attn_drop: float, o: Any) -> None:
        super().__init__()
        self.scale, self.embed_drop = math.sqrt(d), nn.Dropout(o.embed_dropout)
        self.layers = nn.ModuleList(
            AttentionLayer(d, heads, attn_drop, o.relu_dropout, o.res_dropout)
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)

    def forward(self, x: Tensor, mask: Tensor, kv: Tensor | None = None) -> Tensor:
        def embed(z: Tensor) -> Tensor:
            return self.embed_drop(self.scale * z + sinusoid(z.shape[1], z.shape[2], z.device,
                                                             z.dtype))  # fmt: skip

        x = embed(x)
        kv = None if kv is None else embed(kv)
        for layer in self.layers:
            x = layer(x, mask, kv)
        return self.ln(x)


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool (B, Tq, Tk) -> additive float mask (B, 1, Tq, Tk)."""
    zero = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zero.masked_fill(~allowed, float("-inf"))[:, None]


@register
class MulT(MultimodalModel):
    name = "mult"
    shared_encoders = False

    @dataclass(frozen=True)
    class Options(ModelOptions):
        # MMSA's MOSI config for "mult" unless said otherwise.
        d: int = option(50, 2, 4096)  # dst_feature_dim_nheads [50, 10]
        heads: int = option(10, 1, 256)
        layers: int = option(4, 1, 32)  # nlevels
        memory_layers: int = option(3, 1, 32)  # MMSA's code: max(nlevels, 3)
        attn_dropout_text: float = option(0.3, 0.0, 0.9)  # attn_dropout
        attn_dropout_audio: float = option(0.2, 0.0, 0.9)  # attn_dropout_a
        attn_dropout_vision: float = option(0.0, 0.0, 0.9)  # attn_dropout_v
        relu_dropout: float = option(0.0, 0.0, 0.9)
        res_dropout: float = option(0.0, 0.0, 0.9)
        embed_dropout: float = option(0.2, 0.0, 0.9)
        text_dropout: float = option(0.5, 0.0, 0.9)
        output_dropout: float = option(0.5, 0.0, 0.9)
        # [ours] temporal compression for CPU speed (see the module docstring); 0 = off.
        max_steps: int = option(50, 0, 100_000)
        # The authors' release projects with kernel 1 (MMSA's MOSI config: 5); odd sizes only,
        # padded so a sequence keeps its length.
        conv_kernel: int = option(1, 1, 31)

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o = self.options
        n = len(self.modalities)
        mem = o.d * max(1, n - 1)
        for width in (o.d, mem):
            if width % o.heads or o.conv_kernel % 2 == 0:
                raise ConfigError(
                    f"MulT needs widths divisible by 'heads' ({o.heads}) and an odd "
                    f"'conv_kernel'; got d {o.d} (memory {mem}) and kernel {o.conv_kernel}.",
                    hint="Set model.options d to a multiple of heads (MMSA: 50 and 10).",
                )
        k = o.conv_kernel
        self.proj = nn.ModuleDict(
            {m: nn.Conv1d(dim, o.d, k, padding=k // 2, bias=False) for m, dim in self.dims.items()}
        )
        drop = {"text": o.attn_dropout_text, "audio": o.attn_dropout_audio,
                "vision": o.attn_dropout_vision}  # fmt: skip
        self.cross = nn.ModuleDict(
            {f"{s}_to_{t}": MulTEncoder(o.d, o.heads, o.layers, drop[s], o)
             for t in self.modalities for s in self.modalities if s != t}
        )  # fmt: skip
        self.memory = nn.ModuleDict(
            {t: MulTEncoder(mem, o.heads, max(o.layers, o.memory_layers), o.attn_dropout_text, o)
             for t in self.modalities}
        )  # fmt: skip
        combined = n * mem
        self.proj1, self.proj2 = nn.Linear(combined, combined), nn.Linear(combined, combined)
        self.out_drop = nn.Dropout(o.output_dropout)
        self.head = LinearHead(combined, cfg)

    def sequence(self, m: str, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, S, d) projected steps and the (B, S) bool mask of usable ones."""
        x, lengths = batch[m], batch[f"{m}_len"]
        keep = usable_steps(x, lengths, self.cfg.mask_zero_steps)
        x = self.standardise(m, x) * keep[:, :, None].to(x.dtype)
        if self.options.max_steps and x.shape[1] > self.options.max_steps:
            present = keep if self.cfg.mask_zero_steps else None
            x, keep = segment_pool(x, lengths, self.options.max_steps, present)
        if m == "text":
            x = F.dropout(x, self.options.text_dropout, self.training)
        keep = keep.clone()
        keep[:, 0] |= ~keep.any(1)  # no usable step: attend to one zero step, never to none
        return self.proj[m](x.transpose(1, 2)).transpose(1, 2), keep

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: Any
    ) -> ModelOutput:
        seq = {m: self.sequence(m, batch) for m in self.modalities}
        summaries = []
        for t in self.modalities:
            x, keep = seq[t]
            parts = [
                self.cross[f"{s}_to_{t}"](x, key_mask(keep, seq[s][1], x.dtype), seq[s][0])
                for s in self.modalities
                if s != t
            ] or [x]
            h = torch.cat(parts, dim=-1)  # (B, S_t, mem)
            h = self.memory[t](h, causal_mask(keep, h.dtype))
            summaries.append(last_usable(h, keep))  # (B, mem)
        z = torch.cat(summaries, dim=-1)  # (B, M·mem)
        z = z + self.proj2(self.out_drop(F.relu(self.proj1(z))))  # the residual block
        pred, log_var = self.head(z)
        return self.finish(ModelOutput(pred, log_var), batch)


def key_mask(q_keep: Tensor, k_keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Crossmodal: every query step may attend to the source's usable steps (B, 1, Tq, Tk)."""
    return additive(k_keep[:, None, :].expand(-1, q_keep.shape[1], -1), dtype)


def causal_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Memory: step t attends to usable steps <= t, and always to itself, so no row is empty
    (an empty row's softmax is NaN, which would reach the usable steps through the values)."""
    t = keep.shape[1]
    past = torch.ones(t, t, dtype=torch.bool, device=keep.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=keep.device)
    return additive((keep[:, None, :] & past) | eye, dtype)


def last_usable(h: Tensor, keep: Tensor) -> Tensor:
    """(B, T, d), (B, T) -> (B, d): each sample's output at its last usable step."""
    t = keep.shape[1]
    last = t - 1 - keep.flip(1).to(torch.int8).argmax(1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), last]
