"""`qamoe extract mosi --out FILE.h5`: CMU-MOSI with continuous labels and honest inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qamoe_cli.common import Force, JsonOut, OutFile, Quiet, emit, out_console, progress


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
        Path | None,
        typer.Option(
            "--mosi-lite",
            help="The MOSI-lite folder (transcripts, features). Default: DATA_DIR/mosi-lite.",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="The cmu-mosi-labels folder (scores, std folds). "
            "Default: DATA_DIR/cmu-mosi-labels.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="The folder holding mosi-lite/ and cmu-mosi-labels/. Default: "
            "$QAMOE_DATA_DIR, else <repository>/../shared/data (never the current directory).",
        ),
    ] = None,
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
    The MiniLM pass encodes the 2199 transcripts 64 at a time, sorted by length, with
    progress and an ETA on stderr (a bar on a terminal, a line every few seconds otherwise),
    then is cached. Measured with an empty cache on a shared 2-core machine at load
    average 12 (other jobs running): 1 min 45 s in all (data/README.md).
    """
    from qamoe_core.data.importers.mosi import import_mosi

    shown = not (quiet or json_out)
    with progress(None, f"mosi/{protocol} text", enabled=shown) as tick:
        summary = import_mosi(
            out,
            mosi_lite=mosi_lite,
            labels=labels,
            data_dir=data_dir,
            protocol=protocol,
            fold=fold,
            cv_fold=cv_fold,
            text=text,
            vision=vision,
            pooling=text_pooling,
            cache_dir=cache_dir,
            force=force,
            progress=lambda n=1, **fields: tick(0, **fields),  # the stage as a field
            text_progress=tick,
        )
    emit(summary, json_mode=json_out, render=lambda: render_summary(summary))
