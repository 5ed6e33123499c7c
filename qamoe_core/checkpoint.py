"""Run directories: one folder per training run, never overwritten silently.

Layout (format "qamoe-run", version 1)::

    runs/NAME/
      config.json     format, format_version, created_by, model_name, dims, task, scheme,
                      dataset (name, path, sha256, seq_lens, label range, corruption),
                      model (ModelConfig), train (TrainConfig): the RESOLVED config
      model.pt        the selected (best-on-validation) weights: a state dict only
      metrics.json    final scores of the selected weights (validation; test for reference)
      history.jsonl   one JSON line per epoch
      train_state.pt  for --resume: last weights, best weights, optimizer, step, early-stopping
                      counters, RNG states, history; tensors and plain Python values only

Every ``.pt`` file is read with ``torch.load(..., weights_only=True)``: no pickled code ever
runs. Files are written to a temporary name and renamed, so a crash leaves the previous
version intact. :func:`load_run` is the stable entry point for evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qamoe_core import __version__
from qamoe_core.atomic import atomic_path
from qamoe_core.config import ModelConfig, TrainConfig, split_sections
from qamoe_core.errors import CheckpointError, ConfigError, InputError
from qamoe_core.model import MultimodalModel, build_model

log = logging.getLogger(__name__)

RUN_FORMAT = "qamoe-run"
RUN_FORMAT_VERSION = 1
CONFIG, WEIGHTS, METRICS, HISTORY, STATE = (
    "config.json",
    "model.pt",
    "metrics.json",
    "history.jsonl",
    "train_state.pt",
)
# A finished run; train_state.pt is optional (only --resume needs it).
RUN_FILES: tuple[str, ...] = (CONFIG, WEIGHTS, METRICS, HISTORY)
ALL_FILES: tuple[str, ...] = (*RUN_FILES, STATE)


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds (the start of) a qamoe run."""
    return (Path(path) / CONFIG).is_file()


def check_run(path: str | os.PathLike[str], require: Sequence[str] = RUN_FILES) -> Path:
    """Check that ``path`` is a run directory holding ``require``; name exactly what is missing."""
    run = Path(path)
    if not run.exists():
        raise CheckpointError(
            f"The run directory '{run}' does not exist.",
            hint="Train one with `qamoe train DATA.h5 --out runs/NAME`.",
        )
    if not run.is_dir():
        raise CheckpointError(f"'{run}' is a file, not a run directory.")
    missing = [name for name in require if not (run / name).is_file()]
    if missing:
        unfinished = (run / CONFIG).is_file() and (run / STATE).is_file()
        raise CheckpointError(
            f"The run directory '{run}' is missing {', '.join(repr(m) for m in missing)}.",
            hint=(
                "The run did not finish: continue it with `qamoe train ... --resume`."
                if unfinished and CONFIG not in missing
                else "Is this the folder given to `qamoe train --out`?"
            ),
        )
    return run


def _damaged(run: Path, name: str, exc: BaseException) -> CheckpointError:
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return CheckpointError(
        f"'{name}' in run '{run}' is damaged or not a qamoe file ({type(exc).__name__}: {detail}).",
        hint=(
            "Resume from train_state.pt with --resume, or train again with --force."
            if name != STATE
            else "Train again with --force."
        ),
    )


# --- writing -------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path, force=True) as tmp:
        torch.save(obj, tmp)


