"""The resume policy (training/resume.py) on hand-made run folders: no training needed.

How a resume behaves end to end (same weights as an uninterrupted run, refusals of other
data, model or config) is tests/training/test_loop.py and tests/cli/test_train_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from qamoe_core.base.errors import CheckpointError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.models.registry import resolve
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.training import resume

DIMS = {"text": 4, "audio": 3, "vision": 2}
SAVED_MODEL = ModelConfig(d_model=16, n_heads=2, options={"text_hidden": 64, "audio_hidden": 16})
SAVED_TRAIN = TrainConfig(epochs=4, seed=3, batch_size=8)


def _run(tmp_path: Path, **state: Any) -> Path:
    """A run folder holding config.json (tfn) and, given ``state`` values, train_state.pt."""
    run = tmp_path / "run"
    run.mkdir()
    config = ckpt.run_config(resolve("tfn"), SAVED_MODEL, SAVED_TRAIN, dims=DIMS, task="regression",
                             scheme="mosi", dataset={})  # fmt: skip
    ckpt.write_config(run, config)
    if state:
        weights = {"w": torch.zeros(2)}
        ckpt.save_state(run, {
            "epoch": 1, "step": 5, "world_size": 1, "model": weights, "ema_model": None,
            "best_model": weights, "optimizer": {"state": {}, "param_groups": []},
            "best_score": 0.5, "best_epoch": 1, "bad_epochs": 0, "stopped_early": False,
            "history": [], **state,
        })  # fmt: skip
    return run


def test_nothing_given_continues_as_saved_without_reading_the_run(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-run"  # not read: the run checks its own folder later
    assert resume.given_configs(nowhere, None, {"d_model": None}, {"epochs": None}) == (None, None)


def test_saved_then_config_file_then_flags(tmp_path: Path) -> None:
    run = _run(tmp_path)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"d_model": 32, "options": {"audio_hidden": 8}},
                               "train": {"epochs": 5, "batch_size": 4}}))  # fmt: skip
    model, train = resume.given_configs(run, cfg, {"text_encoder": None}, {"epochs": 7})
    assert model is not None and train is not None
    # a model's options merge key by key: the file's audio_hidden, the saved text_hidden
    assert model.options == {"text_hidden": 64, "audio_hidden": 8}
    assert (model.d_model, model.n_heads) == (32, 2)  # the file's, the saved
    assert (train.epochs, train.batch_size, train.seed) == (7, 4, 3)  # flag, file, saved
    # a flag alone: everything else is the saved config, so the run finds nothing changed
    model, train = resume.given_configs(run, None, {}, {"seed": 3})
    assert (model, train) == (SAVED_MODEL, SAVED_TRAIN)


def test_a_run_of_another_world_size_is_refused(tmp_path: Path) -> None:
    run = _run(tmp_path, world_size=2)
    assert resume.read_state(run, torch.device("cpu"), 2)["step"] == 5
    with pytest.raises(CheckpointError, match="trained with 2 processes; resuming with 1") as exc:
        resume.read_state(run, torch.device("cpu"), 1)
    assert "--nproc-per-node" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("state", "metrics", "finished"),
    [
        ({"epoch": 4}, True, True),  # every epoch ran
        ({"epoch": 2, "stopped_early": True}, True, True),
        ({"epoch": 2}, True, False),  # epochs left
        ({"epoch": 4}, False, False),  # killed before metrics.json was written
    ],
)
def test_finished_metrics(
    tmp_path: Path, state: dict[str, Any], metrics: bool, finished: bool
) -> None:
    run = _run(tmp_path, **state)
    if metrics:
        ckpt.write_metrics(run, {"best_epoch": 1})
    expected = {"best_epoch": 1} if finished else None
    assert resume.finished_metrics(run, SAVED_TRAIN.epochs) == expected
