"""Run directories: one folder per training run, never overwritten silently.

Layout (format "qamoe-run", version 1)::

    runs/NAME/
      config.json     format, format_version, created_by, model_name, dims, task, scheme,
                      dataset (name, path, sha256, seq_lens, label range, corruption),
                      model (ModelConfig), train (TrainConfig): the RESOLVED config
      model.safetensors  the selected (best-on-validation) weights: a state dict only, in
                      the safetensors format (a JSON header and raw tensor bytes: no code);
                      runs written before it hold model.pt instead, still read (weights_only)
      metrics.json    final scores of the selected weights (validation; test for reference)
      history.jsonl   one JSON line per epoch
      train_state.pt  for --resume: last, EMA and best weights, optimizer, step, world size,
                      early-stopping counters, history; tensors and plain Python values
                      only (no RNG state: each epoch re-seeds from (seed, epoch))

The weights are read with safetensors; every ``.pt`` file (train_state.pt, an old run's
model.pt) with ``torch.load(..., weights_only=True)``: no pickled code ever runs. train_state.pt
stays a torch file: it holds the optimizer's nested state and plain Python values, which
safetensors (flat tensors only) cannot hold. Files are written to a temporary name and
renamed, so a crash leaves the previous version intact. :func:`load_run` is the stable entry
point for evaluation. What ``--resume`` keeps and checks is ``training/resume.py``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

import qamoe_core.base.rundir as rundir
from qamoe_core.base import jsontext
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import CheckpointError, ConfigError, InputError
from qamoe_core.base.inputs import check_present
from qamoe_core.base.names import MODALITIES, SCHEMES, TASKS
from qamoe_core.config import (
    ModelConfig,
    TrainConfig,
    check_version,
    split_sections,
)
from qamoe_core.models import ModelChoice, MultimodalModel, for_run, names
from qamoe_core.models.registry import could_be_loaded
from qamoe_core.models.text_front import locate_encoder
from qamoe_core.version import __version__

RUN_FORMAT = "qamoe-run"
RUN_FORMAT_VERSION = 1
CONFIG, WEIGHTS, METRICS, HISTORY, STATE = (
    "config.json",
    "model.safetensors",
    "metrics.json",
    "history.jsonl",
    "train_state.pt",
)
# A finished run; train_state.pt is optional (only --resume needs it).
RUN_FILES: tuple[str, ...] = (CONFIG, WEIGHTS, METRICS, HISTORY)
ALL_FILES: tuple[str, ...] = (*RUN_FILES, STATE)
# The weights file of runs written before model.safetensors (a torch file, weights_only).
LEGACY_WEIGHTS = "model.pt"
# Every file qamoe may have written into a run folder (clear_run, rundir's kind, inputs).
OWN_FILES: tuple[str, ...] = (*ALL_FILES, LEGACY_WEIGHTS)
# How many keys of each kind a weights mismatch names (the count says how many there are).
SHOW_KEYS = 3


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds (the start of) a qamoe run."""
    return (Path(path) / CONFIG).is_file()


def weights_name(run: Path) -> str:
    """The weights file of ``run``: model.safetensors, or model.pt for an older run."""
    if not (run / WEIGHTS).exists() and (run / LEGACY_WEIGHTS).exists():
        return LEGACY_WEIGHTS
    return WEIGHTS


def check_run(path: str | os.PathLike[str], require: Sequence[str] = RUN_FILES) -> Path:
    """Check that ``path`` is a run directory holding ``require``; name exactly what is missing.
    WEIGHTS in ``require`` is met by an older run's model.pt too."""
    run = Path(path)
    require = [weights_name(run) if name == WEIGHTS else name for name in require]
    if not run.exists():
        raise CheckpointError(
            f"The run directory '{run}' does not exist.",
            hint="Train one with `qamoe train DATA.h5 --out runs/NAME`.",
        )
    if not run.is_dir():
        raise CheckpointError(
            f"'{run}' is a file, not a run directory.",
            hint=f"Pass the run folder (the --out of `qamoe train`), e.g. '{run.parent}'.",
        )
    check_present((run / name for name in require), "run file", _redo_hint(require[0]),
                  CheckpointError)  # fmt: skip
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


