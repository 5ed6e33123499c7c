"""Run a whole study from a study file, resumably: `qamoe study STUDY.toml --out DIR`.

A study file (TOML, docs/study.md) declares datasets, arms (model + config), model seeds, the
training protocol, the evaluation protocols and the reference arm. Every training and sweep is
a cell keyed by its content; a rerun skips finished cells, resumes interrupted trainings and
retries failed ones. DIR gets the runs, the sweeps, a report and the paper table (table.md,
table.tex, table.csv). `qamoe study status DIR` lists the cells: done, running, failed,
pending.
"""

from __future__ import annotations

from pathlib import Path
from time import monotonic
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from qamoe_cli import process
from qamoe_cli.common import JsonOut, clock, emit, err_console, flag
from qamoe_cli.common import out_console as console
from qamoe_core.base.errors import UsageError

_STATE_STYLE = {"done": "green", "running": "cyan", "failed": "red", "pending": "yellow"}


def _say(quiet: bool) -> Any:
    """Progress lines on stderr: one per finished, failed or retried cell; a finished or
    failed cell's line counts the cells this run has to do and gives an ETA."""
    count = {"ended": 0, "total": 0}
    start = {"t": monotonic()}

    def ended() -> str:
        count["ended"] += 1
        done, total = count["ended"], count["total"]
        if not total:
            return f"[{done}]"
        elapsed = monotonic() - start["t"]
        eta = f", ETA {clock(elapsed * (total - done) / done)}" if done < total else ""
        return f"[{done}/{total}, {clock(elapsed)} elapsed{eta}]"

    def notify(event: str, cell: Any, info: Any) -> None:
        if event == "plan":
            count["total"], start["t"] = int(info["to_run"]), monotonic()
        if quiet:
            return
        if event == "extract":
            text = f"extracting dataset {info['dataset']} -> {info['path']}"
        elif event == "report":
            text = f"report of {info['dataset']} -> {info['out']}"
        elif event == "done":
            text = f"{ended()} done    {cell.title} ({info['seconds']:.1f} s)"
        elif event == "failed":
            text = f"{ended()} FAILED  {cell.title}: {info['error']}"
        elif event == "retry":
            text = f"retrying {cell.title} after: {info['error']}"
        elif event == "tune-start":
            text = f"tuning {info['arm']} on {info['dataset']}: {info['trials']} trials"
        elif event in ("tune", "tuned"):
            text = f"tune {info['arm']} on {info['dataset']}: {info['line']}"
        else:
            return
        err_console.print(escape(text), highlight=False, soft_wrap=True)

    return notify


def _status(folder: Path, json_out: bool) -> None:
    from qamoe_core.study.runner import study_status

    result = study_status(folder)

    def render() -> None:
        table = Table(title=f"study {result['study']} in {result['out']}")
        for col in ("cell", "kind", "dataset", "run", "protocol", "state", "detail"):
            table.add_column(col, overflow="fold")
        for c in result["cells"]:
            style = _STATE_STYLE[c["state"]]
            table.add_row(
                c["key"][:10],
                c["kind"],
                c["dataset"],
                c["label"],
                c["protocol"],
                f"[{style}]{c['state']}[/]",
                escape(c["detail"]),
            )
        console.print(table)
        for t in result["tunings"]:
            text = f"tuning {t['arm']} on {t['dataset']}: {t['state']}, {t['detail']}"
            console.print(escape(text), highlight=False, soft_wrap=True)
        counts = ", ".join(f"{n} {s}" for s, n in result["counts"].items())
        console.print(f"{len(result['cells'])} cells: {counts}", highlight=False)

    emit(result, json_mode=json_out, render=render)


