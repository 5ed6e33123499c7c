"""MMSA feature pickles (MOSI, MOSEI, SIMS; aligned and unaligned) -> the qamoe HDF5 store.

The layout is documented in ``MMSA_FORMAT.md`` (shared) and data/README.md: a dict with splits
``train``/``valid``/``test``, each a dict of parallel arrays ``id``, ``raw_text``, ``text``
(N, Lt, 768), ``text_bert`` (N, 3, Lt), ``audio`` (N, La, Da), ``vision`` (N, Lv, Dv),
``audio_lengths``/``vision_lengths`` (unaligned files only) and ``regression_labels``.

What the import fixes on the way: ``-inf``/NaN in the features become 0 (counted), float64,
float16 and torch tensors (bfloat16 included) become float32, padding after the valid length
becomes exactly 0 (counted: BERT states at [PAD] positions are not zero), lengths of aligned
files are derived (and recorded), and every shape problem is reported with the split and key
it was found in. What it refuses rather than guesses: empty splits or axes, non-finite or
out-of-range labels (unimodal ones too), an attention mask other than 0/1 and non-UTF-8 ids.
An id used twice (in one split or across splits) is warned about, not refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qamoe_core.base.atomic import atomic_path, check_output
from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.base.inputs import check_file
from qamoe_core.base.names import MODALITIES, SPLITS
from qamoe_core.data.importers.safe_pickle import safe_load
from qamoe_core.data.store import SplitArrays, file_sha256, write_features

log = logging.getLogger(__name__)

# SHA-256 of the released files, from the MMSA README (thuiar/MMSA), as listed in MMSA_FORMAT.md.
KNOWN_RELEASES: dict[str, tuple[str, str]] = {
    "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524": (
        "mosi",
        "MOSI unaligned_50",
    ),
    "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9": ("mosi", "MOSI aligned_50"),
    "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f": (
        "mosei",
        "MOSEI unaligned_50",
    ),
    "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791": (
        "mosei",
        "MOSEI aligned_50",
    ),
    "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f": (
        "sims",
        "SIMS unaligned_39",
    ),
}

# Metric scheme and label range per scheme (docs/design.md §5): MOSI/MOSEI [-3, 3], SIMS [-1, 1].
LABEL_RANGES: dict[str, tuple[float, float]] = {"mosi": (-3.0, 3.0), "sims": (-1.0, 1.0)}
KNOWN_DATASETS: dict[str, str] = {
    "mosi": "mosi",
    "mosei": "mosi",
    "sims": "sims",
    "ch-sims": "sims",
}

# SIMS' unimodal labels, kept as extra per-split datasets (the reader ignores unknown keys).
UNIMODAL_KEYS: dict[str, str] = {
    "regression_labels_T": "label_text",
    "regression_labels_A": "label_audio",
    "regression_labels_V": "label_vision",
}

PROGRESS_STEPS = 2 + len(SPLITS)  # load, one per split, write
_LABEL_TOL = 1e-4  # labels are stored as float32 in some files: 0.2 is 0.200000003


def _as_array(value: Any, key: str, where: str) -> np.ndarray:
    """numpy array from a numpy array, list or torch tensor (torch stays a lazy import).

    Half-precision tensors become float32 (numpy has no bfloat16; every loader casts anyway)."""
    if type(value).__module__.split(".")[0] == "torch":
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype in (torch.bfloat16, torch.float16):
                value = value.float()
            try:
                return value.numpy()
            except TypeError as exc:  # a dtype numpy lacks (float8, ...)
                raise DataFormatError(
                    f"{where}: '{key}' is a torch tensor of dtype {value.dtype}, which numpy "
                    f"cannot hold ({exc}).",
                    hint="Store features, lengths and labels as float32/float64 or integers.",
                ) from None
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataFormatError(
            f"{where}: '{key}' is not an array ({detail}).",
            hint="Rows of different lengths cannot form an array; pad every sample to one shape.",
        ) from None


def _numeric(value: Any, key: str, where: str) -> np.ndarray:
    arr = _as_array(value, key, where)
    if arr.dtype.kind not in "biuf":
        raise DataFormatError(
            f"{where}: '{key}' must hold numbers; got dtype {arr.dtype}.",
            hint="Features, lengths and labels must be numeric arrays.",
        )
    return arr


def _strings(value: Any, key: str, n: int, where: str) -> list[str]:
    items = value if isinstance(value, list) else _as_array(value, key, where).reshape(-1)
    out = []
    for i, v in enumerate(items):
        if not isinstance(v, bytes):
            out.append(str(v))
            continue
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(
                f"{where}: '{key}' entry {i} is not valid UTF-8 bytes ({exc.reason} at byte "
                f"{exc.start}: {v[:40]!r}).",
                hint=f"Store '{key}' as str, or as bytes encoded in UTF-8.",
            ) from None
    if len(out) != n:
        raise DataFormatError(
            f"{where}: '{key}' has {len(out)} entries but 'regression_labels' has {n}.",
            hint="Every key of a split must have one row per sample.",
        )
    return out


def _vector(value: Any, key: str, n: int, where: str) -> np.ndarray:
    """A per-sample vector (N,), accepting (N, 1) as MMSA's labels sometimes are."""
    arr = _numeric(value, key, where)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataFormatError(
            f"{where}: '{key}' must be 1-D (N,); got shape {arr.shape}.",
            hint="Per-sample keys (labels, lengths) hold one value per sample.",
        )
    _check_rows(arr, key, n, where)
    return arr


