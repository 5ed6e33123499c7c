"""QA-MoE (DESIGN §3): quality-aware mixture of experts over per-modality encoders.

Bottom-up: :func:`segment_pool` (temporal compression) -> :class:`Encoder` (one per modality)
-> :class:`QualityHead` (μ_m, σ²_m, r_m) -> prior fallback z_m = r_m·μ_m + (1 − r_m)·p_m
-> fusion W_f·[z_T; z_A; z_V] (+ W_r·[r_T, r_A, r_V], ``fuse_uses_quality``) -> :class:`Router`
+ :class:`SwiGLUExperts` (the MoE, with a residual) -> :class:`TwoBranchHead` (ŷ, log s²).
Every model (QA-MoE and the baselines in baselines.py) returns a :class:`ModelOutput`.

Legend of tensor dimensions: B batch, T time steps, S steps after compression, D input
features of a modality, d model width, E experts, M modalities.

Keep masks: a corrupted batch carries ``<m>_keep`` (B, T), True where a step survived. The
model does NOT read them. The paper's point is that reliability is learned from the content
without corruption labels (DESIGN §3); feeding keep masks would hand the model the very
corruption it must learn to notice, and real degraded inputs (a muted microphone, a covered
camera) come without masks. Dropped steps are zeroed by the corruption engine and stay in the
sequence; only padding (from ``<m>_len``) is masked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core import MODALITIES
from qamoe_core.config import ModelConfig
from qamoe_core.names import TASKS


class ModelOutput(NamedTuple):
    """What every model returns (st-moe-pytorch style: output plus all auxiliary losses).

    prediction: (B,) sentiment score (regression) or logit (binary).
    log_var: (B,) log s², the head's predicted variance of ``prediction`` (aleatoric, in the
        label's units squared; for binary, of the logit).
    quality: {modality: (B,) r_m in (0, 1]} as used by the model (ones with the gate off);
        None for models without quality.
    modality_log_var: {modality: (B,) log s_m}, s_m = mean over dims of σ²_m; None without
        quality.
    routing: (B, E) expert weights after top-k and renormalisation (0 off the top-k); None
        for models without experts.
    loss: scalar total loss, None when the batch has no 'label'.
    loss_task: scalar task loss (L1 + α·NLL, or BCE + α·moderated BCE), None without labels.
    loss_unc: scalar self-supervised uncertainty loss Σ_m, None without a clean batch or
        without a quality head.
    loss_balance: scalar load-balancing loss (1.0 when balanced), None without a router.
    """

    prediction: Tensor
    log_var: Tensor
    quality: dict[str, Tensor] | None = None
    modality_log_var: dict[str, Tensor] | None = None
    routing: Tensor | None = None
    loss: Tensor | None = None
    loss_task: Tensor | None = None
    loss_unc: Tensor | None = None
    loss_balance: Tensor | None = None


# --- building blocks --------------------------------------------------------------------------


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Map x smoothly into (lo, hi) with 0 -> the midpoint; gradients never vanish abruptly."""
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    return mid + half * torch.tanh((x - mid) / half)


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