def _redo_hint(name: str) -> str:
    if name in (STATE, CONFIG):  # --resume needs both
        return "Copy the run folder again from its source, or train again with --force."
    return (
        "Copy the run folder again from its source, resume from train_state.pt with --resume, "
        "or train again with --force."
    )


def _damaged(run: Path, name: str, exc: BaseException) -> CheckpointError:
    """A damaged JSON file (config.json, metrics.json, history.jsonl): the parser's one line."""
    detail = " ".join((str(exc).strip().splitlines() or [""])[0].split())[:200]
    return CheckpointError(
        f"'{name}' in run '{run}' is damaged or not a qamoe file ({type(exc).__name__}: {detail}).",
        hint=_redo_hint(name),
    )


# --- writing -------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


class _Sink:
    """A file for torch.save that keeps the error of a failed write: torch reports a full
    disk as a bare RuntimeError ("unexpected pos ..."), without the errno that says why."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.fh.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path, force=True) as tmp, open(tmp, "wb") as fh:
        sink = _Sink(fh)
        try:
            torch.save(obj, sink)  # type: ignore[arg-type]  # a file object: write + flush
        except RuntimeError:
            if sink.error is not None:  # atomic_path turns a full disk into NoSpaceError
                raise sink.error from None
            raise


def run_config(
    model: ModelChoice,
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
        "model_name": model.name,
        "model_class": model.class_path,  # how to find a plug-in on load
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
    """model.safetensors: the state dict alone, CPU copies so any device can load it (each
    tensor its own copy: safetensors refuses tensors that share memory, e.g. tied weights).
    An older run's model.pt, now superseded, is removed after."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    _write_bytes(run / WEIGHTS, data)
    if (run / LEGACY_WEIGHTS).exists():
        (run / LEGACY_WEIGHTS).unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path, force=True) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def save_state(run: Path, state: Mapping[str, Any]) -> None:
    _save_torch(run / STATE, dict(state))


def _strict(value: Any) -> Any:
    """:func:`plain`, with NaN and infinities as None: JSON has no NaN, and a bare ``NaN``
    in a file is refused by strict parsers (JavaScript's JSON.parse, jq, serde_json)."""
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(_strict(value), indent=indent, allow_nan=False)


def _load_json(text: str) -> Any:
    """Read what :func:`_json` writes; files of earlier versions may hold a bare NaN or
    Infinity, read as None too (as a strict writer writes them now)."""
    return jsontext.loads(text, parse_constant=lambda name: None)


def write_history(run: Path, records: Sequence[Mapping[str, Any]]) -> None:
    _write_text(run / HISTORY, "".join(_json(r) + "\n" for r in records))


def write_metrics(run: Path, metrics: Mapping[str, Any]) -> None:
    _write_text(run / METRICS, _json(metrics, indent=2) + "\n")


# --- reading -------------------------------------------------------------------------------


def _bad_config(run: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"'{CONFIG}' in '{run}': {what}",
        hint="It was edited or damaged: copy the run folder again, or train again with --force.",
    )


