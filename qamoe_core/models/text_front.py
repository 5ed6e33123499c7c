"""Token ids -> text states inside a model: the ``pretrained`` text encoder of ModelConfig.

With ``text_encoder = "pretrained"`` every model (built-in or plug-in) gets a
:class:`TextFront`: before its ``forward`` runs, a forward pre-hook of
:class:`~qamoe_core.models.base.MultimodalModel` replaces ``batch["text"]`` (and the
clean batch's) by the states of a fine-tuned Hugging Face encoder run on ``batch["text_ids"]``.
The model's own code is unchanged: it reads ``text`` (B, T, H) and ``text_len`` as ever.

What the spectrum did to the text reaches the encoder through its ids and embeddings, never
through the stored features (which the model no longer reads):

- a dropped token is ``[UNK]`` in ``text_ids`` (``[CLS]``/``[SEP]`` kept; spectrum.apply_draws);
- noise arrives as ``text_noise`` (B, T, D): the same keyed draws as the features' noise, unit
  free (z·level·noise_scale where a kept token is hit, else 0). It is added to the token
  embeddings in units of the embeddings' per-dimension std (``embed_std``).

Speed: the frozen lower layers of a clean utterance are computed once (``LowerStateCache``)
while training; rows holding ``[UNK]`` or noise are recomputed, exactly. Measured numbers:
docs/text-encoder.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qamoe_core.base.errors import CheckpointError, InputError
from qamoe_core.config import ModelConfig
from qamoe_core.text.encoder import (
    LowerStateCache,
    PretrainedTextEncoder,
    encoder_hash,
    resolve_encoder_dir,
    tokenizer_special_ids,
)
from qamoe_core.text.locate import default_text_model

log = logging.getLogger(__name__)

# Key set on a batch whose text came from the ids already (the hook and encode() both call
# inputs(); the second call must not re-encode).
DONE = "_text_from_ids"
IDS_HINT = (
    "Fine-tuning reads token ids: `qamoe extract mosi` (the default --pooling token) and "
    "`qamoe extract mmsa` on files with text_bert write them; or set model.text_encoder to "
    "'features'."
)


def _another_encoder(recorded: str, folder: Path, digest: str) -> CheckpointError:
    return CheckpointError(
        f"The checkpoint was trained with the text encoder {recorded[:19]}…, but '{folder}' "
        f"is {digest[:19]}…: another encoder, or an edited copy.",
        hint="Give the folder the run was trained with (--text-model DIR).",
    )


def build_encoder(cfg: ModelConfig) -> PretrainedTextEncoder:
    """The encoder in ``cfg.text_model`` (a folder the user named, or :func:`locate_encoder`
    found), its content hash checked against the recorded one BEFORE anything is loaded."""
    layers: int | str = "all" if cfg.fine_tune_layers == -1 else cfg.fine_tune_layers
    pooling = "cls" if cfg.text_pooling == "cls" else "mean"
    folder = resolve_encoder_dir(cfg.text_model or None)
    if cfg.text_model_hash and (digest := encoder_hash(folder)) != cfg.text_model_hash:
        raise _another_encoder(cfg.text_model_hash, folder, digest)
    # Loading must not move torch's random stream: the other modules' initial weights then
    # do not depend on whether an encoder was loaded first.
    with torch.random.fork_rng(devices=[]):
        enc = PretrainedTextEncoder(folder, layers, pooling)
    set_dropout(enc, cfg.encoder_dropout)
    return enc


def _matches(folder: Path, recorded: str) -> bool:
    return not recorded or encoder_hash(folder) == recorded


def _inside_run(run: Path, hint: str) -> Path | None:
    """The recorded folder when it is a relative path that stays inside the run folder
    (symbolic links resolved) and holds an encoder; else None."""
    if not hint or Path(hint).is_absolute() or Path(hint).drive:
        return None
    folder = (run / hint).resolve()
    if not (folder.is_relative_to(run.resolve()) and folder != run.resolve() and folder.is_dir()):
        return None
    try:
        return resolve_encoder_dir(folder)
    except InputError:
        return None


def _find_encoder(cfg: ModelConfig, run: Path, given: str | None) -> tuple[Path, str]:
    """(folder, how it was chosen) for a recorded run; see :func:`locate_encoder`."""
    recorded, hint = cfg.text_model_hash, cfg.text_model
    if given is not None:  # the user's choice, whatever the run says; it must match
        folder = resolve_encoder_dir(given or None)
        if not _matches(folder, recorded):
            raise _another_encoder(recorded, folder, encoder_hash(folder))
        return folder, "given" if given else "the packaged default"
    if not hint:  # recorded as "": the packaged default
        default = resolve_encoder_dir(None)
        if not _matches(default, recorded):
            raise _another_encoder(recorded, default, encoder_hash(default))
        return default, "the packaged default"
    inside = _inside_run(run, hint)
    if inside is not None and _matches(inside, recorded):
        return inside, "inside the run folder"
    packaged = default_text_model()  # found by its content hash, wherever the run says
    if recorded and packaged is not None and _matches(packaged, recorded):
        return packaged, "the packaged default, same content hash"
    shown = repr(hint)[1:-1][:160]  # from a file: escaped, one line
    raise CheckpointError(
        f"The run '{run}' was trained with the text encoder '{shown}' "
        f"({recorded[:19] or 'no hash'}…); qamoe opens only a folder inside the run or one you "
        "name, never a path a run records.",
        hint="Give the encoder folder: --text-model DIR (Python: load_run(path, "
        "text_model=DIR)); its content hash must match the run's.",
    )


def locate_encoder(
    cfg: ModelConfig, run: Path, given: str | None = None
) -> tuple[ModelConfig, str]:
    """``cfg`` of a recorded run with ``text_model`` set to the encoder folder to load, and a
    note saying which folder that is and why.

    The run's recorded ``text_model`` is only a hint: the folder used is ``given`` (the
    user's --text-model; None: not given), else the recorded path when it is relative and
    inside the run folder, else the packaged MiniLM (recorded as "", or with the recorded
    content hash). Each must match the recorded hash, checked here before anything is loaded.
    """
    if cfg.text_encoder != "pretrained":
        return cfg, ""
    folder, how = _find_encoder(cfg, Path(run), given)
    note = f"'{folder}' ({how})"
    log.info("text encoder of the run '%s': %s", run, note)
    return cfg.override(text_model=str(folder)), note


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout inside the encoder at ``p``: ModelConfig.encoder_dropout (0 by default)
    rules the text encoder as it does qamoe's own encoders, because QA-MoE's uncertainty
    target is the clean input's encoding and dropout noise there would make clean text look
    unreliable (docs/results/defaults.md); training-time corruption regularises instead."""
    for mod in module.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = p
        if isinstance(getattr(mod, "dropout_prob", None), float):  # BERT's sdpa attention
            mod.dropout_prob = p  # type: ignore[assignment]


