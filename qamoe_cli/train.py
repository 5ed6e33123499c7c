"""Train QA-MoE or a baseline: one checkpoint for every level of the reliability spectrum."""

# Each batch is corrupted at per-sample levels drawn from U(0, 1) (half the samples kept clean);
# the epoch with the best VALIDATION score at train.val_levels is kept. The run directory gets
# config.json, model.safetensors, metrics.json, history.jsonl and train_state.pt. Under
# torchrun the same command trains with DistributedDataParallel.

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli import process
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
    progress,
    train_default,
)
from qamoe_core.base.errors import UsageError
from qamoe_core.base.names import DEFAULT_MODEL
from qamoe_core.config import ModelConfig, TrainConfig, resolve
from qamoe_core.training.tracking import targets

# checkpoint, resume, h5store and train are imported inside the functions that use them: they
# pull torch (~1.5 s), which `qamoe --help` and `qamoe train --help` should not wait for.


def _configs(
    config: Path | None,
    resume: bool,
    out: Path,
    train_flags: dict[str, Any],
    model_flags: dict[str, Any] | None = None,
) -> tuple[ModelConfig | None, TrainConfig | None]:
    """defaults < --config < flags; with --resume the saved config comes first (the core's
    resume policy merges them, and the run then checks that nothing changes)."""
    if resume:
        from qamoe_core.training.resume import given_configs  # torch

        return given_configs(out, config, model_flags or {}, train_flags)
    return resolve(config, model_flags, train_flags)


def _total_steps(data: Path, batch_size: int, epochs: int) -> int | None:
    from qamoe_core.data.store import FeatureFile

    try:
        with FeatureFile(data) as f:
            n = f.n("train") if "train" in f.splits else 0
    except Exception:  # train() reports file problems properly
        return None
    return math.ceil(n / batch_size) * epochs if n else None


def _score(value: float | None) -> str:
    """A score for the table; undefined ones (a correlation of constant predictions: NaN in
    memory, null in metrics.json) show as n/a."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _render(result: dict[str, Any]) -> None:
    table = Table(title=f"run {result['run_dir']}", show_header=True)
    table.add_column("split")
    metric = result["select_metric"]
    keys = [metric] + [k for k in ("Has0_acc_2", "Acc_2", "MAE", "Corr") if k != metric]
    rows: list[tuple[str, dict[str, float]]] = [
        (f"valid @ level {lv}", m) for lv, m in result["val"].items()
    ]
    # On a file that is corrupted already, the "clean" scores are of the data as it is.
    clean = "as in the file" if result.get("data_corrupted") else "clean"
    rows.append((f"valid {clean}", result["val_clean"]))
    if result.get("test_clean") is not None:
        rows.append((f"test {clean} (not used to select)", result["test_clean"]))
    keys = [k for k in keys if k in result["val_clean"]]
    for k in keys:
        table.add_column(k, justify="right")
    for name, mets in rows:
        table.add_row(name, *(_score(mets[k]) for k in keys))
    out_console.print(table)
    if result.get("data_corrupted"):
        out_console.print("The data file is corrupted already: scores are of the data as it is.")
    if "test_clean" in result and result["test_clean"] is None:
        out_console.print(f"test: {result.get('test_note')}", highlight=False, soft_wrap=True)
    out_console.print(
        f"best epoch {result['best_epoch']} of {result['epochs_run']}"
        f"{' (stopped early)' if result['stopped_early'] else ''}; "
        f"{result['train_seconds']:.1f} s on {result['device']}"
    )


def _epoch_line(event: Any) -> str:
    """One line per epoch for logs and batch jobs (stderr not a terminal)."""
    val = "" if event.val_score is None else f"  val_{event.metric} {event.val_score:.4f}"
    secs = "" if event.seconds is None else f"  {event.seconds:.1f} s"
    return f"epoch {event.epoch}/{event.epochs}  loss {event.loss:.4f}{val}{secs}"


def _interrupted_hint(data: Path, out: Path) -> None:
    """Ctrl-C after a checkpoint: the error funnel's hint says how to continue."""
    from qamoe_core.runs import checkpoint as ckpt

    if ckpt.is_run_dir(out) and (out / ckpt.STATE).is_file():
        process.state.interrupt_hint = (
            "The run keeps its last completed epoch; continue it with "
            f"`qamoe train {data} --out {out} --resume`"
        )


