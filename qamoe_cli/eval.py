"""Evaluate one checkpoint: the clean split, a corrupted file, or a sweep of the whole spectrum."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, Quiet, emit, out_console, parse_list, progress

_LEVELS_HELP = "Grid: start:stop:step (stop included) or a comma list, each in [0, 1]."


def command(
    run: Annotated[
        Path, typer.Argument(help="Run directory from `qamoe train --out`.", show_default=False)
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="HDF5 features (clean, or from `qamoe corrupt`).", dir_okay=False
        ),
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Walk the spectrum: every axis, level and seed.")
    ] = False,
    levels: Annotated[str, typer.Option(help=_LEVELS_HELP)] = "0:0.9:0.1",
    axis: Annotated[
        str, typer.Option(help="Spectrum axes to sweep, comma-separated.")
    ] = "mixed,missing,noise",
    modalities: Annotated[
        str | None,
        typer.Option(help="Modalities that receive the level (default: all of the model's)."),
    ] = None,
    drop_sets: Annotated[
        bool,
        typer.Option(
            "--drop-sets", help="Fixed-missing protocol: every non-empty subset of modalities kept."
        ),
    ] = False,
    corruption_seeds: Annotated[
        int, typer.Option(min=1, help="Corruption seeds per point (0, 1, ..., N-1).")
    ] = 3,
    no_shuffle: Annotated[
        bool, typer.Option("--no-shuffle", help="Skip the quality-shuffle control.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Label of the run in the results (default: folder name).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the tidy results table (CSV) for `qamoe report`.",
            dir_okay=False,
        ),
    ] = None,
    per_sample: Annotated[
        Path | None,
        typer.Option(
            "--per-sample",
            help="Also write every sample's prediction and quality scores at every point "
            "(CSV; .csv.gz compresses).",
            dir_okay=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Evaluate one checkpoint: the clean split, a corrupted file, or a sweep of the spectrum."""
    # heavy imports (torch, pandas) here, not at the top, so the CLI starts fast
    from qamoe_core.atomic import check_output, same_file
    from qamoe_core.checkpoint import ALL_FILES
    from qamoe_core.evaluate import EvalConfig, Evaluation, parse_levels, save_samples
    from qamoe_core.metrics import PRIMARY, higher_is_better
    from qamoe_core.results import (
        QUALITY_PREFIX,
        SPECTRUM_AXES,
        USAGE_PREFIX,
        is_diagnostic,
        save,
    )

    grid = parse_levels(levels)  # validated even without --sweep: a bad list is a mistake
    cfg = EvalConfig(
        split=split,
        sweep=sweep,
        axes=tuple(parse_list(axis, "--axis") or SPECTRUM_AXES),
        levels=grid,
        seeds=tuple(range(corruption_seeds)),
        modalities=tuple(parse_list(modalities, "--modalities") or ()),
        drop_sets=drop_sets,
        quality_shuffle=not no_shuffle,
        batch_size=batch_size,
        per_sample=per_sample is not None,
    )
    if out is not None and per_sample is not None and same_file(out, per_sample):
        raise typer.BadParameter(
            "--out and --per-sample name the same file; each needs its own.",
            param_hint="--per-sample",
        )
    for target in (out, per_sample):  # fail on an existing output before minutes of work
        if target is not None:
            check_output(target, force, inputs=[data, *(run / name for name in ALL_FILES)])
    ev = Evaluation.from_run(run, data, cfg, name=name, device=device)
    with progress(ev.steps, f"eval {ev.run_name}", enabled=not (quiet or json_out)) as advance:
        result = ev.run(progress=advance)
    if out is not None:
        save(result.table, out, force=force)
    if per_sample is not None and result.samples is not None:
        save_samples(result.samples, per_sample, force=force)
    summary = {**result.to_dict(), "out": str(out) if out is not None else None}
    summary["per_sample"] = str(per_sample) if per_sample is not None else None

    def render() -> None:
        info = result.info
        out_console.print(
            f"[bold]{info['run']}[/] ({info['model']}) on {info['dataset']}/{info['split']}: "
            f"{info['n_samples']} samples, {info['points']} points, {info['seconds']:.1f} s",
            soft_wrap=True,
            highlight=False,
        )
        values = result.clean
        first = Table(title=f"{info['first_axis']} (level {info['first_level']:g})")
        first.add_column("metric", no_wrap=True)
        first.add_column("value", justify="right")
        for metric, value in values.items():
            if not is_diagnostic(metric):
                first.add_row(metric, f"{value:.4f}")
        out_console.print(first)
        for prefix, label in ((QUALITY_PREFIX, "quality r"), (USAGE_PREFIX, "expert usage #")):
            parts = [
                f"{k[len(prefix) :]} {v:.3f}" for k, v in values.items() if k.startswith(prefix)
            ]
            if parts:
                out_console.print(f"{label}: " + "  ".join(parts), highlight=False, soft_wrap=True)
        if not result.summary.empty:
            primary = PRIMARY.get(info["scheme"], "")
            s = result.summary[result.summary["metric"].isin([primary, "MAE"])]
            table = Table(title="Reliability summary (seeds averaged per level)")
            for col in ("axis", "variant", "metric", "clean", "mean", "area", "area/clean"):
                right = col not in ("axis", "variant", "metric")
                table.add_column(col, justify="right" if right else "left", no_wrap=True)
            for r in s.itertuples():
                arrow = "↑" if higher_is_better(str(r.metric)) else "↓"
                table.add_row(
                    str(r.axis),
                    "shuffled" if r.variant == "quality_shuffle" else "normal",
                    f"{r.metric} {arrow}",
                    f"{r.clean:.4f}",
                    f"{r.mean:.4f}",
                    f"{r.area:.4f}",
                    f"{r.area_over_clean:.3f}",
                )
            out_console.print(table)
        if out is not None:
            out_console.print(f"results: {out}", soft_wrap=True, highlight=False)
        elif sweep:
            out_console.print("Pass --out results.csv to keep the table for `qamoe report`.")
        if per_sample is not None:
            out_console.print(f"per-sample: {per_sample}", soft_wrap=True, highlight=False)

    emit(summary, json_mode=json_out, render=render)
