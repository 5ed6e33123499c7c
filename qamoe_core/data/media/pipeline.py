"""Raw media -> the qamoe HDF5 store: per-clip cache, failures, resume, shards, workers.

How a run is laid out on disk, for ``--out feats.h5``::

    feats.h5.work/shard-<i>-of-<n>/run.json         settings + manifest hash (resume checks)
    feats.h5.work/shard-<i>-of-<n>/extractor.json   what each extractor is (dims, rates)
    feats.h5.work/shard-<i>-of-<n>/clips/<key>.npz  one finished clip (written atomically)
    feats.h5.work/shard-<i>-of-<n>/failures.csv     clips of this shard that failed, and why
    feats.h5.work/shard-<i>-of-<n>/complete.json    every clip of the shard was attempted
    feats.h5                                        assembled at the end (atomic rename)
    feats.failures.csv                              id, split, stage, reason

A clip is "done" when its .npz exists, so an interrupted run continues with ``resume``
without redoing anything. ``shard=(i, n)`` takes the clips whose id hashes to i modulo n, a
split that needs no coordination (a Slurm array, several machines); ``merge`` then assembles
the final file from the n shard folders, copied side by side. An unsharded run is shard 0
of 1 and assembles at once. The work folder is deleted after a run without failures and
kept otherwise, so that a later ``resume`` retries only the clips that failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base.atomic import check_output
from qamoe_core.base.errors import ConfigError, InputError, UsageError
from qamoe_core.base.inputs import check_file
from qamoe_core.base.names import MODALITIES
from qamoe_core.data.media.assemble import (
    assemble,
    read_failures_csv,
    saved_description,
    write_failures_csv,
)
from qamoe_core.data.media.clip import (
    ClipResult,
    Extractors,
    init_worker,
    run_clip,
    worker_clips,
    worker_describe,
)
from qamoe_core.data.media.config import (
    MediaConfig,
    clip_key,
    failures_path,
    shard_folder,
    shard_of,
    work_root,
)
from qamoe_core.data.media.deps import require
from qamoe_core.data.media.manifest import ClipSpec, Manifest, read_manifest
from qamoe_core.data.media.text import BATCH_SIZE, TEXT_PASS
from qamoe_core.data.media.vision import landmark_model_path
from qamoe_core.data.store import file_sha256
from qamoe_core.text.locate import resolve_text_model
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

Progress = Callable[..., None]


def resolve_modalities(config: MediaConfig, manifest: Manifest) -> tuple[str, ...]:
    if config.modalities is not None:
        mods = tuple(m for m in MODALITIES if m in config.modalities)
        if "vision" in mods and not manifest.has_video:
            raise InputError(
                "Vision was asked for but the manifest has no 'video' column.",
                hint="Add a video column, or leave vision out of --modalities.",
            )
        return mods
    return ("text", "audio", "vision") if manifest.has_video else ("text", "audio")


def check_dependencies(config: MediaConfig, modalities: Sequence[str]) -> None:
    """Fail before any work if a package the chosen extractors need is missing."""
    if "text" in modalities:
        require("transformers", "Text extraction")
        resolve_text_model(config.text_model)
    if "audio" in modalities:
        require("soundfile", "Audio extraction")
        require("librosa", "Audio extraction")
        require("av", "Decoding audio from video files")
        if config.audio == "opensmile":
            require("opensmile", "Audio extraction (opensmile)")
    if "vision" in modalities:
        require("cv2", "Vision extraction")
        if config.vision == "landmarks":
            require("dlib", "The landmark vision backend")
            landmark_model_path()


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _ShardRun:
    done: int = 0
    cached: int = 0
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)


def _run_signature(
    config: MediaConfig, modalities: tuple[str, ...], manifest: Manifest
) -> dict[str, Any]:
    return {
        # text_pass: batched states differ from one-at-a-time ones in the last bits, so a
        # work folder of the old pass is not resumed with the new one.
        "config": asdict(config) | {"modalities": list(modalities), "text_pass": TEXT_PASS},
        "manifest_sha256": file_sha256(manifest.path),
        "qamoe": __version__,
    }


def _prepare_shard_dir(
    shard_dir: Path, signature: dict[str, Any], *, resume: bool, force: bool
) -> None:
    run_json = shard_dir / "run.json"
    if shard_dir.exists():
        if resume:
            if not run_json.is_file():
                raise InputError(
                    f"'{shard_dir}' is not a qamoe work folder (no run.json).",
                    hint="Remove it, or pass --force without --resume to start over.",
                )
            old = json.loads(run_json.read_text(encoding="utf-8"))
            if old.get("config") != signature["config"]:
                raise ConfigError(
                    f"The interrupted run in '{shard_dir}' used other settings; resuming "
                    "would mix incompatible features.",
                    hint="Rerun with the same options, or pass --force without --resume to "
                    "start over.",
                )
            if old.get("manifest_sha256") != signature["manifest_sha256"]:
                log.warning(
                    "the manifest changed since the interrupted run; finished clips are kept"
                )
        elif force:
            shutil.rmtree(shard_dir)
        else:
            raise InputError(
                f"An earlier run left '{shard_dir}'.",
                hint="Pass --resume to continue it without redoing finished clips, or --force "
                "to start over.",
            )
    (shard_dir / "clips").mkdir(parents=True, exist_ok=True)
    (shard_dir / "complete.json").unlink(missing_ok=True)
    run_json.write_text(json.dumps(signature, indent=2), encoding="utf-8")


class _Recorder:
    """Counts each finished clip into a _ShardRun and reports progress (clips/s since start)."""

    def __init__(self, run: _ShardRun, progress: Progress | None) -> None:
        self.run = run
        self.progress = progress
        self.start = time.perf_counter()

    def __call__(self, result: ClipResult) -> None:
        run = self.run
        clip_id, _, failure = result
        if failure is None:
            run.done += 1
        else:
            run.failures[clip_id] = failure
            log.info("clip %s failed (%s): %s", clip_id, *failure)
        if self.progress is not None:
            n = run.done + len(run.failures)
            rate = n / max(time.perf_counter() - self.start, 1e-9)
            self.progress(1, clips_per_s=rate, failed=len(run.failures))


def _extract_shard(
    clips: Sequence[ClipSpec],
    clips_dir: Path,
    config: MediaConfig,
    modalities: tuple[str, ...],
    *,
    workers: int,
    progress: Progress | None,
) -> _ShardRun:
    run = _ShardRun()
    todo = []
    for c in clips:
        if (clips_dir / f"{clip_key(c.id)}.npz").is_file():
            run.cached += 1
        else:
            todo.append(c)
    if progress is not None and run.cached:
        progress(run.cached, cached=run.cached)
    if not todo:
        return run
    record = _Recorder(run, progress)
    if workers <= 1:
        _extract_here(todo, clips_dir, config, modalities, record)
    else:
        _extract_in_pool(todo, clips_dir, config, modalities, record, workers=workers)
    return run


def _extract_here(
    todo: Sequence[ClipSpec],
    clips_dir: Path,
    config: MediaConfig,
    modalities: tuple[str, ...],
    record: _Recorder,
) -> None:
    """Extract the clips in this process, BATCH_SIZE at a time (their text batched)."""
    ex = Extractors.load(config, modalities)
    description = clips_dir.parent / "extractor.json"
    description.write_text(json.dumps(ex.describe(), indent=2), encoding="utf-8")
    for start in range(0, len(todo), BATCH_SIZE):
        batch = todo[start : start + BATCH_SIZE]
        texts = ex.text_states(batch)
        for c in batch:  # recorded one by one: an interrupt loses no finished clip's count
            record(run_clip(ex, c, clips_dir, texts.get(c.id)))


def _extract_in_pool(
    todo: Sequence[ClipSpec],
    clips_dir: Path,
    config: MediaConfig,
    modalities: tuple[str, ...],
    record: _Recorder,
    *,
    workers: int,
) -> None:
    """Extract the clips in ``workers`` processes, batches of at most BATCH_SIZE clips
    (their text batched), at most 2 * workers batches in flight."""
    size = max(1, min(BATCH_SIZE, -(-len(todo) // workers)))  # every worker gets work
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    # spawn, not fork: a forked torch or OpenMP runtime can deadlock in the child.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(config, modalities)
    ) as pool:
        pending: set[cf.Future[Any]] = set()
        try:
            desc = pool.submit(worker_describe).result()
            description = clips_dir.parent / "extractor.json"
            description.write_text(json.dumps(desc, indent=2), encoding="utf-8")
            for batch in batches:
                pending.add(pool.submit(worker_clips, batch, clips_dir))
                if len(pending) >= 2 * workers:  # bounded: results stream, memory stays flat
                    finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        for result in f.result():
                            record(result)
            for f in cf.as_completed(pending):
                for result in f.result():
                    record(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def extract_media(
    manifest_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: MediaConfig | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    merge: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Extract features for every clip of a manifest into ``out`` (HDF5); return a summary.

    ``progress(n, **fields)`` is called as clips finish (fields: clips_per_s, failed).
    With ``shard=(i, n)``, n > 1, only the shard's clips are extracted into the work folder
    and no HDF5 is written; ``merge=True`` then assembles the n shards into ``out``.
    Per-clip failures never raise: they go to ``<out stem>.failures.csv``.
    """
    config = config or MediaConfig()
    config.validate()
    out = Path(out)
    if workers < 1:
        raise UsageError(f"The 'workers' parameter must be an int >= 1. Got {workers} instead.")
    index, n_shards = shard
    if not 0 <= index < n_shards:
        raise UsageError(f"The 'shard' parameter must satisfy 0 <= i < n. Got {index}/{n_shards}.")
    manifest = read_manifest(manifest_path, config.scheme)
    modalities = resolve_modalities(config, manifest)
    media = [p for c in manifest.clips for p in (c.audio, c.video) if p is not None]
    check_output(out, force, inputs=[manifest_path, *media])  # before hours of work
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "manifest": str(manifest.path),
        "out": str(out),
        "modalities": list(modalities),
        "clips_in_manifest": len(manifest.clips),
    }
    if merge:
        return summary | _merge(out, manifest, config, modalities, force=force)
    check_dependencies(config, modalities)
    folder = shard_folder(out, index, n_shards)
    signature = _run_signature(config, modalities, manifest)
    _prepare_shard_dir(folder, signature, resume=resume, force=force)
    mine = [c for c in manifest.clips if n_shards == 1 or shard_of(c.id, n_shards) == index]
    run = _extract_shard(
        mine, folder / "clips", config, modalities, workers=workers, progress=progress
    )
    summary |= {"shard": f"{index}/{n_shards}"} | _close_shard(folder, mine, run, started)
    if n_shards > 1:
        summary["work_dir"] = str(folder)
        summary["next"] = "when every shard is done: the same command with --merge"
        return summary
    return summary | _finish(out, manifest, {0: folder}, 1, config, modalities, force=force)


