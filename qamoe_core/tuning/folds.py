"""The folds a tuning selects on: K folds over train+valid, grouped by video; the test split is
never read.

Every read of the data goes through :class:`TrainValid`, which serves the ``train`` and
``valid`` splits and refuses any other (an AssertionError: asking for test would be a bug
here, not a user's mistake). The fold files are written once per tuning, into ``DIR/folds/``:
``fold-K.h5`` holds the rows of the other folds as its ``train`` split and fold K's rows as its
``valid`` split, with the train statistics recomputed from its own train rows; the files hold
no test split at all, so the trainings, which only ever see them, cannot read test either.
``--folds 0`` writes one file: the source's train and valid splits as they are.

Grouping: a row's group is its video, by the rule `qamoe audit` uses (``audit.group_of`` with
``audit.DEFAULT_GROUP_REGEX``); ``group_regex=None`` makes each row its own group. Groups
are shuffled with the tuning's seed and dealt, largest first, to the fold with the fewest rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base import jsontext
from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.data.audit import compile_group_regex, group_of
from qamoe_core.data.store import FeatureFile, FeatureWriter

log = logging.getLogger(__name__)

SOURCE_SPLITS = ("train", "valid")
BLOCK = 256  # rows read and written at a time
FOLDS_JSON = "folds.json"
# Root attributes a fold file does not copy: the writer sets its own, and the train
# statistics are recomputed from the fold's own train rows.
_NOT_COPIED = ("format", "format_version", "created_by")


class TrainValid:
    """Read access to the train and valid splits of a feature file, and to nothing else."""

    def __init__(self, f: FeatureFile) -> None:
        self._f = f
        for split in SOURCE_SPLITS:
            if split not in f.splits:
                raise DataFormatError(
                    f"'{f.path}' has no '{split}' split (it has {', '.join(f.splits)}).",
                    hint="Tuning cross-validates over train and valid and never reads test; "
                    "re-import the data with a validation split.",
                )
        self.path, self.modalities, self.task, self.scheme = f.path, f.modalities, f.task, f.scheme
        self.dims = dict(f.dims)

    def _allowed(self, split: str) -> str:
        assert split in SOURCE_SPLITS, f"tuning never reads the '{split}' split"
        return split

    def n(self, split: str) -> int:
        return self._f.n(self._allowed(split))

    def ids(self, split: str) -> list[str]:
        return self._f.ids(self._allowed(split))

    def raw_text(self, split: str) -> list[str] | None:
        return self._f.raw_text(self._allowed(split))

    def read(self, split: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        return self._f.read(self._allowed(split), rows)

    def has(self, split: str, key: str) -> bool:
        return key in self._f.h5[self._allowed(split)]

    def shape(self, split: str, key: str) -> tuple[int, ...]:
        return tuple(self._f.h5[self._allowed(split)][key].shape)

    def root_attrs(self) -> dict[str, Any]:
        """The file's root attributes, except what a fold file sets itself."""
        return {
            k: v
            for k, v in self._f.attrs.items()
            if k not in _NOT_COPIED and not k.startswith(("train_mean_", "train_std_"))
        }

    def blocks(self, split: str, rows: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(rows), BLOCK):
            yield self.read(split, rows[start : start + BLOCK])


def fingerprint(data: TrainValid) -> str:
    """SHA-256 over what tuning reads: the root attributes and every train/valid row."""
    digest = hashlib.sha256()
    attrs = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in data.root_attrs().items()}
    digest.update(json.dumps(attrs, sort_keys=True, default=str).encode())
    for split in SOURCE_SPLITS:
        digest.update(json.dumps([split, data.ids(split)]).encode())
        for batch in data.blocks(split, np.arange(data.n(split))):
            for key in sorted(batch):
                digest.update(key.encode())
                digest.update(np.ascontiguousarray(batch[key]).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class FoldPlan:
    """Which fold each train+valid row is in (``folds`` 0: train stays train, valid valid)."""

    folds: int
    grouped: bool
    group_regex: str | None
    seed: int
    assignment: dict[str, list[int]]  # split -> fold number (1-based) per row
    groups: int  # how many groups the rows formed

    @property
    def count(self) -> int:
        """How many fold files (and trainings per trial)."""
        return max(self.folds, 1)

    def describe(self) -> str:
        if self.folds == 0:
            return "the valid split (--folds 0)"
        rule = "grouped by video" if self.grouped else "ungrouped rows"
        return f"{self.folds}-fold CV over train+valid, {rule} ({self.groups} groups)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "grouped": self.grouped,
            "group_regex": self.group_regex,
            "seed": self.seed,
            "groups": self.groups,
        }


def plan_folds(data: TrainValid, folds: int, group_regex: str | None, seed: int) -> FoldPlan:
    """Deal the groups of train+valid to ``folds`` folds (InputError when too few groups)."""
    rx = compile_group_regex(group_regex)
    ids = {s: data.ids(s) for s in SOURCE_SPLITS}
    groups, matched = group_of(ids["train"] + ids["valid"], rx)
    unique = sorted(set(groups))
    if rx is not None and matched == 0:
        log.warning("no id matched the group rule %r: every row is its own group", group_regex)
    if folds == 0:  # grouping and seed play no part: left out, so changing them changes nothing
        assignment = {"train": [0] * len(ids["train"]), "valid": [1] * len(ids["valid"])}
        return FoldPlan(0, False, None, 0, assignment, len(unique))
    if len(unique) < folds:
        what = "video groups" if rx is not None else "rows"
        raise InputError(
            f"'{data.path}' has {len(unique)} {what} in train+valid; {folds} folds need at "
            f"least {folds}.",
            hint=f"Use --folds {len(unique)} or fewer (at least 2), or --folds 0 to select on "
            "the valid split alone.",
        )
    fold_of = _deal(groups, unique, folds, seed)
    per_row = [fold_of[g] for g in groups]
    n_train = len(ids["train"])
    assignment = {"train": per_row[:n_train], "valid": per_row[n_train:]}
    return FoldPlan(folds, rx is not None, group_regex, seed, assignment, len(unique))


