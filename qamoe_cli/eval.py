"""Evaluate one checkpoint: the clean split, a corrupted file, or a sweep of the whole spectrum."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli.common import (
    Force,
    JsonOut,
    Plugins,
    Quiet,
    check_plugins,
    emit,
    err_console,
    flag,
    out_console,
    parse_list,
    progress,
)

_LEVELS_HELP = "Grid: start:stop:step (stop included) or a comma list, each in [0, 1]."


def command(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run directory from `qamoe train --out` (or `qamoe export --out`).",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="HDF5 features (clean, or from `qamoe corrupt`).", dir_okay=False
        ),
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    sweep: Annotated[
        bool, flag("--sweep", help="Walk the spectrum: every axis, level and seed.")
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
        flag(
            "--drop-sets", help="Fixed-missing protocol: every non-empty subset of modalities kept."
        ),
    ] = False,
    pattern: Annotated[
        str | None,
        typer.Option(
            help="Temporal pattern of the sweep: burst (missing runs), correlated (AR(1) "
            "noise) or burst,correlated; default random steps and white noise."
        ),
    ] = None,
    burst_mean: Annotated[
        float | None, typer.Option(help="Mean burst length in steps (with --pattern burst).")
    ] = None,
    noise_rho: Annotated[
        float | None,
        typer.Option(help="Lag-1 correlation of the noise (with --pattern correlated)."),
    ] = None,
    corruption_seeds: Annotated[
        int, typer.Option(min=1, help="Corruption seeds per point (0, 1, ..., N-1).")
    ] = 3,
    no_shuffle: Annotated[
        bool, flag("--no-shuffle", help="Skip the quality-shuffle control.")
    ] = False,
    control: Annotated[
        str | None,
        typer.Option(
            "--control",
            help="Also run these r-controls, comma-separated: constant_r (r fixed to its mean "
            "on the split), oracle_r (r from each sample's true corruption); for models that "
            "offer them (QA-MoE). Each is a variant of the results.",
        ),
    ] = None,
    residuals: Annotated[
        bool,
        flag(
            "--residuals",
            help="Also record QA-MoE's quality-head diagnostic at every point: the residual "
            "of each modality's estimate against its clean target, and the σ² predicted for "
            "it (the report plots them).",
        ),
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
    plugin: Plugins = None,
    text_model: Annotated[
        Path | None,
        typer.Option(
            "--text-model",
            help="The text encoder folder of a run trained with --text-encoder pretrained "
            "(default: found inside the run folder or the packaged MiniLM, by content hash; a "
            "path the run records is never opened).",
            file_okay=False,
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Evaluate one checkpoint: the clean split, a corrupted file, or a sweep of the spectrum."""
    # heavy imports (torch, pandas) here, not at the top, so the CLI starts fast
    from qamoe_core.base.atomic import check_output, same_file
    from qamoe_core.evaluation.plan import EvalConfig, parse_levels
    from qamoe_core.evaluation.results import SPECTRUM_AXES, save
    from qamoe_core.evaluation.samples import save_samples
    from qamoe_core.evaluation.sweep import Evaluation
    from qamoe_core.runs.checkpoint import OWN_FILES
    from qamoe_core.spectrum.engine import parse_pattern

    plugins = check_plugins(plugin)
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
        controls=tuple(parse_list(control, "--control") or ()),
        residuals=residuals,
        batch_size=batch_size,
        per_sample=per_sample is not None,
        **parse_pattern(pattern, burst_mean, noise_rho),
    )
    if out is not None and per_sample is not None and same_file(out, per_sample):
        raise typer.BadParameter(
            "--out and --per-sample name the same file; each needs its own.",
            param_hint="--per-sample",
        )
    for target in (out, per_sample):  # fail on an output it cannot write before the work
        if target is not None:
            check_output(target, force, inputs=[data, *(run / name for name in OWN_FILES)])
            _check_writable(target)
    ev = Evaluation.from_run(run, data, cfg, name=name, device=device, plugins=plugins,
                             text_model=text_model)  # fmt: skip
    if ev.text_encoder and not (quiet or json_out):
        err_console.print(f"text encoder: {ev.text_encoder}", highlight=False, soft_wrap=True)
    with progress(ev.steps, f"eval {ev.run_name}", enabled=not (quiet or json_out)) as advance:
        result = ev.run(progress=advance)
    if out is not None:
        save(result.table, out, force=force)
    if per_sample is not None and result.samples is not None:
        save_samples(result.samples, per_sample, force=force)
    summary = {**result.to_dict(), "out": str(out) if out is not None else None}
    summary["text_encoder"] = ev.text_encoder
    summary["per_sample"] = str(per_sample) if per_sample is not None else None

    def render() -> None:
        _render(result, out, per_sample, sweep)

    emit(summary, json_mode=json_out, render=render)


