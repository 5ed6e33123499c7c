"""A study's plan: every cell keyed by content, its folder's files, and what changed since
the plan that made a study folder (runner.py runs it, outputs.py collects it)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base.errors import InputError, QamoeError
from qamoe_core.study import cells, spec
from qamoe_core.study.cells import Cell
from qamoe_core.version import __version__

MARKER = ".qamoe-study"
STUDY_JSON = "study.json"
STUDY_FORMAT = "qamoe-study"
HASHES = ".data-hashes.json"
OUTPUTS = "outputs.json"
TABLE_FILES = ("table.md", "table.tex", "table.csv")

Notify = Callable[[str, Cell | None, Mapping[str, Any]], None]


class StudyError(QamoeError):
    """A study could not be completed (failed cells, a report that failed)."""


class StudyChangedError(InputError):
    """The study file differs from the one that made the folder (exit 1)."""


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuned:
    """The finished tuning of a tuned arm on one dataset: what its cells train with."""

    identity: Mapping[str, Any]  # what identifies the tuning (part of the cells' keys)
    model_config: Mapping[str, Any]  # best.json's sections
    train_config: Mapping[str, Any]
    summary: Mapping[str, Any] = field(default_factory=dict)  # best trial, score, line


@dataclass
class Plan:
    study: spec.Study
    data: dict[str, spec.DataInfo]
    cells: list[Cell] = field(default_factory=list)
    # (dataset, arm) of each tuned arm whose tuning has not finished: its cells are not
    # known yet (they train at the tuning's best setting), so they are not in ``cells``
    pending: list[tuple[str, str]] = field(default_factory=list)
    # (dataset, arm) of each arm at another's tuned setting (settings_from) whose source's
    # tuning has not finished: its cells wait for it likewise
    waiting: list[tuple[str, str]] = field(default_factory=list)
    tuned: Mapping[tuple[str, str], Tuned] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        """study.json: what decides every result, and every cell."""
        study = self.study.to_doc()
        for name, info in self.data.items():
            study["datasets"][name]["sha256"] = info.sha256
        doc = {
            "format": STUDY_FORMAT,
            "format_version": 1,
            "qamoe": __version__,
            "study": study,
            "cells": [c.describe() for c in self.cells],
        }
        if self.pending or self.tuned:  # what `study status` shows of the tunings
            doc["tunings"] = [
                {"dataset": ds, "arm": arm, "state": "pending"} for ds, arm in self.pending
            ] + [
                {"dataset": ds, "arm": arm, "state": "done", **t.summary}
                for (ds, arm), t in self.tuned.items()
            ]
        return doc


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, tables merged key by key (a model's ``options``: an arm's
    ``quality_gate = false`` keeps the tuned ``modality_dropout`` beside it)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def make_plan(
    study: spec.Study,
    data: dict[str, spec.DataInfo],
    tuned: Mapping[tuple[str, str], Tuned] | None = None,
) -> Plan:
    """Every training and sweep of the study, keyed by content, in a fixed order. A tuned
    arm's cells are there once its tuning on the dataset is in ``tuned``."""
    from qamoe_core.config import ModelConfig, TrainConfig
    from qamoe_core.models import complete_config

    plan = Plan(study, data)
    evals = {p.name: p.eval_config() for p in study.protocols}
    for ds in study.datasets:
        for arm in study.arms:
            model_d: Mapping[str, Any] = arm.model_config
            train_d: Mapping[str, Any] = {**study.train, **arm.train_config}
            result = (tuned or {}).get((ds.name, arm.settings_from or arm.name))
            if arm.tune is not None:
                if result is None:
                    plan.pending.append((ds.name, arm.name))
                    continue
                plan.tuned = {**plan.tuned, (ds.name, arm.name): result}
                model_d, train_d = result.model_config, result.train_config
            elif arm.settings_from:  # the source's chosen setting, the arm's config over it
                if result is None:
                    plan.waiting.append((ds.name, arm.name))
                    continue
                model_d = merged(result.model_config, arm.model_config)
                train_d = merged(result.train_config, arm.train_config)
            model = complete_config(arm.model, ModelConfig.from_dict(model_d, "model"))
            for seed in study.seeds:
                train = TrainConfig.from_dict({**train_d, "seed": seed})
                t = cells.train_cell(
                    ds.name,
                    data[ds.name].sha256,
                    arm.name,
                    arm.model,
                    seed,
                    model.to_dict(),
                    train.to_dict(),
                    None if result is None else result.identity,
                )
                plan.cells.append(t)
                plan.cells += [
                    cells.sweep_cell(t, p.name, evals[p.name])
                    for p in study.protocols
                    if p.covers(arm.name)
                ]
    return plan


def _data_arg(path: Path, out: Path) -> str:
    """A data path as a cell's command gives it (cells run in the study folder)."""
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path.resolve())