class TextFront(nn.Module):
    """The encoder, its cache of clean lower states, and the batch rewrite."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = build_encoder(cfg)
        self.pooling = cfg.text_pooling
        # Not a module: nothing of it is saved; it is rebuilt (empty) with the model.
        self.cache = LowerStateCache(self.encoder) if self.encoder.split > 0 else None

    @property
    def out_dim(self) -> int:
        return self.encoder.hidden_size

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """(unk, cls, sep) of the tokenizer, for the spectrum."""
        return self.encoder.unk_id, self.encoder.cls_id, self.encoder.sep_id

    def spectrum_options(self) -> dict[str, Any]:
        """What the spectrum needs to corrupt text that this encoder reads as ids: its
        tokenizer's special ids (a dropped token becomes [UNK]) and noise for the embeddings."""
        return {"special_ids": self.special_ids, "text_noise": True}

    def inputs(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """``batch`` with ``text``/``text_len`` computed from ``text_ids`` (once)."""
        if DONE in batch or "text_len" not in batch:
            return batch
        if "text_ids" not in batch:
            raise InputError("The model fine-tunes a text encoder but the batch has no "
                             "text_ids.", hint=IDS_HINT)  # fmt: skip
        lengths = batch["text_len"].long()
        t_all = batch["text_ids"].shape[1]
        t = max(int(lengths.max()), 1) if lengths.numel() else 1
        ids = batch["text_ids"][:, :t].long()
        noise = batch.get("text_noise")
        states = self._states(ids, lengths, None if noise is None else noise[:, :t])
        out: dict[str, Any] = dict(batch)
        if self.pooling == "tokens":
            keep = torch.arange(t, device=states.device)[None, :] < lengths[:, None]
            states = states * keep[..., None].to(states.dtype)
            out["text"] = nn.functional.pad(states, (0, 0, 0, t_all - t))  # (B, T, H)
        else:
            out["text"] = self._pool(states, lengths)[:, None, :]  # (B, 1, H)
            out["text_len"] = torch.ones_like(batch["text_len"])
            out.pop("text_keep", None)
        out[DONE] = torch.ones(())
        return out

    def _pool(self, states: Tensor, lengths: Tensor) -> Tensor:
        if self.pooling == "cls":
            return states[:, 0]
        keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
        return (states * keep[..., None]).sum(1) / lengths[:, None].clamp_min(1)

    def _states(self, ids: Tensor, lengths: Tensor, noise: Tensor | None) -> Tensor:
        """(B, t, H) last-layer states; cached lower layers for rows without noise."""
        enc = self.encoder
        if self.cache is None:
            return enc(ids, lengths, noise).states
        noisy = (
            torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
            if noise is None
            else noise.flatten(1).ne(0).any(1)
        )
        # Only clean rows seen in training are kept: corrupted ones would fill memory, and an
        # evaluation split is read once.
        store = ~(ids == enc.unk_id).any(1) & ~noisy & self.training
        if noise is None or not bool(noisy.any()):
            lower = self.cache.states(ids, lengths, store)  # (B, t, H), exact for every row
        else:
            shape = (*ids.shape, enc.hidden_size)
            lower = torch.zeros(shape, dtype=enc.model.dtype, device=ids.device)  # (B, t, H)
            calm = ~noisy
            if bool(calm.any()):
                lower[calm] = self.cache.states(ids[calm], lengths[calm], store[calm])
            lower[noisy] = enc.lower_states(ids[noisy], lengths[noisy], noise[noisy])
        return enc.upper(lower, lengths).states


def text_config(cfg: ModelConfig, f: Any) -> ModelConfig:
    """``cfg`` for a new run on the open FeatureFile ``f``: with a pretrained text encoder,
    checks that ``f`` has token ids and records the encoder folder's hash (read once)."""
    if cfg.text_encoder != "pretrained" or "text" not in f.modalities:
        return cfg
    check_text_ids(f)  # before the (slow) hash: a file without ids fails at once
    check_text_ids(f, tokenizer_special_ids(cfg.text_model or None))
    digest = encoder_hash(resolve_encoder_dir(cfg.text_model or None))
    if cfg.text_model_hash and cfg.text_model_hash != digest:
        raise InputError(
            f"model.text_model_hash is {cfg.text_model_hash[:19]}…, but the encoder folder "
            f"hashes to {digest[:19]}….",
            hint="Leave text_model_hash out of a new run's config: training records it.",
        )
    # The folder as an absolute path: a record for people and messages. Loading the run again
    # never opens it on the run's word (locate_encoder): the user names it, or the hash finds it.
    folder = str(Path(cfg.text_model).expanduser().resolve()) if cfg.text_model else ""
    return cfg.override(text_model=folder, text_model_hash=digest)


def check_text_ids(f: Any, special_ids: tuple[int, int, int] | None = None) -> None:
    """InputError unless every split of the open FeatureFile ``f`` has text_ids, written by a
    tokenizer with these (unk, cls, sep) when the file records them."""
    lacking = [s for s in f.splits if "text_ids" not in f.h5[s]]
    if "text" not in f.modalities or lacking:
        where = f"its split {', '.join(lacking)}" if lacking and "text" in f.modalities else "it"
        raise InputError(
            f"'{f.path}' has no token ids (text_ids) in {where}, which the model's pretrained "
            "text encoder reads.",
            hint=IDS_HINT,
        )
    written = f.text_special_ids
    if special_ids is not None and written is not None and tuple(written) != special_ids:
        raise InputError(
            f"'{f.path}' has token ids from a tokenizer whose [UNK]/[CLS]/[SEP] are "
            f"{list(written)}; the model's encoder uses {list(special_ids)}.",
            hint="Re-import the data with this encoder's tokenizer, or choose the encoder "
            "the ids came from (model.text_model).",
        )
