"""Tune a model's hyper-parameters on grouped cross-validation over train+valid; test is never
read.

Each trial trains the model once per fold with settings drawn from the search space (--space,
a TOML file; without it the model's default space, docs/models.md) and is scored on the
folds' validation rows: --metric at --levels (default MAE averaged over clean and mixed 0.5),
mean over folds with its standard error. Optuna draws the settings (TPE, or --sampler random)
and may stop a trial after any fold (--pruner). Give every model you compare the same
--trials, --folds and --seed: the budget and the folds are then the same.

The --out folder gets best.json (a config file: qamoe train DATA --model M --config DIR/best.json),
trials.csv (every trial: settings, fold scores, mean, SE, seconds, state), report.md (with the
optimisation history and Optuna's parameter importances as PNG) and its working files (fold
files, the Optuna journal, one folder per training). Rerun the same command to resume a
killed or interrupted tuning (with a larger --trials to extend it); a rerun that changes the
space, the data or the selection is refused, naming what changed. With --executor slurm each
training is a SLURM job (the executor of `qamoe study`; --partition, --time, --gpus, --cpus,
--array-parallelism as there). docs/tuning.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from qamoe_cli import process
from qamoe_cli.audit import DEFAULT_GROUP_REGEX
from qamoe_cli.common import JsonOut, Quiet, emit, err_console, flag, out_console, progress

HELP = "\n\n".join(" ".join(p.split()) for p in (__doc__ or "").split("\n\n"))


def _executor(name: str, out: Path, model: str, jobs: int | None, slurm: dict[str, Any]) -> Any:
    """None (the tuning's own: in this process, or --jobs children), or SLURM through the
    executor of `qamoe study` (a tuning's cells are laid out as a study's)."""
    from qamoe_core.base.errors import UsageError, check_choice

    check_choice(name, ("local", "slurm"), "executor")
    given = [f"--{k.replace('_', '-')}" for k, v in slurm.items() if v is not None]
    if name == "local":
        if given:
            raise UsageError(
                f"{', '.join(given)} apply to --executor slurm only.",
                hint="Add --executor slurm, or leave them out.",
            )
        return None
    if jobs is not None and jobs < 1:
        raise UsageError(f"The '--jobs' parameter must be at least 1. Got {jobs} instead.")
    from qamoe_core.study.executors import Bounded, SlurmExecutor
    from qamoe_core.study.spec import parse_slurm

    options = parse_slurm({}, **slurm)
    inner = SlurmExecutor(out, options, f"qamoe-tune-{model}")
    return Bounded(inner, jobs or options.array_parallelism)


def command(
    data: Annotated[Path, typer.Argument(help="Feature file (HDF5) with train and valid splits.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Tuning folder (created or resumed).")],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="The model to tune (docs/models.md) or a plug-in."),
    ] = "qamoe",
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            help="Search space (TOML; docs/tuning.md). Default: the model's default space.",
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", "-n", help="Trials in all (the budget; resumed ones count).")
    ] = 20,
    folds: Annotated[
        int,
        typer.Option(
            "--folds", help="Folds over train+valid, grouped by video; 0: the valid split."
        ),
    ] = 5,
    no_groups: Annotated[
        bool, flag("--no-groups", help="Folds by row (for data without a video in its ids).")
    ] = False,
    group_regex: Annotated[
        str,
        typer.Option(
            "--group-regex", help="A row's video: the first capture group on its id (as audit)."
        ),
    ] = DEFAULT_GROUP_REGEX,
    metric: Annotated[
        str,
        typer.Option("--metric", help="Validation metric: auto (MAE; Acc_2 for binary labels)."),
    ] = "auto",
    levels: Annotated[
        str,
        typer.Option("--levels", help="Validation levels averaged (training axis): clean,0.5."),
    ] = "clean,0.5",
    sampler: Annotated[str, typer.Option("--sampler", help="tpe or random.")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median, halving or none.")] = "median",
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seeds the sampler and the folds.")
    ] = 0,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            help="Trainings at once (local, default 1: in this process; N: N children; "
            "SLURM: default the array parallelism).",
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this machine) or slurm (one SLURM job per training).")
    ] = "local",
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    time: Annotated[
        str | None,
        typer.Option("--time", help="SLURM time limit per training: minutes or H:MM:SS."),
    ] = None,
    gpus: Annotated[int | None, typer.Option(min=0, help="SLURM: GPUs per training.")] = None,
    cpus: Annotated[
        int | None, typer.Option(min=1, help="SLURM: CPUs (threads) per training.")
    ] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option(min=1, help="SLURM: trainings of one job array running at once."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Base config (JSON): every field not tuned."),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda when available), cpu or cuda.")
    ] = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    from qamoe_core.tuning.objective import parse_levels  # light: no torch
    from qamoe_core.tuning.plan import TuneSettings

    settings = TuneSettings(
        data=data, out=out, model=model, space=space, trials=trials, folds=folds,
        group_regex=None if no_groups else group_regex, metric=metric,
        levels=parse_levels(levels), sampler=sampler, pruner=pruner, seed=seed,
        jobs=1 if jobs is None else jobs, config=config, device=device,
    )  # fmt: skip
    slurm = {"partition": partition, "time": time, "gpus": gpus, "cpus": cpus,
             "array_parallelism": array_parallelism}  # fmt: skip
    where = _executor(executor, out, model, jobs, slurm)
    talk = not (quiet or json_out)

    def notify(line: str) -> None:
        if talk:
            err_console.print(line, highlight=False, soft_wrap=True)

    from qamoe_core.tuning.api import run_tuning

    process.state.interrupt_hint = (
        f"Finished trainings are kept in '{out}'; rerun the same command to resume the tuning."
    )
    with progress(None, "tune trials", enabled=talk) as advance:
        result = run_tuning(settings, notify, where, progress=advance)
    doc: dict[str, Any] = {k: getattr(result, k) for k in result.__dataclass_fields__}
    emit(
        doc,
        json_mode=json_out,
        render=lambda: out_console.print(
            f"{result.line}\nbest.json: {result.best_config}", highlight=False, soft_wrap=True
        ),
    )
