"""LNLN: Language-dominated Noise-resistant Learning Network (Zhang et al., NeurIPS 2024,
"Towards Robust Multimodal Sentiment Analysis with Incomplete Data").

LNLN keeps language dominant and repairs it before fusion:

1. Token encoders turn each modality into K tokens (as ALMT, :mod:`qamoe_core.models.tokens`).
2. Dominant-modality correction (DMC): a completeness check predicts w in (0, 1), how
   complete the language input is; a proxy generator builds language-like tokens from audio
   and vision; the corrected language is w·language + (1 − w)·proxy. An effectiveness
   discriminator tells corrected tokens from clean-language tokens; the proxy reaches it
   through a gradient-reversal layer, so the generator learns to make the proxy look like
   clean language (adversarial learning).
3. A reconstructor maps each modality's corrupted tokens back to its clean tokens.
4. Dominant-modality-based multimodal learning: ALMT's language-guided hyper-modality and
   fusion transformer (:class:`~qamoe_core.models.tokens.LanguageGuided`) on the corrected
   language.

Loss = σ·task + α·completeness MSE + β·discriminator cross-entropy + γ·reconstruction MSE with
α, β, γ, σ = 0.9, 0.8, 0.1, 1.0 and every size from the authors' MOSI configuration
(Haoyu-ha/LNLN configs/train_mosi.yaml, core/losses.py).

Adapted, and why:
- Completeness target: LNLN supervises w with 1 − the missing rate it drew for the text. The
  model never sees corruption labels here; it uses the share of valid text steps that are
  present (not all zero) in the input, which equals 1 − the realised missing rate on the
  missing and mixed axes. As in LNLN, noise does not enter it. With ``mask_zero_steps`` the
  dropped steps are left out of the text tokens, so the check also reads the text coverage
  (the share of steps present), as QA-MoE's quality head does; LNLN feeds the missing tokens
  in as inputs instead.
- The adversarial game: LNLN puts the gradient reversal on the proxy before the mixture, so
  the task loss, too, reaches the proxy generator reversed, and the discriminator's loss
  reaches w and the language tokens unreversed (pushing corrected tokens away from clean
  ones). Here the fusion reads the plain mixture and the discriminator judges a copy in
  which w and the language tokens are detached and only the proxy passes the reversal, so
  the proxy generator alone is trained to fool it. Measured while building this module
  (16 samples, 150 Adam steps, one thread): with the literal form the task loss ended at
  0.52 and w was 0.76 for complete text against 0.67 for text with 6 of 7 steps dropped;
  with this form -0.24, and w 0.995 against 0.30.
- Clean targets (the discriminator's "real" class and the reconstruction targets) are the
  clean batch's tokens computed without gradient; LNLN back-propagates into them too, which
  lets the encoder shrink the targets. Without a clean batch (evaluation) these losses are
  skipped, as in LNLN.
- Text comes from the feature file (the paper fine-tunes BERT); sequences are compressed to
  ``cfg.segments`` steps; the head is our two-branch head with the shared task loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead, eval_mode
from qamoe_core.models.layers import Block, present_steps, valid_mask
from qamoe_core.models.registry import register
from qamoe_core.models.tokens import LanguageGuided, token_encoders


@dataclass(frozen=True)
class LNLNOptions(ModelOptions):
    # Sizes: Haoyu-ha/LNLN configs/train_mosi.yaml.
    tokens: int = option(8, 1, 256)  # feature_extractor.token_length
    token_depth: int = option(2, 1, 8)  # feature_extractor.depth
    dmc_depth: int = option(2, 1, 8)  # proxy generator, completeness check, reconstructor depth
    ahl_levels: int = option(3, 1, 8)  # dmml.hyper_modality_learning.depth
    fusion_depth: int = option(2, 1, 8)  # dmml.fuison_transformer.depth
    discriminator_hidden: int = option(64, 1, 4096)  # effectiveness_discriminator.hidden_dim
    # Loss weights: configs/train_mosi.yaml base.alpha / beta / gamma (sigma = 1 on the task).
    completeness_weight: float = option(0.9, 0.0, 100.0)
    adversarial_weight: float = option(0.8, 0.0, 100.0)
    reconstruction_weight: float = option(0.1, 0.0, 100.0)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return -grad


class Stack(nn.Module):
    """Self-attention blocks over tokens (B, N, d) with ``prefix`` learned tokens in front;
    returns the first ``keep`` outputs (B, keep, d)."""

    def __init__(self, cfg: ModelConfig, depth: int, prefix: int, keep: int) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.randn(1, prefix, cfg.d_model) * 0.02) if prefix else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.keep = keep

    def forward(self, x: Tensor) -> Tensor:
        if self.prefix is not None:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], dim=1)
        mask = x.new_zeros(x.shape[0], 1, 1, x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return x[:, : self.keep]


def completeness(x: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, D), (B,) -> (B,) share of the valid steps that are present (not all zero)."""
    valid = valid_mask(lengths, x.shape[1])
    present = present_steps(x, valid) & valid
    return present.sum(1).to(x.dtype) / lengths.clamp(min=1).to(x.dtype)


