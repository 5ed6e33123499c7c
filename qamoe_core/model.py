"""Compatibility: the names this module used to define, now in qamoe_core/models/."""

from qamoe_core.models.base import ModelOutput, MultimodalModel
from qamoe_core.models.heads import (
    QualityHead,
    TwoBranchHead,
    eval_mode,
    gaussian_nll,
    soft_clamp,
    task_loss,
)
from qamoe_core.models.layers import (
    Block,
    Encoder,
    SelfAttention,
    present_steps,
    segment_bounds,
    segment_pool,
    sinusoid,
    valid_mask,
)
from qamoe_core.models.moe import MoE, Router, SwiGLUExperts
from qamoe_core.models.qamoe import QAMoE
from qamoe_core.models.registry import build_model

__all__ = [
    "Block", "Encoder", "MoE", "ModelOutput", "MultimodalModel", "QAMoE", "QualityHead",
    "Router", "SelfAttention", "SwiGLUExperts", "TwoBranchHead", "build_model", "eval_mode",
    "gaussian_nll", "present_steps", "segment_bounds", "segment_pool", "sinusoid", "soft_clamp",
    "task_loss", "valid_mask",
]  # fmt: skip
