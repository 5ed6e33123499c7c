"""`qamoe extract mmsa FILE.pkl --out FILE.h5`: import an MMSA feature pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, OutFile, Quiet, emit, out_console, progress


def render_summary(summary: dict[str, Any]) -> None:
    """Splits, per-modality shapes and lengths, and what the import had to fix."""
    table = Table(title=f"{summary['dataset']} ({summary['scheme']} scheme) → {summary['out']}")
    table.add_column("modality")
    table.add_column("T x D", justify="right")
    table.add_column("lengths from")
    table.add_column("non-finite → 0", justify="right")
    table.add_column("padding → 0", justify="right")
    for m, d in summary["dims"].items():
        table.add_row(
            m,
            f"{summary['seq_lens'][m]} x {d}",
            summary["length_source"][m],
            str(summary["nonfinite_replaced"][m]),
            str(summary["padding_zeroed"][m]),
        )
    out_console.print(table)
    splits = ", ".join(f"{s} {n}" for s, n in summary["splits"].items())
    lo, hi = summary["label_range"]
    out_console.print(f"samples: {splits}; labels in [{lo:g}, {hi:g}] ({summary['scheme_reason']})")
    if summary["sha256_match"]:
        out_console.print(f"sha256 matches the published {summary['release']}")
    else:
        out_console.print(f"sha256 {summary['source_sha256'][:16]}… matches no published release")
    extras = [k for k in ("text_ids", "raw_text") if summary[k]] + summary["unimodal_labels"]
    if extras:
        out_console.print(f"kept: {', '.join(extras)}")


def command(
    file: Annotated[Path, typer.Argument(help="MMSA feature pickle, e.g. unaligned_50.pkl.")],
    out: OutFile,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Dataset name stored in the file (mosi, mosei, sims fix the metric scheme). "
            "Default: from the published SHA-256, the path, or the labels.",
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Import an MMSA feature pickle (MOSI, MOSEI, SIMS; aligned or unaligned).

    The pickle is read by a restricted loader that admits only arrays and plain containers.
    """
    from qamoe_core.data.importers.mmsa import PROGRESS_STEPS, import_mmsa  # h5py: not at start-up

    with progress(PROGRESS_STEPS, f"mmsa/{file.name}", enabled=not (quiet or json_out)) as tick:
        summary = import_mmsa(file, out, dataset=dataset, force=force, progress=tick)
    emit(summary, json_mode=json_out, render=lambda: render_summary(summary))
