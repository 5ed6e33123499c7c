"""QA-MoE's mechanism switches (issue 32): the scale of r and the dropout of the task path.

Legend: B batch, T time steps, D input features of a modality, M modalities.

:class:`QualityScale` turns the quality head's mean σ² into r = 1 / (1 + σ̄²/τ_m):

- ``unit``: τ = 1, the formula of docs/design.md §3.2 (no module is built at all, so a
  default model's weights and draws are those of earlier versions);
- ``clean``: τ_m = the mean σ̄²_m of CLEAN training inputs, a buffer. Each training step the
  quality head is run (no gradient, running stats untouched) on the clean copy's encodings,
  and the batch mean of σ̄²_m is folded into τ_m by an exponential moving average with
  momentum 0.1, as the heads' target statistics are. τ starts at 1 (an untrained model is the
  ``unit`` one) and the checkpoint carries it. A clean input then sits near r = 1/2 and an
  input whose σ̄² is k times the clean level at r = 1/(1 + k): a modality that is gone (σ̄² ≈ 1
  when clean inputs reach 0.05) falls below 0.05;
- ``learned``: τ_m = exp(θ_m), θ_m a parameter per modality starting at 0 (τ = 1), trained by
  the task loss (σ̄² itself stays detached: only the scale bends to what helps the fit).

:func:`task_dropout` is the input and modality dropout of the task path: the clean batch the
uncertainty loss regresses is never passed through it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

R_SCALES: tuple[str, ...] = ("unit", "clean", "learned")


class QualityScale(nn.Module):
    """r_m = 1 / (1 + σ̄²_m / τ_m) for the modalities ``modalities`` (``mode`` clean/learned)."""

    tau: Tensor

    def __init__(self, modalities: tuple[str, ...], mode: str) -> None:
        super().__init__()
        if mode not in ("clean", "learned"):
            raise ValueError(f"mode must be clean or learned, got {mode!r}")
        self.modalities, self.mode = modalities, mode
        self.momentum = 0.1  # as QualityHead's running statistics
        n = len(modalities)
        self.log_tau: nn.Parameter | None = None
        if mode == "clean":
            self.register_buffer("tau", torch.ones(n))  # the clean level, saved with the weights
        else:
            self.log_tau = nn.Parameter(torch.zeros(n))

    def scale(self, modality: str) -> Tensor:
        """τ of one modality, a 0-d tensor (positive)."""
        i = self.modalities.index(modality)
        return self.log_tau[i].exp() if self.log_tau is not None else self.tau[i]

    def forward(self, modality: str, log_var: Tensor) -> Tensor:
        """log σ² (B, out_dim) -> r (B,) in (0, 1); σ̄² carries no gradient (as in the head)."""
        s = log_var.detach().exp().mean(-1)  # (B,)
        return 1.0 / (1.0 + s / self.scale(modality))

    @torch.no_grad()
    def observe_clean(self, modality: str, clean_log_var: Tensor) -> None:
        """Fold the clean batch's mean σ̄² (mode clean, training) into τ of ``modality``."""
        if self.mode != "clean" or clean_log_var.shape[0] < 1:
            return
        i = self.modalities.index(modality)
        level = clean_log_var.exp().mean()
        self.tau[i] = torch.lerp(self.tau[i], level.to(self.tau.dtype), self.momentum)


def task_dropout(
    batch: Mapping[str, Tensor], modalities: tuple[str, ...], p_input: float, p_modality: float
) -> dict[str, Tensor]:
    """The batch with dropout on its inputs (training, task path only; torch's global RNG,
    which the trainer seeds per epoch).

    ``p_input``: each input value zeroed with probability p, the rest scaled by 1/(1 − p)
    (nn.Dropout on the features). ``p_modality``: each (sample, modality) zeroed whole with
    probability p, as a missing microphone would be; a sample that would lose every modality
    keeps them all, so no sample is left with nothing. Padding stays zero, lengths stay.
    Draw order (fixed, for reproducibility): the modality mask (B, M) first, then the input
    masks modality by modality."""
    out = dict(batch)
    b = batch[f"{modalities[0]}_len"].shape[0]
    dev = batch[modalities[0]].device
    if p_modality > 0:
        gone = torch.rand(b, len(modalities), device=dev) < p_modality  # (B, M)
        gone &= ~gone.all(1, keepdim=True)  # never every modality of a sample
        for j, m in enumerate(modalities):
            x = out[m]
            out[m] = torch.where(gone[:, j, None, None], x.new_zeros(()), x)
    if p_input > 0:
        for m in modalities:
            out[m] = nn.functional.dropout(out[m], p_input, training=True)
    return out
