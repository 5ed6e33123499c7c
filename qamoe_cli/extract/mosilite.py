"""`qamoe extract mosi-lite DIR --out FILE.h5`: import the MOSI-lite CSVs."""

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
    Seed,
    emit,
    err_console,
    out_console,
    progress,
)

# A copy of qamoe_core.data.importers.mosilite.DEFAULT_VALID_FRACTION for the option's default:
# that module pulls h5py and numpy, which start-up should not wait for.
# tests/cli/test_startup.py keeps the two equal.
DEFAULT_VALID_FRACTION = 0.15

# Measured in ../shared/data/cmu-mosi-labels/README.md (grouped CV inside train vs test).
LABEL_FITTED_WARNING = (
    "[yellow]warning:[/] MOSI-lite's text-CNN and 3D-CNN video features were fitted on the "
    "bc-LSTM train videos' labels: inside train (and in a valid split carved from it) they give "
    "the label away (grouped CV 98 % / 91 %, test 75 % / 52 %), so valid cannot rank models. "
    "Use `qamoe extract mosi` (honest protocols) and check any file with `qamoe audit`."
)


def render_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['dataset']} (binary) → {summary['out']}")
    table.add_column("split")
    table.add_column("utterances", justify="right")
    table.add_column("videos", justify="right")
    table.add_column("positive", justify="right")
    for s, n in summary["splits"].items():
        table.add_row(s, str(n), str(summary["videos"][s]), f"{summary['positive_rate'][s]:.1%}")
    out_console.print(table)
    dims = ", ".join(f"{m} {d}" for m, d in summary["dims"].items())
    out_console.print(
        f"dims (1 step each): {dims}; valid = whole train videos "
        f"(fraction {summary['valid_fraction']:g}, seed {summary['seed']})"
    )


def command(
    directory: Annotated[
        Path, typer.Argument(help="The MOSI-lite folder (transcripts.csv, *_train0.csv, ...).")
    ],
    out: OutFile,
    valid_fraction: Annotated[
        float,
        typer.Option(
            "--valid-fraction",
            help="Share of train utterances moved to valid, as whole videos (so the share "
            "is near, not exact). The default is the standard MOSI ratio, 229 / (1284 + 229); "
            "with seed 0 it moves 216 of the 1447 train utterances (9 of 62 videos).",
        ),
    ] = DEFAULT_VALID_FRACTION,
    seed: Seed = 0,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Import the MOSI-lite CSVs (real CMU-MOSI utterance features, binary labels).

    A validation split is carved out of train by video, deterministically for a seed.

    Its text and video features are label-fitted: prefer `qamoe extract mosi`; see `qamoe audit`.
    """
    err_console.print(LABEL_FITTED_WARNING, highlight=False, soft_wrap=True)
    from qamoe_core.data.importers.mosilite import PROGRESS_STEPS, import_mosilite

    with progress(PROGRESS_STEPS, "mosi-lite", enabled=not (quiet or json_out)) as tick:
        summary = import_mosilite(
            directory, out, valid_fraction=valid_fraction, seed=seed, force=force, progress=tick
        )
    emit(summary, json_mode=json_out, render=lambda: render_summary(summary))
