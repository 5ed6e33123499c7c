"""Write a copy of a feature file at a point of the reliability spectrum (0 clean, 1 gone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli import process
from qamoe_cli.common import Force, JsonOut, OutFile, Quiet, Seed, emit, out_console, progress

Level = Annotated[
    str,  # parsed by CorruptionSpec so 'abc' or 1.4 get the same one-line error as in the library
    typer.Option(
        "--level",
        "-l",
        metavar="LEVEL",
        help="Spectrum level in [0, 1]: 0 clean, 0.5 half the steps gone and the rest noisy "
        "(mixed), 1 the modality is gone.",
        show_default=False,
    ),
]


def command(
    data: Annotated[Path, typer.Argument(help="Input feature file (.h5).", show_default=False)],
    level: Level,
    out: OutFile,
    axis: Annotated[
        str, typer.Option(help="missing (drop steps), noise (Gaussian), or mixed (both).")
    ] = "mixed",
    modalities: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities to corrupt (default: all in the file)."),
    ] = None,
    drop: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities to remove entirely, e.g. text."),
    ] = None,
    splits: Annotated[
        str | None,
        typer.Option(help="Comma-separated splits to corrupt (default: all); others are copied."),
    ] = None,
    seed: Seed = 0,
    noise_scale: Annotated[
        float, typer.Option(help="Noise std at level 1, in units of each dimension's train std.")
    ] = 1.0,
    pattern: Annotated[
        str | None,
        typer.Option(
            help="Temporal pattern(s): burst (drop steps in runs) and/or correlated (AR(1) "
            "noise), comma-separated; default random drops and white noise.",
        ),
    ] = None,
    burst_mean: Annotated[
        float | None,
        typer.Option(help="Mean burst length in steps (>= 1) for --pattern burst (default 5)."),
    ] = None,
    noise_rho: Annotated[
        float | None,
        typer.Option(
            help="Lag-1 noise correlation in [0, 1) for --pattern correlated (default 0.9)."
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Corrupt DATA at --level along --axis and write it to --out (atomic, recorded in the file)."""
    # heavy imports (torch) here, not at the top, so `qamoe --help` and `--version` start fast
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.spectrum.engine import CorruptionSpec, parse_pattern
    from qamoe_core.spectrum.files import corrupt_file

    spec = CorruptionSpec(
        level=level,  # type: ignore[arg-type]  # validated (and converted) by the spec
        axis=axis,
        modalities=modalities,  # type: ignore[arg-type]  # "audio,vision" is accepted
        drop=drop or (),  # type: ignore[arg-type]
        noise_scale=noise_scale,
        seed=seed,
        **parse_pattern(pattern, burst_mean, noise_rho),
    )
    with FeatureFile(data) as f:
        total = sum(f.n(s) for s in f.splits)
    with (
        process.streaming() as trim_memory,
        progress(total, "corrupt", enabled=not (quiet or json_out)) as advance,
    ):

        def advance_and_trim(n: int) -> None:
            advance(n)
            trim_memory()

        summary = corrupt_file(
            data, out, spec, splits=splits, force=force, progress=advance_and_trim
        )

    def render() -> None:
        spec = summary["spec"]
        title = (
            f"{summary['out']}: level {spec['level']:g}, axis {spec['axis']}, seed {spec['seed']}, "
            f"pattern {summary['pattern'] or '-'}, splits {','.join(summary['splits'])}"
        )
        table = Table(title=title)
        for col in ("modality", "valid steps", "missing_rate", "noise_std"):
            table.add_column(col, justify="left" if col == "modality" else "right")
        for m, s in summary["modalities"].items():
            missing = f"{s['missing_rate']:.3f} (nominal {s['missing_rate_nominal']:.3f})"
            noise = f"{s['noise_std']:.3f} (nominal {s['noise_std_nominal']:.3f})"
            name = f"{m} (dropped)" if s["dropped_whole"] else m
            table.add_row(name, str(s["steps"]), missing, "-" if s["dropped_whole"] else noise)
        out_console.print(table)
        if not summary["modalities"]:
            out_console.print("level 0 and nothing dropped: the data are copied unchanged.")
        out_console.print(
            "noise_std is the RMS of the added noise in units of each dimension's train std; "
            f"corruption chain length {summary['chain_length']}; "
            f"{summary['bytes'] / 2**20:.1f} MiB in {summary['seconds']:.1f}s."
        )

    emit(summary, json_mode=json_out, render=render)
