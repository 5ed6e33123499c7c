"""The r-controls of evaluation (issue 32): QA-MoE run with its quality scores r SET, not
estimated, to read how much of its behaviour the estimate of r explains.

Both are asked for with ``EvalConfig.controls`` (``qamoe eval --control constant_r,oracle_r``)
and run only for a model that declares them (``MultimodalModel.controls``); each is a variant
of the results table, with its own rows at every point, beside ``normal`` and
``quality_shuffle``. The model takes the scores through ``forward(..., quality_override={m:
(B,)})`` and reuses the normal pass's encodings, so a control costs the fusion and experts
only.

``constant_r``: r_m fixed, for every sample and point, to the mean r_m of the model on the
  split as read from the file (clean, unless the file was corrupted by ``qamoe corrupt``).
  That mean comes from one extra pass over the split before the grid
  (:func:`mean_quality`). If the model does as well with it, r carries no per-sample
  information the model uses.
``oracle_r``: r_m from the sample's TRUE corruption at the point (:func:`oracle_quality`):
  r_m = (share of the sample's valid steps of m that survived) x (1 − noise level of m).
  The share counts the steps actually missing in that sample (all zero: the spectrum zeroes
  what it drops, and a frame an extractor left empty counts too; and outside its ``<m>_keep``
  mask where the batch has one), so a whole modality dropped gives 0 and the
  missing axis at level ℓ gives about 1 − ℓ; the noise level is the point's level on the
  noise and mixed axes for the corrupted modalities (0 elsewhere), and level 1 (noise as
  large as the features' own spread) counts as no information left. On the mixed axis both
  apply: about (1 − ℓ)². A sample with no valid step of m gets 0. This is an upper bound of
  what a quality estimate could tell the router, in the gate's own form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from qamoe_core.data.store import FeatureFile
from qamoe_core.evaluation.plan import Point
from qamoe_core.evaluation.results import R_VARIANTS
from qamoe_core.models.layers import present_steps, valid_mask

R_CONTROLS: tuple[str, ...] = R_VARIANTS  # each control is a variant of the table
CONSTANT_R, ORACLE_R = R_CONTROLS


def as_batch(raw: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    """A block read from the file (FeatureFile.read) as tensors on ``device`` (numbers only)."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
        for k, v in raw.items()
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
    }


@torch.inference_mode()
def mean_quality(
    model: Any, f: FeatureFile, split: str, block: int, batch_size: int, device: torch.device
) -> dict[str, float]:
    """{m: mean r_m} of ``model`` over ``split`` as the file holds it (the constant_r value):
    one pass, ``block`` rows read at a time, ``batch_size`` per forward."""
    n = f.n(split)
    sums: dict[str, float] = {}
    for start in range(0, n, block):
        batch = as_batch(f.read(split, slice(start, min(n, start + block))), device)
        rows = batch["label"].shape[0]
        for s in range(0, rows, batch_size):
            mb = {k: v[s : s + batch_size] for k, v in batch.items() if k != "label"}
            out = model(mb)
            for m, r in (out.quality or {}).items():
                sums[m] = sums.get(m, 0.0) + float(r.double().sum())
    return {m: v / max(n, 1) for m, v in sums.items()}


def oracle_quality(mb: Mapping[str, Tensor], point: Point, modalities: Sequence[str]) -> dict:
    """{m: (B,) r_m} from the true corruption of each sample of ``mb`` at ``point`` (module
    docstring): the kept share of its valid steps times (1 − the noise level)."""
    noisy = point.axis in ("noise", "mixed")
    out: dict[str, Tensor] = {}
    for m in modalities:
        x, lengths = mb[m], mb[f"{m}_len"]
        valid = valid_mask(lengths, x.shape[1])  # (B, T)
        kept = valid & present_steps(x, valid)  # a dropped step is all zero
        keep = mb.get(f"{m}_keep")
        if keep is not None:  # and the corruption's own record, where the batch has one
            kept &= keep.bool()
        share = kept.sum(1).to(torch.float32) / lengths.clamp(min=1).to(torch.float32)  # (B,)
        level = point.level if noisy and m in point.modalities else 0.0
        out[m] = share * (1.0 - min(max(level, 0.0), 1.0))
    return out


def constant_quality(means: Mapping[str, float], b: int, device: torch.device) -> dict:
    """{m: (B,)} filled with each modality's mean r (the constant_r scores of a batch)."""
    return {m: torch.full((b,), v, dtype=torch.float32, device=device) for m, v in means.items()}
