"""``qamoe export``: a run as a folder the Hugging Face Hub takes as a model repository.

The folder holds the run without its training records::

    OUT/
      config.json        the run's, byte for byte
      model.safetensors  the selected weights (an older run's model.pt converted)
      metrics.json       the run's, byte for byte
      README.md          the model card (:func:`model_card`): YAML front matter for the Hub,
                         the data and its SHA-256, the clean scores, how to evaluate it
      reliability.png    with a results table (``--sweep``): the report's reliability figure
      .qamoe-export      the marker: "qamoe export wrote this folder"

``checkpoint.load_run`` needs only config.json and the weights, so ``qamoe eval OUT`` and
``qa.load_run(OUT)`` read the folder as they read the run. The folder is written through
``base/rundir`` (:data:`KIND`): built aside and put in place at once; it never replaces a
training run or a folder that qamoe export did not write, and ``--force`` keeps the files
of an export folder that are not its own (a user's ``.gitattributes``, a ``.git`` clone).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import qamoe_core.base.rundir as rundir
from qamoe_core.base.atomic import same_file
from qamoe_core.base.errors import InputError, UsageError
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

MARKER = ".qamoe-export"
CARD = "README.md"
FIGURE = "reliability.png"
OWN_FILES: tuple[str, ...] = (MARKER, ckpt.CONFIG, ckpt.WEIGHTS, ckpt.METRICS, CARD, FIGURE)
# A Hub license identifier (mit, apache-2.0, cc-by-4.0, other, ...): one plain word, so it
# can go into the card's YAML front matter as is.
_LICENSE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")


def _check_out(out: Path, force: bool) -> None:
    """Refuse a folder this export may not become: a training run or any folder that qamoe
    export did not write (with or without --force); otherwise rundir's own checks."""
    taken = out.is_dir() and not out.is_symlink() and any(out.iterdir())
    if taken and not (out / MARKER).is_file():
        what = "holds a training run" if ckpt.is_run_dir(out) else "is not a qamoe export"
        raise InputError(
            f"The folder '{out}' exists and {what}; refusing to replace it.",
            hint="Choose a new folder with --out: qamoe never deletes files it did not write.",
        )
    rundir.check_target(out, KIND, force)


KIND = rundir.Kind(
    "export",
    MARKER,
    lambda name: name in OWN_FILES,
    allow_empty=True,
    foreign="is not a qamoe export",
    check=_check_out,
)


def _check_args(run: Path, out: Path, license: str | None) -> None:
    if same_file(run, out):
        raise UsageError(
            f"--out '{out}' is the run folder itself.",
            hint="Export into another folder, e.g. --out hub/NAME.",
        )
    if license is not None and not _LICENSE.fullmatch(license):
        raise UsageError(
            f"The license {license!r:.80} is not a license identifier.",
            hint="Give a Hub license id, e.g. mit, apache-2.0, cc-by-4.0 (or other).",
        )


def _weights_bytes(run: Path) -> bytes:
    """model.safetensors as the run holds it, or an older run's model.pt converted (read
    with weights_only, written as safetensors: a state dict and nothing else)."""
    if ckpt.weights_name(run) == ckpt.WEIGHTS:
        return (run / ckpt.WEIGHTS).read_bytes()
    import safetensors.torch

    weights = ckpt.read_weights(run)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt"})


def _reliability(sweep: Path, config: Mapping[str, Any]) -> tuple[bytes, str]:
    """The report's reliability figure of the run's primary metric (screen style), as PNG."""
    from qamoe_core.evaluation import results
    from qamoe_core.metrics import PRIMARY
    from qamoe_core.report.plots import SCREEN, Palette, encode, plot_reliability

    df = results.load(sweep)
    runs = sorted(set(results.measured(df)["run"]))
    if len(runs) > 1:
        raise InputError(
            f"The results table '{sweep}' holds {len(runs)} runs ({', '.join(runs[:3])}"
            f"{', ...' if len(runs) > 3 else ''}); the card shows this run's alone.",
            hint="Give the table of `qamoe eval RUN --sweep --out CSV` for this run.",
        )
    metric = PRIMARY[config["scheme"]]
    fig = plot_reliability(df, metric, Palette(results.measured(df)), style=SCREEN)
    if fig is None:
        raise InputError(
            f"The results table '{sweep}' holds no corruption sweep of {metric}.",
            hint="Write one with `qamoe eval RUN --data DATA.h5 --sweep --out CSV`.",
        )
    return encode(fig, formats=(), style=SCREEN)["png"], metric


