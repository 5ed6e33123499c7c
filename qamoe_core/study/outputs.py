"""What a finished study leaves in its folder besides the cells: links to the runs, the
sweeps under their labels, one report per dataset and the paper table.

Every file is written atomically and only when its content changes, so a rerun with nothing
to do rewrites nothing; the report (the slow part) is made again only when the sweeps or
its settings changed (their digest is kept in ``outputs.json``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.base.atomic import atomic_path
from qamoe_core.study import anchors, cells, pools, selection, spec, table, tunespec
from qamoe_core.study.plan import OUTPUTS, Notify, Plan, StudyError, digest
from qamoe_core.version import __version__


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically unless it holds these bytes already."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, force=True) as tmp:
        tmp.write_bytes(data)


def _link(path: Path, target: str) -> None:
    """``path`` -> ``target`` as a symbolic link, replaced atomically when it differs."""
    if path.is_symlink() and os.readlink(path) == target:
        return
    if os.path.lexists(path) and not path.is_symlink():
        return  # not ours: left alone
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.qamoe-{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _sweep_out(plan: Plan, out: Path, sub: str) -> dict[str, list[tuple[Any, str, Path]]]:
    """Copy each sweep to sweeps/[DATASET/]ARM-sSEED.PROTOCOL.csv and link each run to
    runs/[DATASET/]ARM-sSEED; remove what an earlier version of the study left there."""
    by_ds: dict[str, list[tuple[Any, str, Path]]] = {}
    keep: set[Path] = set()
    for cell in plan.cells:
        level = cell.dataset if sub else ""
        folder = cells.cell_dir(out, cell.key)
        if cell.kind == "train":
            link = out / "runs" / level / cell.label
            up = "../" * (2 if level else 1)
            _link(link, f"{up}cells/{cell.key}/{cells.RUN}")
            keep.add(link)
            continue
        path = out / "sweeps" / level / f"{cell.label}.{cell.protocol}.csv"
        _write_bytes(path, (folder / cells.RESULTS).read_bytes())
        keep.add(path)
        if (folder / cells.SAMPLES).is_file():  # a per_sample protocol: link, do not copy
            link = path.with_name(f"{cell.label}.{cell.protocol}.samples.csv.gz")
            _link(link, f"{'../' * (2 if level else 1)}cells/{cell.key}/{cells.SAMPLES}")
            keep.add(link)
        by_ds.setdefault(cell.dataset, []).append((cell, cell.protocol, path))
    for top, pattern in (("runs", "*"), ("sweeps", "*.csv"), ("sweeps", "*.samples.csv.gz")):
        for p in sorted((out / top).rglob(pattern)) if (out / top).is_dir() else []:
            if p not in keep and (p.is_symlink() or p.suffix == ".csv"):
                p.unlink()
    return by_ds


def _report(
    plan: Plan, out: Path, dataset: str, files: list[Path], folder: Path, notify: Notify
) -> str:
    """`qamoe report` over the dataset's sweeps (model seeds pooled, the reference named),
    unless the same report exists already; returns the digest it was made from."""
    study = plan.study
    metrics = spec.table_metrics(study, plan.data[dataset].scheme)
    argv = [
        "report",
        *map(str, files),
        "--out",
        str(folder),
        "--force",
        "--pool-seeds",
        "--figures",
        ",".join(study.figures),
        "--metric",
        ",".join(metrics),
        "--json",
    ]
    if study.compare.reference:
        argv += ["--reference", study.compare.reference]
    argv += ["--title", study.title or f"Study {study.name}: {dataset}"]
    notify("report", None, {"dataset": dataset, "out": str(folder)})
    logfile = out / f"report-{dataset}.log"
    logfile.unlink(missing_ok=True)
    code = cells.run_child(argv, logfile, cwd=out)
    if code != 0:
        raise StudyError(
            f"The report of dataset '{dataset}' failed: "
            f"{cells.error_line(logfile) or f'exit status {code}'}",
            hint=f"See {logfile}; rerun the study to try again.",
        )
    return "made"


def _report_compare(study: spec.Study) -> dict[str, Any]:
    """What of [compare] the report is made from (the anchors are the table's only)."""
    doc = study.to_doc()["compare"]
    doc.pop("anchors", None)
    return doc


def _reports(
    plan: Plan, out: Path, by_ds: Mapping[str, list[tuple[Any, str, Path]]], notify: Notify
) -> dict[str, str]:
    study = plan.study
    done = cells.read_json(out / OUTPUTS) or {}
    made = dict(done.get("reports", {})) if isinstance(done.get("reports"), dict) else {}
    paths = {}
    for ds, sweeps in by_ds.items():
        folder = out / "report" / (ds if len(by_ds) > 1 else "")
        files = [p for _, _, p in sweeps]
        rel = [p.relative_to(out) for p in files]
        key = digest(
            files,
            [str(r) for r in rel]
            + [_report_compare(study), list(study.figures), study.title, __version__],
        )
        if made.get(ds) != key or not (folder / "report.html").is_file():
            made.pop(ds, None)
            cells.write_json(out / OUTPUTS, {"reports": made})
            _report(plan, out, ds, rel, folder.relative_to(out), notify)
            made[ds] = key
            cells.write_json(out / OUTPUTS, {"reports": made})
        paths[ds] = str(folder)
    return paths


def _tables(plan: Plan, out: Path, by_ds: Mapping[str, list[tuple[Any, str, Path]]]) -> dict:
    study = plan.study
    protocols = {p.name: (*p.axes, *(("drop",) if p.drop_sets else ())) for p in study.protocols}
    metrics = {ds: spec.table_metrics(study, info.scheme) for ds, info in plan.data.items()}
    sweeps = [s for ds in by_ds for s in by_ds[ds]]
    ref, digits = study.compare.reference, study.compare.digits
    found = selection.read(plan, out)
    fixed = anchors.compute_all(plan, out)
    parts = [table.build(sweeps, protocols, metrics, ref, study.pools)]
    parts += [selection.rows(found, ref, study.pools)]
    parts += [anchors.rows(fixed, ref, study.pools)] if fixed else []
    df = _in_study_order(pd.concat(parts), _row_order(study))
    title = study.title or f"Study {study.name}"
    resolved: dict[str, set[str]] = {}
    for (_, arm), tuned in plan.tuned.items():
        resolved.setdefault(arm, set()).add(str(tuned.summary.get("metric", "")))
    one = {
        arm: next(iter(m)) for arm, m in resolved.items() if len(m) == 1
    }  # same on every dataset
    notes = (
        pools.note(study.pools),
        tunespec.budget_note(study.arms, one),
        selection.note(found),
        anchors.note(fixed),
    )
    extra = " ".join(t for t in notes if t)
    texts = {
        "table.md": table.markdown(df, title, ref, digits, extra),
        "table.tex": table.latex(df, ref, digits, extra),
        "table.csv": table.csv_text(df),
    }
    for name, text in texts.items():
        _write_bytes(out / name, text.encode("utf-8"))
    return {
        "tables": {name.split(".")[1]: str(out / name) for name in texts},
        "selection": selection.summary(found),
        "anchors": fixed,
    }


def _row_order(study: Any) -> list[str]:
    """The table's datasets in the study's order, a pool at its first fold's place."""
    of = {ds: pool.name for pool in study.pools for ds in pool.datasets}
    return list(dict.fromkeys(of.get(ds.name, ds.name) for ds in study.datasets))


def _in_study_order(df: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """The rows grouped by dataset in the study's order, each dataset's rows in their order
    (a stable sort: the selection column after the sweeps' columns of its metric)."""
    order = df["dataset"].map({d: i for i, d in enumerate(datasets)})
    return df.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def collect(plan: Plan, out: Path, notify: Notify) -> dict[str, Any]:
    """Runs, sweeps, reports and the paper table of a study whose cells are all done. The
    table is made in this process while the report's child runs (both read only the sweeps),
    which takes the table's time (2.1 s at load average 6.6, scipy's import included) off the
    study's end."""
    by_ds = _sweep_out(plan, out, "multi" if len(plan.study.datasets) > 1 else "")
    with ThreadPoolExecutor(1, thread_name_prefix="qamoe-table") as pool:
        tables = pool.submit(_tables, plan, out, by_ds)
        reports = _reports(plan, out, by_ds, notify)
    return {
        **tables.result(),
        "reports": reports,
        "runs": str(out / "runs"),
        "sweeps": str(out / "sweeps"),
    }
