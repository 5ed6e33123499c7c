"""`qamoe extract media MANIFEST.csv --out FILE.h5`: features from raw audio, video and text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli.common import (
    Force,
    JsonOut,
    OutFile,
    Quiet,
    emit,
    err_console,
    flag,
    out_console,
    parse_list,
    progress,
)


def render_summary(summary: dict[str, Any]) -> None:
    """Per-modality backend, shape and rate; splits; failures; faces missing."""
    failed = summary.get("failed_total", summary.get("failed", 0))
    if "splits" not in summary:  # a shard: no HDF5 yet
        out_console.print(
            f"shard {summary['shard']}: {summary['extracted']} clips extracted, "
            f"{summary['resumed']} already done, {summary['failed']} failed "
            f"({summary['clips_per_s']:.3g} clips/s) in {summary['work_dir']}"
        )
        out_console.print(f"next: {summary['next']}")
        return
    table = Table(title=f"media → {summary['out']}")
    for col, justify in [("modality", "left"), ("extractor", "left"), ("T x D", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("rate", justify="right")
    rates = summary["frame_rates_hz"]
    for m, d in summary["dims"].items():
        rate = f"{rates[m]:g}/s" if m in rates else "per token"
        backend = summary["extractor"][m]["backend"]
        table.add_row(m, backend, f"{summary['seq_lens'][m]} x {d}", rate)
    out_console.print(table)
    splits = ", ".join(f"{s} {n}" for s, n in summary["splits"].items())
    out_console.print(f"clips: {splits}")
    if "clips" in summary:
        out_console.print(
            f"this run: {summary['extracted']} extracted, {summary['resumed']} resumed, "
            f"{summary['clips_per_s']:.3g} clips/s"
        )
    vc = summary.get("vision_counts") or {}
    if vc:
        out_console.print(
            f"vision: {vc['vision_frames_no_face']} of {vc['vision_frames']} frames without a "
            f"face (kept as zeros, face column 0); {summary['clips_without_any_face']} clips "
            "without any face"
        )
    if failed:
        err_console.print(
            f"[yellow]{failed} clip(s) failed[/]: see {summary['failures_csv']}; fix them and "
            "rerun with --resume --force to retry only those."
        )
    else:
        out_console.print("no clip failed")


def command(
    manifest: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns id, split, label, text and audio and/or video (paths "
            "relative to the CSV)."
        ),
    ],
    out: OutFile,
    text_model: Annotated[
        Path | None,
        typer.Option(
            "--text-model",
            help="Local Hugging Face model folder for text. Default: the packaged "
            "all-MiniLM-L6-v2 (384-d). Nothing is downloaded.",
        ),
    ] = None,
    audio: Annotated[
        str,
        typer.Option(
            help="Audio features: librosa (MFCC+deltas, pitch, energy; 63-d, 50/s) or "
            "opensmile (eGeMAPS LLDs; 25-d, 100/s)."
        ),
    ] = "librosa",
    vision: Annotated[
        str,
        typer.Option(
            help="Face features: landmarks (dlib 68 points + expression geometry; 148-d) or "
            "haar (OpenCV cascade + crop thumbnail and HOG; 293-d)."
        ),
    ] = "landmarks",
    fps: Annotated[
        float, typer.Option("--fps", help="Video frames per second to describe.")
    ] = 10.0,
    modalities: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of text,audio,vision. Default: what the manifest has."
        ),
    ] = None,
    max_seconds: Annotated[
        float, typer.Option(help="Cut clips longer than this (audio and video).")
    ] = 30.0,
    max_tokens: Annotated[int, typer.Option(help="Cut transcripts to this many tokens.")] = 128,
    scheme: Annotated[
        str,
        typer.Option(help="Labels: mosi ([-3, 3]), sims ([-1, 1]) or binary (0/1)."),
    ] = "mosi",
    dataset: Annotated[str, typer.Option(help="Dataset name stored in the file.")] = "media",
    workers: Annotated[int, typer.Option(help="Worker processes (one CPU core each).", min=1)] = 1,
    shard: Annotated[
        str,
        typer.Option(
            help="Do only shard i of n (e.g. 2/8; clips split by a hash of their id). "
            "Then run the same command with --merge."
        ),
    ] = "0/1",
    resume: Annotated[
        bool,
        flag("--resume", help="Continue an interrupted run; finished clips are kept."),
    ] = False,
    merge: Annotated[
        bool,
        flag("--merge", help="Assemble the finished shards into --out (no extraction)."),
    ] = False,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Extract features from raw media listed in a manifest, offline.

    A clip that fails (unreadable file, no audio track) is listed with its reason in
    OUT-stem.failures.csv and the run goes on. Frames without a face are kept as zeros.
    """
    # imported here: the media pipeline pulls h5py and numpy, which start-up should not wait for
    from qamoe_core.data.media import MediaConfig, extract_media, parse_shard, read_manifest
    from qamoe_core.data.media.config import shard_of

    mods = parse_list(modalities, "--modalities")
    config = MediaConfig(
        modalities=tuple(mods) if mods else None,
        text_model=str(text_model) if text_model is not None else None,
        max_tokens=max_tokens,
        audio=audio,
        vision=vision,
        vision_fps=fps,
        max_seconds=max_seconds,
        scheme=scheme,
        dataset=dataset,
    )
    config.validate()
    index, n_shards = parse_shard(shard)
    total = None
    if not merge:
        clips = read_manifest(manifest, scheme).clips
        total = sum(1 for c in clips if n_shards == 1 or shard_of(c.id, n_shards) == index)
    label = f"media {index}/{n_shards}" if n_shards > 1 else "media"
    with progress(total, label, enabled=not (quiet or json_out or merge)) as advance:
        summary = extract_media(
            manifest,
            out,
            config,
            workers=workers,
            shard=(index, n_shards),
            resume=resume,
            merge=merge,
            force=force,
            progress=advance,
        )
    emit(summary, json_mode=json_out, render=lambda: render_summary(summary))