def _files(run: Path, out: Path, sweep: Path | None, license: str | None) -> dict[str, bytes]:
    """Every file of the export ``out`` (its marker aside), in the order written."""
    config = ckpt.read_config(run)  # checked: a run's config, a model qamoe knows
    metrics = ckpt.read_metrics(run)
    files = {
        ckpt.CONFIG: (run / ckpt.CONFIG).read_bytes(),
        ckpt.WEIGHTS: _weights_bytes(run),
        ckpt.METRICS: (run / ckpt.METRICS).read_bytes(),
    }
    figure = None
    if sweep is not None:
        files[FIGURE], metric = _reliability(sweep, config)
        figure = (FIGURE, metric)
    card = model_card(config, metrics, name=out.name, license=license, figure=figure)
    files[CARD] = card.encode("utf-8")
    return files


def export_run(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sweep: str | os.PathLike[str] | None = None,
    license: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the run ``run`` into the folder ``out`` as a Hub model repository.

    ``sweep``: a results table of the run (``qamoe eval RUN --sweep --out CSV``): the card
    shows its reliability curve. ``license``: a Hub license id for the card's front matter
    (none if not given). ``force``: replace an earlier export (files that are not the
    export's own stay). Returns ``{"run", "out", "files", "license", "reliability"}``.
    Raises UsageError when ``out`` is the run folder, InputError for an output that may not
    be replaced, CheckpointError for a run that is missing a file or damaged.
    """
    src, dest = Path(run), Path(out)
    ckpt.check_run(src, require=(ckpt.CONFIG, ckpt.WEIGHTS, ckpt.METRICS))
    _check_args(src, dest, license)
    _check_out(dest, force)  # before any work; again under the lock
    files = _files(src, dest, None if sweep is None else Path(sweep), license)
    with rundir.OutputFolder(dest, KIND, force=force) as folder:
        (folder.path / MARKER).write_text(f"qamoe {__version__}\n", encoding="utf-8")
        for name, data in files.items():
            (folder.path / name).write_bytes(data)
    log.info("exported %s to %s", src, dest)
    return {
        "run": str(src),
        "out": str(dest),
        "files": list(files),
        "license": license,
        "reliability": FIGURE in files,
    }


# --- the model card ----------------------------------------------------------------------------


def _inline(value: Any) -> str:
    """A value for a Markdown code span: one line, no backticks."""
    return " ".join(str(value).split()).replace("`", "'")


def _score(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:.4f}"


def _scores_table(metrics: Mapping[str, Any]) -> list[str]:
    """The clean validation and test scores of metrics.json, one metric a row."""
    val = metrics.get("val_clean") or {}
    test = metrics.get("test_clean") or {}
    names = [m for m in dict.fromkeys([*val, *test]) if m != "loss"]
    if not names:
        return ["metrics.json holds no clean scores."]
    rows = ["| metric | validation | test |", "|---|---:|---:|"]
    rows += [f"| {_inline(m)} | {_score(val.get(m))} | {_score(test.get(m))} |" for m in names]
    return rows


def _front_matter(config: Mapping[str, Any], license: str | None) -> list[str]:
    """YAML front matter for the Hub (JSON strings are YAML scalars, so any name is safe)."""
    tags = ["qamoe", "multimodal", "sentiment-analysis", str(config.get("model_name", ""))]
    lines = ["---", "library_name: qamoe", "tags:"]
    lines += [f"- {json.dumps(t)}" for t in dict.fromkeys(tags) if t]
    if license is not None:
        lines.append(f"license: {license}")
    return [*lines, "---"]


def model_card(
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    name: str,
    license: str | None = None,
    figure: tuple[str, str] | None = None,
) -> str:
    """The README.md of an export: front matter, the data and its SHA-256, the clean scores,
    the reliability figure (``figure``: file name, metric) and the commands that read it."""
    dataset = config.get("dataset") or {}
    data_file = Path(str(dataset.get("path") or "DATA.h5")).name
    folder = _inline(name)
    lines = [*_front_matter(config, license), "", f"# {folder}", ""]
    lines += [
        f"A qamoe `{_inline(config.get('model_name'))}` model ({_inline(config.get('task'))}, "
        f"metric scheme `{_inline(config.get('scheme'))}`), exported by qamoe {__version__}.",
        "",
        "## Data",
        "",
        f"- dataset: `{_inline(dataset.get('name', 'unknown'))}` (file `{_inline(data_file)}`)",
        f"- SHA-256 of the feature file: `{_inline(dataset.get('sha256', 'unknown'))}`",
        "",
        "## Scores on clean data",
        "",
        *_scores_table(metrics),
        "",
    ]
    if figure is not None:
        lines += ["## Reliability", "", f"![{figure[1]} vs corruption level]({figure[0]})", ""]
    lines += [
        "## Use",
        "",
        f"Download this repository into a folder `{folder}`, then:",
        "",
        "```bash",
        f"qamoe eval {shlex.quote(folder)} --data {shlex.quote(_inline(data_file))}",
        "```",
        "",
        "```python",
        "import qamoe_core as qa",
        "",
        f"run = qa.load_run({json.dumps(folder)})",
        f"scores = qa.predict(run, {json.dumps(_inline(data_file))})",
        "```",
        "",
    ]
    return "\n".join(lines)
