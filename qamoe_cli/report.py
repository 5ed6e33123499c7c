"""Draw reliability curves, quality scores, expert usage and summary tables from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from qamoe_cli.audit import DEFAULT_GROUP_REGEX
from qamoe_cli.common import (
    Force,
    JsonOut,
    Quiet,
    emit,
    err_console,
    flag,
    out_console,
    parse_list,
    progress,
)


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
            help="Compare every run with this run (named, never picked on the results): the "
            "difference in the grid mean over model seeds (corruption seeds averaged within "
            "each), a 95% interval (Welch's t over model seeds; with --samples a bootstrap "
            "over videos and model seeds), the Holm-adjusted p-value and the minimum "
            "detectable difference. --json prints each comparison.",
        ),
    ] = None,
    samples: Annotated[
        list[Path] | None,
        typer.Option(
            "--samples",
            help="Per-sample tables (qamoe eval --per-sample FILE) of the runs compared; "
            "repeat for several files. With them the --reference interval also spans the "
            "test set, resampled by video (--group-regex).",
            show_default=False,
        ),
    ] = None,
    group_regex: Annotated[
        str,
        typer.Option(
            "--group-regex",
            help="With --samples: a sample's video (the cluster the bootstrap resamples) is "
            "the first capture group of this regex on its id, as in `qamoe audit` (default: "
            "strip the last '_<digits>' or '$_$<clip>'); an unmatched id is its own video.",
        ),
    ] = DEFAULT_GROUP_REGEX,
    no_groups: Annotated[
        bool,
        flag("--no-groups", help="With --samples: resample single test samples, not videos."),
    ] = False,
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
    quiet: Quiet = False,
) -> None:
    """Draw reliability curves, quality scores, expert usage and summary tables from results."""
    # heavy imports (matplotlib, pandas) here, not at the top, so the CLI starts fast
    from qamoe_core.evaluation.results import load
    from qamoe_core.evaluation.summary import pool_model_seeds, pool_sample_seeds
    from qamoe_core.report.build import build_report

    table = load(results)
    per_sample = None
    if samples:  # its module loads torch (through the evaluation plan): only when needed
        from qamoe_core.evaluation.samples import load_samples

        per_sample = load_samples(samples)
    if pool_seeds:
        table = pool_model_seeds(table)
        per_sample = pool_sample_seeds(per_sample) if per_sample is not None else None
    if per_sample is not None and reference is None:
        err_console.print("warning: --samples is used only with --reference.", highlight=False)
    with progress(None, "report", enabled=not (quiet or json_out)) as advance:
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
            group_regex=None if no_groups else group_regex,
            style=style,
            titles=titles,
            progress=advance,
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
        if rep.comparisons:
            out_console.print(_comparison_table(rep.comparisons))
        out_console.print(f"open {rep.html}", soft_wrap=True, highlight=False)

    emit(summary, json_mode=json_out, render=render)


def _num(value: float | None, fmt: str = "+.4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _comparison_table(rows: list[dict[str, Any]]) -> Table:
    """Every comparison with its interval, Holm p and MDE (the numbers of --json)."""
    table = Table(title=f"run − {rows[0]['reference']} ({rows[0]['metric']})")
    for col in ("run", "protocol", "difference", "95% CI", "p (Holm)", "MDE", "seeds", "note"):
        table.add_column(col, justify="left" if col in ("run", "protocol", "note") else "right")
    for r in rows:
        ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None else "n/a"
        table.add_row(
            escape(str(r["run"])), escape(str(r["protocol"])), _num(r["difference"]), ci,
            _num(r["p_holm"], ".3g"), _num(r["mde"], ".4f"),
            f"{r['n_seeds']} vs {r['n_seeds_reference']}", r["note"],
        )  # fmt: skip
    return table