def _deal(groups: Sequence[str], unique: list[str], folds: int, seed: int) -> dict[str, int]:
    """Group -> fold (1-based): shuffled, then largest first to the fold with fewest rows."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    order.sort(key=lambda g: -sizes[g])  # stable: ties keep the shuffled order
    load = [0] * folds
    fold_of = {}
    for g in order:
        k = int(np.argmin(load))
        fold_of[g] = k + 1
        load[k] += sizes[g]
    return fold_of


def fold_path(folder: Path, k: int) -> Path:
    return folder / f"fold-{k}.h5"


def _rows(plan: FoldPlan, k: int) -> dict[str, dict[str, np.ndarray]]:
    """For fold k's file: its train and valid rows, as (source split -> row numbers)."""
    out: dict[str, dict[str, np.ndarray]] = {"train": {}, "valid": {}}
    for src in SOURCE_SPLITS:
        fold = np.asarray(plan.assignment[src])
        if plan.folds == 0:
            out[src][src] = np.arange(len(fold))
        else:
            out["valid"][src] = np.flatnonzero(fold == k)
            out["train"][src] = np.flatnonzero(fold != k)
    return out


def _shapes(data: TrainValid) -> tuple[dict[str, tuple[int, int]], int | None, bool, bool]:
    """Padded (T, D) per modality over both source splits, the text_ids length (or None),
    whether both splits carry raw text and keep masks."""
    shapes, tid = {}, None
    for m in data.modalities:
        t = max(data.shape(s, m)[1] for s in SOURCE_SPLITS)
        shapes[m] = (t, data.dims[m])
    if all(data.has(s, "text_ids") for s in SOURCE_SPLITS):
        tid = max(data.shape(s, "text_ids")[1] for s in SOURCE_SPLITS)
    raw = all(data.has(s, "raw_text") for s in SOURCE_SPLITS)
    keep = all(data.has(s, f"{m}_keep") for s in SOURCE_SPLITS for m in data.modalities)
    return shapes, tid, raw, keep


def _pad(value: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad axis 1 to ``length`` (padding after the valid steps is the schema's)."""
    if value.ndim < 2 or value.shape[1] == length:
        return value
    width = [(0, 0)] * value.ndim
    width[1] = (0, length - value.shape[1])
    return np.pad(value, width)


def _write_split(
    w: FeatureWriter, data: TrainValid, name: str, sources: dict[str, np.ndarray], layout: tuple
) -> None:
    shapes, tid, raw, keep = layout
    n = sum(len(r) for r in sources.values())
    w.create_split(name, n, shapes, text_ids_len=tid, raw_text=raw, keep_masks=keep)
    start = 0
    for src, rows in sources.items():
        ids = data.ids(src)
        texts = data.raw_text(src) if raw else None
        for block_start in range(0, len(rows), BLOCK):
            idx = rows[block_start : block_start + BLOCK]
            batch = data.read(src, idx)
            for m in data.modalities:
                batch[m] = _pad(batch[m], shapes[m][0])
                if keep:
                    batch[f"{m}_keep"] = _pad(batch[f"{m}_keep"], shapes[m][0])
            if tid is not None:
                batch["text_ids"] = _pad(batch["text_ids"], tid)
            w.write(
                name,
                start,
                batch,
                ids=[ids[i] for i in idx],
                raw_text=None if texts is None else [texts[i] for i in idx],
            )
            start += len(idx)


def write_folds(data: TrainValid, plan: FoldPlan, folder: Path, tag: str) -> list[Path]:
    """Write the fold files (each atomically) and then ``folds.json``; reuse them when
    ``folds.json`` already records this ``tag`` (the data's fingerprint and the plan)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [fold_path(folder, k) for k in range(1, plan.count + 1)]
    record = folder / FOLDS_JSON
    try:
        done = jsontext.loads(record.read_text(encoding="utf-8")).get("tag") == tag
    except (OSError, ValueError, AttributeError):
        done = False
    if done and all(p.is_file() for p in paths):
        return paths
    layout = _shapes(data)
    for k, path in enumerate(paths, start=1):
        attrs = {**data.root_attrs(), "tune_fold": {"fold": k, **plan.to_dict()}}
        with FeatureWriter(path, force=True, attrs=attrs) as w:
            for name, sources in _rows(plan, k).items():
                _write_split(w, data, name, sources, layout)
            w.compute_train_stats()
    sizes = {
        p.name: {s: int(sum(len(r) for r in src.values())) for s, src in _rows(plan, k).items()}
        for k, p in enumerate(paths, start=1)
    }
    with atomic_path(record, force=True) as tmp:
        tmp.write_text(
            json.dumps({"tag": tag, **plan.to_dict(), "rows": sizes}, indent=2) + "\n",
            encoding="utf-8",
        )
    return paths