def _close_shard(
    folder: Path, mine: Sequence[ClipSpec], run: _ShardRun, started: float
) -> dict[str, Any]:
    """Write the shard's failures.csv and complete.json; return its part of the summary."""
    by_id = {c.id: c for c in mine}
    failure_rows = [
        [cid, by_id[cid].split, stage, reason] for cid, (stage, reason) in run.failures.items()
    ]
    write_failures_csv(folder / "failures.csv", failure_rows)
    elapsed = time.perf_counter() - started
    (folder / "complete.json").write_text(
        json.dumps({"clips": len(mine), "failed": len(failure_rows)}), encoding="utf-8"
    )
    return {
        "clips": len(mine),
        "extracted": run.done,
        "resumed": run.cached,
        "failed": len(failure_rows),
        "elapsed_s": round(elapsed, 3),
        "clips_per_s": round((run.done + len(failure_rows)) / max(elapsed, 1e-9), 3),
    }


def _finish(
    out: Path,
    manifest: Manifest,
    shard_dirs: dict[int, Path],
    n_shards: int,
    config: MediaConfig,
    modalities: tuple[str, ...],
    *,
    force: bool,
) -> dict[str, Any]:
    """Assemble the HDF5, write the failures CSV, drop the work folder if nothing failed."""
    failure_rows = [
        row for d in shard_dirs.values() for row in read_failures_csv(d / "failures.csv")
    ]
    fpath = failures_path(out)
    write_failures_csv(fpath, failure_rows)
    extractor = saved_description(shard_dirs)
    info = assemble(out, manifest, shard_dirs, n_shards, config, extractor, modalities, force=force)
    root = work_root(out)
    kept = bool(failure_rows)
    if not kept:
        shutil.rmtree(root, ignore_errors=True)
    if kept:
        log.info("kept %s: fix the failed clips, then rerun with --resume --force", root)
    return info | {
        "failed_total": len(failure_rows),
        "failures_csv": str(fpath),
        "work_dir_kept": str(root) if kept else None,
        "frame_rates_hz": {
            m: extractor[m]["frame_rate_hz"] for m in ("audio", "vision") if m in modalities
        },
        "extractor": {m: {k: extractor[m][k] for k in ("backend", "dim")} for m in modalities},
    }