def _check_rows(arr: np.ndarray, key: str, n: int, where: str) -> None:
    """Every key of a split must hold one row per sample (``n`` = the labels' count)."""
    if arr.shape[0] != n:
        raise DataFormatError(
            f"{where}: '{key}' has {arr.shape[0]} samples but 'regression_labels' has {n}.",
            hint="Every key of a split must have one row per sample.",
        )


def _lengths(value: Any, key: str, n: int, t: int, where: str) -> np.ndarray:
    arr = _vector(value, key, n, where).astype(np.float64)
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
        bad = int(np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))[0])
        raise DataFormatError(
            f"{where}: '{key}' must hold whole numbers of steps; sample {bad} has {arr[bad]:g}.",
            hint="Lengths count valid steps and must lie in [0, T] of the matching features.",
        )
    if (arr < 0).any() or (arr > t).any():
        raise DataFormatError(
            f"{where}: '{key}' holds lengths up to {int(arr.max())} (min {int(arr.min())}) but "
            f"the padded axis has {t} steps.",
            hint="Lengths count valid steps and must lie in [0, T] of the matching features.",
        )
    return arr.astype(np.int64)


def _check_finite(arr: np.ndarray, key: str, where: str) -> None:
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DataFormatError(
            f"{where}: '{key}' holds NaN or inf (first at sample {i}: {arr[i]}).",
            hint="Labels must be finite scores; drop or fix the unlabeled samples.",
        )


def _zero_padding(x: np.ndarray, lengths: np.ndarray) -> int:
    """Zero steps at or after ``lengths`` in place; returns how many nonzero values it cleared."""
    pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]  # (N, T)
    cleared = int(np.count_nonzero(x[pad]))
    x[pad] = 0.0
    return cleared


class _Split:
    """One converted split plus what the conversion found (counts, length candidates)."""

    def __init__(self) -> None:
        self.arrays: SplitArrays
        self.unimodal: dict[str, np.ndarray] = {}
        self.nonfinite: dict[str, int] = {}
        self.padding: dict[str, int] = {}
        self.length_source: dict[str, str] = {}
        self.mask_fits: dict[str, bool] = {}  # aligned modality: no data after the text mask
        self.dtypes: dict[str, str] = {}


def _check_split_keys(raw: Mapping[str, Any], where: str) -> None:
    """Refuse a split that lacks one of the keys every MMSA split carries."""
    for key in ("id", "regression_labels", *MODALITIES):
        if key not in raw:
            raise DataFormatError(
                f"{where}: the key '{key}' is missing (keys present: {', '.join(map(str, raw))}).",
                hint="An MMSA split holds id, text, audio, vision and regression_labels.",
            )


