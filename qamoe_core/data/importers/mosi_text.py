"""The MiniLM pass over the MOSI transcripts for ``extract mosi``, cached on disk.

The encoder is the one ``extract media`` uses (:class:`qamoe_core.data.media.text.TextExtractor`,
all-MiniLM-L6-v2 from the offline package): last hidden states per token, [CLS] and [SEP]
kept. The sentence vector is their mean, L2-normalised, which is how sentence-transformers
pools this model (its modules.json: Pooling(mean) then Normalize).

The pass runs the transcripts sorted by token count, 64 per forward pass, padded with the
attention mask (:meth:`TextExtractor.encode_many`); the states equal the one-at-a-time pass
to float tolerance (about 1e-5), not bit for bit, so the batching is part of the encoder's
identity. It is kept in ``<cache dir>/mosi-text-<key>.h5``, the key being SHA-256 of
(transcripts.csv's SHA-256, the encoder's identity: model name, SHA-256 of its files, token
limit, pass). The cache is written through a temporary file renamed at the end; a damaged or
unwritable cache is only a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from qamoe_core.base.atomic import atomic_path

log = logging.getLogger(__name__)

CACHE_FORMAT = "qamoe-mosi-text-cache/1"


class Encoder(Protocol):
    """What :func:`embed` needs: token ids and per-token states for one text.

    An encoder may also have ``encode_many(texts, progress=...)`` returning the same pairs
    for many texts in their order (batched); :func:`embed` then uses it.
    """

    identity: str  # changes whenever the output could change (part of the cache key)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]: ...  # (T,) ints, (T, D)

    def describe(self) -> dict[str, Any]: ...


class MiniLMEncoder:
    """The packaged all-MiniLM-L6-v2 through media.text.TextExtractor.

    The model is loaded on the first :meth:`encode`, so a cache hit needs neither torch nor
    transformers; the identity hashes the model folder's files.
    """

    def __init__(
        self, model: str | Path | None = None, max_tokens: int = 128, batch_size: int = 64
    ) -> None:
        from qamoe_core.data.media.text import DEFAULT_MODEL_NAME
        from qamoe_core.text.locate import default_text_model, resolve_text_model

        self.model_dir = resolve_text_model(model)  # InputError naming qamoe[media] if absent
        self.max_tokens = max_tokens
        self._extractor: Any = None
        digest = hashlib.sha256()
        for f in sorted(p for p in self.model_dir.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(self.model_dir)}\n".encode())
            digest.update(f.read_bytes())
        self.files_sha256 = digest.hexdigest()
        default = self.model_dir == default_text_model()
        self.name = DEFAULT_MODEL_NAME if default else self.model_dir.name
        # The pass is part of the identity: the batched states differ from the one-at-a-time
        # ones in the last bits, so caches of the two are never mixed.
        self.pass_name = f"batched-{batch_size}-by-length"
        self.batch_size = batch_size
        self.identity = f"{self.name}|{self.files_sha256}|{max_tokens}|{self.pass_name}"

    def _loaded(self) -> Any:
        if self._extractor is None:
            from qamoe_core.data.media.text import TextExtractor

            self._extractor = TextExtractor(self.model_dir, max_tokens=self.max_tokens)
        return self._extractor

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text, one forward pass (the reference :meth:`encode_many` is checked against)."""
        ex = self._loaded()
        return np.asarray(ex.token_ids([text])[0], np.int64), ex(text)

    def encode_many(
        self, texts: Sequence[str], progress: Callable[..., None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every text, batched by length (see the module doc)."""
        return list(
            self._loaded().encode_many(texts, batch_size=self.batch_size, progress=progress)
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "model_name": self.name,
            "files_sha256": self.files_sha256,
            "layer": "last_hidden_state",
            "max_tokens": self.max_tokens,
            "special_tokens": "kept ([CLS] first, [SEP] last)",
            "sentence_vector": "mean of the token states, L2-normalised",
            "pass": self.pass_name,
        }


@dataclass
class Embeddings:
    """Ragged token states of N texts: text i is rows offsets[i]:offsets[i+1]."""

    states: np.ndarray  # (sum T, D) float32
    ids: np.ndarray  # (sum T,) int32
    offsets: np.ndarray  # (N + 1,) int64
    encoder: dict[str, Any]
    cached: bool = False
    sentence: np.ndarray = field(init=False)  # (N, D) mean-pooled, L2-normalised

    def __post_init__(self) -> None:
        self.encoder = {**self.encoder, "dim": int(self.states.shape[1])}
        sums = np.add.reduceat(self.states, self.offsets[:-1], axis=0)
        mean = sums / self.lengths[:, None]
        self.sentence = (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, rows: np.ndarray, t: int) -> np.ndarray:
        out = np.zeros((len(rows), t, self.states.shape[1]), np.float32)
        for j, i in enumerate(rows):
            a, b = self.offsets[i], self.offsets[i + 1]
            out[j, : b - a] = self.states[a:b]
        return out

    def padded_ids(self, rows: np.ndarray, t: int) -> np.ndarray:
        out = np.zeros((len(rows), t), np.int32)  # 0 = [PAD] in BERT vocabularies
        for j, i in enumerate(rows):
            a, b = self.offsets[i], self.offsets[i + 1]
            out[j, : b - a] = self.ids[a:b]
        return out


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/qamoe, else ~/.cache/qamoe."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qamoe"


def _read_cache(path: Path, key: str, n: int, encoder: dict[str, Any]) -> Embeddings | None:
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != CACHE_FORMAT or h5.attrs.get("key") != key:
                return None
            offsets = h5["offsets"][:]
            if offsets.shape != (n + 1,):
                return None
            return Embeddings(h5["states"][:], h5["ids"][:], offsets, encoder, cached=True)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring the damaged text cache %s (%s); recomputing", path, exc)
        return None


def _write_cache(path: Path, key: str, emb: Embeddings) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, force=True) as tmp, h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = CACHE_FORMAT
            h5.attrs["key"] = key
            h5["states"] = emb.states
            h5["ids"] = emb.ids
            h5["offsets"] = emb.offsets
    except Exception as exc:  # a cache that cannot be written costs time, not the import
        log.warning("could not write the text cache %s (%s)", path, exc)


def _encode_all(
    enc: Encoder, texts: Sequence[str], progress: Callable[..., None] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, states) per text: batched where the encoder can, else one text at a time."""
    many = getattr(enc, "encode_many", None)
    if many is not None:
        return list(many(texts, progress=progress))
    out = []
    for text in texts:
        out.append(enc.encode(text))
        if progress is not None:
            progress(1, total=len(texts))
    return out


def embed(
    texts: Sequence[str],
    texts_sha256: str,
    *,
    encoder: Encoder | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[..., None] | None = None,
) -> Embeddings:
    """Token states of ``texts`` (identified by ``texts_sha256``), from the cache if there.

    ``progress(n, total=N)`` is called as texts are encoded (once, with all N, on a hit).
    """
    enc = encoder if encoder is not None else MiniLMEncoder()
    key = hashlib.sha256(f"{texts_sha256}\n{enc.identity}".encode()).hexdigest()
    path = Path(cache_dir or default_cache_dir()).expanduser() / f"mosi-text-{key[:24]}.h5"
    desc = enc.describe()
    if path.is_file():
        hit = _read_cache(path, key, len(texts), desc)
        if hit is not None:
            log.info("text states from the cache %s", path)
            if progress is not None:
                progress(len(texts), total=len(texts), cached=True)
            return hit
    ids, states = zip(*_encode_all(enc, texts, progress), strict=True)
    if any(len(i) != len(s) or len(i) == 0 for i, s in zip(ids, states, strict=True)):
        raise ValueError("the text encoder returned no steps, or ids and states that disagree")
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])]).astype(np.int64)
    emb = Embeddings(
        np.concatenate(states).astype(np.float32),
        np.concatenate(ids).astype(np.int32),
        offsets,
        desc,
    )
    _write_cache(path, key, emb)
    return emb
