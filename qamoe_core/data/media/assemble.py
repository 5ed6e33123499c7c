"""Assemble the final HDF5 from per-clip caches, in manifest order, streaming.

Memory holds one block of rows at a time, so a MOSEI-sized extraction never has to fit in RAM.
The padded length of each modality is the longest clip's (clips were already cut to
``max_seconds``); train mean/std are computed over valid steps by the store.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.base.names import SPLITS
from qamoe_core.data.media.clip import load_meta
from qamoe_core.data.media.config import MediaConfig, clip_key, failures_path, shard_of
from qamoe_core.data.media.manifest import SCHEMES, ClipSpec, Manifest
from qamoe_core.data.store import FeatureWriter, file_sha256, validate

FAILURE_COLUMNS = ("id", "split", "stage", "reason")
WRITE_BLOCK = 64  # rows buffered per HDF5 write: whole chunks, not a read-modify-write per row


def write_failures_csv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with atomic_path(path, force=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FAILURE_COLUMNS)
        w.writerows(rows)


def read_failures_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[1:]


_Row = tuple[ClipSpec, Path, dict[str, Any]]  # a clip, its cached .npz, and the .npz's meta


@dataclass
class _Tally:
    """What the clips' metadata add up to, over every clip written."""

    truncated: dict[str, int]  # modality -> clips cut to max_seconds
    totals: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("vision_frames", "vision_frames_no_face", "vision_frames_multi_face"), 0
        )
    )
    clips_no_face: int = 0

    def add(self, meta: dict[str, Any], modalities: tuple[str, ...]) -> None:
        """Count one clip's metadata."""
        for k in self.totals:
            self.totals[k] += int(meta.get(k, 0))
        if "vision" in modalities and meta.get("vision_frames_no_face") == meta.get(
            "vision_frames"
        ):
            self.clips_no_face += 1
        for m in meta.get("truncated", []):
            self.truncated[m] += 1


@dataclass(frozen=True)
class _Layout:
    """The padded shape of every modality in the file."""

    modalities: tuple[str, ...]
    seq: dict[str, int]  # padded length: the longest clip's
    dims: dict[str, int]


def assemble(
    out: Path,
    manifest: Manifest,
    shard_dirs: dict[int, Path],
    n_shards: int,
    config: MediaConfig,
    extractor: dict[str, Any],
    modalities: tuple[str, ...],
    *,
    force: bool,
) -> dict[str, Any]:
    """Write the final HDF5 from the per-clip cache, in manifest order, streaming."""
    per_split = _cached_clips(manifest, shard_dirs, n_shards)
    if not per_split["train"]:
        raise DataFormatError(
            "No train clip was extracted, so the file would have no train split.",
            hint=f"See the reasons in {failures_path(out)}.",
        )
    layout = _Layout(
        modalities,
        seq={
            m: max(meta["lengths"][m] for rows in per_split.values() for _, _, meta in rows)
            for m in modalities
        },
        dims={m: int(extractor[m]["dim"]) for m in modalities},
    )
    tally = _Tally(truncated=dict.fromkeys(modalities, 0))
    attrs = _file_attrs(config, extractor, layout, file_sha256(manifest.path))
    with FeatureWriter(out, force=force, attrs=attrs) as w:
        for split, rows in per_split.items():
            if rows:
                _write_split(w, split, rows, layout, tally)
        w.compute_train_stats()
        counts = {f"{k}": v for k, v in tally.totals.items() if "vision" in modalities}
        w.set_attrs(
            **counts,
            notes={
                "truncated_clips": tally.truncated,
                "clips_without_any_face": tally.clips_no_face,
            },
        )
    validate(out)
    return {
        "splits": {s: len(r) for s, r in per_split.items() if r},
        "seq_lens": layout.seq,
        "dims": layout.dims,
        "vision_counts": counts,
        "clips_without_any_face": tally.clips_no_face,
        "truncated": tally.truncated,
    }


def _cached_clips(
    manifest: Manifest, shard_dirs: dict[int, Path], n_shards: int
) -> dict[str, list[_Row]]:
    """split -> the clips whose .npz some shard wrote, in manifest order."""
    per_split: dict[str, list[_Row]] = {s: [] for s in SPLITS}
    for c in manifest.clips:
        path = shard_dirs[shard_of(c.id, n_shards)] / "clips" / f"{clip_key(c.id)}.npz"
        if path.is_file():
            per_split[c.split].append((c, path, load_meta(path)))
    return per_split


def _file_attrs(
    config: MediaConfig, extractor: dict[str, Any], layout: _Layout, source_sha256: str
) -> dict[str, Any]:
    """The HDF5 file attributes: dataset, task and label range, extractors, dims, frame rates."""
    task, (lo, hi) = SCHEMES[config.scheme]
    modalities = layout.modalities
    attrs = {
        "dataset": config.dataset,
        "task": task,
        "scheme": config.scheme,
        "label_min": lo,
        "label_max": hi,
        "extractor": extractor,
        "modalities": list(modalities),
        "source_sha256": source_sha256,
    }
    for m in modalities:
        attrs[f"{m}_dim"] = layout.dims[m]
    attrs.update(
        {
            f"{m}_frame_rate_hz": extractor[m]["frame_rate_hz"]
            for m in ("audio", "vision")
            if m in modalities
        }
    )
    return attrs


def _write_split(
    w: FeatureWriter, split: str, rows: list[_Row], layout: _Layout, tally: _Tally
) -> None:
    """Create one split and fill it block by block, adding each clip's meta to ``tally``."""
    mods = layout.modalities
    w.create_split(
        split, len(rows), {m: (layout.seq[m], layout.dims[m]) for m in mods}, raw_text=True
    )
    for start in range(0, len(rows), WRITE_BLOCK):
        block = rows[start : start + WRITE_BLOCK]
        batch: dict[str, np.ndarray] = {
            "label": np.array([c.label for c, _, _ in block], np.float32)
        }
        for m in mods:
            batch[m] = np.zeros((len(block), layout.seq[m], layout.dims[m]), np.float32)
            batch[f"{m}_len"] = np.zeros(len(block), np.int32)
        for b, (_, path, meta) in enumerate(block):
            with np.load(path, allow_pickle=False) as z:
                for m in mods:
                    x = z[m]
                    batch[m][b, : x.shape[0]] = x
                    batch[f"{m}_len"][b] = x.shape[0]
            tally.add(meta, mods)
        w.write(
            split,
            start,
            batch,
            ids=[c.id for c, _, _ in block],
            raw_text=[c.text for c, _, _ in block],
        )


def saved_description(shard_dirs: dict[int, Path]) -> dict[str, Any]:
    """The extractor description, saved by the shard that ran (no model load at merge)."""
    for d in shard_dirs.values():
        path = d / "extractor.json"
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    raise InputError(
        "No shard folder holds extractor.json (no clip was ever extracted).",
        hint="Run the extraction (without --merge) first.",
    )
