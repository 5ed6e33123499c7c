"""What a tuning resolves to before it trains anything, and the folder it owns.

:func:`make_plan` checks the request (every bad input is one line: an unknown field with the
nearest name, a range outside the field's bounds, an empty choice, ``trials`` < 1, too few
groups for the folds, a field the model does not use), reads the data's train and valid splits
(never test) and resolves the objective, the space, the folds and the base configs. The
plan's MANIFEST (``DIR/tune.json``) is what identifies the tuning: a rerun in the same folder
resumes it only when the manifest is the same, and otherwise names what changed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base import jsontext, rundir
from qamoe_core.base.errors import InputError, QamoeError, UsageError, check_choice
from qamoe_core.config import ModelConfig, TrainConfig, read_sections
from qamoe_core.data.audit import DEFAULT_GROUP_REGEX
from qamoe_core.data.store import FeatureFile
from qamoe_core.tuning import defaults, folds, objective, space
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

FORMAT = "qamoe-tune"
FORMAT_VERSION = 1
MARKER = ".qamoe-tune"
MANIFEST = "tune.json"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class TuneSettings:
    """A tuning request: what `qamoe tune` takes (and a study's ``tune`` arm)."""

    data: Path
    out: Path
    model: str = "qamoe"
    space: Path | None = None  # None: the model's default space
    trials: int = 20
    folds: int = 5  # 0: the valid split alone
    group_regex: str | None = DEFAULT_GROUP_REGEX  # None: rows are their own groups
    metric: str = "auto"
    levels: tuple[float, ...] = objective.DEFAULT_LEVELS
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    jobs: int = 1
    # the base config: every field the space does not tune; a config file, or its sections
    # as a mapping {"model": {...}, "train": {...}} (a study's arm)
    config: Path | Mapping[str, Any] | None = None
    device: str = "auto"


@dataclass
class Plan:
    settings: TuneSettings
    objective: objective.Objective
    space: space.Space
    base_model: dict[str, Any]
    base_train: dict[str, Any]
    folds: folds.FoldPlan
    data_sha: str
    manifest: dict[str, Any] = field(default_factory=dict)


def check_settings(s: TuneSettings) -> None:
    """The numbers and names of a request (before any file is read)."""
    if isinstance(s.trials, bool) or not isinstance(s.trials, int) or s.trials < 1:
        raise UsageError(
            f"The '--trials' parameter must be an integer >= 1. Got {s.trials!r} instead.",
            hint="Give every model the same number, e.g. --trials 30.",
        )
    if s.folds == 1 or s.folds < 0:
        raise UsageError(
            f"The '--folds' parameter must be 0 (the valid split) or at least 2. Got {s.folds}.",
            hint="5 grouped folds is the usual choice.",
        )
    if s.jobs < 1:
        raise UsageError(f"The '--jobs' parameter must be at least 1. Got {s.jobs} instead.")
    if s.seed < 0:
        raise UsageError(f"The '--seed' parameter must be >= 0. Got {s.seed} instead.")
    check_choice(s.sampler, SAMPLERS, "--sampler")
    check_choice(s.pruner, PRUNERS, "--pruner")


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise InputError(
            "`qamoe tune` needs the Python package optuna, which is not installed.",
            hint="pip install 'qamoe[tune]' (scripts/setup.sh --dev installs it).",
        ) from None


def _base(s: TuneSettings, obj: objective.Objective) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base config's sections (only what the file sets), checked; the objective's
    selection fields replace the file's."""
    if isinstance(s.config, Mapping):
        model_d = copy.deepcopy(dict(s.config.get("model", {})))
        train_d = copy.deepcopy(dict(s.config.get("train", {})))
    else:
        model_d, train_d = read_sections(s.config) if s.config is not None else ({}, {})
    ModelConfig.from_dict(model_d, "model")
    TrainConfig.from_dict(train_d, "train")
    for key, value in obj.train_fields().items():
        if key in train_d and train_d[key] != value:
            log.warning("the base config's train.%s is replaced by the objective's %r", key, value)
        train_d[key] = value
    return model_d, train_d


def _space(
    s: TuneSettings, data: folds.TrainValid, base_model: dict, base_train: dict
) -> space.Space:
    """The checked search space (the file's, or the model's default)."""
    from qamoe_core.models import get as model_class
    from qamoe_core.tuning.probe import used_fields

    cls = model_class(s.model, param="--model")
    cls.Options.from_dict(base_model.get("options") or {}, s.model)  # the base's own options
    if s.space is not None:
        doc, source = space.read_toml(s.space), f"'{s.space}'"
        notes: dict[str, str] = {}
    else:
        doc, notes = defaults.default_space(s.model)
        source = f"(the default space of {s.model})"
    mcfg = ModelConfig.from_dict(base_model, "model")
    model_doc = doc.get("model")
    asks = isinstance(model_doc, Mapping) and "text_encoder" in model_doc
    pretrained = mcfg.text_encoder == "pretrained" or asks
    try:
        used: frozenset[str] | None = used_fields(s.model, mcfg, data.dims, data.task, pretrained)
    except QamoeError:
        raise
    except Exception as exc:  # a plug-in that cannot run on the probe's batch: skip the check
        log.warning("could not tell which fields '%s' reads (%s); not checked", s.model, exc)
        used = None
    ctx = space.Context(s.model, cls.Options, base_model, base_train, used)
    return space.check_space(doc, ctx, source, notes)


def make_plan(s: TuneSettings) -> Plan:
    """Check the request and resolve it (reads train and valid, never test)."""
    check_settings(s)
    require_optuna()
    from qamoe_core.models import get as model_class

    model_class(s.model, param="--model")
    with FeatureFile(s.data) as f:
        data = folds.TrainValid(f)
        obj = objective.make_objective(s.metric, s.levels, data.task, data.scheme)
        base_model, base_train = _base(s, obj)
        sp = _space(s, data, base_model, base_train)
        fold_plan = folds.plan_folds(data, s.folds, s.group_regex, s.seed)
        sha = folds.fingerprint(data)
    plan = Plan(s, obj, sp, base_model, base_train, fold_plan, sha)
    plan.manifest = manifest(plan)
    return plan


def manifest(plan: Plan) -> dict[str, Any]:
    """What identifies a tuning (neither the trial budget nor --jobs nor the device)."""
    s = plan.settings
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qamoe": __version__,
        "model": s.model,
        "space": plan.space.canonical(),
        "base_config": {"model": plan.base_model, "train": plan.base_train},
        "objective": plan.objective.to_dict(),
        "folds": plan.folds.to_dict(),
        "data_sha256": plan.data_sha,
        "sampler": s.sampler,
        "pruner": s.pruner,
        "seed": s.seed,
    }