def _check_meta(run: Path, data: Mapping[str, Any]) -> None:
    """The run-specific keys of config.json: model_name, dims, task, scheme, dataset."""
    name = data["model_name"]  # a plug-in's is resolved by load_run (it may be missing here)
    if not could_be_loaded(name, data.get("model_class")):
        raise _bad_config(
            run,
            f"'model_name' must be one of {', '.join(names())} or a plug-in. "
            f"Got {name!r:.80} instead.",
        )
    dims = data["dims"]
    expected = f"an object of modality ({', '.join(MODALITIES)}) -> positive integer"
    if not isinstance(dims, dict) or not dims:
        raise _bad_config(run, f"'dims' must be {expected}. Got {dims!r:.80} instead.")
    for modality, dim in dims.items():
        if modality not in MODALITIES:
            raise _bad_config(
                run, f"'dims' names the unknown modality {modality!r:.40}; expected {expected}."
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise _bad_config(
                run, f"'dims' gives {modality!r} the size {dim!r:.40}; expected {expected}."
            )
    for key, choices in (("task", TASKS), ("scheme", SCHEMES)):
        if data[key] not in choices:
            raise _bad_config(
                run, f"'{key}' must be one of {', '.join(choices)}. Got {data[key]!r:.80} instead."
            )
    if not isinstance(data.get("dataset", {}), dict):
        raise _bad_config(run, f"'dataset' must be an object. Got {data['dataset']!r:.80} instead.")


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json, checked: format, version, required keys, meta values, model/train sections."""
    run = Path(path)
    check_run(run, require=(CONFIG,))
    try:
        data = jsontext.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, CONFIG, exc) from None
    except OSError as exc:
        raise _unreadable(run / CONFIG, exc) from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise CheckpointError(
            f"'{CONFIG}' in '{run}' is not a qamoe run config (format "
            f"{data.get('format') if isinstance(data, dict) else None!r:.80}).",
            hint="Give the folder written by `qamoe train --out`.",
        )
    check_version(
        data.get("format_version"),
        RUN_FORMAT_VERSION,
        f"The run '{run}'",
        error=CheckpointError,
        newer_hint="Upgrade qamoe (pip install -U qamoe) to read it.",
        older_hint="Train it again with this version of qamoe.",
    )
    for key in ("model_name", "dims", "task", "scheme", "model", "train"):
        if key not in data:
            raise _bad_config(run, f"the key '{key}' is missing.")
    _check_meta(run, data)
    try:
        model_d, train_d = split_sections(data, f"'{run / CONFIG}'")
        data["model_config"] = ModelConfig.from_dict(model_d, "model")
        data["train_config"] = TrainConfig.from_dict(train_d, "train")
    except ConfigError as exc:
        raise CheckpointError(f"'{CONFIG}' in '{run}': {exc.message}", hint=exc.hint) from None
    return data


def _unreadable(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        f"'{path}' could not be read ({exc.strerror or type(exc).__name__}).",
        hint="Check that the file is readable (permissions, a mounted disk).",
    )


def _load_torch(run: Path, name: str, device: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; any failure is a fixed one-line CheckpointError.

    torch's own message is not shown: it is several lines long and suggests loading the file
    with weights_only=False, which would run whatever code a malicious pickle holds.
    """
    path = run / name
    try:
        with warnings.catch_warnings():  # e.g. an old (non-zip) pickle: a two-line UserWarning
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"'{path}' is not a weights-only tensor file (damaged, or a pickle that could run "
            "code): refused.",
            hint=_redo_hint(name),
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile):
        raise CheckpointError(
            f"'{path}' is damaged (empty, truncated or not a torch file).",
            hint=_redo_hint(name),
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _load_safetensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict on the CPU; any failure is one CheckpointError
    (the header is JSON with tensor names, dtypes and offsets: nothing in it can run)."""
    path = run / name
    try:
        return safetensors.torch.load(path.read_bytes())
    except SafetensorError as exc:
        detail = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"'{path}' is damaged or not a safetensors file ({detail}).",
            hint=_redo_hint(name),
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc) from None


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The selected weights of a run (model.safetensors, or an older run's model.pt) as a
    CPU state dict, unchecked against any model."""
    run = check_run(path, require=(WEIGHTS,))
    name = weights_name(run)
    if name == WEIGHTS:
        return _load_safetensors(run, name)
    weights = _load_torch(run, name, "cpu")
    if not _is_state_dict(weights):
        raise CheckpointError(
            f"The weights in '{run / name}' are {_kind(weights)}, not a state dict "
            "(parameter names -> tensors).",
            hint=_redo_hint(name),
        )
    return dict(weights)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What --resume reads from train_state.pt (training/loop.py), and the kind of each value.
_STATE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "epoch": _whole,
    "step": _whole,
    "world_size": _whole,
    "model": _is_state_dict,
    "ema_model": lambda v: v is None or _is_state_dict(v),
    "best_model": _is_state_dict,
    "optimizer": lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v),
    "best_score": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)),
    "best_epoch": _whole,
    "bad_epochs": _whole,
    "stopped_early": lambda v: isinstance(v, bool),
    "history": lambda v: isinstance(v, list),
}