def _split_labels(value: Any, where: str) -> np.ndarray:
    """The split's sentiment scores as finite float32 (N,), N at least 1."""
    labels = _numeric(value, "regression_labels", where)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataFormatError(
            f"{where}: 'regression_labels' must be 1-D (N,); got shape {labels.shape}.",
            hint="regression_labels holds one sentiment score per sample.",
        )
    if labels.shape[0] == 0:
        raise DataFormatError(
            f"{where}: the split has no samples ('regression_labels' has 0 rows).",
            hint="Every split (train, valid, test) needs at least one sample.",
        )
    labels = labels.astype(np.float32)
    _check_finite(labels, "regression_labels", where)
    return labels


def _warn_repeated_ids(ids: list[str], where: str) -> None:
    """Log (once per split) ids used by more than one row."""
    # A repeated id is told, not refused: nothing downstream keys on ids, and a published
    # release cannot be mended by its users.
    seen: dict[str, int] = {}
    repeats = []
    for i, clip in enumerate(ids):
        if clip in seen:
            repeats.append((clip, seen[clip], i))
        seen.setdefault(clip, i)
    if repeats:
        clip, first, again = repeats[0]
        log.warning("%s: %d id(s) repeat, e.g. %r (rows %d and %d)", where, len(repeats), clip,
                    first, again)  # fmt: skip


def _unimodal_labels(raw: Mapping[str, Any], n: int, where: str) -> dict[str, np.ndarray]:
    """SIMS' unimodal labels present in the split, as finite float32 (N,) by stored name."""
    out: dict[str, np.ndarray] = {}
    for key, name in UNIMODAL_KEYS.items():
        if key in raw:
            out[name] = _vector(raw[key], key, n, where).astype(np.float32)
            _check_finite(out[name], key, where)
    return out


def _frame_features(value: Any, m: str, n: int, where: str) -> tuple[np.ndarray, int, str]:
    """(features, non-finite values zeroed, source dtype) of one modality's (N, T, D) array.

    The features are a float32 copy, safe to edit."""
    src = _numeric(value, m, where)
    is_torch = type(value).__module__.split(".")[0] == "torch"
    torch_dtype = str(getattr(value, "dtype", src.dtype)).removeprefix("torch.")
    dtype = f"torch {torch_dtype}" if is_torch else str(src.dtype)
    if src.ndim != 3:
        raise DataFormatError(
            f"{where}: '{m}' must be 3-D (N, T, D); got shape {src.shape}.",
            hint="MMSA stores frame features as (samples, steps, dims).",
        )
    _check_rows(src, m, n, where)
    if src.shape[1] == 0 or src.shape[2] == 0:
        raise DataFormatError(
            f"{where}: '{m}' has shape {src.shape}: no time steps or no feature dims.",
            hint="MMSA stores frame features as (samples, steps, dims), each at least 1.",
        )
    x = np.array(src, dtype=np.float32)  # a copy we may edit; float64 -> float32 here
    bad = ~np.isfinite(x)  # also catches float64 values beyond float32's range
    x[bad] = 0.0
    return x, int(bad.sum()), dtype


