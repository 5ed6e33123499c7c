"""One optimisation step of training: the schedule, the optimizer, the on-the-fly corruption
of each batch and the weights' moving average (the loop that calls it is ``train``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from qamoe_core.config import TrainConfig
from qamoe_core.models import MultimodalModel, check_output
from qamoe_core.spectrum.engine import (
    PatternMix,
    corrupt_batch,
    sample_level_pairs,
    sample_levels,
)
from qamoe_core.training.data import Batch
from qamoe_core.training.ddp import DistInfo


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``peak`` to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: MultimodalModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms and the prior vectors are exempt).

    The model's parameter groups (``MultimodalModel.parameter_groups``: a fine-tuned text
    encoder's trained layers at the model's ``text_lr``) get groups of their own; each group's
    ``lr_scale`` is what the schedule multiplies (1 for the rest, at ``cfg.lr``)."""
    groups = []
    for lr, group in model.parameter_groups():
        params = [p for p in group if p.requires_grad]
        if lr is not None and not params:
            continue
        scale = 1.0 if lr is None else float(lr) / cfg.lr
        decay = [p for p in params if p.dim() >= 2]
        other = [p for p in params if p.dim() < 2]
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": other, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


class Trainer:
    """State of one training run (kept small: the loop is in :func:`train`)."""

    def __init__(
        self,
        model: MultimodalModel,
        cfg: TrainConfig,
        device: torch.device,
        info: DistInfo,
        train_std: Mapping[str, torch.Tensor],
        modalities: tuple[str, ...],
    ) -> None:
        self.model, self.cfg, self.device, self.info = model, cfg, device, info
        self.train_std = train_std
        self.corrupt_mods = tuple(m for m in cfg.corrupt_modalities if m in modalities)
        self.net: torch.nn.Module = model
        if info.world_size > 1:
            ids = [device.index or 0] if device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.opt = make_optimizer(model, cfg)
        self.text_options = model.spectrum_options()  # {} unless a text encoder is fine-tuned
        self.step = 0
        # Exponential moving average of the weights (Polyak averaging): what is validated,
        # selected and saved when cfg.ema_decay > 0.
        self.ema: MultimodalModel | None = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(model).eval()
            self.ema.requires_grad_(False)

    @property
    def eval_model(self) -> MultimodalModel:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up as in TensorFlow's ExponentialMovingAverage(num_updates): early averages
        # would otherwise be dominated by the random initialisation.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p: list[torch.Tensor] = list(self.ema.parameters())
        new_p: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, new_p, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)

    def corrupt(self, clean: Batch, gen: torch.Generator) -> Batch:
        if not self.corrupt_mods:
            return clean
        b = clean["label"].shape[0]
        low, high = self.cfg.train_levels
        draw: dict[str, Any] = {"clean_fraction": self.cfg.clean_fraction, "low": low,
                                "high": high, "generator": gen}  # fmt: skip
        noise_levels = None
        if self.cfg.level_draws == "independent":  # η and λ apart (TrainConfig.level_draws)
            levels, noise_levels = sample_level_pairs(b, self.corrupt_mods, **draw)
        else:
            levels = sample_levels(b, self.corrupt_mods, **draw)
        return corrupt_batch(
            clean,
            levels,
            train_std=self.train_std,
            axis=self.cfg.axis,
            noise_scale=self.cfg.noise_scale,
            generator=gen,
            patterns=PatternMix.from_config(self.cfg),
            noise_levels=noise_levels,
            **self.text_options,
        )

    def train_step(self, clean: Batch, gen: torch.Generator, total: int, warmup: int) -> dict:
        batch = self.corrupt(clean, gen)
        lr = lr_at(self.step, total, warmup, self.cfg.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        out = self.net(batch, clean)
        check_output(out, clean["label"].shape[0], True, self.model.name)  # µs; plug-ins
        assert out.loss is not None
        parts = torch.stack(
            [
                out.loss.detach(),
                out.loss_task.detach() if out.loss_task is not None else out.loss.detach() * 0,
                out.loss_unc.detach() if out.loss_unc is not None else out.loss.detach() * 0,
            ]
        )
        if self.info.world_size > 1:  # every rank sees the same numbers and stops together
            dist.all_reduce(parts)
            parts /= self.info.world_size
        values = parts.tolist()
        if not math.isfinite(values[0]):
            return {"loss": values[0], "finite": False}
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self.update_ema()
        return {"loss": values[0], "loss_task": values[1], "loss_unc": values[2], "finite": True}
