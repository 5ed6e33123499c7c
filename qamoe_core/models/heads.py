"""Heads and losses: the two-branch prediction head, the task loss, QA-MoE's quality head.

Every built-in model ends in :class:`TwoBranchHead` (prediction and its log-variance) and is
trained with :func:`task_loss`, so the heteroscedastic output that evaluation reads exists for
every model, not only for QA-MoE.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig


def soft_clamp(x: Tensor, lo: float, hi: float) -> Tensor:
    """Map x smoothly into (lo, hi) with 0 -> the midpoint; gradients never vanish abruptly."""
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    return mid + half * torch.tanh((x - mid) / half)


class QualityHead(nn.Module):
    """The reliability of one modality: μ_m, log σ²_m (soft-clamped), r_m = 1/(1 + mean σ²_m).

    The uncertainty loss regresses a clean TARGET from the corrupted encoding h_m with a
    Gaussian likelihood, so σ²_m learns the expected residual: ~0 for clean inputs, larger
    the heavier the corruption, with no corruption label (docs/design.md §3.2-3.3).

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

    def __init__(self, cfg: ModelConfig, out_dim: int, decode: bool, coverage: bool = True) -> None:
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
        # coverage=False (QA-MoE's unc_uses_coverage) leaves it out: missingness must then be
        # learned from the encoding itself.
        self.uses_coverage = cfg.mask_zero_steps and coverage
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


def split_output(y: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """(B, 2) -> prediction (B,) and log s² (B,) soft-clamped into (lo, hi): the published
    models end in one linear output; ours has a second unit for the variance."""
    return y[:, 0], soft_clamp(y[:, 1], lo, hi)


class LinearHead(nn.Module):
    """x (B, n) -> prediction (B,), log s² (B,): the single output layer of TFN, LMF and MulT,
    with a second output for the variance every qamoe model reports."""

    def __init__(self, in_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.out = nn.Linear(in_dim, 2)
        self.lo, self.hi = cfg.min_log_var, cfg.max_log_var

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return split_output(self.out(x), self.lo, self.hi)


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