def _read_text_bert(value: Any, n: int, t_text: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(input ids as int64, attention mask) from ``text_bert``, both (N, Lt), checked."""
    bert = _numeric(value, "text_bert", where)
    if bert.ndim != 3 or bert.shape[0] != n or bert.shape[1] != 3 or bert.shape[2] != t_text:
        raise DataFormatError(
            f"{where}: 'text_bert' must have shape ({n}, 3, {t_text}) to match 'text'; "
            f"got {bert.shape}.",
            hint="text_bert stacks BERT input ids, attention mask and token types.",
        )
    token_ids = bert[:, 0, :]  # (N, Lt), stored as floats in MMSA files
    if not np.isfinite(token_ids).all() or (token_ids != np.round(token_ids)).any():
        raise DataFormatError(
            f"{where}: 'text_bert'[:, 0] (input ids) must be integers.",
            hint="text_bert stacks BERT input ids, attention mask and token types.",
        )
    mask = bert[:, 1, :]
    bad = ~np.isin(mask, (0, 1))  # NaN is in neither
    if bad.any():
        i, j = (int(k[0]) for k in np.nonzero(bad))
        raise DataFormatError(
            f"{where}: 'text_bert'[:, 1] (attention mask) must hold only 0 and 1; sample {i} "
            f"has {mask[i, j]:g} at step {j} ({int(bad.sum())} such values).",
            hint="The text lengths come from this mask: 1 for each token, 0 for padding.",
        )
    return token_ids.astype(np.int64), mask


def _text_lengths(
    raw: Mapping[str, Any], text: np.ndarray, n: int, where: str
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(valid text steps per sample, BERT input ids or None, where the lengths came from)."""
    t_text = text.shape[1]
    if "text_bert" in raw:
        text_ids, mask = _read_text_bert(raw["text_bert"], n, t_text, where)
        return (mask > 0.5).sum(axis=1).astype(np.int64), text_ids, "text_attention_mask"
    # no mask: the last step with any nonzero feature ends the sentence
    nonzero = np.abs(text).sum(axis=2) > 0  # (N, Lt)
    last = t_text - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0).astype(np.int64), None, "nonzero_steps"


def _mask_fits(x: np.ndarray, text_lengths: np.ndarray, t_text: int) -> bool:
    """Whether an aligned modality has the text's steps and no data after the text mask."""
    if x.shape[1] != t_text:
        return False
    pad = np.arange(t_text)[None, :] >= text_lengths[:, None]
    return not np.abs(x[pad]).any()


def _convert_split(raw: Mapping[str, Any], split: str, where: str) -> _Split:
    """Check and convert one MMSA split. Raises DataFormatError naming split and key."""
    where = f"{where} [{split}]"
    _check_split_keys(raw, where)
    out = _Split()
    labels = _split_labels(raw["regression_labels"], where)
    n = labels.shape[0]
    ids = _strings(raw["id"], "id", n, where)
    _warn_repeated_ids(ids, where)
    raw_text = _strings(raw["raw_text"], "raw_text", n, where) if "raw_text" in raw else None
    out.unimodal = _unimodal_labels(raw, n, where)

    feats: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        feats[m], out.nonfinite[m], out.dtypes[m] = _frame_features(raw[m], m, n, where)

    lengths: dict[str, np.ndarray] = {}
    lengths["text"], text_ids, out.length_source["text"] = _text_lengths(
        raw, feats["text"], n, where
    )
    out.padding["text"] = _zero_padding(feats["text"], lengths["text"])
    for m in ("audio", "vision"):
        key = f"{m}_lengths"
        if key in raw:
            lengths[m] = _lengths(raw[key], key, n, feats[m].shape[1], where)
            out.length_source[m] = key
            out.padding[m] = _zero_padding(feats[m], lengths[m])
        else:
            # Aligned file: steps follow the text. Use the text mask only if no sample has data
            # after it (padding direction is not documented); the file-level choice is made
            # once every split is seen, in _resolve_aligned_lengths.
            lengths[m] = lengths["text"].copy()
            out.mask_fits[m] = _mask_fits(feats[m], lengths["text"], feats["text"].shape[1])
            out.padding[m] = 0
    out.arrays = SplitArrays(
        ids=ids,
        label=labels,
        features=feats,
        lengths=lengths,
        raw_text=raw_text,
        text_ids=text_ids,
    )
    return out


def _resolve_aligned_lengths(splits: dict[str, _Split]) -> dict[str, str]:
    """Lengths of modalities without ``*_lengths``: the text mask if it fits every split, else T."""
    names = list(splits)
    sources = dict(splits[names[0]].length_source)
    for s in names[1:]:
        if splits[s].length_source["text"] != sources["text"]:
            raise DataFormatError(
                f"Split '{s}' and split '{names[0]}' disagree on 'text_bert' (one lacks it).",
                hint="Every split needs the same keys.",
            )
    for m in ("audio", "vision"):
        have = [s for s in names if m in splits[s].length_source]
        if have and len(have) != len(names):
            lacking = next(s for s in names if s not in have)
            raise DataFormatError(
                f"Split '{have[0]}' has '{m}_lengths' but split '{lacking}' does not.",
                hint="A file is either unaligned (all splits carry lengths) or aligned (none).",
            )
        if have:
            continue
        fits = all(sp.mask_fits[m] for sp in splits.values())
        sources[m] = "text_attention_mask" if fits else "full"
        for sp in splits.values():
            if not fits:
                t = sp.arrays.features[m].shape[1]
                sp.arrays.lengths[m] = np.full(len(sp.arrays.label), t, dtype=np.int64)
            sp.length_source[m] = sources[m]
    return sources


