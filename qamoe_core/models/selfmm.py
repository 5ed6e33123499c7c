"""Self-MM: self-supervised multi-task learning with unimodal labels (Yu et al., AAAI 2021).

Besides the multimodal prediction, each modality has its own head trained on a unimodal
label that nobody annotated: the label generation module (ULGM) derives it from the
multimodal label and from where the sample sits between the positive and negative class
centres of that modality's representation space.

For a representation F of sample i, with the positive and negative centres C^p, C^n of its
space (means over the training samples whose current label is > 0 or < 0), α = (‖F − C^n‖ −
‖F − C^p‖) / (‖F − C^p‖ + ε) says how positive the sample looks there. With α_f for the
fused representation and α_s for modality s, the unimodal label is the mean of the ratio
rule y_s = y·α_s/α_f and the difference rule y_s = y + α_s − α_f:

    y_s = y + (α_s − α_f)·(y + α_f) / (2·α_f),

clipped to ±H, and smoothed over its updates by the paper's momentum, the k-th update
weighing 2/(k+1): y_s ← (k−1)/(k+1)·y_s + 2/(k+1)·new. Each unimodal loss is the L1 loss
weighted by tanh(|y_s − y|) (normalised over the batch), so samples whose modality disagrees
with the multimodal label count more. Sizes and H from MMSA's MOSI configuration
(thuiar/MMSA config_regression.json "self_mm": post_fusion_dim 128, post_text_dim 32,
post_audio_dim 16, post_video_dim 32, H 3.0).

Adapted:
- The representations come from our shared per-modality encoders (the paper: BERT, LSTMs).
- The memory of representations and labels lives in the model as non-persistent buffers
  indexed by the batch's ``index`` (row of the training split) and grows as rows are seen;
  it is filled and used only in training mode with a labelled batch, so checkpoints do not
  carry it and evaluation never changes it. A resumed run starts a fresh memory (unimodal
  labels start again from the multimodal ones). Under DDP each process keeps its own.
- Binary tasks: ULGM works on the label mapped to ±1 (2y − 1) and the unimodal heads regress
  it; the multimodal head keeps the binary task loss. (Self-MM is defined for regression.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from qamoe_core.config import ModelConfig
from qamoe_core.models.base import ModelOptions, ModelOutput, MultimodalModel, option
from qamoe_core.models.heads import TwoBranchHead
from qamoe_core.models.registry import register

EPS = 1e-8


@dataclass(frozen=True)
class SelfMMOptions(ModelOptions):
    # MMSA config_regression.json, "self_mm" / "mosi".
    post_fusion_dim: int = option(128, 1, 4096)
    post_text_dim: int = option(32, 1, 4096)
    post_audio_dim: int = option(16, 1, 4096)
    post_vision_dim: int = option(32, 1, 4096)
    label_bound: float = option(3.0, 0.0, 1e6)  # "H": unimodal labels are clipped to ±H
    unimodal_weight: float = option(1.0, 0.0, 100.0)  # the paper adds the unimodal losses as is


class LabelMemory(nn.Module):
    """Per training row: the last representation of each space and the current labels."""

    updates: Tensor  # (N,) how often each row's unimodal labels were updated
    seen: Tensor  # (N,) bool, rows written at least once

    def __init__(self, spaces: Mapping[str, int]) -> None:
        super().__init__()
        self.spaces = dict(spaces)
        for name, dim in self.spaces.items():
            self.register_buffer(f"feat_{name}", torch.zeros(0, dim), persistent=False)
            self.register_buffer(f"label_{name}", torch.zeros(0), persistent=False)
        self.register_buffer("updates", torch.zeros(0), persistent=False)
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool), persistent=False)

    def _grow(self, n: int) -> None:
        have = self.seen.shape[0]
        if n <= have:
            return
        for name in list(self._buffers):
            buf = self._buffers[name]
            assert buf is not None
            pad = buf.new_zeros((n - have, *tuple(buf.shape[1:])))
            self._buffers[name] = torch.cat([buf, pad])

    def feat(self, name: str) -> Tensor:
        return cast(Tensor, getattr(self, f"feat_{name}"))

    def label(self, name: str) -> Tensor:
        return cast(Tensor, getattr(self, f"label_{name}"))

    def write(self, index: Tensor, feats: Mapping[str, Tensor], y: Tensor) -> None:
        """Store representations; rows seen for the first time get y as every label."""
        self._grow(int(index.max()) + 1)
        new = index[~self.seen[index]]
        for name in self.spaces:
            self.feat(name)[index] = feats[name].detach()
            self.label(name)[new] = y[~self.seen[index]]
        self.seen[index] = True


def positivity(f: Tensor, feats: Tensor, labels: Tensor, seen: Tensor) -> Tensor | None:
    """α (B,) of representations f (B, d) against the centres of the seen rows' space;
    None while one class has no row yet."""
    pos, neg = seen & (labels > 0), seen & (labels < 0)
    if not bool(pos.any()) or not bool(neg.any()):
        return None
    w_p, w_n = labels[pos].abs(), labels[neg].abs()  # Self-MM weighs each row by |label|
    c_p = (w_p[:, None] * feats[pos]).sum(0) / w_p.sum().clamp(min=EPS)
    c_n = (w_n[:, None] * feats[neg]).sum(0) / w_n.sum().clamp(min=EPS)
    d_p = torch.linalg.vector_norm(f - c_p, dim=1)
    d_n = torch.linalg.vector_norm(f - c_n, dim=1)
    return (d_n - d_p) / (d_p + EPS)


@register
class SelfMM(MultimodalModel):
    """Shared encoders -> fused and unimodal representations -> one head each; ULGM labels."""

    name = "self-mm"
    Options = SelfMMOptions

    def __init__(
        self,
        cfg: ModelConfig,
        dims: Mapping[str, int],
        task: str,
        options: ModelOptions | None = None,
    ) -> None:
        super().__init__(cfg, dims, task, options)
        o: SelfMMOptions = self.options
        d, n = cfg.d_model, len(self.dims)
        post = {"text": o.post_text_dim, "audio": o.post_audio_dim, "vision": o.post_vision_dim}
        self.post = {m: post[m] for m in self.modalities}
        self.fusion = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(n * d, o.post_fusion_dim), nn.ReLU()
        )
        self.head = TwoBranchHead(cfg, o.post_fusion_dim)
        self.uni = nn.ModuleDict(
            {m: nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, k), nn.ReLU())
             for m, k in self.post.items()}
        )  # fmt: skip
        self.uni_out = nn.ModuleDict({m: nn.Linear(k, 1) for m, k in self.post.items()})
        self.memory = LabelMemory({"fusion": o.post_fusion_dim, **self.post})

    def forward(
        self, batch: Mapping[str, Tensor], clean: Mapping[str, Tensor] | None = None, **_: object
    ) -> ModelOutput:
        h = self.encode(batch)  # {m: (B, d)}
        feats = {"fusion": self.fusion(self.concat(h))}
        feats.update({m: self.uni[m](h[m]) for m in self.modalities})
        pred, lv = self.head(feats["fusion"])
        out = self.finish(ModelOutput(pred, lv), batch)
        if out.loss is None or not self.training or "index" not in batch:
            return out
        uni_pred = {m: self.uni_out[m](feats[m]).squeeze(-1) for m in self.modalities}
        aux = self.unimodal_loss(batch, feats, uni_pred)
        return out._replace(loss=out.loss + self.options.unimodal_weight * aux)

    def scores(self, label: Tensor) -> Tensor:
        """Labels in the space ULGM works in: the score itself, or ±1 for binary tasks."""
        return label if self.task == "regression" else 2 * label - 1

    def unimodal_loss(
        self, batch: Mapping[str, Tensor], feats: dict[str, Tensor], uni_pred: dict[str, Tensor]
    ) -> Tensor:
        index = batch["index"].long()
        y = self.scores(batch["label"].to(feats["fusion"].dtype))
        mem = self.memory
        mem.write(index, feats, y)
        self.update_labels(index, feats, y)
        losses = []
        for m in self.modalities:
            y_s = mem.label(m)[index]
            w = torch.tanh((y_s - y).abs())
            losses.append((w * (uni_pred[m] - y_s).abs()).sum() / w.sum().clamp(min=EPS))
        return torch.stack(losses).sum()

    @torch.no_grad()
    def update_labels(self, index: Tensor, feats: dict[str, Tensor], y: Tensor) -> None:
        mem, bound = self.memory, self.options.label_bound
        a_f = positivity(feats["fusion"], mem.feat("fusion"), mem.label("fusion"), mem.seen)
        if a_f is None:
            return
        a_f = torch.where(a_f.abs() < EPS, torch.full_like(a_f, EPS), a_f)
        mem.updates[index] += 1
        k = mem.updates[index]
        for m in self.modalities:
            a_s = positivity(feats[m], mem.feat(m), mem.label(m), mem.seen)
            if a_s is None:
                continue
            new = (y + (a_s - a_f) * (y + a_f) / (2 * a_f)).clamp(-bound, bound)
            old = mem.label(m)[index]
            mem.label(m)[index] = (k - 1) / (k + 1) * old + 2 / (k + 1) * new
