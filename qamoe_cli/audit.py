"""Check a feature file before trusting any number trained on it.

Per modality, a linear probe on the pooled features (mean over valid steps) is scored by
cross-validation inside train, grouped by video (from the ids), and trained on train then
scored on valid and test. A modality is FLAGGED "label-fitted features?" when its within-train
score beats a held-out score by more than --max-gap points and --z standard errors, while
being more than --max-gap points above the constant floor: features made by a network trained
on the train videos' labels (MOSI-lite's text-CNN and video) give the label away only there.
Also flagged: ids or videos found in two splits. Warned: all-zero or constant dims, repeated
ids, a valid split that scores unlike test, CV that cannot be grouped. Shown: label balance and
the best constant predictor's score per split, the floor every curve must be read against.

Probe: logistic regression scored by Acc_2 (binary tasks), or ridge regression scored by the
scheme's binary accuracy (Has0_acc_2 for MOSI/MOSEI, Mult_acc_2 for SIMS) with Corr beside it.

Exit status: 0 when the audit ran, flags or not (read the table); with --strict, 3 when
anything is flagged (warnings never change it); 1 on an error (an `error:` line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from qamoe_cli.common import JsonOut, Quiet, Seed, emit, out_console, parse_list, progress

# Copies of qamoe_core.data.audit's defaults, for the options: that module pulls numpy and h5py,
# which start-up should not wait for. tests/cli/test_audit_cli.py keeps them equal.
DEFAULT_GROUP_REGEX = r"^(.+?)(?:\$_\$[^$]+|_\d+)$"
DEFAULT_FOLDS = 5
DEFAULT_MAX_ROWS = 4000
DEFAULT_MAX_GAP = 10.0
DEFAULT_Z = 4.0
FLAGGED_EXIT = 3
# The help text: the docstring with its paragraphs unwrapped (the help keeps line breaks).
HELP = "\n\n".join(" ".join(p.split()) for p in (__doc__ or "").split("\n\n"))


def command(
    data: Annotated[
        Path,
        typer.Argument(
            help="HDF5 features from `qamoe extract`.", dir_okay=False, show_default=False
        ),
    ],
    group_regex: Annotated[
        str,
        typer.Option(
            "--group-regex",
            help="A row's video/speaker is the first capture group of this regex on its id "
            "(default: strip the last '_<digits>' or '$_$<clip>'); an unmatched id is its "
            "own group.",
        ),
    ] = DEFAULT_GROUP_REGEX,
    no_groups: Annotated[
        bool, typer.Option("--no-groups", help="Plain stratified folds, by row (not by video).")
    ] = False,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds inside train.")] = (
        DEFAULT_FOLDS
    ),
    max_rows: Annotated[
        int, typer.Option(min=10, help="Rows read per split at most (a seeded subsample).")
    ] = DEFAULT_MAX_ROWS,
    max_gap: Annotated[
        float,
        typer.Option(min=0.0, max=100.0, help="Flag: within-train minus held-out, in points."),
    ] = DEFAULT_MAX_GAP,
    z: Annotated[
        float, typer.Option(min=0.0, help="Flag: the gap must also exceed z standard errors.")
    ] = DEFAULT_Z,
    modalities: Annotated[
        str | None, typer.Option(help="Modalities to probe, comma-separated (default: all).")
    ] = None,
    seed: Seed = 0,
    strict: Annotated[
        bool, typer.Option("--strict", help=f"Exit {FLAGGED_EXIT} when anything is flagged.")
    ] = False,
    quiet: Quiet = False,
    json_out: JsonOut = False,
) -> None:
    """Audit a feature file: label-fitted features, leaks across splits, floors, dead dims."""
    from qamoe_core.data.audit import AuditConfig, audit

    config = AuditConfig(
        group_regex=None if no_groups else group_regex,
        folds=folds,
        max_rows=max_rows,
        seed=seed,
        max_gap=max_gap,
        z=z,
        modalities=None
        if modalities is None
        else tuple(parse_list(modalities, "--modalities") or ()),
    )
    with progress(None, "audit", enabled=not (quiet or json_out)) as tick:
        report = audit(data, config, progress=tick)
    emit(report, json_mode=json_out, render=lambda: render(report))
    if strict and report["flagged"]:
        raise typer.Exit(FLAGGED_EXIT)


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.1f}"  # x != x: NaN


def _score(scores: dict[str, float], metric: str) -> str:
    text = _pct(scores[metric])
    corr = scores.get("Corr")
    return text if corr is None or corr != corr else f"{text} r{corr:.2f}"


# short names for the splits table; the JSON keeps the full ones
_SHORT = {
    "nonnegative": "≥0",
    "positive_of_nonzero": ">0 of ≠0",
    "zero": "=0",
    "positive": "pos",
    "Has0_acc_2": "Has0",
    "Non0_acc_2": "Non0",
    "Mult_acc_7": "Acc-7",
    "Mult_acc_2": "Acc-2",
    "Acc_2": "Acc-2",
    "MAE": "MAE of median",
}


def _pairs(values: dict[str, float]) -> str:
    def one(k: str, v: float) -> str:
        value = f"{v:.2f}" if k in ("mean", "std", "MAE") else _pct(v)
        return f"{_SHORT.get(k, k)} {value}"

    return ", ".join(one(k, v) for k, v in values.items())


def _splits_table(report: dict[str, Any]) -> Table:
    table = Table(title="splits: labels (%) and the floor (best constant predictor)")
    for col in ("split", "rows", "groups", "labels", "best constant"):
        table.add_column(col, justify="right" if col in ("rows", "groups") else "left")
    for s, info in report["splits"].items():
        rows = str(info["n"]) + ("" if info["n_read"] == info["n"] else f" ({info['n_read']} read)")
        groups = str(report["grouping"]["groups"][s]) if report["grouping"]["grouped"] else "—"
        table.add_row(s, rows, groups, _pairs(info["balance"]), _pairs(info["floor"]))
    return table


def _probe_table(report: dict[str, Any]) -> Table:
    metric = report["probe"]["metric"]
    held = [s for s in report["splits"] if s != "train"]
    g = report["grouping"]
    how = "grouped by video" if g["grouped"] else "by row"
    title = f"linear probe: {metric} (%){' r Corr' if report['task'] != 'binary' else ''}; "
    table = Table(title=title + f"CV {g['folds']} folds {how}; Δ = CV minus held-out, points")
    table.add_column("modality")
    table.add_column("dim", justify="right")
    table.add_column("CV train", justify="right", no_wrap=True)
    for s in held:
        table.add_column(s, justify="right", no_wrap=True)
        table.add_column(f"Δ {s}", justify="right")
    table.add_column("verdict")
    floors = [_pct(report["splits"]["train"]["floor"][metric])]
    for s in held:
        floors += [_pct(report["splits"][s]["floor"][metric]), ""]
    table.add_row("floor", "", *floors, "", style="dim")
    for m, res in report["modalities"].items():
        cells = [_score(res["cv"], metric)]
        for s in held:
            cells += [_score(res["heldout"][s], metric), f"{res['gap_points'][s]:+.1f}"]
        style = "bold red" if res["flagged"] else ("yellow" if res["verdict"] != "ok" else "green")
        table.add_row(m, str(res["dim"]), *cells, f"[{style}]{res['verdict']}[/]")
    return table


def render(report: dict[str, Any]) -> None:
    out_console.print(
        f"[bold]audit[/] {escape(report['file'])}: {report['dataset']}, task {report['task']}, "
        f"scheme {report['scheme']}; probe {report['probe']['model']} on the "
        f"{report['probe']['features']}",
        highlight=False,
    )
    out_console.print(_splits_table(report))
    out_console.print(_probe_table(report))
    cfg = report["config"]
    for item in report["findings"]:
        tag = "[bold red]FLAG[/]" if item["level"] == "flag" else "[yellow]warn[/]"
        out_console.print(f"{tag} {escape(item['message'])}", highlight=False)
    verdict = "[bold red]flagged[/]" if report["flagged"] else "[green]nothing flagged[/]"
    out_console.print(
        f"{verdict}. Rule: flag when CV in train beats a held-out split by > {cfg['max_gap']:g} "
        f"points and > {cfg['z']:g} standard errors while > {cfg['max_gap']:g} points above the "
        f"floor ({report['seconds']:.1f} s).",
        highlight=False,
    )