def _merge(
    out: Path, manifest: Manifest, config: MediaConfig, modalities: tuple[str, ...], *, force: bool
) -> dict[str, Any]:
    root = work_root(out)
    found: dict[int, dict[int, Path]] = {}
    for d in sorted(root.glob("shard-*-of-*")) if root.is_dir() else []:
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)", d.name)
        if m and d.is_dir():
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = d
    if not found:
        raise InputError(
            f"No shard folders under '{root}'.",
            hint="Run each shard with --shard i/n and the same --out first, and copy the "
            f"shard-*-of-* folders into {root}.",
        )
    if len(found) > 1:
        raise InputError(
            f"'{root}' holds shards of different splittings "
            f"({', '.join(f'n={n}' for n in sorted(found))}).",
            hint="Keep the shard-*-of-N folders of one run only.",
        )
    n_shards, dirs = next(iter(found.items()))
    missing = [
        i for i in range(n_shards) if i not in dirs or not (dirs[i] / "complete.json").is_file()
    ]
    if missing:
        raise InputError(
            f"Shard(s) {', '.join(map(str, missing))} of {n_shards} are missing or unfinished "
            f"in '{root}'.",
            hint="Run (or --resume) those shards before merging.",
        )
    signature = _run_signature(config, modalities, manifest)
    for i, d in dirs.items():
        run_json = check_file(d / "run.json", f"shard {i} file", "Run (or --resume) that shard.")
        old = json.loads(run_json.read_text(encoding="utf-8"))
        if old.get("config") != signature["config"]:
            raise ConfigError(
                f"Shard {i} ({d}) was extracted with other settings than this merge asks for.",
                hint="Merge with the same options the shards were run with.",
            )
    info = _finish(out, manifest, dirs, n_shards, config, modalities, force=force)
    return info | {"shards_merged": n_shards}
