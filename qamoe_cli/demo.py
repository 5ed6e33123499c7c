"""Run the whole chain on the built-in synthetic dataset (about 30 s on 2 idle cores).

Extracts the data, trains QA-MoE and one baseline, corrupts a copy at one level, evaluates
both across the spectrum and writes a report; ends with the report's path. Measured on a
2-core machine: 26-50 s by load, longer beside other busy processes (README, "Threads on a
busy machine").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qamoe_cli.common import (
    Force,
    JsonOut,
    Quiet,
    Seed,
    emit,
    err_console,
    out_console,
    progress,
)


def command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")
    ] = Path("qamoe-demo"),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per model (max).")] = 12,
    baseline: Annotated[
        str,
        typer.Option(
            help="Baseline to compare with: one of our fusion baselines (docs/models.md)."
        ),
    ] = "early-fusion",
    level: Annotated[
        float, typer.Option(help="Spectrum level of the corrupted copy, in [0, 1].")
    ] = 0.4,
    seed: Seed = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    from qamoe_core.demo import DemoConfig, run_demo

    cfg = DemoConfig(seed=seed, epochs=epochs, baseline=baseline, level=level)
    steps = iter(range(1, 100))
    talk = not (quiet or json_out)
    # the ETA counts stages, which differ in length (training is most of the time): rough
    with progress(cfg.stage_count(), "demo stages", enabled=talk) as advance:

        def stage(text: str) -> None:
            step = next(steps)
            if step > 1:
                advance(1)  # a stage starts when the one before it has ended
            if talk:
                err_console.print(f"[bold cyan][{step}][/] {text}", highlight=False)

        result = run_demo(out, cfg, force=force, device=device, stage=stage)
        advance(1)

    def render() -> None:
        table = Table(title="Robustness on the synthetic test split (mixed axis, all modalities)")
        for col in ("run", "metric", "clean", "mean over grid", "area", "area / clean"):
            table.add_column(col, justify="left" if col in ("run", "metric") else "right")
        for row in result.summary:
            if row.get("axis") != "mixed" or row.get("variant") != "normal":
                continue
            table.add_row(
                str(row["run"]),
                str(row["metric"]),
                f"{row['clean']:.3f}",
                f"{row['mean']:.3f}",
                f"{row['area']:.3f}",
                f"{row['area_over_clean']:.3f}",
            )
        out_console.print(table)
        total = sum(result.seconds.values())
        out_console.print(f"done in {total:.0f} s. Report: {result.report_html}")

    emit(result.to_dict(), json_mode=json_out, render=render)
