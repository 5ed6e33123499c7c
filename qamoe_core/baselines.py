"""Compatibility: the fusion baselines now live in qamoe_core/models/fusion.py."""

from qamoe_core.models.fusion import DenseMoE, EarlyFusion, LateFusion

__all__ = ["DenseMoE", "EarlyFusion", "LateFusion"]
