"""Which ``ModelConfig`` fields a model reads: found by building it and running it once.

TFN, LMF and MulT take their sizes and dropouts from their own options, not from
``d_model`` or ``dropout``; a search space that tuned those for them would spend trials on
settings that change nothing. Rather than a table that goes stale (and knows nothing of
plug-ins), :func:`used_fields` builds the model on a config that records every field read,
runs one training-mode forward (with the clean batch, so loss terms that need it are built),
a backward and one evaluation-mode forward on a small random batch, and returns the fields
read. The text-encoder fields are read only with ``text_encoder = "pretrained"``, which
would load the encoder: the probe runs with stored features and adds them when the base
config (or the space) asks for the pretrained encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qamoe_core.config import ModelConfig

_FIELDS = frozenset(ModelConfig.field_names())
TEXT_FIELDS = frozenset(
    {"text_encoder", "text_model", "fine_tune_layers", "text_lr", "text_pooling"}
)


class _Recording(ModelConfig):
    """A ModelConfig that notes each field read once ``_seen`` is set."""

    def __getattribute__(self, name: str) -> Any:
        if name in _FIELDS:
            try:
                seen = object.__getattribute__(self, "_seen")
            except AttributeError:
                seen = None
            if seen is not None:
                seen.add(name)
        return object.__getattribute__(self, name)


def _batch(dims: Mapping[str, int], rows: int = 3, steps: int = 4) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {m: torch.randn(rows, steps, d, generator=gen) for m, d in dims.items()}
    for m in dims:
        batch[f"{m}_len"] = torch.full((rows,), steps, dtype=torch.long)
    batch["label"] = torch.randn(rows, generator=gen)
    batch["index"] = torch.arange(rows)
    return batch


def used_fields(
    model: str, cfg: ModelConfig, dims: Mapping[str, int], task: str, pretrained: bool = False
) -> frozenset[str]:
    """The ModelConfig fields ``model`` reads when built from ``cfg`` and run on data with
    these modality ``dims``; with ``pretrained``, the text-encoder fields too."""
    import torch

    from qamoe_core.models import build_model

    values = {f: getattr(cfg, f) for f in _FIELDS}
    values["text_encoder"] = "features"
    rec = _Recording(**values)
    seen: set[str] = set()
    object.__setattr__(rec, "_seen", seen)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        net = build_model(model, rec, dims, task)
        batch = _batch(dims)
        net.train()
        out = net(batch, clean=batch)
        if out.loss is not None and out.loss.requires_grad:
            out.loss.backward()
        net.eval()
        with torch.no_grad():
            net(batch)
    finally:
        torch.random.set_rng_state(state)
    return frozenset(seen | (TEXT_FIELDS if pretrained else set()))