# --- the folder ---------------------------------------------------------------------------------


@contextlib.contextmanager
def tune_folder(out: Path) -> Iterator[Path]:
    """Hold ``out`` as a tuning folder (created when new) while the block runs; a second
    tuning on it fails at once."""
    if os.path.lexists(out) and (not out.is_dir() or out.is_symlink()):
        raise InputError(
            f"The output '{out}' is not a folder; --out takes a tuning folder.",
            hint="Choose a folder path that does not exist yet.",
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(
            f"The folder '{out}' exists and was not made by `qamoe tune`; refusing to use it.",
            hint="Choose a new folder with --out: qamoe never deletes files it did not write.",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the folder '{out}': {exc.strerror or exc}.") from None
    with rundir.locked(out / "tune"):
        (out / MARKER).touch()
        yield out


def _space_changes(old: list[dict], new: list[dict]) -> list[str]:
    before, after = {p["path"]: p for p in old}, {p["path"]: p for p in new}
    out = [f"{p} added" for p in after if p not in before]
    out += [f"{p} removed" for p in before if p not in after]
    out += [f"{p} changed" for p in after if p in before and before[p] != after[p]]
    return out


_WHAT = {
    "data_sha256": "the data (its train/valid rows)",
    "base_config": "the base --config",
    "qamoe": "the qamoe version",
    "folds": "the folds (--folds, --no-groups, --seed)",
    "seed": "--seed",
    "objective": "the objective (--metric, --levels)",
}


def check_manifest(out: Path, new: Mapping[str, Any]) -> None:
    """Write the manifest of a new tuning; refuse to resume one that differs, naming what."""
    path = out / MANIFEST
    if not path.is_file():
        from qamoe_core.tuning.executor import write_json

        write_json(path, new)
        return
    try:
        old = jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(
            f"'{path}' is not readable JSON; the tuning cannot be resumed.",
            hint="Start the tuning in a new --out folder.",
        ) from None
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "space":
            changed.append(
                "the search space (" + ", ".join(_space_changes(old.get(key) or [], new[key])) + ")"
            )
        else:
            changed.append(_WHAT.get(key, f"the {key}"))
    if changed:
        raise InputError(
            f"'{out}' holds a tuning of something else; changed since: {'; '.join(changed)}.",
            hint="Resume with the same request, or tune into a new --out folder.",
        )
