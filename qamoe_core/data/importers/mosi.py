"""CMU-MOSI with its continuous labels and honest inputs -> the qamoe HDF5 store.

Sources (both folders' READMEs say more): ``mosi-lite/`` holds the 2199 transcripts and the
bc-LSTM utterance features (Poria et al., ACL 2017); ``cmu-mosi-labels/`` holds CMU-MOSI's own
scores in [-3, 3] (Zadeh et al. 2016) and the standard CMU folds by video.

Why two protocols: the bc-LSTM text-CNN and 3D-CNN features were fitted on the 62 bc-LSTM
train videos and give the label away there, and 24 of the 31 CMU standard test videos are such
videos. So

- ``std``: the CMU folds (train 1284 / valid 229 / test 686) with text re-embedded from the
  transcripts by MiniLM-L6 (never saw MOSI labels) and the openSMILE audio; no vision.
  The label-fitted features are refused. ``cv_fold=K`` replaces the 10-video valid fold by
  group K of a grouped 5-fold split of the std train+valid videos (test stays the std test),
  because that small fold ranks configurations poorly.
- ``bclstm-cv``: the 752 utterances of the 31 bc-LSTM test videos, where all three feature
  sets are honest, split by video: test = group K, valid = group K+1 (mod 5), train = rest.

Groups (:func:`video_groups`): the videos ordered by SHA-256 of their id, the i-th in that
order goes to group i mod 5. Independent of file order and of Python's hash seed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.atomic import check_output
from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.base.inputs import check_present
from qamoe_core.data.importers import mosi_text
from qamoe_core.data.importers.mosilite import _read_rows, _read_source
from qamoe_core.data.location import dataset_dir
from qamoe_core.data.store import SplitArrays, file_sha256, write_features

log = logging.getLogger(__name__)

PROTOCOLS = ("std", "bclstm-cv")
TEXT_SOURCES = ("minilm", "cnn")
POOLINGS = ("token", "sentence")
N_FOLDS = 5
LABEL_FILE = "OpinionLevelSentiment.csv"
FOLDS_FILE = "std_folds.csv"
LITE_FILES = ("transcripts.csv", "text_train.csv", "text_test.csv", "audio_train0.csv",
              "audio_test0.csv", "video_train0.csv", "video_test0.csv", "text_train0.csv",
              "text_test0.csv")  # fmt: skip
PROGRESS_STEPS = 4  # read, embed, split, write
LEAK_REASON = (
    "the bc-LSTM text-CNN and 3D-CNN features were fitted on the bc-LSTM train videos, and 24 "
    "of the 31 CMU standard test videos are such videos (a leak, not a result)"
)


@dataclass(frozen=True)
class Corpus:
    """Every utterance as read, in transcripts.csv order."""

    ids: list[str]
    videos: list[str]
    text: list[str]
    score: np.ndarray  # (N,) float32 in [-3, 3]
    bclstm_split: list[str]  # "train" / "test" of bc-LSTM, per utterance
    features: dict[str, np.ndarray]  # "cnn", "audio", "vision" -> (N, D) float32


def video_of(clip: str) -> str:
    # clip ids are "<video>_<n>" and YouTube ids may contain "_": split at the LAST one
    return clip.rsplit("_", 1)[0]


def video_groups(videos: Sequence[str], k: int = N_FOLDS) -> dict[str, int]:
    """Video -> group 0..k-1: ordered by SHA-256 of the id, the i-th gets group i mod k."""
    order = sorted(set(videos), key=lambda v: hashlib.sha256(v.encode()).hexdigest())
    return {v: i % k for i, v in enumerate(order)}


def check_fold(value: Any, name: str) -> int:
    """A fold number 1..5 (an InputError otherwise)."""
    try:
        fold = int(value)
        ok = fold == float(value) and 1 <= fold <= N_FOLDS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(
            f"The '{name}' parameter must be a fold number in 1..{N_FOLDS}. Got {value!r}.",
            hint=f"The videos are split into {N_FOLDS} groups; pick one of 1..{N_FOLDS}.",
        )
    return fold


# -- reading ------------------------------------------------------------------------------
def read_scores(path: Path) -> dict[str, float]:
    """OpinionLevelSentiment.csv: start, end, video, segment, score -> {clip id: score}."""
    scores: dict[str, float] = {}
    for i, row in enumerate(_read_rows(path), 1):
        try:
            if len(row) != 5:
                raise ValueError
            clip, score = f"{row[2].strip()}_{int(row[3])}", float(row[4])
        except ValueError:
            raise DataFormatError(
                f"'{path}', line {i}: expected 5 columns (start, end, video id, segment, "
                f"score); got {','.join(row)[:80]!r}.",
                hint="This is CMU-MOSI's Labels/OpinionLevelSentiment.csv, without header.",
            ) from None
        if not (math.isfinite(score) and -3.0 <= score <= 3.0):
            raise DataFormatError(
                f"'{path}', line {i}: the score {row[4]!r} is outside [-3, 3].",
                hint="CMU-MOSI scores are annotator means in [-3, 3]; re-copy the file.",
            )
        if clip in scores:
            raise DataFormatError(f"'{path}', line {i}: the clip {clip} appears twice.")
        scores[clip] = score
    return scores


def read_folds(path: Path) -> dict[str, str]:
    """std_folds.csv: header video_id,split -> {video: train/valid/test}."""
    rows = _read_rows(path)
    if [c.strip() for c in rows[0]] != ["video_id", "split"]:
        raise DataFormatError(
            f"'{path}' must start with the header 'video_id,split'; got {','.join(rows[0])!r}.",
            hint="See ../shared/data/cmu-mosi-labels/README.md.",
        )
    folds: dict[str, str] = {}
    for i, row in enumerate(rows[1:], 2):
        if len(row) != 2 or row[1].strip() not in ("train", "valid", "test"):
            raise DataFormatError(
                f"'{path}', line {i}: expected 'video_id,split' with split train, valid or "
                f"test; got {','.join(row)[:80]!r}."
            )
        folds[row[0].strip()] = row[1].strip()
    return folds


def _check_ids(ids: list[str], scores: dict[str, float], labels: Path) -> None:
    missing = [c for c in ids if c not in scores]
    extra = sorted(set(scores) - set(ids))
    if missing or extra:
        what = (
            f"{len(missing)} transcript clips have no score (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} scored clips have no transcript (e.g. {extra[0]})"
        )
        raise DataFormatError(
            f"'{labels}' does not match transcripts.csv: {what}.",
            hint="Both must list the same 2199 CMU-MOSI clips ('<video>_<segment>').",
        )


def read_corpus(lite: Path, labels: Path) -> Corpus:
    """Transcripts, scores and bc-LSTM features joined by clip id, every join checked."""
    transcripts = _read_rows(lite / "transcripts.csv")
    for i, row in enumerate(transcripts, 1):
        if len(row) != 4:
            raise DataFormatError(
                f"'{lite / 'transcripts.csv'}', line {i}: {len(row)} columns; expected 4 "
                "(clip id, transcript, video index, label).",
                hint="Transcripts that contain commas must be quoted; re-copy the file.",
            )
        if not row[1].strip():
            raise DataFormatError(
                f"'{lite / 'transcripts.csv'}', line {i}: the transcript of {row[0]} is empty.",
                hint="Every MOSI utterance has words; re-copy the file from the source.",
            )
    ids = [row[0] for row in transcripts]
    scores = read_scores(labels / LABEL_FILE)
    _check_ids(ids, scores, labels / LABEL_FILE)
    pos = {clip: i for i, clip in enumerate(ids)}
    n = len(ids)
    split = [""] * n
    feats = {"cnn": np.zeros((n, 100), np.float32), "audio": np.zeros((n, 73), np.float32),
             "vision": np.zeros((n, 100), np.float32)}  # fmt: skip
    for s in ("train", "test"):
        src = _read_source(lite, s, transcripts)
        rows = np.array([pos[c] for c in src.ids])
        for r in rows:
            split[r] = s
        feats["cnn"][rows] = src.features["text"]
        feats["audio"][rows] = src.features["audio"]
        feats["vision"][rows] = src.features["vision"]
    if "" in split:
        raise DataFormatError(
            f"'{lite}': the clip {ids[split.index('')]} is in neither text_train.csv nor "
            "text_test.csv.",
            hint="MOSI-lite's feature files cover all 2199 clips; re-copy them.",
        )
    score = np.array([scores[c] for c in ids], dtype=np.float32)
    videos = [video_of(c) for c in ids]
    return Corpus(ids, videos, [row[1] for row in transcripts], score, split, feats)


# -- splitting ----------------------------------------------------------------------------
def assign_splits(
    corpus: Corpus, protocol: str, folds: dict[str, str] | None, fold: int | None
) -> dict[str, np.ndarray]:
    """Split name -> row indices. ``folds`` is the std folds table (std only); ``fold`` is
    the 1-based group for bclstm-cv, or the std --cv-fold (None = the CMU valid fold)."""
    videos = np.array(corpus.videos)
    if protocol == "bclstm-cv":
        assert fold is not None
        pool = np.flatnonzero(np.array(corpus.bclstm_split) == "test")
        group = video_groups(videos[pool].tolist())
        g = np.array([group[v] for v in videos[pool]])
        return {"train": pool[(g != fold - 1) & (g != fold % N_FOLDS)],
                "valid": pool[g == fold % N_FOLDS], "test": pool[g == fold - 1]}  # fmt: skip
    assert folds is not None
    split = np.array([folds[v] for v in videos])
    out = {s: np.flatnonzero(split == s) for s in ("train", "valid", "test")}
    if fold is not None:  # grouped CV over the std train+valid videos
        pool = np.concatenate([out["train"], out["valid"]])
        group = video_groups(videos[pool].tolist())
        g = np.array([group[v] for v in videos[pool]])
        out["train"], out["valid"] = np.sort(pool[g != fold - 1]), np.sort(pool[g == fold - 1])
    return out


def _check_folds(corpus: Corpus, folds: dict[str, str], path: Path) -> None:
    missing = sorted(set(corpus.videos) - set(folds))
    if missing:
        raise DataFormatError(
            f"'{path}' lacks {len(missing)} of the transcripts' videos (e.g. {missing[0]}).",
            hint="The standard folds list all 93 CMU-MOSI videos; re-copy the file.",
        )


# -- assembling -----------------------------------------------------------------------------
def _text_block(emb: mosi_text.Embeddings, rows: np.ndarray, pooling: str) -> dict[str, Any]:
    if pooling == "sentence":
        return {"x": emb.sentence[rows][:, None, :], "len": np.ones(len(rows), np.int64)}
    t = int(emb.lengths[rows].max())
    return {"x": emb.padded(rows, t), "len": emb.lengths[rows].astype(np.int64),
            "ids": emb.padded_ids(rows, t)}  # fmt: skip


def _split_arrays(
    corpus: Corpus, rows: np.ndarray, mods: dict[str, str], emb: Any, pooling: str
) -> SplitArrays:
    n = len(rows)
    features: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    text_ids = None
    if mods["text"] == "minilm":
        block = _text_block(emb, rows, pooling)
        features["text"], lengths["text"] = block["x"], block["len"]
        text_ids = block.get("ids")
    else:
        features["text"] = corpus.features["cnn"][rows][:, None, :]
    features["audio"] = corpus.features["audio"][rows][:, None, :]
    if mods.get("vision"):
        features["vision"] = corpus.features["vision"][rows][:, None, :]
    for m in features:
        lengths.setdefault(m, np.ones(n, np.int64))
    return SplitArrays(
        ids=[corpus.ids[i] for i in rows],
        label=corpus.score[rows],
        features=features,
        lengths=lengths,
        raw_text=[corpus.text[i] for i in rows],
        text_ids=text_ids,
    )


def _check_options(
    protocol: str, fold: int | None, cv_fold: int | None, text: str | None, vision: bool | None
) -> tuple[int | None, dict[str, Any]]:
    """Validate the protocol's options; returns the fold used and the modality choice."""
    if protocol not in PROTOCOLS:
        raise InputError(
            f"The 'protocol' parameter must be one of {', '.join(PROTOCOLS)}. Got {protocol!r}.",
            hint="std = the CMU folds (text + audio); bclstm-cv = 31 videos, three modalities.",
        )
    if text is not None and text not in TEXT_SOURCES:
        raise InputError(
            f"The 'text' parameter must be one of {', '.join(TEXT_SOURCES)}. Got {text!r}.",
            hint="minilm = the transcripts re-embedded; cnn = bc-LSTM's text-CNN features.",
        )
    if protocol == "std":
        if fold is not None:
            raise InputError(
                "--fold belongs to --protocol bclstm-cv; the std protocol has fixed folds.",
                hint="For grouped CV over the std train+valid videos use --cv-fold K.",
            )
        if text == "cnn" or vision:
            what = "text-CNN" if text == "cnn" else "3D-CNN video"
            raise InputError(
                f"The {what} features cannot be used with --protocol std: {LEAK_REASON}.",
                hint="Use --protocol bclstm-cv --fold K for three modalities, or std with "
                "MiniLM text and audio.",
            )
        used = None if cv_fold is None else check_fold(cv_fold, "cv_fold")
        return used, {"text": "minilm", "vision": False}
    if cv_fold is not None:
        raise InputError(
            "--cv-fold belongs to --protocol std; bclstm-cv already cross-validates.",
            hint="Use --fold K (1..5) with --protocol bclstm-cv.",
        )
    if fold is None:
        raise InputError(
            "--protocol bclstm-cv needs --fold K (1..5): the test group of videos.",
            hint="Run it five times, --fold 1 .. --fold 5, and pool the test scores.",
        )
    return check_fold(fold, "fold"), {"text": text or "cnn", "vision": vision is not False}


