"""The resume policy (``qamoe train --resume``): what a resume keeps, what must match, and how
the command line's flags and ``--config`` merge with the saved config.

What a resume keeps: the run's saved model (name and recorded class), its model and train
configs, its text encoder (found again by content hash), and the training state of its last
completed epoch (``train_state.pt``: weights, optimizer, step, early-stopping counters).

What must match: the data (the same feature dims and SHA-256), the model when ``--model`` is
given, every config field the command line gives, and the number of processes (world size).
A run that has nothing left to train is left as it is.

How they merge (:func:`given_configs`, what the CLI calls): the saved config, then the
``--config`` file (a model's ``options`` key by key), then the flags. The result must equal
the saved config (:func:`resume_configs`): flags may repeat the saved values, never change them.

The run-folder format itself (reading, writing and checking each file) is
``runs/checkpoint.py``; the loop that continues the run is ``training/loop.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import qamoe_core.runs.checkpoint as ckpt
from qamoe_core.base.errors import CheckpointError
from qamoe_core.config import ModelConfig, TrainConfig, read_sections
from qamoe_core.models.registry import ModelChoice, for_run
from qamoe_core.models.text_front import locate_encoder

if TYPE_CHECKING:
    from qamoe_core.data.store import FeatureFile


def given_configs(
    out: str | os.PathLike[str],
    config_file: str | os.PathLike[str] | None,
    model_flags: Mapping[str, Any],
    train_flags: Mapping[str, Any],
) -> tuple[ModelConfig | None, TrainConfig | None]:
    """The configs a resume of the run in ``out`` is asked for: saved < ``config_file`` <
    flags (a flag of None is not given). ``(None, None)`` when nothing is given: continue
    exactly as saved."""
    model_given = {k: v for k, v in model_flags.items() if v is not None}
    train_given = {k: v for k, v in train_flags.items() if v is not None}
    if config_file is None and not model_given and not train_given:
        return None, None
    saved = ckpt.read_config(out)
    model_d, train_d = saved["model_config"].to_dict(), saved["train_config"].to_dict()
    if config_file is not None:
        file_model, file_train = read_sections(config_file)
        if isinstance(file_model.get("options"), dict):  # a model's options: key by key
            file_model["options"] = {**model_d.get("options", {}), **file_model["options"]}
        model_d.update(file_model)
        train_d.update(file_train)
    model_d.update(model_given)
    train_d.update(train_given)
    return ModelConfig.from_dict(model_d, "model"), TrainConfig.from_dict(train_d, "train")


def _check_data(out: Path, f: FeatureFile, saved: Mapping[str, Any]) -> None:
    dims = {m: int(f.dims[m]) for m in f.modalities}
    if saved["dims"] != dims:
        raise CheckpointError(
            f"The data's feature dims {dims} do not match the run being resumed ({saved['dims']}).",
            hint="Resume with the same DATA.h5 the run was started with.",
        )
    if saved["dataset"].get("sha256") not in (None, f.sha256()):
        raise CheckpointError(
            f"'{f.path}' is not the file the run in '{out}' was trained on (SHA-256 differs).",
            hint="Resume with the same DATA.h5, or start a new run with --force.",
        )


def _given_text_model(
    saved: ModelConfig, given: ModelConfig | None
) -> tuple[ModelConfig | None, str | None]:
    """The given config with the saved text_model, and the folder the user named instead (or
    None): a folder is the same encoder when its content hash matches (locate_encoder checks),
    whatever path spells it (a relative --text-model on resume is the identical command)."""
    if given is None or given.text_model == saved.text_model or saved.text_encoder != "pretrained":
        return given, None
    return given.override(text_model=saved.text_model), given.text_model


def resume_configs(
    out: Path, f: FeatureFile, model: ModelChoice | None,
    model_cfg: ModelConfig | None, train_cfg: TrainConfig | None,
    plugins: Iterable[str] = (),
) -> tuple[ModelChoice, ModelConfig, TrainConfig, str]:  # fmt: skip
    """The saved configs of the run in ``out``; given ones (and the model) must equal them.
    Returns the model to build (the given one, or the run's by :func:`registry.for_run`: the
    recorded class is imported only if built in, installed or in ``plugins``), the model
    config with the text encoder folder to load, and the note saying which
    (``locate_encoder``)."""
    ckpt.check_run(out, require=(ckpt.CONFIG, ckpt.STATE))
    saved = ckpt.read_config(out)
    _check_data(out, f, saved)
    if model is not None and saved["model_name"] != model.name:
        raise CheckpointError(
            f"The run in '{out}' trains '{saved['model_name']}', not '{model.name}'.",
            hint=f"Resume with --model {saved['model_name']} (or leave --model out).",
        )
    # The model the user named is the run's: resolved already (a module:Class given with
    # --model is allowed by that flag, as --plugin would).
    choice = model or for_run(saved["model_name"], saved.get("model_class"), out, plugins)
    if model_cfg is not None:  # the model's options with their defaults, as the run records
        model_cfg = choice.complete(model_cfg)
    model_cfg, text_model = _given_text_model(saved["model_config"], model_cfg)
    for given, key in ((model_cfg, "model_config"), (train_cfg, "train_config")):
        if given is not None and given != saved[key]:
            diff = [k for k, v in given.to_dict().items() if saved[key].to_dict().get(k) != v]
            raise CheckpointError(
                f"The config differs from the run being resumed in: {', '.join(diff)}.",
                hint="Resume without changing the config (drop the flags), or use --force.",
            )
    mcfg, note = locate_encoder(saved["model_config"], out, text_model)
    return choice, mcfg, saved["train_config"], note


def finished_metrics(out: Path, epochs: int) -> dict[str, Any] | None:
    """metrics.json of a run that has nothing left to train, else None."""
    if not (out / ckpt.METRICS).is_file():
        return None
    state = ckpt.load_state(out)
    if not (state["stopped_early"] or int(state["epoch"]) >= epochs):
        return None
    return ckpt.read_metrics(out)


def read_state(out: Path, device: torch.device, world_size: int) -> dict[str, Any]:
    """train_state.pt of the run in ``out``, for as many processes as it was trained with."""
    state = ckpt.load_state(out, device)
    if int(state["world_size"]) != world_size:
        raise CheckpointError(
            f"The run was trained with {state['world_size']} processes; "
            f"resuming with {world_size} would not give the same result.",
            hint="Resume with the same torchrun --nproc-per-node.",
        )
    return state
