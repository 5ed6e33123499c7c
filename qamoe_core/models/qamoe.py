"""QA-MoE (docs/design.md §3): quality-aware mixture of experts over per-modality encoders.

Bottom-up: the shared :class:`~qamoe_core.models.layers.Encoder` (one per modality) ->
:class:`~qamoe_core.models.heads.QualityHead` (μ_m, σ²_m, r_m) -> prior fallback
z_m = r_m·μ_m + (1 − r_m)·p_m -> fusion W_f·[z_T; z_A; z_V] (+ W_r·[r_T, r_A, r_V],
``fuse_uses_quality``) -> :class:`~qamoe_core.models.moe.MoE` (router + SwiGLU experts, with a
residual) -> :class:`~qamoe_core.models.heads.TwoBranchHead` (ŷ, log s²).

Keep masks: a corrupted batch carries ``<m>_keep`` (B, T), True where a step survived. The
model does NOT read them. The paper's point is that reliability is learned from the content
without corruption labels (docs/design.md §3); feeding keep masks would hand the model the very
corruption it must learn to notice, and real degraded inputs (a muted microphone, a covered
camera) come without masks. Dropped steps are zeroed by the corruption engine and stay in the
sequence; only padding (from ``<m>_len``) is masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import QualityHead, TwoBranchHead, eval_mode
from qamoe_core.models.moe import MoE
from qamoe_core.models.quality_mech import R_SCALES, QualityScale, task_dropout
from qamoe_core.models.registry import register

UNCERTAINTY_TARGETS: tuple[str, ...] = ("clean_encoding", "clean_input")


class _Quality(NamedTuple):
    """The quality heads' outputs, one entry per modality."""

    mu: dict[str, Tensor]  # the μ that is fused
    mu_loss: dict[str, Tensor]  # the μ the uncertainty loss regresses (``mu`` unless detached)
    log_var: dict[str, Tensor]
    r: dict[str, Tensor]


