"""Draw reliability curves, quality scores, expert usage and summary tables from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, emit, flag, out_console, parse_list


def command(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="One or more results.csv files from `qamoe eval`; their runs overlay.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Report folder (report.html, report.md, PNGs, CSVs)."),
    ] = Path("report"),
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric(s) to plot, comma-separated (default: Has0_acc_2 for MOSI/MOSEI, "
            "Mult_acc_2 for SIMS, Acc_2 for binary)."
        ),
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    pool_seeds: Annotated[
        bool,
        flag(
            "--pool-seeds",
            help="Pool runs labelled NAME-s0, NAME-s1, ... into one run NAME: bands and "
            "tables then span model seeds as well as corruption seeds.",
        ),
    ] = False,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Draw reliability curves, quality scores, expert usage and summary tables from results."""
    # heavy imports (matplotlib, pandas) here, not at the top, so the CLI starts fast
    from qamoe_core.report import build_report
    from qamoe_core.results import load, pool_model_seeds

    table = load(results)
    if pool_seeds:
        table = pool_model_seeds(table)
    rep = build_report(
        table,
        out,
        metrics=parse_list(metric, "--metric"),
        title=title,
        sources=[str(p) for p in results],
        force=force,
    )
    summary = rep.to_dict()

    def render() -> None:
        grid = Table(title=f"report in {rep.out_dir}")
        grid.add_column("file")
        grid.add_column("what")
        grid.add_row(rep.html.name, "self-contained HTML page")
        grid.add_row(rep.markdown.name, "Markdown page (links the PNGs)")
        for name, path in rep.images.items():
            grid.add_row(path.name, name.replace("_", " "))
        for name, path in rep.tables.items():
            grid.add_row(path.name, f"{name} table")
        out_console.print(grid)
        out_console.print(f"open {rep.html}", soft_wrap=True, highlight=False)

    emit(summary, json_mode=json_out, render=render)