def _detect_scheme(labels: np.ndarray, has_unimodal: bool) -> tuple[str, str]:
    """(scheme, why): SIMS has unimodal labels or a 0.2 grid on [-1, 1]; else MOSI's [-3, 3]."""
    if has_unimodal:
        return "sims", "regression_labels_T present"
    on_grid = np.abs(labels * 5 - np.round(labels * 5)) < _LABEL_TOL * 5
    if np.abs(labels).max() <= 1 + _LABEL_TOL and on_grid.all():
        return "sims", "labels on a 0.2 grid within [-1, 1]"
    return "mosi", "labels off SIMS' 0.2 grid or beyond [-1, 1]"


def _dataset_name(src: Path, release: tuple[str, str] | None, scheme: str) -> str:
    if release is not None:
        return release[0]
    # MMSA's layout is <DATASET>/Processed/<file>.pkl; also accept the name in the file stem.
    # Whole folder names only: a user folder like "simsek" must not make a file "sims".
    folders = {p.lower() for p in src.parent.parts}
    stem = src.stem.lower()
    for name in ("mosei", "mosi", "sims"):
        if name in folders or f"ch-{name}" in folders or stem.startswith(name):
            return name
    return "sims" if scheme == "sims" else "mmsa"


@dataclass(frozen=True)
class _Converted:
    """A checked, converted MMSA file and what was decided about it (lengths, name, scheme)."""

    src: Path
    sha: str
    release: tuple[str, str] | None  # (dataset, release name) of a known file
    splits: dict[str, _Split]
    length_source: dict[str, str]
    name: str
    scheme: str
    why: str  # how the scheme was chosen

    @property
    def aligned(self) -> bool:
        return not all(
            s.endswith("_lengths")
            for s in (self.length_source["audio"], self.length_source["vision"])
        )

    @property
    def has_unimodal(self) -> bool:
        return any(c.unimodal for c in self.splits.values())


def _check_source(src: Path) -> None:
    """Refuse a path that is missing, a folder or a pipe, before anything slow happens."""
    if src.is_dir():
        raise InputError(
            f"'{src}' is a directory, not an MMSA .pkl file.",
            hint="Give the .pkl file itself, e.g. MOSI/Processed/unaligned_50.pkl.",
        )
    check_file(
        src,
        "MMSA feature file",
        hint="Give the path of an MMSA feature file, e.g. MOSI/Processed/unaligned_50.pkl.",
    )


def _check_layout(data: Any, where: str) -> None:
    """The loaded pickle must be a dict holding every split, each a dict."""
    if not isinstance(data, dict):
        raise DataFormatError(
            f"{where} holds a {type(data).__name__}, not a dict of splits.",
            hint="An MMSA feature file is a dict with keys train, valid, test.",
        )
    for split in SPLITS:
        if split not in data:
            raise DataFormatError(
                f"{where}: the split '{split}' is missing (keys: {', '.join(map(str, data))}).",
                hint="An MMSA feature file is a dict with keys train, valid, test.",
            )
    for split in SPLITS:
        if not isinstance(data[split], dict):
            raise DataFormatError(
                f"{where}: the split '{split}' is a {type(data[split]).__name__}, not a dict.",
                hint="Each split is a dict of parallel arrays (id, text, audio, vision, labels).",
            )


def _convert_splits(
    data: dict[str, Any], where: str, tick: Callable[..., None]
) -> dict[str, _Split]:
    """Convert every split in order, dropping each source split from ``data`` once done."""
    converted: dict[str, _Split] = {}
    for split in SPLITS:
        converted[split] = _convert_split(data[split], split, where)
        data[split] = None  # drop the source arrays now: MOSEI is several GB
        tick(1, stage=split)
    return converted


