"""Optional experiment tracking: a TensorBoard log of a training run.

Off unless asked for (``qamoe train --tensorboard DIR``): a run folder stays self-contained
without it. With it, every epoch's scalars (losses, learning rate, validation score and each
validation level's metrics), the final metrics and the resolved config (as text) are
written with ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard``
package (``pip install 'qamoe[tensorboard]'``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from qamoe_core.base.errors import InputError


def check(folder: str | os.PathLike[str] | None) -> None:
    """Fail before training when a log is asked for but tensorboard is not installed."""
    if folder is None:
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise InputError(
            "--tensorboard needs the 'tensorboard' package, which is not installed.",
            hint="Install it with: pip install 'qamoe[tensorboard]' (or drop --tensorboard).",
        ) from None


def _scalars(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten nested metrics into ``prefix/a/b`` -> finite float."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(_scalars(tag, value))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            flat[tag] = float(value)
    return flat


class Board:
    """A context manager; ``Board(None)`` does nothing (rank > 0, or no log asked for)."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.folder = folder
        self.writer: Any = None

    def __enter__(self) -> Board:
        if self.folder is not None:
            check(self.folder)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()

    def config(self, config: Mapping[str, Any]) -> None:
        if self.writer is not None:  # Markdown: a code block keeps the JSON readable
            text = "```\n" + json.dumps(config, indent=2) + "\n```"
            self.writer.add_text("config", text, 0)

    def epoch(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record["epoch"])
        for key in ("train_loss", "train_loss_task", "train_loss_unc", "lr", "val_score"):
            self.writer.add_scalar(f"train/{key}", float(record[key]), step)
        for tag, value in _scalars("val", record.get("val", {})).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def final(self, metrics: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(metrics.get("epochs_run", 0))
        for part in ("val", "val_clean", "test_clean"):
            if isinstance(metrics.get(part), Mapping):
                for tag, value in _scalars(f"final/{part}", metrics[part]).items():
                    self.writer.add_scalar(tag, value, step)
        self.writer.flush()