# The CLI's name for the quality-shuffle control is the results' variant name (one name).
_SHUFFLE_NOTE = (
    "quality_shuffle: the control with each sample's quality scores r swapped with another's "
    "(permuted across samples); close to normal means the model ignores r."
)


def _check_writable(target: Path) -> None:
    """Fail now, not after the sweep, when the output's folder refuses new files."""
    import os
    import tempfile

    from qamoe_core.base.errors import InputError

    try:
        fd, probe = tempfile.mkstemp(prefix=".qamoe-probe.", dir=target.parent)
    except OSError as exc:
        raise InputError(
            f"Cannot write into '{target.parent}': {exc.strerror or exc}.",
            hint="Check the folder's permissions, or write somewhere else with --out.",
        ) from None
    os.close(fd)
    os.unlink(probe)


def _render(result: Any, out: Path | None, per_sample: Path | None, sweep: bool) -> None:
    """The human view: the first point, its diagnostics, and the summary of a sweep."""
    info = result.info
    out_console.print(
        f"[bold]{info['run']}[/] ({info['model']}) on {info['dataset']}/{info['split']}: "
        f"{info['n_samples']} samples, {info['points']} points, {info['seconds']:.1f} s",
        soft_wrap=True,
        highlight=False,
    )
    _render_first(result)
    if _swept(result):
        _render_summary(result)
    if info["quality_shuffle"]:
        out_console.print(_SHUFFLE_NOTE, soft_wrap=True, highlight=False)
    if out is not None:
        out_console.print(f"results: {out}", soft_wrap=True, highlight=False)
    elif sweep:
        out_console.print("Pass --out results.csv to keep the table for `qamoe report`.")
    if per_sample is not None:
        out_console.print(f"per-sample: {per_sample}", soft_wrap=True, highlight=False)


def _swept(result: Any) -> bool:
    """Whether any axis was evaluated at more than one level (a summary is then defined)."""
    from qamoe_core.evaluation.results import SPECTRUM_AXES

    t = result.table
    spectrum = t[t["axis"].isin(SPECTRUM_AXES)]
    return bool(len(spectrum) and spectrum.groupby("axis")["level"].nunique().max() > 1)


def _render_first(result: Any) -> None:
    from qamoe_core.evaluation.results import QUALITY_PREFIX, USAGE_PREFIX, is_diagnostic

    info = result.info
    values, shuffled = result.clean, result.first("quality_shuffle")
    t = result.table
    constant = {str(r.metric): float(r.value) for r in t[t["variant"] == "constant"].itertuples()}
    first = Table(title=f"{info['first_axis']} (level {info['first_level']:g})")
    first.add_column("metric", no_wrap=True)
    first.add_column("normal" if shuffled else "value", justify="right")
    if shuffled:
        first.add_column("quality_shuffle", justify="right")
    if constant:  # the floor to read every score against
        first.add_column("best constant", justify="right")
    for metric, value in values.items():
        if not is_diagnostic(metric):
            extra = [_cell(shuffled.get(metric, math.nan))] if shuffled else []
            extra += [_cell(constant.get(metric, math.nan))] if constant else []
            first.add_row(metric, _cell(value), *extra)
    out_console.print(first)
    for prefix, label in ((QUALITY_PREFIX, "quality r"), (USAGE_PREFIX, "expert usage #")):
        parts = [f"{k[len(prefix) :]} {v:.3f}" for k, v in values.items() if k.startswith(prefix)]
        if parts:
            out_console.print(f"{label}: " + "  ".join(parts), highlight=False, soft_wrap=True)


def _render_summary(result: Any) -> None:
    """The reliability summary, with only the columns that are defined for this evaluation
    (no clean point, e.g. a sweep without one: no clean or area/clean column)."""
    from qamoe_core.metrics import PRIMARY, higher_is_better

    s = result.summary
    s = s[s["metric"].isin([PRIMARY.get(result.info["scheme"], ""), "MAE"])]
    if s.empty:
        return
    cols = [c for c in ("clean", "mean", "area", "area_over_clean") if s[c].notna().any()]
    for metric, rows in s.groupby("metric", sort=False):  # one table per metric: 80 columns
        arrow = "higher is better" if higher_is_better(str(metric)) else "lower is better"
        table = Table(title=f"{metric} ({arrow}), seeds averaged per level")
        for col in ("axis", "variant", *cols):
            right = col not in ("axis", "variant")
            head = "area/clean" if col == "area_over_clean" else col
            table.add_column(head, justify="right" if right else "left", no_wrap=True)
        for r in rows.itertuples():
            values = [_cell(getattr(r, c), 3 if c == "area_over_clean" else 4) for c in cols]
            table.add_row(str(r.axis), str(r.variant), *values)
        out_console.print(table)


def _cell(value: float, digits: int = 4) -> str:
    """A number, or n/a where it is undefined (e.g. Corr of a constant prediction)."""
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"