def _warn_shared_ids(converted: dict[str, _Split], where: str) -> None:
    """Log ids found in more than one split."""
    # An id in two splits is a leak between them (or a clash of names) worth telling; it is
    # not refused, since a user cannot mend a published release and would be locked out.
    first_split: dict[str, str] = {}
    shared = []
    for split, conv in converted.items():
        shared += [(c, first_split[c], split) for c in conv.arrays.ids
                   if first_split.setdefault(c, split) != split]  # fmt: skip
    if shared:
        clip, a, b = shared[0]
        log.warning(
            "%s: %d id(s) appear in two splits, e.g. %r in [%s] and [%s]: check that the "
            "splits do not leak", where, len(shared), clip, a, b,
        )  # fmt: skip


def _check_dims(converted: dict[str, _Split], where: str) -> None:
    """Every split must have train's feature dims for each modality."""
    for split, conv in converted.items():
        for m in MODALITIES:
            d, d0 = conv.arrays.features[m].shape[2], converted["train"].arrays.features[m].shape[2]
            if d != d0:
                raise DataFormatError(
                    f"{where} [{split}]: '{m}' has {d} feature dims but [train] has {d0}.",
                    hint="All splits of a file must come from the same feature extractor.",
                )


def _choose_scheme(
    converted: dict[str, _Split], src: Path, release: tuple[str, str] | None, dataset: str | None
) -> tuple[str, str, str]:
    """(dataset name, scheme, why): the labels decide, unless a known dataset name disagrees."""
    all_labels = np.concatenate([c.arrays.label for c in converted.values()])
    has_unimodal = any(c.unimodal for c in converted.values())
    scheme, why = _detect_scheme(all_labels, has_unimodal)
    name = dataset or _dataset_name(src, release, scheme)
    if name.lower() in KNOWN_DATASETS and KNOWN_DATASETS[name.lower()] != scheme:
        log.warning(
            "labels look like %s (%s) but dataset %r says %s",
            scheme,
            why,
            name,
            KNOWN_DATASETS[name.lower()],
        )
        scheme, why = KNOWN_DATASETS[name.lower()], f"dataset name {name!r}"
    return name, scheme, why


def _check_label_ranges(conv: _Converted, where: str) -> None:
    """Every label (unimodal ones too) must lie in the scheme's range."""
    lo, hi = LABEL_RANGES[conv.scheme]
    name, scheme = conv.name, conv.scheme
    for split, sp in conv.splits.items():
        lab = sp.arrays.label
        if lab.min() < lo - _LABEL_TOL or lab.max() > hi + _LABEL_TOL:
            raise DataFormatError(
                f"{where} [{split}]: 'regression_labels' span [{lab.min():.3g}, {lab.max():.3g}] "
                f"but dataset {name!r} ({scheme} scheme) has labels in [{lo:g}, {hi:g}].",
                hint="Pass --dataset with the right name (mosi, mosei or sims).",
            )
        for name_out, values in sp.unimodal.items():
            key = next(k for k, v in UNIMODAL_KEYS.items() if v == name_out)
            if values.min() < lo - _LABEL_TOL or values.max() > hi + _LABEL_TOL:
                raise DataFormatError(
                    f"{where} [{split}]: '{key}' spans [{values.min():.3g}, {values.max():.3g}] "
                    f"but dataset {name!r} ({scheme} scheme) has labels in [{lo:g}, {hi:g}].",
                    hint="Unimodal labels share the range of regression_labels.",
                )