def run_config(
    model_name: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    dims: Mapping[str, int],
    task: str,
    scheme: str,
    dataset: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of config.json (JSON-able)."""
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "created_by": f"qamoe {__version__}",
        "model_name": model_name,
        "dims": dict(dims),
        "task": task,
        "scheme": scheme,
        "dataset": dict(dataset),
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
    }


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, recursively (JSON and weights_only-safe values)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_config(run: Path, config: Mapping[str, Any]) -> None:
    _write_text(run / CONFIG, json.dumps(config, indent=2) + "\n")


def save_weights(run: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """model.pt: the state dict alone (tensors), CPU copies so any device can load it."""
    _save_torch(run / WEIGHTS, {k: v.detach().cpu() for k, v in state_dict.items()})


def save_state(run: Path, state: Mapping[str, Any]) -> None:
    _save_torch(run / STATE, dict(state))


def write_history(run: Path, records: Sequence[Mapping[str, Any]]) -> None:
    _write_text(run / HISTORY, "".join(json.dumps(plain(r)) + "\n" for r in records))


def write_metrics(run: Path, metrics: Mapping[str, Any]) -> None:
    _write_text(run / METRICS, json.dumps(plain(metrics), indent=2) + "\n")


# --- reading -------------------------------------------------------------------------------


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json, checked: format, version, required keys, valid model/train sections."""
    run = Path(path)
    check_run(run, require=(CONFIG,))
    try:
        data = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, CONFIG, exc) from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise CheckpointError(
            f"'{CONFIG}' in '{run}' is not a qamoe run config (format "
            f"{data.get('format') if isinstance(data, dict) else None!r}).",
            hint="Give the folder written by `qamoe train --out`.",
        )
    if data.get("format_version") != RUN_FORMAT_VERSION:
        raise CheckpointError(
            f"The run '{run}' has format_version {data.get('format_version')}; "
            f"this qamoe reads {RUN_FORMAT_VERSION}.",
            hint="Train it again with this version of qamoe.",
        )
    for key in ("model_name", "dims", "task", "scheme", "model", "train"):
        if key not in data:
            raise CheckpointError(f"'{CONFIG}' in '{run}' lacks the key '{key}'.")
    try:
        model_d, train_d = split_sections(data, f"'{run / CONFIG}'")
        data["model_config"] = ModelConfig.from_dict(model_d, "model")
        data["train_config"] = TrainConfig.from_dict(train_d, "train")
    except ConfigError as exc:
        raise CheckpointError(f"'{CONFIG}' in '{run}': {exc.message}", hint=exc.hint) from None
    return data


def _load_torch(run: Path, name: str, device: str | torch.device = "cpu") -> Any:
    try:
        return torch.load(run / name, map_location=device, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        raise _damaged(run, name, exc) from None


def load_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Any]:
    run = check_run(path, require=(CONFIG, STATE))
    state = _load_torch(run, STATE, device)
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise _damaged(run, STATE, ValueError("unexpected content"))
    return state


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    run = Path(path)
    try:
        lines = (run / HISTORY).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        check_run(run, require=(HISTORY,))
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, HISTORY, exc) from None


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    run = check_run(path, require=(METRICS,))
    try:
        data = json.loads((run / METRICS).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, METRICS, exc) from None
    if not isinstance(data, dict):
        raise _damaged(run, METRICS, ValueError("not a JSON object"))
    return data


def load_weights(model: torch.nn.Module, run: Path, state_dict: Mapping[str, Any]) -> None:
    """Load a state dict strictly; a mismatch is a CheckpointError naming the keys."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"The weights in '{run}' do not fit the model in its config.json ({' '.join(first)}).",
            hint="The run folder may mix files from different runs; train again with --force.",
        ) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an InputError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(
            f"The 'device' parameter must be one of auto, cpu, cuda. Got {name!r} instead."
        )
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "The 'device' parameter is 'cuda' but no CUDA device is available.",
            hint="Use --device cpu (or auto).",
        )
    return torch.device(name)


def load_run(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[MultimodalModel, ModelConfig, dict[str, Any]]:
    """Load a finished (or resumable) run for evaluation: ``(model, model_config, meta)``.

    The model is on ``device`` in eval mode with the selected weights (model.pt).
    ``meta`` keys: ``model_name``, ``dims`` {m: D_m}, ``task`` (regression | binary),
    ``scheme`` (metric scheme), ``dataset`` (name, path, sha256, seq_lens, label_range,
    corruption), ``train_config`` (TrainConfig), ``config`` (the raw config.json dict),
    ``metrics`` (metrics.json, or None if the run has not finished), ``path`` (Path).
    Raises CheckpointError naming the missing or damaged file.
    """
    run = check_run(path, require=(CONFIG, WEIGHTS))
    config = read_config(run)
    dev = resolve_device(device)
    model = build_model(
        config["model_name"], config["model_config"], config["dims"], config["task"]
    )
    load_weights(model, run, _load_torch(run, WEIGHTS, "cpu"))
    model.to(dev).eval()
    metrics = read_metrics(run) if (run / METRICS).is_file() else None
    raw = {k: v for k, v in config.items() if k not in ("model_config", "train_config")}
    meta = {
        "model_name": config["model_name"],
        "dims": dict(config["dims"]),
        "task": config["task"],
        "scheme": config["scheme"],
        "dataset": config.get("dataset", {}),
        "train_config": config["train_config"],
        "config": raw,
        "metrics": metrics,
        "path": run,
    }
    return model, config["model_config"], meta


def clear_run(path: str | os.PathLike[str]) -> None:
    """Remove the files of a run (for --force); other files in the folder are left alone."""
    run = Path(path)
    for name in ALL_FILES:
        (run / name).unlink(missing_ok=True)