@register
class LNLN(MultimodalModel):
    """tokens -> completeness-weighted language correction -> language-guided fusion -> head."""

    name = "lnln"
    Options = LNLNOptions
    needs = ("text",)  # language is the dominant modality by design
    shared_encoders = False

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o: LNLNOptions = self.options
        d, k = cfg.d_model, o.tokens
        self.tokenise = token_encoders(cfg, self.dims, o.tokens, o.token_depth)
        self.others = tuple(m for m in self.modalities if m != "text")
        self.check = Stack(cfg, o.dmc_depth, prefix=1, keep=1)
        # The check reads the summary token and the text coverage (see completeness_of).
        self.check_out = nn.Sequential(
            nn.Linear(d + 1, d // 2), nn.LeakyReLU(0.1), nn.Linear(d // 2, 1), nn.Sigmoid()
        )
        self.proxy = Stack(cfg, o.dmc_depth, prefix=k, keep=k)
        self.discriminator = nn.Sequential(
            nn.Linear(d, o.discriminator_hidden), nn.LeakyReLU(0.1),
            nn.Linear(o.discriminator_hidden, 2),
        )  # fmt: skip
        self.reconstruct = nn.ModuleDict(
            {m: Stack(cfg, o.dmc_depth, 0, k) for m in self.modalities}
        )
        self.guided = LanguageGuided(cfg, self.others, k, o.ahl_levels, o.fusion_depth)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = TwoBranchHead(cfg)

    def tokens(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """{m: (B, K, d)} tokens and the text coverage (B,) (ones without mask_zero_steps)."""
        tok, cov = {}, None
        for m in self.modalities:
            tok[m], c = self.tokenise[m](batch[m], batch[f"{m}_len"], self.stats[m])
            cov = c if m == "text" else cov
        assert cov is not None
        return tok, cov

    def completeness_of(self, text_tokens: Tensor, coverage: Tensor) -> Tensor:
        """(B, K, d), (B,) -> w (B, 1). With mask_zero_steps the dropped text steps are left
        out of the tokens, so the tokens alone cannot tell how much is missing; the coverage
        says it (as it does for QA-MoE's quality head)."""
        summary = self.check(text_tokens)[:, 0]  # (B, d)
        return self.check_out(torch.cat([summary, coverage[:, None]], dim=-1))

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        tok, coverage = self.tokens(batch)
        w = self.completeness_of(tok["text"], coverage)  # (B, 1) completeness of language
        proxy = (
            self.proxy(torch.cat([tok[m] for m in self.others], dim=1))
            if self.others
            else (
                self.proxy(tok["text"][:, :0])  # no other modality: the learned tokens alone
            )
        )
        corrected = w[:, :, None] * tok["text"] + (1 - w[:, :, None]) * proxy  # (B, K, d)
        fused = self.guided(corrected, {m: tok[m] for m in self.others})  # (B, d)
        pred, lv = self.head(self.drop(fused))
        out = self.finish(ModelOutput(pred, lv), batch)
        if out.loss is None:
            return out
        # What the discriminator judges: the same mixture, but only the proxy (through the
        # gradient reversal) and the discriminator itself play the adversarial game.
        w_, text_ = w.detach()[:, :, None], tok["text"].detach()
        judged = w_ * text_ + (1 - w_) * _GradReverse.apply(proxy)
        aux = self.auxiliary_loss(batch, clean, tok, w[:, 0], judged)
        return out._replace(loss=out.loss + aux)

    def auxiliary_loss(
        self,
        batch: Mapping[str, Tensor],
        clean: Mapping[str, Tensor] | None,
        tok: dict[str, Tensor],
        w: Tensor,
        corrected: Tensor,
    ) -> Tensor:
        """α·completeness + (with a clean batch) β·discriminator + γ·reconstruction."""
        o: LNLNOptions = self.options
        target = completeness(batch["text"], batch["text_len"]).detach()
        loss = o.completeness_weight * F.mse_loss(w, target)
        if clean is None:
            return loss
        with torch.no_grad(), eval_mode(self):
            real = self.tokens(clean)[0]  # {m: (B, K, d)} targets, no gradient
        fake_logits = self.discriminator(corrected.reshape(-1, corrected.shape[-1]))
        real_logits = self.discriminator(real["text"].reshape(-1, corrected.shape[-1]))
        logits = torch.cat([fake_logits, real_logits])
        labels = torch.cat([logits.new_zeros(len(fake_logits)), logits.new_ones(len(real_logits))])
        loss = loss + o.adversarial_weight * F.cross_entropy(logits, labels.long())
        rec = torch.stack(
            [F.mse_loss(self.reconstruct[m](tok[m]), real[m]) for m in self.modalities]
        ).mean()
        return loss + o.reconstruction_weight * rec