def cell_doc(plan: Plan, cell: Cell, out: Path) -> dict[str, Any]:
    """cell.json: the cell and the CLI arguments of a fresh attempt and of a resume."""
    data = _data_arg(plan.data[cell.dataset].path, out)
    here = f"cells/{cell.key}"
    if cell.kind == "train":
        fresh = [
            "train",
            data,
            "--out",
            f"{here}/{cells.RUN}",
            "--model",
            cell.content["model"],
            "--config",
            f"{here}/{cells.TRAIN_CONFIG}",
            "--force",
            "--quiet",
        ]
        resume = ["train", data, "--out", f"{here}/{cells.RUN}", "--resume", "--quiet"]
    else:
        proto = next(p for p in plan.study.protocols if p.name == cell.protocol)
        fresh = [
            "eval",
            f"cells/{cell.needs}/{cells.RUN}",
            "--data",
            data,
            *proto.eval_args(),
            "--name",
            cell.label,
            "--out",
            f"{here}/{cells.RESULTS}",
            *(["--per-sample", f"{here}/{cells.SAMPLES}"] if proto.per_sample else []),
            "--force",
            "--quiet",
        ]
        resume = fresh
    return {
        **cell.describe(),
        "label": cell.label,
        "content": dict(cell.content),
        "fresh": fresh,
        "resume": resume,
    }


def write_cell(plan: Plan, cell: Cell, out: Path) -> None:
    """The cell's folder with cell.json (and a training's config), before it first runs."""
    folder = cells.cell_dir(out, cell.key)
    folder.mkdir(parents=True, exist_ok=True)
    doc = cell_doc(plan, cell, out)
    if cells.read_json(folder / cells.CELL_FILE) != json.loads(json.dumps(doc)):
        cells.write_json(folder / cells.CELL_FILE, doc)
    if cell.kind == "train" and not (folder / cells.TRAIN_CONFIG).is_file():
        config = {
            "format_version": 1,
            "model": cell.content["model_config"],
            "train": cell.content["train_config"],
        }
        cells.write_json(folder / cells.TRAIN_CONFIG, config)


# --- what changed --------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two study.json documents, one short phrase each."""
    found = []
    if old.get("qamoe") != new.get("qamoe"):
        found.append(f"qamoe {old.get('qamoe')} -> {new.get('qamoe')}")
    a, b = _flat(old.get("study", {})), _flat(new.get("study", {}))
    for key in sorted(set(a) | set(b), key=lambda k: (k not in a, k not in b, k)):
        if a.get(key, "∅") == b.get(key, "∅"):
            continue
        if key not in a:
            found.append(f"{key} added ({_short(b[key])})")
        elif key not in b:
            found.append(f"{key} removed (was {_short(a[key])})")
        else:
            found.append(f"{key}: {_short(a[key])} -> {_short(b[key])}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and len(value) == 64:  # a SHA-256
        text = f"sha256 {value[:12]}…"
    return text if len(text) <= 60 else text[:57] + "..."


def check_unchanged(out: Path, plan: Plan, force: bool) -> list[str]:
    """Refuse (without ``force``) a plan that differs from the one that made ``out``;
    returns the keys of the old cells that the new plan no longer has."""
    old = cells.read_json(out / STUDY_JSON)
    if old is None:
        return []
    new = plan.doc()
    found = changes(old, new)
    old_keys = [c.get("key") for c in old.get("cells", []) if isinstance(c, dict)]
    keys = {c.key for c in plan.cells}
    gone = [k for k in old_keys if isinstance(k, str) and k not in keys]
    if found and not force:
        shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
        kept = len(old_keys) - len(gone)
        tunes = (
            f"; {len(plan.pending)} tuning(s) run first, and the cells of their arms follow "
            "them ({})".format(", ".join(f"{a} on {d}" for d, a in plan.pending))
            if plan.pending
            else ""
        )
        if plan.waiting:
            tunes += ", as do those of the arms at their settings ({})".format(
                ", ".join(f"{a} on {d}" for d, a in plan.waiting)
            )
        raise StudyChangedError(
            f"The study file differs from the one that made '{out}': {shown}. This "
            f"invalidates {len(gone)} of its {len(old_keys)} cells and adds "
            f"{len(keys - set(old_keys))}{tunes}.",
            hint=f"Rerun with --force to redo them (the {kept} unchanged cells are kept), or "
            "choose a new --out.",
        )
    return gone


def prune(out: Path, gone: Sequence[str]) -> None:
    """Remove the folders of cells that are no longer part of the study (ours only)."""
    for key in gone:
        folder = cells.cell_dir(out, key)
        if (folder / cells.CELL_FILE).is_file() and not cells.is_running(folder):
            shutil.rmtree(folder)


def digest(paths: Sequence[Path], extra: Any = None) -> str:
    """A hash of files' bytes and a JSON-able ``extra`` (what an output was made from)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for p in paths:
        h.update(str(p.name).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()
