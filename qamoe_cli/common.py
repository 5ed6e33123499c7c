"""Shared pieces of every command: option aliases, JSON output, progress, consoles, the
error lines."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qamoe_core.base.errors import one_line

# The Click exceptions that typer raises. typer < 0.2x depends on the `click` package, later
# ones vendor a copy as the private `typer._click` (and a separately installed `click` is then
# another package). typer.BadParameter is public in both, and its bases are those classes.
ClickUsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)
ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)

# Progress, logs and errors go to stderr; stdout carries only results (tables or JSON).
err_console = Console(stderr=True)
out_console = Console()


def flag(*names: str, help: str) -> Any:
    """An on/off option that takes no value (``--sweep``, not ``--sweep true``).

    metavar="" keeps typer >= 0.2x from printing ``<bool>`` after it in --help, which read as
    if the flag wanted a value."""
    return typer.Option(*names, help=help, metavar="")


Force = Annotated[bool, flag("--force", help="Replace the output if it exists.")]
JsonOut = Annotated[
    bool, flag("--json", help="Print the result as JSON on stdout (no table, no bar).")
]
Quiet = Annotated[bool, flag("--quiet", "-q", help="No progress bar.")]
Seed = Annotated[
    int, typer.Option("--seed", min=0, help="Random seed >= 0 (same seed, same result).")
]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file.", dir_okay=False)]
Plugins = Annotated[
    list[str] | None,
    typer.Option(
        "--plugin",
        metavar="MODULE:CLASS",
        help="Allow the run to name this model plug-in class (repeatable). qamoe imports no "
        "class named inside a run otherwise; built-in models and installed qamoe.models "
        "entry points need none (docs/security.md).",
    ),
]


def check_plugins(plugins: list[str] | None) -> tuple[str, ...]:
    """The --plugin values, each package.module:ClassName (a usage error otherwise)."""
    from qamoe_core.models.registry import check_plugins as check  # torch: the caller needs it

    return check(plugins or (), "--plugin")


def train_default(name: str, help: str) -> str:
    """``help`` plus the TrainConfig default of the field ``name``, for flags whose Python
    default is None (so that a --config file can set them) and whose real default would
    otherwise not show in --help."""
    from qamoe_core.config import TrainConfig  # light: no torch

    value = getattr(TrainConfig(), name)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    # not "[default: …]": Rich would read the brackets as markup and drop them
    return f"{help} Default: {shown} (or train.{name} in --config)."


def _jsonable(value: Any) -> Any:
    """Make numpy scalars, paths and non-finite floats printable as strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(result: dict[str, Any], *, json_mode: bool, render: Callable[[], None]) -> None:
    """Print ``result`` as JSON on stdout, or call ``render`` for the human view."""
    if json_mode:
        sys.stdout.write(json.dumps(_jsonable(result), indent=2) + "\n")
    else:
        render()


# Plain progress lines (stderr not a terminal): at most one per this many seconds.
LINE_INTERVAL_S = 5.0


def _fields_text(fields: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour): elapsed times and ETAs on stderr."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class _Lines:
    """``advance(n=1, total=None, **fields)`` as plain stderr lines with an ETA, at most one
    per LINE_INTERVAL_S (and the last one when the total is reached), for logs and pipes."""

    def __init__(self, total: int | None, description: str) -> None:
        self.total, self.description = total, description
        self.done = self.shown = 0
        self.start = self.last = time.monotonic()

    def __call__(self, n: int = 1, total: int | None = None, **fields: Any) -> None:
        self.total = total if total is not None else self.total
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        # the line that reaches the total is shown once, if any line was shown before
        closing = finished and self.shown != self.done and self.last > self.start
        if now - self.last < LINE_INTERVAL_S and not closing:
            return
        self.last, self.shown = now, self.done
        elapsed = now - self.start
        where = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
        eta = ""
        if self.total and 0 < self.done < self.total:
            eta = f", ETA {clock(elapsed * (self.total - self.done) / self.done)}"
        info = _fields_text(fields)
        line = f"{self.description}: {where}, {clock(elapsed)} elapsed{eta}"
        sys.stderr.write(line + (f"  {info}" if info else "") + "\n")
        sys.stderr.flush()


@contextlib.contextmanager
def progress(
    total: int | None, description: str, *, enabled: bool = True, lines: bool = True
) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr; yields ``advance(n=1, total=None, **fields)``.

    Off when ``enabled`` is False (--quiet, --json). When stderr is not a terminal (a log, a
    pipe, a batch job): a plain line with the ETA at most every LINE_INTERVAL_S seconds, so
    a command of a few seconds prints none; ``lines=False`` prints nothing there instead.
    ``total`` (re)sets the total once the core knows it; ``fields`` are shown after the bar
    (e.g. ``loss=0.41``).
    """
    if not enabled or not (err_console.is_terminal or lines):

        def _noop(n: int = 1, total: int | None = None, **fields: Any) -> None:
            return None

        yield _noop
        return
    if not err_console.is_terminal:
        yield _Lines(total, description)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, info="")

        def _advance(n: int = 1, total: int | None = None, **fields: Any) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.update(task, advance=n, info=_fields_text(fields))

        yield _advance


def parse_list(value: str | None, name: str) -> list[str] | None:
    """Split a comma-separated option value ("audio,vision"); None stays None."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"'{name}' needs at least one comma-separated value.")
    return items


def print_error(message: str, hint: str | None) -> None:
    """The error funnel's two lines on stderr: ``error: …`` and, if any, ``hint: …``."""
    # one_line: Click's and unexpected errors quote text too (QamoeErrors already are one line);
    # escape: messages may hold brackets (e.g. "qamoe[media]") that Rich would read as markup
    message = escape(one_line(message))
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(one_line(hint))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