def _summary(conv: _Converted, out: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON-able summary :func:`import_mmsa` returns."""

    def total(field: str) -> dict[str, int]:
        return {m: sum(getattr(c, field)[m] for c in conv.splits.values()) for m in MODALITIES}

    lo, hi = LABEL_RANGES[conv.scheme]
    train = conv.splits["train"]
    first = train.arrays
    return {
        "source": str(conv.src),
        "out": str(out),
        "dataset": conv.name,
        "task": "regression",
        "scheme": conv.scheme,
        "scheme_reason": conv.why,
        "label_range": [lo, hi],
        "aligned": conv.aligned,
        "splits": {s: len(c.arrays.label) for s, c in conv.splits.items()},
        "dims": {m: int(first.features[m].shape[2]) for m in MODALITIES},
        "seq_lens": {m: int(first.features[m].shape[1]) for m in MODALITIES},
        "length_source": conv.length_source,
        "nonfinite_replaced": total("nonfinite"),
        "padding_zeroed": total("padding"),
        "source_dtypes": train.dtypes,
        "text_ids": first.text_ids is not None,
        "raw_text": first.raw_text is not None,
        "unimodal_labels": sorted(train.unimodal),
        "source_sha256": conv.sha,
        "sha256_match": conv.release is not None,
        "release": conv.release[1] if conv.release else None,
    }


def _write_store(tmp: Path, conv: _Converted, summary: dict[str, Any]) -> None:
    """Write the splits to ``tmp`` with their provenance, then SIMS' unimodal labels."""
    extractor = {
        "name": "mmsa",
        "source_file": conv.src.name,
        "release": summary["release"] or "unknown",
        "aligned": conv.aligned,
        "length_source": conv.length_source,
        "nonfinite_replaced": summary["nonfinite_replaced"],
        "padding_zeroed": summary["padding_zeroed"],
        "source_dtypes": summary["source_dtypes"],
    }
    attrs = {
        "source_sha256": conv.sha,
        "source_release": summary["release"] or "unknown",
        "notes": {"scheme_reason": conv.why, "unimodal_labels": summary["unimodal_labels"]},
    }
    if summary["text_ids"]:
        # MMSA's text_bert holds bert-base-uncased ids (bert-base-chinese for SIMS): both
        # vocabularies put [UNK], [CLS], [SEP] at 100, 101, 102.
        attrs["text_special_ids"] = [100, 101, 102]
    write_features(
        tmp,
        {s: c.arrays for s, c in conv.splits.items()},
        dataset=conv.name,
        task="regression",
        scheme=conv.scheme,
        label_range=LABEL_RANGES[conv.scheme],
        extractor=extractor,
        force=True,
        attrs=attrs,
    )
    if conv.has_unimodal:
        with h5py.File(tmp, "a") as h5:
            for split, sp in conv.splits.items():
                for key, values in sp.unimodal.items():
                    h5[split].create_dataset(key, data=values)
            h5.flush()  # raises a write failure that close() would swallow


def import_mmsa(
    pkl_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    force: bool = False,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Import one MMSA feature pickle into a qamoe HDF5 file; returns a JSON-able summary.

    ``dataset`` names the dataset in the file (default: from the published SHA-256 when the
    file is a known release, else from the path, else from the labels). A known name
    (mosi, mosei, sims) also fixes the metric scheme; otherwise it is detected from the labels.
    ``progress`` is called as ``progress(1, stage=...)`` :data:`PROGRESS_STEPS` times.
    """
    src = Path(pkl_path)
    where = f"'{src}'"
    _check_source(src)
    check_output(out, force, inputs=[src])  # fail before the slow load, not after
    tick = progress or (lambda n=1, **fields: None)

    sha = file_sha256(src)
    release = KNOWN_RELEASES.get(sha)
    data = safe_load(src)
    tick(1, stage="load")
    _check_layout(data, where)
    converted = _convert_splits(data, where, tick)
    _warn_shared_ids(converted, where)
    _check_dims(converted, where)
    length_source = _resolve_aligned_lengths(converted)
    name, scheme, why = _choose_scheme(converted, src, release, dataset)
    conv = _Converted(src, sha, release, converted, length_source, name, scheme, why)
    _check_label_ranges(conv, where)

    summary = _summary(conv, out)
    with atomic_path(out, force=force) as tmp:
        # write_features renames its own temporary over `tmp`; we then add SIMS' unimodal
        # labels beside `label`, and only then does `out` appear.
        _write_store(tmp, conv, summary)
    tick(1, stage="write")
    for m, count in summary["nonfinite_replaced"].items():
        if count:
            log.info("%s: replaced %d non-finite values by 0", m, count)
    return summary