@register
class QAMoE(MultimodalModel):
    """The full method. Widths, encoders and experts come from the shared ModelConfig; its own
    switches (the ablations of docs/design.md §3.7) and loss weights are its Options."""

    @dataclass(frozen=True)
    class Options(ModelOptions):
        """QA-MoE's switches, set as ``"model": {"options": {...}}``; the defaults are the
        full method. [paper]: the paper's, [ours]: our choice."""

        # Scale each modality by its quality r_m. Off: r ≡ 1 (the paper's "w/o quality gate").
        quality_gate: bool = option(True)
        # Fill the missing share (1 - r_m) from a learnable prior vector. Off: from zeros.
        prior_fallback: bool = option(True)
        # Give the router the quality scores as well as the content. Off: content only.
        router_uses_quality: bool = option(True)
        # [ours] Add a linear map of [r_T, r_A, r_V] to the fused vector too, so the experts
        # and head know how far each part was shrunk towards its prior (without it the gate
        # scales each modality by an r the layers after it never see). Chosen on synthetic
        # validation MAE (docs/results/defaults.md).
        fuse_uses_quality: bool = option(True)
        # [ours] What the self-supervised uncertainty regresses: the stop-gradient encoding of
        # the clean input (docs/design.md §3.3), or the pooled clean input features through a
        # decoder (cannot collapse). clean_encoding gives r that tracks corruption in every
        # modality (docs/results/defaults.md).
        uncertainty_target: str = option("clean_encoding", choices=UNCERTAINTY_TARGETS)
        # [ours] Let the uncertainty loss train the encoders too (True), or only the quality
        # head (False: the head reads a detached encoding for that loss, so the task alone
        # shapes the encoders). True is docs/design.md §3.3's loss as written
        # (docs/results/defaults.md).
        unc_encoder_grad: bool = option(True)
        # [ours] Give the σ² head the coverage (share of present steps, with mask_zero_steps)
        # as an input. Off: the head must learn missingness from the encoding (issue 32: with
        # it, missingness-awareness is handed over, not learned).
        unc_uses_coverage: bool = option(True)
        # [ours] The scale τ of r = 1/(1 + σ̄²/τ): unit (τ = 1, docs/design.md §3.2), clean (τ
        # per modality = the running mean σ̄² of clean training inputs, a buffer) or learned (a
        # positive scalar per modality). Unit: a missing modality sits near σ̄² ≈ 1, r ≈ 0.5,
        # so the prior never takes more than about half (models/quality_mech.py).
        r_scale: str = option("unit", choices=R_SCALES)
        # [ours] Dropout on the task path's inputs (training only; never on the clean batch the
        # uncertainty loss regresses): each input value with this probability (input_dropout),
        # each whole modality of a sample (modality_dropout, never all of a sample's). 0: off,
        # as in earlier versions; the encoders' own dropout is model.encoder_dropout (the
        # clean target is encoded without it).
        input_dropout: float = option(0.0, 0.0, 0.9)
        modality_dropout: float = option(0.0, 0.0, 0.9)
        # λ_unc: weight of the uncertainty loss next to the task loss (L1 of ~1 at the start).
        unc_weight: float = option(0.1, 0.0, 1e6)
        # λ_bal: Switch Transformer's load-balancing weight, 0.01 as in Fedus et al. (2022).
        balance_weight: float = option(0.01, 0.0, 1e6)

    name = "qamoe"
    # Its auxiliary losses, each weighed by an option (MultimodalModel.finish adds them).
    loss_weights: ClassVar[Mapping[str, str]] = {
        "loss_unc": "unc_weight",
        "loss_balance": "balance_weight",
    }
    # forward's shuffle_quality and generator (quality_shuffle) and quality_override (r given:
    # constant_r, oracle_r)
    controls = ("quality_shuffle", "constant_r", "oracle_r")
    reuses_encodings = True  # forward's encodings
    diagnoses_quality = True  # clean_targets and quality_residuals

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o, d = self.options, cfg.d_model
        clean_input = o.uncertainty_target == "clean_input"
        self.quality = nn.ModuleDict(
            {m: QualityHead(cfg, dim if clean_input else d, clean_input, o.unc_uses_coverage)
             for m, dim in self.dims.items()}
        )  # fmt: skip
        self.prior = (
            nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in self.dims})
            if o.prior_fallback
            else None
        )
        n = len(self.modalities)
        self.fuse = nn.Linear(n * d, d)
        n_quality = n if o.router_uses_quality else 0
        self.moe = MoE(cfg, n * d, n_quality, cfg.top_k)
        self.head = TwoBranchHead(cfg)
        # Created last so that the other modules' initial weights do not depend on the switch.
        self.fuse_quality = nn.Linear(n, d, bias=False) if o.fuse_uses_quality else None
        # After it, for the same reason (and it draws no random number).
        self.quality_scale = (
            None if o.r_scale == "unit" else QualityScale(self.modalities, o.r_scale)
        )

    def forward(
        self,
        batch: Mapping[str, Tensor],
        clean: Mapping[str, Tensor] | None = None,
        *,
        shuffle_quality: bool = False,
        generator: torch.Generator | None = None,
        encodings: tuple[dict[str, Tensor], dict[str, Tensor | None]] | None = None,
        quality_override: Mapping[str, Tensor] | None = None,
    ) -> ModelOutput:
        """batch: the batch contract (keep masks ignored). clean: the same samples uncorrupted,
        for the uncertainty loss (training). shuffle_quality: permute r across the batch (the
        control of docs/design.md §3.7; ``generator`` makes the permutation reproducible).
        encodings: ``encode_with_coverage``'s result for these samples, computed earlier; the
        encoders are then skipped and ``batch`` is read only for its label (evaluation reuses
        one encoding for the normal and the quality-shuffled pass). quality_override: {m: (B,)}
        r used instead of the estimated one, gate or not (the constant_r and oracle_r controls
        of evaluation); the estimated r is still what the uncertainty loss sees."""
        o = self.options
        if self.training and encodings is None and (o.input_dropout or o.modality_dropout):
            batch = {**batch, **task_dropout(batch, self.modalities, o.input_dropout,
                                             o.modality_dropout)}  # fmt: skip
        # {m: (B, d)}, {m: (B,) or None}
        h, coverage = encodings if encodings is not None else self.encode_with_coverage(batch)
        # Clean targets first, so the running stats that standardise them (and μ) include
        # this batch before either is used.
        target = None if clean is None else self.clean_targets(clean)
        q = self._quality_estimates(h, coverage, detached_loss=target is not None)
        r = q.r
        if not o.quality_gate:
            r = {m: torch.ones_like(v) for m, v in r.items()}
        if quality_override is not None:
            r = {m: quality_override[m].to(r[m].dtype).expand_as(r[m]) for m in r}
        if shuffle_quality:
            r = self._shuffled(r, h[self.modalities[0]], generator)
        zc = self._with_prior_fallback(q.mu, r)  # (B, M·d)
        rq = torch.stack([r[m] for m in self.modalities], dim=-1)  # (B, M)
        x = self.fuse(zc)  # (B, d)
        if self.fuse_quality is not None:  # the fused vector also says how reliable each part is
            x = x + self.fuse_quality(rq)
        y, gates, balance = self.moe(x, zc, rq)
        pred, lv = self.head(y)
        loss_unc = None
        if target is not None:
            loss_unc = self._uncertainty_loss(q, target, pred.device)
        out = ModelOutput(
            prediction=pred,
            log_var=lv,
            quality=r,
            modality_log_var={m: q.log_var[m].exp().mean(-1).log() for m in self.modalities},
            routing=gates,
            loss_unc=loss_unc,
            loss_balance=balance,
        )
        return self.finish(out, batch)

    def _quality_estimates(
        self, h: Mapping[str, Tensor], coverage: Mapping[str, Tensor | None], *, detached_loss: bool
    ) -> _Quality:
        """Each modality's quality head on its encoding: μ, log σ² and r.

        ``detached_loss`` (a clean target exists): unless ``unc_encoder_grad``, the uncertainty
        loss reads μ and log σ² from the same head run on a detached encoding, so that loss
        trains the head, never the encoder (log σ² only reaches the model through the detached
        r, so it is taken from there too)."""
        mu: dict[str, Tensor] = {}
        log_var: dict[str, Tensor] = {}
        r: dict[str, Tensor] = {}
        mu_loss = mu  # the fused μ, unless the detached pass below replaces it
        for m in self.modalities:
            mu[m], log_var[m], r[m] = self.head_of(m)(h[m], coverage[m])
            if self.quality_scale is not None:
                r[m] = self.quality_scale(m, log_var[m])
        if not self.options.unc_encoder_grad and detached_loss:
            mu_loss = {}
            for m in self.modalities:
                mu_loss[m], log_var[m], _ = self.head_of(m)(
                    h[m].detach(), coverage[m], update=False
                )
        return _Quality(mu, mu_loss, log_var, r)

    @staticmethod
    def _shuffled(
        r: Mapping[str, Tensor], h0: Tensor, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        """r permuted across the batch (``h0``: any modality's encoding, for size and device)."""
        perm = torch.randperm(h0.shape[0], generator=generator, device="cpu").to(h0.device)
        return {m: v[perm] for m, v in r.items()}  # one permutation: each r-vector stays whole

    def _with_prior_fallback(self, mu: Mapping[str, Tensor], r: Mapping[str, Tensor]) -> Tensor:
        """z_m = r_m·μ_m + (1 − r_m)·p_m for every modality, concatenated: (B, M·d)."""
        z = []
        for m in self.modalities:
            prior = self.prior[m] if self.prior is not None else torch.zeros_like(mu[m][0])
            rm = r[m][:, None]
            z.append(rm * mu[m] + (1.0 - rm) * prior)  # (B, d)
        return torch.cat(z, dim=-1)

    def _uncertainty_loss(
        self, q: _Quality, target: Mapping[str, Tensor], device: torch.device
    ) -> Tensor:
        """L_unc = Σ_m mean[(μ_m − sg(t_m))² / (2σ²_m) + ½ log σ²_m]."""
        return sum(
            (self.head_of(m).loss(q.mu_loss[m], q.log_var[m], target[m]) for m in self.modalities),
            start=torch.zeros((), device=device),
        )

    def head_of(self, modality: str) -> QualityHead:
        head = self.quality[modality]
        assert isinstance(head, QualityHead)
        return head

    @torch.no_grad()
    def quality_residuals(
        self,
        encodings: tuple[dict[str, Tensor], dict[str, Tensor | None]],
        target: Mapping[str, Tensor],
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """{m: (residual (B,), σ̄² (B,))}: the squared error the uncertainty loss sees, mean
        over dims of (μ_m − standardised clean target)² (through the decoder for clean_input),
        and the σ² the head predicts for it, also the mean over dims (issue 32's diagnostic:
        if σ² tracks the residual, r can track the corruption). ``encodings`` of the
        (corrupted) inputs, ``target`` from :meth:`clean_targets` of the same samples clean."""
        h, coverage = encodings
        out = {}
        for m in self.modalities:
            head = self.head_of(m)
            mu, log_var, _ = head(h[m], coverage[m], update=False)
            recon = mu if head.decoder is None else head.decoder(mu)
            residual = (recon - head.standardise(target[m])).square().mean(-1)
            out[m] = (residual, log_var.exp().mean(-1))
        return out

    @torch.no_grad()
    def clean_targets(self, clean: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{m: (B, out_dim)} raw targets of the uncertainty loss from the clean batch (no
        gradient; encoders without dropout); running stats updated when training (and, with
        r_scale clean, τ: models/quality_mech.py)."""
        clean = self.text_inputs(clean)  # a fine-tuned text encoder's states of the clean text
        observe = (
            self.training
            and self.quality_scale is not None
            and (self.quality_scale.mode == "clean")
        )
        h: dict[str, Tensor] = {}
        coverage: dict[str, Tensor | None] = {}
        if self.options.uncertainty_target == "clean_encoding" or observe:
            with eval_mode(self.encoders):
                h, coverage = self.encode_with_coverage(clean)
        if self.options.uncertainty_target == "clean_encoding":
            target = h
        else:
            target = {
                m: self.encoder(m).pooled_input(clean[m], clean[f"{m}_len"])
                for m in self.modalities
            }
        if self.training:
            for m in self.modalities:
                self.head_of(m).update_stats(target[m])
        if observe:
            assert self.quality_scale is not None
            for m in self.modalities:  # the heads on the clean encodings, running mean kept
                _, log_var, _ = self.head_of(m)(h[m], coverage[m], update=False)
                self.quality_scale.observe_clean(m, log_var)
        return target
