"""MOSI-lite CSVs (real CMU-MOSI utterance features, binary labels) -> the qamoe HDF5 store.

The source (see its README): 2199 CMU-MOSI utterances with the utterance-level features of
bc-LSTM (Poria et al., ACL 2017) as published in declare-lab/multimodal-deep-learning:
text-CNN (100-d), openSMILE (73-d) and 3D-CNN video (100-d), one time step per modality,
labels 1 = positive, 0 = negative, a speaker-independent train/test split (62/31 videos).

The import adds a validation split carved out of train BY VIDEO (a video's utterances share a
speaker, so splitting by utterance would leak the speaker into validation), checks that every
file agrees on the labels, and keeps clip ids and transcripts.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.atomic import check_output
from qamoe_core.base.errors import DataFormatError, InputError, UsageError
from qamoe_core.base.inputs import check_present
from qamoe_core.data.store import SplitArrays, file_sha256, write_features

log = logging.getLogger(__name__)

# 229 / (1284 + 229) = 0.151: the train/valid ratio of the standard MOSI split (MMSA's
# 1284/229/686), so MOSI-lite's validation set is about as large relative to train.
DEFAULT_VALID_FRACTION = 0.15

SOURCE_SPLITS = ("train", "test")
# modality -> (file stem, feature dims excluding the trailing label column)
FILES: dict[str, tuple[str, int]] = {
    "text": ("text", 100),
    "audio": ("audio", 73),
    "vision": ("video", 100),
}
REQUIRED = (
    ["transcripts.csv"]
    + [f"{stem}_{s}0.csv" for s in SOURCE_SPLITS for stem, _ in FILES.values()]
    + [f"text_{s}.csv" for s in SOURCE_SPLITS]
)
PROGRESS_STEPS = 3  # read, split, write

EXTRACTOR = {
    "name": "mosi-lite",
    "text": "text-CNN utterance features, 100-d (bc-LSTM, Poria et al. 2017)",
    "audio": "openSMILE utterance features, 73-d (bc-LSTM)",
    "vision": "3D-CNN utterance features, 100-d (bc-LSTM)",
    "source": "declare-lab/multimodal-deep-learning (MIT), CMU-MOSI (Zadeh et al. 2016)",
}


@dataclass(frozen=True)
class _Source:
    """One source split as read: clip ids, video ids, transcripts, labels, features."""

    ids: list[str]
    videos: list[str]
    raw_text: list[str]
    label: np.ndarray  # (N,) float32 in {0, 1}
    features: dict[str, np.ndarray]  # modality -> (N, D) float32


def _read_rows(path: Path) -> list[list[str]]:
    """The non-blank rows of a UTF-8 CSV (a leading BOM, as Excel writes, is skipped)."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"'{path}', line {line}: not UTF-8 text ({exc.reason} at byte {exc.start}).",
            hint="Save the file as UTF-8 (Excel: 'CSV UTF-8'), or re-copy it from the source.",
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [row for row in reader if row]
    except csv.Error as exc:
        raise DataFormatError(
            f"'{path}', line {reader.line_num}: not a readable CSV ({exc}).",
            hint="Re-copy the file from the source.",
        ) from None
    if not rows:
        raise DataFormatError(
            f"'{path}' is empty.",
            hint="Re-copy the file from the source (see the MOSI-lite section of data/README.md).",
        )
    return rows


def _read_matrix(path: Path) -> np.ndarray:
    """An all-number CSV as float64, every value finite and within float32's range."""
    rows = _read_rows(path)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise DataFormatError(
            f"'{path}' has rows of different widths ({sorted(widths)} columns).",
            hint="Each MOSI-lite CSV has the same number of columns on every row.",
        )
    try:
        x = np.array(rows, dtype=np.float64)
    except ValueError:
        for i, row in enumerate(rows, 1):
            try:
                np.array(row, dtype=np.float64)
            except ValueError:
                raise DataFormatError(
                    f"'{path}', line {i}: a value is not a number.",
                    hint="MOSI-lite feature files hold numbers only, no header.",
                ) from None
        raise
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
    if bad.any():
        i, j = (int(k[0]) for k in np.nonzero(bad))
        what = "NaN or inf" if not np.isfinite(x[i, j]) else "beyond float32's range (3.4e38)"
        raise DataFormatError(
            f"'{path}', line {i + 1}: the value {rows[i][j]!r} is {what}.",
            hint="MOSI-lite features and labels are finite float32 numbers; re-copy the file.",
        )
    return x


def _check_label(path: Path, labels: np.ndarray, expected: np.ndarray) -> None:
    bad = np.flatnonzero(labels != expected)
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            f"'{path}' disagrees with transcripts.csv on {bad.size} labels (first at line {i + 1}:"
            f" {labels[i]:g} vs {expected[i]:g}).",
            hint="The MOSI-lite files must be aligned row by row; re-copy them from the source.",
        )