def _check_dirs(lite: Path, labels: Path) -> list[Path]:
    for root, what in ((lite, "MOSI-lite"), (labels, "cmu-mosi-labels")):
        if not root.is_dir():
            raise InputError(
                f"The {what} folder '{root}' does not exist or is not a folder.",
                hint="Pass --mosi-lite DIR and --labels DIR, or --data-dir DIR (or "
                "$QAMOE_DATA_DIR) holding both folders.",
            )
    files = [lite / f for f in LITE_FILES] + [labels / LABEL_FILE, labels / FOLDS_FILE]
    hint = "See the READMEs of the mosi-lite and cmu-mosi-labels folders (data/README.md)."
    check_present(files, "input file", hint, DataFormatError)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataFormatError(f"Missing input files: {', '.join(missing)}.", hint=hint)
    return files


def _check_pooling(pooling: str) -> None:
    """Refuse a text pooling other than those of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise InputError(
            f"The 'pooling' parameter must be one of {', '.join(POOLINGS)}. Got {pooling!r}.",
            hint="token = one step per token (T, 384); sentence = the mean-pooled vector.",
        )


def _read_inputs(lite: Path, labels: Path, protocol: str) -> tuple[Corpus, dict[str, str] | None]:
    """The corpus and, for the std protocol, the standard folds checked against it."""
    corpus = read_corpus(lite, labels)
    if protocol != "std":
        return corpus, None
    folds = read_folds(labels / FOLDS_FILE)
    _check_folds(corpus, folds, labels / FOLDS_FILE)
    return corpus, folds


def _embed_text(
    corpus: Corpus,
    mods: dict[str, Any],
    shas: dict[str, str],
    encoder: mosi_text.Encoder | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: Callable[..., None] | None,
) -> mosi_text.Embeddings | None:
    """The MiniLM pass over the transcripts (cached), or None where text is the text-CNN."""
    if mods["text"] != "minilm":
        return None
    sha = shas["mosi-lite/transcripts.csv"]
    return mosi_text.embed(
        corpus.text, sha, encoder=encoder, cache_dir=cache_dir, progress=progress
    )


def _role(path: Path, lite: Path) -> str:
    return f"{'mosi-lite' if path.parent == lite else 'cmu-mosi-labels'}/{path.name}"


def import_mosi(
    out: str | os.PathLike[str],
    *,
    mosi_lite: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    protocol: str = "std",
    fold: int | None = None,
    cv_fold: int | None = None,
    text: str | None = None,
    vision: bool | None = None,
    pooling: str = "token",
    cache_dir: str | os.PathLike[str] | None = None,
    encoder: mosi_text.Encoder | None = None,
    force: bool = False,
    progress: Callable[..., None] | None = None,
    text_progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Write CMU-MOSI under ``protocol`` (see the module doc) to ``out``; returns a summary.

    ``mosi_lite`` / ``labels`` default to those folders under ``data_dir`` (else
    $QAMOE_DATA_DIR, else the documented ``<repository>/../shared/data``: data.location).
    ``encoder`` replaces the MiniLM encoder (tests pass a tiny fake); ``cache_dir`` holds the
    MiniLM pass keyed by transcripts + encoder (default :func:`mosi_text.default_cache_dir`).
    ``progress(1, stage=...)`` ticks the PROGRESS_STEPS steps; ``text_progress(n, total=N)``
    counts the transcripts the MiniLM pass has encoded.
    """
    used_fold, mods = _check_options(protocol, fold, cv_fold, text, vision)
    _check_pooling(pooling)
    lite = Path(mosi_lite) if mosi_lite is not None else dataset_dir("mosi-lite", data_dir)
    lab = Path(labels) if labels is not None else dataset_dir("cmu-mosi-labels", data_dir)
    files = _check_dirs(lite, lab)
    check_output(out, force, inputs=files)
    tick = progress or (lambda n=1, **fields: None)
    corpus, folds = _read_inputs(lite, lab, protocol)
    tick(1, stage="read")
    shas = {_role(f, lite): file_sha256(f) for f in files}
    emb = _embed_text(corpus, mods, shas, encoder, cache_dir, text_progress)
    tick(1, stage="embed")
    rows = assign_splits(corpus, protocol, folds, used_fold)
    splits = {s: _split_arrays(corpus, r, mods, emb, pooling) for s, r in rows.items()}
    tick(1, stage="split")
    videos = {s: sorted({corpus.videos[i] for i in r}) for s, r in rows.items()}
    provenance = _provenance(protocol, used_fold, mods, pooling, lite, lab, shas, emb, videos)
    write_features(
        out, splits, dataset=f"mosi-{protocol}", task="regression", scheme="mosi",
        label_range=(-3.0, 3.0), extractor=provenance["extractor"], force=force,
        attrs=provenance["attrs"],
    )  # fmt: skip
    tick(1, stage="write")
    return {
        "out": str(out),
        "dataset": f"mosi-{protocol}",
        **provenance["attrs"],
        "splits": {s: len(r) for s, r in rows.items()},
        "videos": {s: len(v) for s, v in videos.items()},
        "dims": {m: int(a.shape[2]) for m, a in splits["train"].features.items()},
        "label_mean": {s: round(float(a.label.mean()), 4) for s, a in splits.items()},
        "cached": bool(emb is not None and emb.cached),
    }