class QualityHead(nn.Module):
    """The reliability of one modality: μ_m, log σ²_m (soft-clamped), r_m = 1/(1 + mean σ²_m).

    The uncertainty loss regresses a clean TARGET from the corrupted encoding h_m with a
    Gaussian likelihood, so σ²_m learns the expected residual: ~0 for clean inputs, larger
    the heavier the corruption, with no corruption label (DESIGN §3.2-3.3).

    The target is standardised per dimension with running statistics of the clean targets
    (BatchNorm-style buffers updated while training). That fixes the unit of σ²: knowing
    nothing of the sample (a missing modality) leaves a residual variance ~1 per dimension,
    so r ≈ 0.5, and an exact estimate gives σ² -> 0, r -> 1, whatever the raw scale of the
    encodings (pooling over time shrinks it a lot, and it drifts while the encoders train).

    clean_encoding target (out_dim = d): μ_m = std(h_m) + δ(h_m), δ initialised to 0. A clean
      input then reproduces its target from the first step, so σ² has a real signal to learn
      at once, and δ learns to denoise corrupted encodings.
    clean_input target (out_dim = D_m): μ_m = W_μ h_m, and a linear decoder maps μ_m to the
      pooled (standardised) clean input: a target that cannot collapse.
    """

    h_mean: Tensor
    t_mean: Tensor
    t_var: Tensor

    def __init__(self, cfg: ModelConfig, out_dim: int, decode: bool) -> None:
        super().__init__()
        d = cfg.d_model
        self.mu = nn.Linear(d, d)
        # log σ² from [h, (h − h̄)²] through a small MLP, h̄ a running mean of encodings. A
        # corrupted encoding tends to sit INSIDE the cloud of clean ones (an all-zero input
        # looks "average"), which no linear function of h can single out; the squared
        # deviations make "how atypical is this encoding" a linear feature. Measured: W_σ·h
        # alone learned the inverse trend (r rising with the level), this learns the right one.
        # With mask_zero_steps, the coverage (share of present steps) joins them: the mask keeps
        # zeroed steps out of h, so h alone no longer shows how much of the input was there.
        self.uses_coverage = cfg.mask_zero_steps
        n_in = 2 * d + (1 if self.uses_coverage else 0)
        self.log_var = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, 2 * d), nn.GELU(),
                                     nn.Linear(2 * d, out_dim))  # fmt: skip
        self.decoder = nn.Linear(d, out_dim) if decode else None
        self.lo, self.hi = cfg.min_log_var, cfg.max_log_var
        self.momentum = 0.1  # BatchNorm's default: the running stats follow ~10 steps
        self.register_buffer("h_mean", torch.zeros(d))
        self.register_buffer("t_mean", torch.zeros(out_dim))
        self.register_buffer("t_var", torch.ones(out_dim))
        last = self.log_var[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)  # start at log σ² = 0 everywhere (r = 0.5)
        nn.init.zeros_(last.bias)
        if not decode:  # δ starts at 0: μ = the standardised encoding
            nn.init.zeros_(self.mu.weight)
            nn.init.zeros_(self.mu.bias)

    def standardise(self, target: Tensor) -> Tensor:
        return (target - self.t_mean) / torch.sqrt(self.t_var + 1e-5)

    def forward(
        self, h: Tensor, coverage: Tensor | None = None, update: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, d), coverage (B,) (with mask_zero_steps) -> μ (B, d), log σ² (B, out_dim),
        r (B,). update=False leaves the running mean of encodings alone (a second pass over
        the same batch)."""
        mu = self.mu(h) if self.decoder is not None else self.standardise(h) + self.mu(h)
        if update and self.training and h.shape[0] > 1:
            with torch.no_grad():
                self.h_mean.lerp_(h.mean(0), self.momentum)
        parts = [h, (h - self.h_mean).square()]
        if self.uses_coverage:  # not given: every step present
            c = h.new_ones(h.shape[0]) if coverage is None else coverage.to(h.dtype)
            parts.append(c[:, None])
        feats = torch.cat(parts, dim=-1)  # (B, 2d [+ 1])
        log_var = soft_clamp(self.log_var(feats), self.lo, self.hi)
        # r carries no gradient: σ² is trained by the uncertainty loss alone, as the paper's
        # self-supervised aleatoric estimate. Letting the task loss bend it would make r
        # whatever helps the fit, no longer a measure of the input's reliability.
        r = 1.0 / (1.0 + log_var.detach().exp().mean(-1))
        return mu, log_var, r

    @torch.no_grad()
    def update_stats(self, target: Tensor) -> None:
        """Fold a batch of clean targets (B, out_dim) into the running mean/variance."""
        if target.shape[0] > 1:
            self.t_mean.lerp_(target.mean(0), self.momentum)
            self.t_var.lerp_(target.var(0), self.momentum)

    def loss(self, mu: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
        """Mean over batch and dims of the Gaussian NLL of μ (or decoder(μ)) vs the target."""
        recon = mu if self.decoder is None else self.decoder(mu)
        return gaussian_nll(recon, self.standardise(target).detach(), log_var).mean()


def gaussian_nll(pred: Tensor, target: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise (pred - target)² / (2σ²) + ½ log σ² (the constant ½ log 2π dropped)."""
    return 0.5 * ((pred - target).square() * torch.exp(-log_var) + log_var)


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


class TwoBranchHead(nn.Module):
    """x (B, d) -> prediction (B,) and its log-variance log s² (B,), two separate MLPs."""

    def __init__(self, cfg: ModelConfig, in_dim: int | None = None) -> None:
        super().__init__()
        d = cfg.d_model
        in_dim = in_dim or d

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.LayerNorm(in_dim), nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(cfg.dropout),
                nn.Linear(d, 1),
            )  # fmt: skip

        self.pred, self.var = mlp(), mlp()
        self.lo, self.hi = cfg.min_log_var, cfg.max_log_var

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.pred(x).squeeze(-1), soft_clamp(self.var(x).squeeze(-1), self.lo, self.hi)