def command(
    data: Annotated[Path, typer.Argument(help="Feature file (HDF5) with train and valid splits.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help=f"{DEFAULT_MODEL} (the default; with --resume, the run's), a baseline or a "
            "published model (docs/models.md), or a plug-in: package.module:ClassName or an "
            "installed qamoe.models entry point.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help='JSON with "model" and/or "train" sections.'),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help=train_default("epochs", "Maximum epochs."))
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=train_default("seed", "Model seed (init, order)."))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=train_default("batch_size", "Per process."))
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help=train_default("lr", "Peak learning rate."))
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(
            "--text-encoder",
            help="features (default: the file's stored text features) or pretrained: "
            "fine-tune a local Hugging Face encoder on the file's token ids "
            "(docs/text-encoder.md).",
        ),
    ] = None,
    text_model: Annotated[
        str | None,
        typer.Option(
            "--text-model",
            help="With --text-encoder pretrained: the encoder folder (default: the packaged "
            "all-MiniLM-L6-v2). With --resume: the run's encoder, found by content hash "
            "(a path the run records is never opened on its word).",
        ),
    ] = None,
    fine_tune_layers: Annotated[
        int | None,
        typer.Option(
            "--fine-tune-layers",
            help="With --text-encoder pretrained: top layers trained; 0 frozen, -1 all "
            "[default: 2].",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda when available), cpu or cuda.")
    ] = "auto",
    resume: Annotated[bool, flag("--resume", help="Continue an interrupted run in --out.")] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            "--tensorboard",
            help="Also log scalars, final metrics and the config to this TensorBoard folder "
            "(needs the 'tensorboard' extra; the same as --track tensorboard with that folder).",
        ),
    ] = None,
    track: Annotated[
        list[str] | None,
        typer.Option(
            "--track",
            metavar="BACKEND",
            help="Also track the run with tensorboard, mlflow or wandb (repeatable; each needs "
            "its extra): the config as params, every epoch's scores, the final scores, and "
            "config.json, metrics.json, history.jsonl as artefacts. MLflow: a local file store "
            "(DIR/mlruns) unless --track-uri; W&B: offline in DIR/wandb unless $WANDB_MODE.",
        ),
    ] = None,
    track_dir: Annotated[
        Path | None,
        typer.Option(
            "--track-dir",
            help="Where local tracking goes: DIR/tensorboard/RUN, DIR/mlruns, DIR/wandb "
            "(default: the current folder).",
        ),
    ] = None,
    track_uri: Annotated[
        str | None,
        typer.Option(
            "--track-uri",
            help="With --track mlflow: any MLflow tracking URI (sqlite:///mlflow.db, "
            "http://host:5000) instead of the local file store (default: "
            "$MLFLOW_TRACKING_URI, else DIR/mlruns).",
        ),
    ] = None,
    plugin: Plugins = None,
    force: Force = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    if resume and force:
        raise UsageError("--resume and --force contradict each other.", hint="Pick one.")
    from qamoe_core.models import resolve  # torch, needed by train() anyway

    # The name resolved to its class once, before anything is read, in the flag's own name;
    # train() takes the choice as it is (with --resume and no --model: the run's).
    choice = None if model is None and resume else resolve(model or DEFAULT_MODEL, "--model")
    plugins = check_plugins(plugin)  # with --resume: the plug-ins the run may name
    flags = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr}
    text = {"text_encoder": text_encoder, "text_model": text_model,
            "fine_tune_layers": fine_tune_layers}  # fmt: skip
    model_cfg, train_cfg = _configs(config, resume, out, flags, text)
    asked = targets(track or (), track_dir, track_uri, tensorboard)
    from qamoe_core.training.loop import TrainEvent, train  # torch: only once the flags are valid

    main_rank = os.environ.get("RANK", "0") == "0"
    talk = main_rank and not (quiet or json_out)
    shown = train_cfg or TrainConfig()
    total = _total_steps(data, shown.batch_size, shown.epochs)
    name = choice.name if choice is not None else "the run's model"
    with progress(total, f"train {name}", enabled=talk) as tick:
        state: dict[str, float | None] = {"val": None}

        def on_event(event: TrainEvent) -> None:
            if event.kind == "start" and talk and event.note:
                err_console.print(f"text encoder: {event.note}", highlight=False, soft_wrap=True)
            if event.kind == "start" and event.epoch > 0:
                if talk:
                    text = f"resuming '{out}' after epoch {event.epoch} of {event.epochs}"
                    err_console.print(text, highlight=False, soft_wrap=True)
                tick(event.epoch * event.batches, epoch=event.epoch)
            elif event.kind == "batch":
                fields: dict[str, Any] = {"epoch": event.epoch, "loss": event.loss}
                if state["val"] is not None:
                    fields[f"val_{event.metric}"] = state["val"]
                tick(1, **fields)
            elif event.kind == "epoch":
                state["val"] = event.val_score
                if talk and not err_console.is_terminal:
                    err_console.print(_epoch_line(event), highlight=False, soft_wrap=True)

        try:
            result = train(data, out, choice, model_cfg,
                           train_cfg, resume=resume, force=force, device=device,
                           progress=on_event, track=asked, plugins=plugins)  # fmt: skip
        except KeyboardInterrupt:
            if main_rank:
                _interrupted_hint(data, out)
            raise
    if main_rank and result.get("already_finished") and not quiet:
        err_console.print(f"'{out}' finished already ({result.get('epochs_run')} epochs); "
                          "nothing was changed.", highlight=False, soft_wrap=True)  # fmt: skip
    if main_rank:
        emit(result, json_mode=json_out, render=lambda: _render(result))
