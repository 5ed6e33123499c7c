"""Draw reliability curves, quality scores, expert usage and summary tables from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, emit, err_console, flag, out_console, parse_list


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
    reference: Annotated[
        str | None,
        typer.Option(
            help="Compare every run with this run: the difference in the grid mean with a "
            "95% paired bootstrap interval (over seeds; over test samples too with --samples).",
        ),
    ] = None,
    samples: Annotated[
        list[Path] | None,
        typer.Option(
            "--samples",
            help="Per-sample tables (qamoe eval --per-sample FILE) of the runs compared; "
            "repeat for several files. With them the --reference interval also spans the "
            "test samples.",
            show_default=False,
        ),
    ] = None,
    figures: Annotated[
        str,
        typer.Option(help="Figure files to write, comma-separated (PNG is always written)."),
    ] = "png,pdf,svg",
    style: Annotated[
        str,
        typer.Option(
            help="Figure style: 'screen' (sized per panel for the HTML page) or 'paper' "
            "(3.3 in wide with one panel column, 6.9 in with more: one or both columns of a "
            "two-column page; serif 7-8 pt, PNG at 300 dpi, no figure titles).",
        ),
    ] = "screen",
    titles: Annotated[
        bool | None,
        typer.Option(
            "--titles/--no-titles",
            help="A title above each figure (default: on for screen, off for paper, where "
            "the caption names it). Panel titles, which name each panel's axis, always stay.",
            show_default=False,
            metavar="",
        ),
    ] = None,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Draw reliability curves, quality scores, expert usage and summary tables from results."""
    # heavy imports (matplotlib, pandas) here, not at the top, so the CLI starts fast
    from qamoe_core.report import build_report
    from qamoe_core.results import load, load_samples, pool_model_seeds, pool_sample_seeds

    table = load(results)
    per_sample = load_samples(samples) if samples else None
    if pool_seeds:
        table = pool_model_seeds(table)
        per_sample = pool_sample_seeds(per_sample) if per_sample is not None else None
    if per_sample is not None and reference is None:
        err_console.print("warning: --samples is used only with --reference.", highlight=False)
    rep = build_report(
        table,
        out,
        metrics=parse_list(metric, "--metric"),
        title=title,
        sources=[str(p) for p in [*results, *(samples or [])]],
        force=force,
        reference=reference,
        samples=per_sample,
        pooled=pool_seeds,
        formats=parse_list(figures, "--figures") or ["png"],
        style=style,
        titles=titles,
    )
    for line in rep.warnings:  # never drop a run without a word
        err_console.print(f"warning: {line}", highlight=False, soft_wrap=True, markup=False)
    summary = rep.to_dict()

    def render() -> None:
        grid = Table(title=f"report in {rep.out_dir}")
        grid.add_column("file")
        grid.add_column("what")
        grid.add_row(rep.html.name, "self-contained HTML page")
        grid.add_row(rep.markdown.name, "Markdown page (links the PNGs)")
        for name, path in rep.images.items():
            also = ", ".join(p.suffix[1:].upper() for p in rep.vectors.get(name, []))
            grid.add_row(path.name, name.replace("_", " ") + (f" (also {also})" if also else ""))
        for name, path in rep.tables.items():
            grid.add_row(path.name, f"{name} table")
        out_console.print(grid)
        out_console.print(f"open {rep.html}", soft_wrap=True, highlight=False)

    emit(summary, json_mode=json_out, render=render)