def task_loss(pred: Tensor, log_var: Tensor, label: Tensor, task: str, alpha: float) -> Tensor:
    """Regression: L1 + α·Gaussian NLL. Binary: BCE on the logit + α·BCE on the logit moderated
    by its variance (MacKay 1992's probit approximation, logit / sqrt(1 + π s²/8)), so the
    uncertainty branch is trained the same way for both tasks."""
    if task == "regression":
        return F.l1_loss(pred, label) + alpha * gaussian_nll(pred, label, log_var).mean()
    moderated = pred / torch.sqrt(1.0 + math.pi * log_var.exp() / 8.0)
    return F.binary_cross_entropy_with_logits(pred, label) + alpha * (
        F.binary_cross_entropy_with_logits(moderated, label)
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily switch off dropout (for the clean target pass), restoring modes after."""
    modes = [m.training for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in zip(module.modules(), modes, strict=True):
            m.training = mode


# --- models -------------------------------------------------------------------------------------


class MultimodalModel(nn.Module):
    """Shared plumbing: one Encoder per modality, feature statistics, the task."""

    name = "base"

    def __init__(self, cfg: ModelConfig, dims: Mapping[str, int], task: str) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.cfg, self.task = cfg, task
        self.dims = {m: int(dims[m]) for m in MODALITIES if m in dims}
        self.modalities = tuple(self.dims)
        self.encoders = nn.ModuleDict(
            {m: Encoder(d, cfg, cfg.text_segments if m == "text" else cfg.segments)
             for m, d in self.dims.items()}
        )  # fmt: skip

    def set_feature_stats(self, mean: Mapping[str, Tensor], std: Mapping[str, Tensor]) -> None:
        """Store the TRAIN per-dimension mean/std (D_m,) used to standardise inputs."""
        for m in self.modalities:
            enc = self.encoder(m)
            s = torch.as_tensor(std[m], dtype=torch.float32)
            enc.in_mean.copy_(torch.as_tensor(mean[m], dtype=torch.float32))
            enc.in_std.copy_(torch.where(s > 1e-6, s, torch.ones_like(s)))  # constant dims

    def encoder(self, modality: str) -> Encoder:
        enc = self.encoders[modality]
        assert isinstance(enc, Encoder)
        return enc

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{m: (B, d)} pooled encodings."""
        return self.encode_with_coverage(batch)[0]

    def encode_with_coverage(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        """Pooled encodings {m: (B, d)} and coverages {m: (B,) or None} (Encoder.encode)."""
        h: dict[str, Tensor] = {}
        coverage: dict[str, Tensor | None] = {}
        for m in self.modalities:
            h[m], coverage[m] = self.encoder(m).encode(batch[m], batch[f"{m}_len"])
        return h, coverage

    def concat(self, parts: Mapping[str, Tensor]) -> Tensor:
        """{m: (B, d)} -> (B, M·d), modalities in the model's canonical order."""
        return torch.cat([parts[m] for m in self.modalities], dim=-1)

    def finish(self, out: ModelOutput, batch: Mapping[str, Tensor]) -> ModelOutput:
        """Add the task loss and the total (with the configured weights) when labelled."""
        if "label" not in batch:
            return out
        label = batch["label"].to(out.prediction.dtype)
        lt = task_loss(out.prediction, out.log_var, label, self.task, self.cfg.nll_weight)
        total = lt
        if out.loss_unc is not None:
            total = total + self.cfg.unc_weight * out.loss_unc
        if out.loss_balance is not None:
            total = total + self.cfg.balance_weight * out.loss_balance
        return out._replace(loss=total, loss_task=lt)


class QAMoE(MultimodalModel):
    """The full method; ablations via ModelConfig switches (DESIGN §3.7)."""

    name = "qamoe"

    def __init__(self, cfg: ModelConfig, dims: Mapping[str, int], task: str) -> None:
        super().__init__(cfg, dims, task)
        d = cfg.d_model
        clean_input = cfg.uncertainty_target == "clean_input"
        self.quality = nn.ModuleDict(
            {m: QualityHead(cfg, dim if clean_input else d, clean_input)
             for m, dim in self.dims.items()}
        )  # fmt: skip
        self.prior = (
            nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in self.dims})
            if cfg.prior_fallback
            else None
        )
        n = len(self.modalities)
        self.fuse = nn.Linear(n * d, d)
        n_quality = n if cfg.router_uses_quality else 0
        self.moe = MoE(cfg, n * d, n_quality, cfg.top_k)
        self.head = TwoBranchHead(cfg)
        # Created last so that the other modules' initial weights do not depend on the switch.
        self.fuse_quality = nn.Linear(n, d, bias=False) if cfg.fuse_uses_quality else None

    def forward(
        self,
        batch: Mapping[str, Tensor],
        clean: Mapping[str, Tensor] | None = None,
        *,
        shuffle_quality: bool = False,
        generator: torch.Generator | None = None,
        encodings: tuple[dict[str, Tensor], dict[str, Tensor | None]] | None = None,
    ) -> ModelOutput:
        """batch: the batch contract (keep masks ignored). clean: the same samples uncorrupted,
        for the uncertainty loss (training). shuffle_quality: permute r across the batch (the
        control of DESIGN §3.7; ``generator`` makes the permutation reproducible).
        encodings: ``encode_with_coverage``'s result for these samples, computed earlier; the
        encoders are then skipped and ``batch`` is read only for its label (evaluation reuses
        one encoding for the normal and the quality-shuffled pass)."""
        # {m: (B, d)}, {m: (B,) or None}
        h, coverage = encodings if encodings is not None else self.encode_with_coverage(batch)
        # Clean targets first, so the running stats that standardise them (and μ) include
        # this batch before either is used.
        target = None if clean is None else self.clean_targets(clean)
        mu: dict[str, Tensor] = {}
        log_var: dict[str, Tensor] = {}
        r: dict[str, Tensor] = {}
        mu_loss = mu  # the μ the uncertainty loss regresses (the fused μ unless detached)
        for m in self.modalities:
            mu[m], log_var[m], r[m] = self.head_of(m)(h[m], coverage[m])
        if not self.cfg.unc_encoder_grad and target is not None:
            # Same head on a detached encoding: its loss trains the head, never the encoder.
            # (log σ² only reaches the model through the detached r, so it is taken from here.)
            mu_loss = {}
            for m in self.modalities:
                mu_loss[m], log_var[m], _ = self.head_of(m)(
                    h[m].detach(), coverage[m], update=False
                )
        if not self.cfg.quality_gate:
            r = {m: torch.ones_like(v) for m, v in r.items()}
        if shuffle_quality:
            b = h[self.modalities[0]].shape[0]
            perm = torch.randperm(b, generator=generator, device="cpu").to(
                h[self.modalities[0]].device
            )
            r = {m: v[perm] for m, v in r.items()}  # one permutation: each r-vector stays whole
        z = []
        for m in self.modalities:
            prior = self.prior[m] if self.prior is not None else torch.zeros_like(mu[m][0])
            rm = r[m][:, None]
            z.append(rm * mu[m] + (1.0 - rm) * prior)  # (B, d)
        zc = torch.cat(z, dim=-1)  # (B, M·d)
        rq = torch.stack([r[m] for m in self.modalities], dim=-1)  # (B, M)
        x = self.fuse(zc)  # (B, d)
        if self.fuse_quality is not None:  # the fused vector also says how reliable each part is
            x = x + self.fuse_quality(rq)
        y, gates, balance = self.moe(x, zc, rq)
        pred, lv = self.head(y)
        loss_unc = None
        if target is not None:  # L_unc = Σ_m mean[(μ_m − sg(t_m))² / (2σ²_m) + ½ log σ²_m]
            loss_unc = sum(
                (self.head_of(m).loss(mu_loss[m], log_var[m], target[m]) for m in self.modalities),
                start=torch.zeros((), device=pred.device),
            )
        out = ModelOutput(
            prediction=pred,
            log_var=lv,
            quality=r,
            modality_log_var={m: log_var[m].exp().mean(-1).log() for m in self.modalities},
            routing=gates,
            loss_unc=loss_unc,
            loss_balance=balance,
        )
        return self.finish(out, batch)

    def head_of(self, modality: str) -> QualityHead:
        head = self.quality[modality]
        assert isinstance(head, QualityHead)
        return head

    @torch.no_grad()
    def clean_targets(self, clean: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{m: (B, out_dim)} raw targets of the uncertainty loss from the clean batch (no
        gradient; encoders without dropout); running stats updated when training."""
        if self.cfg.uncertainty_target == "clean_encoding":
            with eval_mode(self.encoders):
                target = self.encode(clean)
        else:
            target = {
                m: self.encoder(m).pooled_input(clean[m], clean[f"{m}_len"])
                for m in self.modalities
            }
        if self.training:
            for m in self.modalities:
                self.head_of(m).update_stats(target[m])
        return target


def build_model(name: str, cfg: ModelConfig, dims: Mapping[str, int], task: str) -> MultimodalModel:
    """The one constructor: name in qamoe | late-fusion | early-fusion | dense-moe.

    dims: {modality: D_m} of the feature file; task: regression | binary.
    """
    from qamoe_core import baselines

    models: dict[str, type[MultimodalModel]] = {
        "qamoe": QAMoE,
        "late-fusion": baselines.LateFusion,
        "early-fusion": baselines.EarlyFusion,
        "dense-moe": baselines.DenseMoE,
    }
    if name not in models:
        from qamoe_core.errors import InputError

        raise InputError(
            f"The 'model' parameter must be one of {', '.join(models)}. Got {name!r} instead."
        )
    if not dims:
        from qamoe_core.errors import InputError

        raise InputError("The model needs at least one modality (dims is empty).")
    return models[name](cfg, dims, task)
