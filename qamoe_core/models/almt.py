"""ALMT: Adaptive Language-guided Multimodal Transformer (Zhang et al., EMNLP 2023).

Each modality's sequence becomes K learnable summary tokens (:class:`TokenEncoder`). Language
leads: its tokens, at several depths, query audio and vision, and the answers build a
"hyper-modality" that keeps what language finds relevant (adaptive hyper-modality learning,
AHL); a fusion transformer then lets the language tokens attend to the hyper-modality, and
their mean feeds the head.

Defaults follow the authors' MOSI configuration as published with LNLN (which reuses ALMT's
modules; Haoyu-ha/LNLN configs/train_mosi.yaml): K = 8 tokens, token encoders of depth 2,
three AHL levels, a fusion transformer of depth 2, width 128 with 8 heads (our d_model /
n_heads come from ModelConfig: 128 / 4 by default).

Adapted: the paper fine-tunes BERT for the text; here the text is whatever the feature file
holds (token-level states or one sentence vector), standardised with the TRAIN statistics.
Sequences are compressed to ``cfg.segments`` steps first, as our other models do, so long
audio/vision sequences cost what short ones do. The head is our two-branch head (prediction
and its log-variance) and the task loss is our shared one (L1 + α·NLL, or BCE for binary),
where the paper uses L1 alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead
from qamoe_core.models.registry import register
from qamoe_core.models.tokens import LanguageGuided, token_encoders


@dataclass(frozen=True)
class ALMTOptions(ModelOptions):
    tokens: int = option(8, 1, 256)  # K summary tokens per modality (LNLN/ALMT MOSI config)
    token_depth: int = option(2, 1, 8)  # Transformer blocks of each token encoder (same)
    ahl_levels: int = option(3, 1, 8)  # language depths that query audio/vision (same)
    fusion_depth: int = option(2, 1, 8)  # cross-attention blocks of the fusion (same)


@register
class ALMT(MultimodalModel):
    """tokens per modality -> language-guided hyper-modality -> fusion -> two-branch head."""

    name = "almt"
    Options = ALMTOptions
    needs = ("text",)  # language guides everything; without it there is nothing to query with
    shared_encoders = False

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o: ALMTOptions = self.options
        self.tokenise = token_encoders(cfg, self.dims, o.tokens, o.token_depth)
        others = [m for m in self.modalities if m != "text"]
        self.guided = LanguageGuided(cfg, others, o.tokens, o.ahl_levels, o.fusion_depth)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = TwoBranchHead(cfg)

    def tokens(self, batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """{m: (B, K, d)} tokens and {m: (B,)} coverages of every modality."""
        out, coverage = {}, {}
        for m in self.modalities:
            out[m], coverage[m] = self.tokenise[m](batch[m], batch[f"{m}_len"], self.stats[m])
        return out, coverage

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        tok, _cov = self.tokens(batch)
        others = {m: tok[m] for m in self.modalities if m != "text"}
        fused = self.guided(tok["text"], others)  # (B, d)
        pred, lv = self.head(self.drop(fused))
        return self.finish(ModelOutput(pred, lv), batch)
