"""`qamoe extract mosi --out FILE.h5`: CMU-MOSI with continuous labels and honest inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, OutFile, Quiet, emit, out_console, progress

# Defaults relative to the working directory, as the repository finds the shared data.
DEFAULT_LITE = Path("../shared/data/mosi-lite")
DEFAULT_LABELS = Path("../shared/data/cmu-mosi-labels")


def render_summary(summary: dict[str, Any]) -> None:
    fold = summary.get("fold") or summary.get("cv_fold")
    title = f"{summary['dataset']}" + (f" fold {fold}" if fold else "") + f" → {summary['out']}"
    table = Table(title=title)
    for col in ("split", "utterances", "videos", "mean score"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for s, n in summary["splits"].items():
        table.add_row(s, str(n), str(summary["videos"][s]), f"{summary['label_mean'][s]:+.2f}")
    out_console.print(table)
    dims = ", ".join(f"{m} {d}" for m, d in summary["dims"].items())
    text = summary["text_source"] + (
        f" ({summary['text_pooling']})" if summary.get("text_pooling") else ""
    )
    cached = " (from the cache)" if summary["cached"] else ""
    out_console.print(f"dims: {dims}; text: {text}{cached}; labels in [-3, 3]")


def command(
    out: OutFile,
    mosi_lite: Annotated[
        Path, typer.Option("--mosi-lite", help="The MOSI-lite folder (transcripts, features).")
    ] = DEFAULT_LITE,
    labels: Annotated[
        Path,
        typer.Option("--labels", help="The cmu-mosi-labels folder (scores, std folds)."),
    ] = DEFAULT_LABELS,
    protocol: Annotated[
        str,
        typer.Option(
            help="std = CMU standard folds, MiniLM text + audio; bclstm-cv = the 31 bc-LSTM "
            "test videos, three modalities, 5 folds by video."
        ),
    ] = "std",
    fold: Annotated[
        int | None, typer.Option(help="bclstm-cv: the test group of videos, 1..5.")
    ] = None,
    cv_fold: Annotated[
        int | None,
        typer.Option(
            "--cv-fold",
            help="std: valid = group K (1..5) of the train+valid videos, train = the rest, "
            "test unchanged. For choosing settings without the small valid fold.",
        ),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option(help="minilm (default under std) or cnn (bc-LSTM text-CNN; bclstm-cv)."),
    ] = None,
    vision: Annotated[
        bool | None,
        typer.Option(
            "--vision/--no-vision", help="3D-CNN video (bclstm-cv only; default there: on)."
        ),
    ] = None,
    text_pooling: Annotated[
        str,
        typer.Option(
            "--text-pooling",
            help="token = MiniLM states per token (T, 384) with lengths and token ids; "
            "sentence = the mean-pooled sentence vector as one step.",
        ),
    ] = "token",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where the MiniLM pass is cached [default: ~/.cache/qamoe]."
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Import CMU-MOSI with its [-3, 3] scores: the CMU folds (std) or bc-LSTM-CV.

    Refuses the label-fitted text-CNN / 3D-CNN features under std (see the labels README).
    """
    from qamoe_core.data.importers.mosi import PROGRESS_STEPS, import_mosi

    with progress(PROGRESS_STEPS, f"mosi/{protocol}", enabled=not (quiet or json_out)) as tick:
        summary = import_mosi(
            out,
            mosi_lite=mosi_lite,
            labels=labels,
            protocol=protocol,
            fold=fold,
            cv_fold=cv_fold,
            text=text,
            vision=vision,
            pooling=text_pooling,
            cache_dir=cache_dir,
            force=force,
            progress=tick,
        )
    emit(summary, json_mode=json_out, render=lambda: render_summary(summary))