def _transcript_labels(root: Path, transcripts: list[list[str]], idx: np.ndarray) -> np.ndarray:
    """The 0/1 labels (column 3 of transcripts.csv) of rows ``idx``, as float64."""
    transcripts_file = root / "transcripts.csv"
    label_hint = "transcripts.csv rows are: clip id, transcript, video index, label (0 or 1)."
    values: list[float] = []
    for i in idx:
        cell = transcripts[i][3]
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if value not in (0.0, 1.0):  # NaN too
            raise DataFormatError(
                f"'{transcripts_file}', line {i + 1}: column 3 (label) must be 0 or 1; "
                f"got {cell!r}.",
                hint=label_hint,
            )
        values.append(value)
    return np.array(values)


def _read_source(root: Path, split: str, transcripts: list[list[str]]) -> _Source:
    index_file = root / f"text_{split}.csv"
    text_idx = _read_matrix(index_file)
    if text_idx.shape[1] != FILES["text"][1] + 1:
        raise DataFormatError(
            f"'{index_file}' has {text_idx.shape[1]} columns; expected {FILES['text'][1] + 1} "
            f"(a row number into transcripts.csv, then {FILES['text'][1]} text features).",
            hint="A column was added or lost; re-copy the file from the source.",
        )
    rows = text_idx[:, 0]
    bad = np.flatnonzero((rows != np.round(rows)) | (rows < 0) | (rows >= len(transcripts)))
    if bad.size:
        raise DataFormatError(
            f"'{index_file}', line {bad[0] + 1}: column 0 must be row numbers into "
            f"transcripts.csv (0..{len(transcripts) - 1}); got {rows[bad[0]]:g}.",
            hint="Column 0 counts the rows of transcripts.csv from 0; re-copy the files.",
        )
    idx = rows.astype(np.int64)
    ids = [transcripts[i][0] for i in idx]
    raw_text = [transcripts[i][1] for i in idx]
    label = _transcript_labels(root, transcripts, idx)
    # clip ids are "<video>_<n>" and YouTube ids may contain "_": split at the LAST one
    videos = [clip.rsplit("_", 1)[0] for clip in ids]

    features: dict[str, np.ndarray] = {}
    for m, (stem, dim) in FILES.items():
        path = root / f"{stem}_{split}0.csv"
        x = _read_matrix(path)
        if x.shape != (len(idx), dim + 1):
            raise DataFormatError(
                f"'{path}' has shape {x.shape}; expected ({len(idx)}, {dim + 1}) "
                f"({dim} features and the label, one row per line of '{index_file.name}').",
                hint="A row or column was added or lost; re-copy the file from the source.",
            )
        _check_label(path, x[:, -1], label)
        features[m] = x[:, :-1].astype(np.float32)
    # text_X.csv repeats text_X0.csv's features after the row index: a cheap alignment check
    if not np.allclose(text_idx[:, 1:], features["text"], atol=1e-5):
        raise DataFormatError(
            f"'{index_file}' and 'text_{split}0.csv' hold different text features.",
            hint="Their rows must be aligned; re-copy the files from the source.",
        )
    return _Source(ids, videos, raw_text, label.astype(np.float32), features)