def _fold_rule(protocol: str, fold: int | None) -> str:
    groups = "videos ordered by sha256(video id); the i-th is in group i mod 5 (1-based: +1)"
    if protocol == "bclstm-cv":
        return f"bc-LSTM test videos; {groups}; test = group fold, valid = the next group"
    if fold is None:
        return "CMU standard folds (std_folds.csv)"
    return f"std train+valid videos; {groups}; valid = group cv_fold; test = std test"


def _special_ids() -> list[int] | None:
    """[unk, cls, sep] of the MiniLM tokenizer behind text_ids (what `train --text-encoder
    pretrained` checks and the spectrum uses); None where transformers is not installed."""
    from qamoe_core.text.encoder import TextEncoderError, tokenizer_special_ids

    try:
        return list(tokenizer_special_ids(None))
    except TextEncoderError:
        return None


def _provenance(
    protocol: str,
    fold: int | None,
    mods: dict[str, Any],
    pooling: str,
    lite: Path,
    labels: Path,
    shas: dict[str, str],
    emb: mosi_text.Embeddings | None,
    videos: dict[str, list[str]],
) -> dict[str, Any]:
    text_desc = (
        "bc-LSTM text-CNN, 100-d, 1 step (honest only on the bc-LSTM test videos)"
        if mods["text"] == "cnn"
        else f"MiniLM-L6 last hidden states, {pooling} "
        + ("level (T, 384)" if pooling == "token" else "mean-pooled, L2-normalised, 1 step")
    )
    extractor = {
        "name": f"mosi-{protocol}",
        "text": text_desc,
        "audio": "openSMILE utterance features, 73-d, 1 step (bc-LSTM)",
        **(
            {"vision": "3D-CNN utterance features, 100-d, 1 step (bc-LSTM)"}
            if mods["vision"]
            else {}
        ),
        "encoder": emb.encoder if emb is not None else None,
        "labels": "CMU-MOSI OpinionLevelSentiment.csv scores in [-3, 3] (Zadeh et al. 2016)",
    }
    attrs = {
        "protocol": protocol,
        "fold": fold if protocol == "bclstm-cv" else None,
        "cv_fold": fold if protocol == "std" else None,
        "fold_rule": _fold_rule(protocol, fold),
        "text_source": mods["text"],
        "text_pooling": pooling if mods["text"] == "minilm" else None,
        "sources": {"mosi_lite": str(lite.resolve()), "labels": str(labels.resolve())},
        "input_sha256": shas,
        "split_videos": videos,
        "text_special_ids": _special_ids() if mods["text"] == "minilm" and pooling == "token"
        else None,
    }  # fmt: skip
    # HDF5 attrs cannot hold None: options that do not apply are left out
    return {
        "extractor": {k: v for k, v in extractor.items() if v is not None},
        "attrs": {k: v for k, v in attrs.items() if v is not None},
    }
