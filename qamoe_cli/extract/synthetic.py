"""`qamoe extract synthetic --out FILE.h5`: the built-in synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, OutFile, Quiet, Seed, emit, out_console, progress


def command(
    out: OutFile = Path("synthetic.h5"),
    preset: Annotated[
        str,
        typer.Option(
            help="Sizes: tiny (tests), small (demo), mosi, mosei (several GB), sims "
            "(shapes of the MMSA releases)."
        ),
    ] = "small",
    seed: Seed = 0,
    offset: Annotated[
        str,
        typer.Option(
            help="Per-dimension feature offsets, as ‖mean‖/‖std‖: one number for every "
            "modality, three for text,audio,vision, or 'mosi-lite' (0.26,3.73,0.61, as "
            "measured on MOSI-lite). 0 = centred features."
        ),
    ] = "0",
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Write the built-in synthetic dataset (known structure, no download)."""
    from qamoe_core.data.synthetic import (  # h5py and numpy: not at start-up
        PRESETS,
        write_synthetic,
    )

    if preset not in PRESETS:
        raise typer.BadParameter(
            f"must be one of {', '.join(PRESETS)}; got {preset!r}", param_hint="--preset"
        )
    offsets = _parse_offset(offset)
    total = sum(PRESETS[preset].sizes)
    with progress(total, f"synthetic/{preset}", enabled=not (quiet or json_out)) as advance:
        summary = write_synthetic(
            out, preset=preset, seed=seed, force=force, progress=advance, offset=offsets
        )

    def render() -> None:
        table = Table(title=f"{summary['dataset']} → {summary['path']}")
        table.add_column("split")
        table.add_column("samples", justify="right")
        for split, n in summary["splits"].items():
            table.add_row(split, str(n))
        out_console.print(table)
        shapes = ", ".join(f"{m} {t}x{d}" for m, (t, d) in summary["shapes"].items())
        out_console.print(f"shapes (T x D): {shapes}; {summary['bytes'] / 2**20:.1f} MiB")

    emit(summary, json_mode=json_out, render=render)


def _parse_offset(text: str) -> dict[str, float]:
    from qamoe_core import MODALITIES
    from qamoe_core.base.errors import InputError
    from qamoe_core.data.synthetic import MOSI_LITE_OFFSET, check_offset

    if text.strip().lower() == "mosi-lite":
        return dict(MOSI_LITE_OFFSET)
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, len(MODALITIES)):
        raise typer.BadParameter(
            f"must be one number >= 0, three (text,audio,vision) or 'mosi-lite'; got {text!r}",
            param_hint="--offset",
        )
    per = dict(
        zip(MODALITIES, values * len(MODALITIES) if len(values) == 1 else values, strict=True)
    )
    try:
        return check_offset(per)  # the range lives in the core
    except InputError as exc:
        raise typer.BadParameter(exc.message, param_hint="--offset") from None