def _split_by_video(videos: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean (N,) mask of rows moved to valid: whole videos, in an order fixed by ``seed``,
    until the utterance count is nearest ``fraction`` of N (at least one video moves, at least
    one stays)."""
    unique = sorted(set(videos))
    order = np.random.default_rng(seed).permutation(len(unique))
    counts: dict[str, int] = {}
    for v in videos:
        counts[v] = counts.get(v, 0) + 1
    target = fraction * len(videos)
    chosen: set[str] = set()
    taken = 0
    for j in order[: len(unique) - 1]:
        c = counts[unique[j]]
        # stop at the video boundary nearest the target (but keep at least one video)
        if chosen and abs(taken + c - target) >= abs(taken - target):
            break
        chosen.add(unique[j])
        taken += c
    return np.array([v in chosen for v in videos])


def _subset(src: _Source, rows: np.ndarray) -> SplitArrays:
    n = len(rows)
    return SplitArrays(
        ids=[src.ids[i] for i in rows],
        label=src.label[rows],
        features={m: x[rows][:, None, :] for m, x in src.features.items()},  # (N, 1, D)
        lengths={m: np.ones(n, dtype=np.int64) for m in src.features},
        raw_text=[src.raw_text[i] for i in rows],
    )


def _dir_sha256(root: Path) -> str:
    """One hash for the set of source files: SHA-256 over 'name sha256' lines, sorted."""
    lines = "".join(f"{name} {file_sha256(root / name)}\n" for name in sorted(REQUIRED))
    return hashlib.sha256(lines.encode()).hexdigest()


def _check_inputs(root: Path, valid_fraction: Any) -> float:
    """Check the folder, the fraction and the required files; returns the fraction as float."""
    if not root.is_dir():
        raise InputError(
            f"The folder '{root}' does not exist."
            if not root.exists()
            else f"'{root}' is a file, not the MOSI-lite folder.",
            hint="Give the folder that holds transcripts.csv and the *_train0.csv files.",
        )
    try:
        fraction = float(valid_fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 < fraction < 1.0:
        raise UsageError(
            f"The 'valid_fraction' parameter must be a float in (0, 1). "
            f"Got {valid_fraction!r} instead.",
            hint=f"{DEFAULT_VALID_FRACTION} matches the standard MOSI train/valid ratio.",
        )
    hint = "The MOSI-lite section of data/README.md lists the expected files."
    check_present((root / name for name in REQUIRED), "MOSI-lite file", hint, DataFormatError)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise DataFormatError(
            f"'{root}' is not a MOSI-lite folder: missing {', '.join(missing)}.", hint=hint
        )
    return fraction


def _read_transcripts(root: Path) -> list[list[str]]:
    """The rows of transcripts.csv, each of 4 columns."""
    transcripts = _read_rows(root / "transcripts.csv")
    wrong = [i for i, row in enumerate(transcripts) if len(row) != 4]
    if wrong:
        raise DataFormatError(
            f"'{root / 'transcripts.csv'}', line {wrong[0] + 1}: {len(transcripts[wrong[0]])} "
            "columns, but the file must have 4 columns: clip id, transcript, video index, label.",
            hint="Transcripts that contain commas must be quoted; re-copy the file.",
        )
    return transcripts


@dataclass(frozen=True)
class _Carved:
    """The three output splits, the train videos moved to valid and the videos per split."""

    splits: dict[str, SplitArrays]
    valid_videos: list[str]
    videos: dict[str, int]


def _carve_valid(root: Path, source: dict[str, _Source], fraction: float, seed: int) -> _Carved:
    """Keep test as published and move whole train videos to valid (see import_mosilite)."""
    train, test = source["train"], source["test"]
    overlap = set(train.videos) & set(test.videos)
    if overlap:  # the published split is speaker-independent; a change would leak speakers
        raise DataFormatError(
            f"'{root}': {len(overlap)} videos appear in both train and test "
            f"(e.g. {sorted(overlap)[0]}).",
            hint="MOSI-lite's split is by video; the files may have been mixed up.",
        )
    to_valid = _split_by_video(train.videos, fraction, seed)
    splits = {
        "train": _subset(train, np.flatnonzero(~to_valid)),
        "valid": _subset(train, np.flatnonzero(to_valid)),
        "test": _subset(test, np.arange(len(test.ids))),
    }
    valid_videos = sorted({v for v, moved in zip(train.videos, to_valid, strict=True) if moved})
    videos = {
        "train": len(set(train.videos)) - len(valid_videos),
        "valid": len(valid_videos),
        "test": len(set(test.videos)),
    }
    return _Carved(splits, valid_videos, videos)


def _write_store(
    out: str | os.PathLike[str],
    splits: dict[str, SplitArrays],
    settings: dict[str, Any],
    sha: str,
    force: bool,
) -> None:
    """Write the splits with MOSI-lite's provenance: extractor, valid-split settings, hash."""
    write_features(
        out,
        splits,
        dataset="mosi-lite",
        task="binary",
        scheme="binary",
        label_range=(0.0, 1.0),
        extractor={**EXTRACTOR, **settings},
        force=force,
        attrs={"source_sha256": sha, "notes": {"valid_split": "whole train videos, seeded"}},
    )


def import_mosilite(
    directory: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    seed: int = 0,
    force: bool = False,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Import the MOSI-lite CSVs in ``directory``; returns a JSON-able summary.

    Splits: ``test`` as published; ``valid`` = whole train videos drawn in an order fixed by
    ``seed`` until about ``valid_fraction`` of the train utterances; ``train`` = the rest.
    Every modality has sequence length 1; labels are 0/1 float32 (task and scheme "binary").
    ``progress`` is called as ``progress(1, stage=...)`` :data:`PROGRESS_STEPS` times.
    """
    root = Path(directory)
    fraction = _check_inputs(root, valid_fraction)
    check_output(out, force, inputs=[root / name for name in REQUIRED])
    tick = progress or (lambda n=1, **fields: None)

    transcripts = _read_transcripts(root)
    source = {s: _read_source(root, s, transcripts) for s in SOURCE_SPLITS}
    tick(1, stage="read")
    carved = _carve_valid(root, source, fraction, seed)
    splits = carved.splits
    tick(1, stage="split")

    sha = _dir_sha256(root)
    # the choices that made the valid split, recorded in the store and the summary alike
    settings = {"valid_fraction": fraction, "seed": int(seed), "valid_videos": carved.valid_videos}
    _write_store(out, splits, settings, sha, force)
    tick(1, stage="write")
    return {
        "source": str(root),
        "out": str(out),
        "dataset": "mosi-lite",
        "task": "binary",
        "scheme": "binary",
        "label_range": [0.0, 1.0],
        "splits": {s: len(a.label) for s, a in splits.items()},
        "videos": carved.videos,
        "positive_rate": {s: round(float(a.label.mean()), 4) for s, a in splits.items()},
        "dims": {m: int(x.shape[2]) for m, x in splits["train"].features.items()},
        "seq_lens": {m: 1 for m in FILES},
        **settings,
        "source_sha256": sha,
    }