def load_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Any]:
    """train_state.pt, checked: a dict with every key --resume reads, of the right kinds."""
    run = check_run(path, require=(CONFIG, STATE))
    state = _load_torch(run, STATE, device)
    where = f"'{run / STATE}'"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where} holds {_kind(state)}, not the dict of a training state.",
            hint=_redo_hint(STATE),
        )
    missing = [key for key in _STATE_CHECKS if key not in state]
    if missing:
        raise CheckpointError(
            f"{where} lacks the key(s) {', '.join(repr(k) for k in missing)}.",
            hint=_redo_hint(STATE),
        )
    problems = [key for key, ok in _STATE_CHECKS.items() if not ok(state[key])]
    if problems:
        raise CheckpointError(
            f"{where} holds a value of the wrong kind under the key(s) "
            f"{', '.join(repr(k) for k in problems)}.",
            hint=_redo_hint(STATE),
        )
    return state


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    run = Path(path)
    try:
        lines = (run / HISTORY).read_text(encoding="utf-8").splitlines()
        return [_load_json(line) for line in lines if line.strip()]
    except FileNotFoundError:
        check_run(run, require=(HISTORY,))
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, HISTORY, exc) from None
    except OSError as exc:
        raise _unreadable(run / HISTORY, exc) from None


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    run = check_run(path, require=(METRICS,))
    try:
        data = _load_json((run / METRICS).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(run, METRICS, exc) from None
    except OSError as exc:
        raise _unreadable(run / METRICS, exc) from None
    if not isinstance(data, dict):
        raise _damaged(run, METRICS, ValueError("not a JSON object"))
    return data


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return f"{shown}, ..." if len(keys) > SHOW_KEYS else shown


def _key(name: str) -> str:
    """A state-dict key for a message: quoted, escaped (one line), at most ~80 characters."""
    text = repr(name)
    return text if len(text) <= 80 else f"{text[:76]}...'"


def _where(run: Path, source: str | None) -> str:
    return f"'{run / source}'" if source else f"run '{run}'"


_MIXED_HINT = "The run folder may mix files from different runs; train again with --force."


def check_fit(
    model: torch.nn.Module, run: Path, state_dict: Any, source: str | None = None
) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s (which may live on the
    meta device: only shapes are read) in one line: the number of missing, unexpected and
    mis-shaped keys and the first few of each (the model's order; unexpected alphabetically)."""
    where = _where(run, source)
    if not _is_state_dict(state_dict):
        raise CheckpointError(
            f"The weights in {where} are {_kind(state_dict)}, not a state dict "
            "(parameter names -> tensors).",
            hint=_redo_hint(source or WEIGHTS),
        )
    expected = model.state_dict()
    missing = [_key(k) for k in expected if k not in state_dict]
    unexpected = [_key(k) for k in sorted(state_dict) if k not in expected]
    shaped = [  # in the model's order (a safetensors file keeps none)
        f"{_key(k)} {list(state_dict[k].shape)} (model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = [
        f"{len(keys)} {'key' if len(keys) == 1 else 'keys'} {label} ({_first(keys)})"
        for keys, label in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (shaped, "of another shape"),
        )
        if keys
    ]
    if parts:
        raise CheckpointError(
            f"The weights in {where} do not fit the model in its config.json: {'; '.join(parts)}.",
            hint=_MIXED_HINT,
        )


def load_weights(
    model: torch.nn.Module, run: Path, state_dict: Any, source: str | None = None
) -> None:
    """Load a state dict strictly; a mismatch (:func:`check_fit`) or a NaN is a one-line
    CheckpointError. ``source`` names where the weights come from (e.g. "model.safetensors")."""
    where = _where(run, source)
    check_fit(model, run, state_dict, source)
    bad = [
        _key(k) for k, v in state_dict.items() if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:  # a model of NaNs would score NaN everywhere, as if it were a result
        raise CheckpointError(
            f"The weights in {where} hold NaN or infinite values ({len(bad)} "
            f"{'key' if len(bad) == 1 else 'keys'}: {_first(bad)}).",
            hint="The file is damaged, or the training that wrote it diverged; train again.",
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"The weights in {where} do not fit the model in its config.json ({detail}).",
            hint=_MIXED_HINT,
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
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    plugins: Iterable[str] = (),
    text_model: str | os.PathLike[str] | None = None,
) -> tuple[MultimodalModel, ModelConfig, dict[str, Any]]:
    """Load a finished (or resumable) run for evaluation: ``(model, model_config, meta)``.

    The model is on ``device`` in eval mode with the selected weights (model.safetensors,
    or model.pt for a run written before it).
    ``plugins``: ``module:Class`` plug-ins the caller allows (``--plugin``); a run naming any
    other class that is neither built in nor an installed entry point is refused unimported.
    ``text_model``: the folder of a run's pretrained text encoder (``--text-model``); the
    path the run records is only a hint (models.text_front.locate_encoder).
    ``meta`` keys: ``model_name``, ``dims`` {m: D_m}, ``task`` (regression | binary),
    ``scheme`` (metric scheme), ``dataset`` (name, path, sha256, seq_lens, label_range,
    corruption), ``train_config`` (TrainConfig), ``config`` (the raw config.json dict),
    ``metrics`` (metrics.json, or None if the run has not finished), ``path`` (Path),
    ``text_encoder`` (which encoder folder was used and why, or None).
    Raises CheckpointError naming the missing or damaged file.
    """
    run = check_run(path, require=(CONFIG, WEIGHTS))
    config = read_config(run)
    dev = resolve_device(device)
    choice = for_run(config["model_name"], config.get("model_class"), run, plugins)
    given = None if text_model is None else str(text_model)
    config["model_config"], note = locate_encoder(config["model_config"], run, given)
    name = weights_name(run)
    weights = _load_safetensors(run, name) if name == WEIGHTS else _load_torch(run, name, "cpu")
    if config["model_config"].text_encoder == "features":  # (an encoder's build reads files)
        # The config's sizes are checked against the weights before any memory is taken: a
        # config.json saying dims {"text": 10**9} would otherwise allocate 4 GB first.
        with torch.device("meta"):
            shell = choice.build(config["model_config"], config["dims"], config["task"])
        check_fit(shell, run, weights, source=name)
    model = choice.build(config["model_config"], config["dims"], config["task"])
    load_weights(model, run, weights, source=name)
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
        "text_encoder": note or None,
    }
    return model, config["model_config"], meta


def clear_run(path: str | os.PathLike[str]) -> None:
    """Remove the files of a run (for --force); other files in the folder are left alone."""
    run = Path(path)
    for name in OWN_FILES:
        (run / name).unlink(missing_ok=True)


# --- the run folder: rundir's kind for `qamoe train` -----------------------------------------


def _check_out(out: Path, force: bool) -> None:
    if os.path.lexists(out) and not out.is_dir():
        raise InputError(
            f"The output '{out}' is a file; --out takes a run directory.",
            hint="Choose a folder path, e.g. --out runs/NAME.",
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_run_dir(out):
        raise InputError(
            f"The output folder '{out}' is not empty and holds no qamoe run.",
            hint="Choose a new folder: qamoe never deletes files it did not write.",
        )
    if not force:
        raise InputError(
            f"The output folder '{out}' already holds a run.",
            hint="Choose another --out, continue it with --resume, or replace it with --force.",
        )


RUN_KIND = rundir.Kind(
    "train", CONFIG, lambda name: name in OWN_FILES, allow_empty=True, check=_check_out
)
