"""Export a run as a Hugging Face Hub model repository: config.json, model.safetensors, a model
card (README.md) and, with --sweep, its reliability curve; `qamoe eval` reads the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qamoe_cli.common import Force, JsonOut, emit, out_console


def command(
    run: Annotated[
        Path, typer.Argument(help="Run directory from `qamoe train --out`.", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="The folder to write (upload it as a Hub model repo)."),
    ],
    sweep: Annotated[
        Path | None,
        typer.Option(
            "--sweep",
            help="A results table of this run (`qamoe eval RUN --sweep --out CSV`): the card "
            "shows its reliability curve (reliability.png).",
            dir_okay=False,
        ),
    ] = None,
    license_id: Annotated[
        str | None,
        typer.Option("--license", help="License identifier for the card, e.g. mit, cc-by-4.0."),
    ] = None,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Export a run as a Hugging Face Hub model repository: config.json, model.safetensors, a
    model card (README.md) and, with --sweep, its reliability curve; `qamoe eval` and
    `qa.load_run` read the folder like a run."""
    from qamoe_core.runs.export import export_run

    result = export_run(run, out, sweep=sweep, license=license_id, force=force)

    def render() -> None:
        out_console.print(f"exported {run} to {out}: {', '.join(result['files'])}",
                          soft_wrap=True, highlight=False)  # fmt: skip

    emit(result, json_mode=json_out, render=render)