def _render(summary: dict[str, Any]) -> None:
    table = Table(title=f"study {summary['study']} in {summary['out']}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("executor", summary["executor"])
    table.add_row("cells", f"{summary['trainings']} trainings, {summary['sweeps']} sweeps")
    for t in summary.get("tunings", []):
        table.add_row(f"tuned {t['arm']} on {t['dataset']}", escape(str(t.get("line", ""))))
    if summary.get("tunings_to_run"):
        table.add_row("tunings to run", str(summary["tunings_to_run"]))
    if summary["dry_run"]:
        table.add_row("to run", f"{summary['to_run']} (dry run: nothing was started)")
    else:
        table.add_row("run now", f"{summary['launched']} (the other cells were done)")
        outputs = summary.get("outputs", {})
        for kind, path in outputs.get("tables", {}).items():
            table.add_row(f"table ({kind})", path)
        for ds, path in outputs.get("reports", {}).items():
            table.add_row(f"report ({ds})", path)
        table.add_row("seconds", f"{summary['seconds']:.1f}")
    console.print(table)


def command(
    target: Annotated[
        str,
        typer.Argument(
            help="The study file (TOML; docs/study.md), or the word 'status' followed by a "
            "study folder.",
            metavar="STUDY.toml|status",
            show_default=False,
        ),
    ],
    folder: Annotated[
        Path | None,
        typer.Argument(help="With 'status': the study folder.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="The study folder: created, or an earlier one to continue."
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this machine) or slurm (submitit jobs).")
    ] = "local",
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Local: cells at once, dividing the threads (--threads) among them; with "
            "CUDA, one cell per GPU. Default: 2 on a machine with up to 2 cores (1.7x faster "
            "than 1 x 2 threads at load 1.3-1.9, docs/study.md), else cores/2. A tuned arm's "
            "trainings: 1 runs them in this process; on SLURM, how many at once (default: "
            "the array parallelism).",
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Attempts more per failed cell in this run.")
    ] = 1,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    time: Annotated[
        str | None, typer.Option("--time", help="SLURM time limit per cell: minutes or H:MM:SS.")
    ] = None,
    gpus: Annotated[int | None, typer.Option(min=0, help="SLURM: GPUs per cell.")] = None,
    cpus: Annotated[int | None, typer.Option(min=1, help="SLURM: CPUs (threads) per cell.")] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option(min=1, help="SLURM: cells of one job array running at once."),
    ] = None,
    dry_run: Annotated[
        bool,
        flag(
            "--dry-run",
            help="Check the study (making missing datasets, which the checks read) and count "
            "the cells to run; start none.",
        ),
    ] = False,
    force: Annotated[
        bool,
        flag(
            "--force",
            help="Go on although the study file changed since DIR was made: the cells the "
            "change invalidates are removed and redone, the others kept.",
        ),
    ] = False,
    json_out: JsonOut = False,
    quiet: Annotated[bool, flag("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    if target == "status":
        if folder is None:
            raise UsageError(
                "`qamoe study status` needs the study folder.",
                hint="e.g. qamoe study status runs/my-study",
            )
        _status(folder, json_out)
        return
    if folder is not None:
        raise UsageError(
            f"Unexpected argument '{folder}' after the study file.",
            hint="The study folder is given with --out DIR.",
        )
    if out is None:
        raise UsageError(
            "`qamoe study STUDY.toml` needs --out DIR (the study folder).",
            hint="e.g. qamoe study studies/tiny.toml --out runs/tiny-study",
        )
    from qamoe_core.study.runner import Options, run_study

    slurm = {
        "partition": partition,
        "time": time,
        "gpus": gpus,
        "cpus": cpus,
        "array_parallelism": array_parallelism,
    }
    options = Options(
        executor=executor, jobs=jobs, force=force, retries=retries, slurm=slurm, dry_run=dry_run
    )
    process.state.interrupt_hint = (
        f"Finished cells are kept: rerun `qamoe study {target} --out {out}` to continue."
    )
    summary = run_study(Path(target), out, options, _say(quiet or json_out))
    emit(summary, json_mode=json_out, render=lambda: _render(summary))
