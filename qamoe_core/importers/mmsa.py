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
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from qamoe_core.atomic import atomic_path, check_output
from qamoe_core.errors import DataFormatError, InputError
from qamoe_core.h5store import SplitArrays, file_sha256, write_features
from qamoe_core.importers.safe_pickle import safe_load
from qamoe_core.names import MODALITIES, SPLITS

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

# Metric scheme and label range per scheme (DESIGN §5): MOSI/MOSEI on [-3, 3], SIMS on [-1, 1].
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


def _convert_split(raw: Mapping[str, Any], split: str, where: str) -> _Split:
    """Check and convert one MMSA split. Raises DataFormatError naming split and key."""
    where = f"{where} [{split}]"
    for key in ("id", "regression_labels", *MODALITIES):
        if key not in raw:
            raise DataFormatError(
                f"{where}: the key '{key}' is missing (keys present: {', '.join(map(str, raw))}).",
                hint="An MMSA split holds id, text, audio, vision and regression_labels.",
            )
    out = _Split()
    labels = _numeric(raw["regression_labels"], "regression_labels", where)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataFormatError(
            f"{where}: 'regression_labels' must be 1-D (N,); got shape {labels.shape}.",
            hint="regression_labels holds one sentiment score per sample.",
        )
    n = labels.shape[0]
    if n == 0:
        raise DataFormatError(
            f"{where}: the split has no samples ('regression_labels' has 0 rows).",
            hint="Every split (train, valid, test) needs at least one sample.",
        )
    labels = labels.astype(np.float32)
    _check_finite(labels, "regression_labels", where)
    ids = _strings(raw["id"], "id", n, where)
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
    raw_text = _strings(raw["raw_text"], "raw_text", n, where) if "raw_text" in raw else None
    for key, name in UNIMODAL_KEYS.items():
        if key in raw:
            out.unimodal[name] = _vector(raw[key], key, n, where).astype(np.float32)
            _check_finite(out.unimodal[name], key, where)

    feats: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        src = _numeric(raw[m], m, where)
        is_torch = type(raw[m]).__module__.split(".")[0] == "torch"
        torch_dtype = str(getattr(raw[m], "dtype", src.dtype)).removeprefix("torch.")
        out.dtypes[m] = f"torch {torch_dtype}" if is_torch else str(src.dtype)
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
        out.nonfinite[m] = int(bad.sum())
        x[bad] = 0.0
        feats[m] = x

    lengths: dict[str, np.ndarray] = {}
    text_ids = None
    t_text = feats["text"].shape[1]
    if "text_bert" in raw:
        bert = _numeric(raw["text_bert"], "text_bert", where)
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
        text_ids = token_ids.astype(np.int64)
        mask = bert[:, 1, :]
        bad = ~np.isin(mask, (0, 1))  # NaN is in neither
        if bad.any():
            i, j = (int(k[0]) for k in np.nonzero(bad))
            raise DataFormatError(
                f"{where}: 'text_bert'[:, 1] (attention mask) must hold only 0 and 1; sample {i} "
                f"has {mask[i, j]:g} at step {j} ({int(bad.sum())} such values).",
                hint="The text lengths come from this mask: 1 for each token, 0 for padding.",
            )
        lengths["text"] = (mask > 0.5).sum(axis=1).astype(np.int64)
        out.length_source["text"] = "text_attention_mask"
    else:
        # no mask: the last step with any nonzero feature ends the sentence
        nonzero = np.abs(feats["text"]).sum(axis=2) > 0  # (N, Lt)
        last = t_text - np.argmax(nonzero[:, ::-1], axis=1)
        lengths["text"] = np.where(nonzero.any(axis=1), last, 0).astype(np.int64)
        out.length_source["text"] = "nonzero_steps"
    out.padding["text"] = _zero_padding(feats["text"], lengths["text"])

    for m in ("audio", "vision"):
        key = f"{m}_lengths"
        t = feats[m].shape[1]
        if key in raw:
            lengths[m] = _lengths(raw[key], key, n, t, where)
            out.length_source[m] = key
            out.padding[m] = _zero_padding(feats[m], lengths[m])
        else:
            # Aligned file: steps follow the text. Use the text mask only if no sample has data
            # after it (padding direction is not documented); the file-level choice is made
            # once every split is seen, in _resolve_aligned_lengths.
            lengths[m] = lengths["text"].copy()
            pad = np.arange(t)[None, :] >= lengths["text"][:, None] if t == t_text else None
            out.mask_fits[m] = pad is not None and not np.abs(feats[m][pad]).any()
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
    if not src.exists():
        raise InputError(
            f"The file '{src}' does not exist.",
            hint="Give the path of an MMSA feature file, e.g. MOSI/Processed/unaligned_50.pkl.",
        )
    if src.is_dir():
        raise InputError(
            f"'{src}' is a directory, not an MMSA .pkl file.",
            hint="Give the .pkl file itself, e.g. MOSI/Processed/unaligned_50.pkl.",
        )
    check_output(out, force, inputs=[src])  # fail before the slow load, not after
    tick = progress or (lambda n=1, **fields: None)

    sha = file_sha256(src)
    release = KNOWN_RELEASES.get(sha)
    data = safe_load(src)
    tick(1, stage="load")
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

    converted: dict[str, _Split] = {}
    for split in SPLITS:
        converted[split] = _convert_split(data[split], split, where)
        data[split] = None  # drop the source arrays now: MOSEI is several GB
        tick(1, stage=split)
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
    for split, conv in converted.items():
        for m in MODALITIES:
            d, d0 = conv.arrays.features[m].shape[2], converted["train"].arrays.features[m].shape[2]
            if d != d0:
                raise DataFormatError(
                    f"{where} [{split}]: '{m}' has {d} feature dims but [train] has {d0}.",
                    hint="All splits of a file must come from the same feature extractor.",
                )
    length_source = _resolve_aligned_lengths(converted)
    aligned = not all(
        s.endswith("_lengths") for s in (length_source["audio"], length_source["vision"])
    )

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
    lo, hi = LABEL_RANGES[scheme]
    for split, conv in converted.items():
        lab = conv.arrays.label
        if lab.min() < lo - _LABEL_TOL or lab.max() > hi + _LABEL_TOL:
            raise DataFormatError(
                f"{where} [{split}]: 'regression_labels' span [{lab.min():.3g}, {lab.max():.3g}] "
                f"but dataset {name!r} ({scheme} scheme) has labels in [{lo:g}, {hi:g}].",
                hint="Pass --dataset with the right name (mosi, mosei or sims).",
            )
        for name_out, values in conv.unimodal.items():
            key = next(k for k, v in UNIMODAL_KEYS.items() if v == name_out)
            if values.min() < lo - _LABEL_TOL or values.max() > hi + _LABEL_TOL:
                raise DataFormatError(
                    f"{where} [{split}]: '{key}' spans [{values.min():.3g}, {values.max():.3g}] "
                    f"but dataset {name!r} ({scheme} scheme) has labels in [{lo:g}, {hi:g}].",
                    hint="Unimodal labels share the range of regression_labels.",
                )

    def total(field: str) -> dict[str, int]:
        return {m: sum(getattr(c, field)[m] for c in converted.values()) for m in MODALITIES}

    first = converted["train"].arrays
    summary: dict[str, Any] = {
        "source": str(src),
        "out": str(out),
        "dataset": name,
        "task": "regression",
        "scheme": scheme,
        "scheme_reason": why,
        "label_range": [lo, hi],
        "aligned": aligned,
        "splits": {s: len(c.arrays.label) for s, c in converted.items()},
        "dims": {m: int(first.features[m].shape[2]) for m in MODALITIES},
        "seq_lens": {m: int(first.features[m].shape[1]) for m in MODALITIES},
        "length_source": length_source,
        "nonfinite_replaced": total("nonfinite"),
        "padding_zeroed": total("padding"),
        "source_dtypes": converted["train"].dtypes,
        "text_ids": first.text_ids is not None,
        "raw_text": first.raw_text is not None,
        "unimodal_labels": sorted(converted["train"].unimodal),
        "source_sha256": sha,
        "sha256_match": release is not None,
        "release": release[1] if release else None,
    }
    extractor = {
        "name": "mmsa",
        "source_file": src.name,
        "release": summary["release"] or "unknown",
        "aligned": aligned,
        "length_source": length_source,
        "nonfinite_replaced": summary["nonfinite_replaced"],
        "padding_zeroed": summary["padding_zeroed"],
        "source_dtypes": summary["source_dtypes"],
    }
    attrs = {
        "source_sha256": sha,
        "source_release": summary["release"] or "unknown",
        "notes": {"scheme_reason": why, "unimodal_labels": summary["unimodal_labels"]},
    }
    if summary["text_ids"]:
        # MMSA's text_bert holds bert-base-uncased ids (bert-base-chinese for SIMS): both
        # vocabularies put [UNK], [CLS], [SEP] at 100, 101, 102.
        attrs["text_special_ids"] = [100, 101, 102]
    with atomic_path(out, force=force) as tmp:
        # write_features renames its own temporary over `tmp`; we then add SIMS' unimodal
        # labels beside `label`, and only then does `out` appear.
        write_features(
            tmp,
            {s: c.arrays for s, c in converted.items()},
            dataset=name,
            task="regression",
            scheme=scheme,
            label_range=(lo, hi),
            extractor=extractor,
            force=True,
            attrs=attrs,
        )
        if has_unimodal:
            with h5py.File(tmp, "a") as h5:
                for split, conv in converted.items():
                    for key, values in conv.unimodal.items():
                        h5[split].create_dataset(key, data=values)
                h5.flush()  # raises a write failure that close() would swallow
    tick(1, stage="write")
    for m, count in summary["nonfinite_replaced"].items():
        if count:
            log.info("%s: replaced %d non-finite values by 0", m, count)
    return summary
