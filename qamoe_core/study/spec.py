"""The study file: a TOML document that declares a whole comparison (docs/study.md).

::

    name = "tiny"                      # optional (default: the file's name)
    seeds = [0, 1, 2]                  # model seeds (or a count: 3 = [0, 1, 2])

    [datasets.tiny]                    # one table per dataset
    extract = "synthetic --preset tiny --seed 0"   # `qamoe extract ...` that makes it (its
                                       # paths relative to this file: EXTRACT_PATHS)
    # path = "data/mosi.h5"            # or (also) the feature file, relative to this file

    [arms.qamoe]                       # one table per arm; its name labels runs ARM-sSEED
    model = "qamoe"
    config = { model = { d_model = 32 }, train = { lr = 3e-4 } }
    # text_encoder = "pretrained"      # optional; text_model = "path/to/encoder"

    [train]                            # the training protocol every arm shares
    epochs = 20

    [protocols.spectrum]               # one `qamoe eval` per trained cell and protocol
    axes = ["missing", "noise"]        # each axis swept separately
    levels = "0:0.9:0.1"               # or a list
    corruption_seeds = 3

    [compare]
    reference = "early-fusion"         # an arm: the comparator, named before any result
    metrics = ["MAE", "Has0_acc_2"]
    # anchors = ["constant", "ridge"]  # optional rows fitted on train: anchors.py

    [tune]                             # optional: the budget every tuned arm shares, for
    trials = 30                        # arms with `tune = true` (or a table over [tune]):
                                       # tunespec.py

Every table is checked here, before any work: an unknown key (with the nearest valid name),
a config field out of range (config.py's own checks), repeated seeds, a reference that is
not an arm. What needs the data or the model zoo (a model that does not fit the data's
modalities, a metric of another scheme) is checked by :func:`check_against_data`.
Errors are :class:`StudyFileError` (a usage error: exit 2) naming the file and the table.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base.errors import (
    ConfigError,
    ConfigUsageError,
    InputError,
    QamoeError,
    nearest_choice,
)
from qamoe_core.base.names import AXES
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.study import pools as pooling
from qamoe_core.study import tunespec
from qamoe_core.study.tunespec import TuneArm

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

STUDY_FORMAT_VERSION = 1
TOP_KEYS = (
    "format_version",
    "name",
    "seeds",
    "datasets",
    "arms",
    "train",
    "protocols",
    "compare",
    "report",
    "slurm",
    "tune",
    "pools",
)
DATASET_KEYS = ("path", "extract")
ARM_KEYS = ("model", "config", "text_encoder", "text_model", "tune", "settings_from")
CONFIG_KEYS = ("model", "train")
PROTOCOL_KEYS = (
    "axes",
    "levels",
    "corruption_seeds",
    "modalities",
    "pattern",
    "burst_mean",
    "noise_rho",
    "drop_sets",
    "split",
    "shuffle",
    "controls",
    "residuals",
    "per_sample",
    "arms",
)
COMPARE_KEYS = ("reference", "metrics", "digits", "anchors")
ANCHORS = ("constant", "ridge")  # study/anchors.py
REPORT_KEYS = ("figures", "title")
SLURM_KEYS = ("partition", "time", "gpus", "cpus", "mem_gb", "array_parallelism")
EXTRACT_COMMANDS = ("synthetic", "mmsa", "mosi-lite", "mosi", "media")
# The arguments of each `qamoe extract` subcommand that name files or folders, resolved
# against the study file's folder: (how many positional arguments are paths, the options
# whose value is a path, the options that take no value). tests/study/test_extract_paths.py
# checks this against the commands' signatures in qamoe_cli/extract.
EXTRACT_FLAGS = ("--force", "--quiet", "-q", "--json", "--help")
EXTRACT_PATHS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    "synthetic": (0, (), ()),
    "mmsa": (1, (), ()),
    "mosi-lite": (1, (), ()),
    "mosi": (
        0,
        ("--mosi-lite", "--labels", "--data-dir", "--cache-dir"),
        ("--vision", "--no-vision"),
    ),
    "media": (1, ("--text-model",), ("--resume", "--merge")),
}
FIGURE_FORMATS = ("png", "pdf", "svg")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # arm, dataset and protocol names


class StudyFileError(ConfigUsageError):
    """The study file asks for something that is not valid (the CLI exits 2)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path | None  # None: made by `extract` inside the study folder
    extract: tuple[str, ...] = ()  # as the study file gives them (the study's content)
    # the same with its paths relative to the study file's folder (what runs; not content,
    # like ``path``: a study file moved beside the same data is the same study)
    extract_run: tuple[str, ...] = ()

    def file(self, out: Path) -> Path:
        """Where the feature file is (or will be) for a study written to ``out``."""
        return self.path if self.path is not None else out / "data" / f"{self.name}.h5"


@dataclass(frozen=True)
class Arm:
    name: str
    model: str
    model_config: Mapping[str, Any]  # the keys the study sets (config.model + text_*)
    train_config: Mapping[str, Any]  # the arm's train overrides (over the study's [train])
    tune: TuneArm | None = None  # tuned before its seeds train (tunespec.py)
    # not tuned: trains at this tuned arm's chosen setting, its own config on top (tunespec.py)
    settings_from: str | None = None


@dataclass(frozen=True)
class Protocol:
    """One `qamoe eval` of every trained cell: axes swept separately, or the drop subsets."""

    name: str
    axes: tuple[str, ...] = ()
    levels: tuple[float, ...] = ()
    corruption_seeds: int = 3
    modalities: tuple[str, ...] = ()
    pattern: str = ""
    burst_mean: float | None = None
    noise_rho: float | None = None
    drop_sets: bool = False
    split: str = "test"
    shuffle: bool = True
    controls: tuple[str, ...] = ()  # the r-controls (evaluation/controls.py): --control
    residuals: bool = False  # the quality-head diagnostic: --residuals
    per_sample: bool = False  # keep every sample's prediction: --per-sample (cell's samples)
    arms: tuple[str, ...] = ()  # the arms swept under this protocol (empty: every arm)

    def covers(self, arm: str) -> bool:
        return not self.arms or arm in self.arms

    def eval_args(self) -> list[str]:
        """The `qamoe eval` options of this protocol (run, data, name and out aside)."""
        args = ["--split", self.split]
        if self.axes:
            levels = ",".join(repr(float(v)) for v in self.levels)
            args += [
                "--sweep",
                "--axis",
                ",".join(self.axes),
                "--levels",
                levels,
                "--corruption-seeds",
                str(self.corruption_seeds),
            ]
        if self.modalities:
            args += ["--modalities", ",".join(self.modalities)]
        if self.pattern:
            args += ["--pattern", self.pattern]
        for flag, value in (("--burst-mean", self.burst_mean), ("--noise-rho", self.noise_rho)):
            if value is not None:
                args += [flag, repr(float(value))]
        if self.drop_sets:
            args.append("--drop-sets")
        if not self.shuffle:
            args.append("--no-shuffle")
        if self.controls:
            args += ["--control", ",".join(self.controls)]
        if self.residuals:
            args.append("--residuals")
        return args

    def eval_config(self) -> dict[str, Any]:
        """The resolved EvalConfig (what `qamoe eval` will run), as a dict; validates."""
        from qamoe_core.evaluation.sweep import EvalConfig  # torch: only when a study is planned
        from qamoe_core.spectrum.engine import parse_pattern

        cfg = EvalConfig(
            split=self.split,
            sweep=bool(self.axes),
            axes=self.axes or AXES,
            levels=self.levels or (0.0,),
            seeds=tuple(range(self.corruption_seeds)),
            modalities=self.modalities,
            drop_sets=self.drop_sets,
            quality_shuffle=self.shuffle,
            controls=self.controls,
            residuals=self.residuals,
            per_sample=self.per_sample,
            **parse_pattern(self.pattern or None, self.burst_mean, self.noise_rho),
        )
        return cfg.to_dict()


@dataclass(frozen=True)
class Compare:
    reference: str | None = None
    metrics: tuple[str, ...] = ()  # empty: the data's primary metric (and MAE for scores)
    digits: int = 3
    anchors: tuple[str, ...] = ()  # among ANCHORS: rows fitted on train (study/anchors.py)


@dataclass(frozen=True)
class Slurm:
    partition: str | None = None
    time_min: int = 60
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    array_parallelism: int = 16


@dataclass(frozen=True)
class Study:
    source: Path
    name: str
    seeds: tuple[int, ...]
    datasets: tuple[Dataset, ...]
    arms: tuple[Arm, ...]
    train: Mapping[str, Any]
    protocols: tuple[Protocol, ...]
    compare: Compare = field(default_factory=Compare)
    figures: tuple[str, ...] = FIGURE_FORMATS
    title: str = ""
    slurm: Slurm = field(default_factory=Slurm)
    pools: tuple[pooling.Pool, ...] = ()  # datasets that are folds of one CV (pools.py)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def to_doc(self) -> dict[str, Any]:
        """What decides the results, as plain data (the SLURM table and data paths aside):
        two study files with equal docs make the same study."""
        return {
            "name": self.name,
            "seeds": list(self.seeds),
            "datasets": {d.name: {"extract": list(d.extract)} for d in self.datasets},
            "arms": {
                a.name: {
                    "model": a.model,
                    "config": {"model": dict(a.model_config), "train": dict(a.train_config)},
                    **({"tune": a.tune.to_doc()} if a.tune is not None else {}),
                    **({"settings_from": a.settings_from} if a.settings_from else {}),
                }
                for a in self.arms
            },
            "train": dict(self.train),
            "protocols": {p.name: _protocol_doc(p) for p in self.protocols},
            "compare": _compare_doc(self.compare),
            "report": {"figures": list(self.figures), "title": self.title},
            # only when set, so that a folder made before pools existed reads as unchanged
            **({"pools": {p.name: list(p.datasets) for p in self.pools}} if self.pools else {}),
        }


def _compare_doc(c: Compare) -> dict[str, Any]:
    """[compare] as plain data; ``anchors`` only when set (a folder made before it existed
    reads as unchanged)."""
    doc = _plain(asdict(c))
    if not c.anchors:
        doc.pop("anchors")
    return doc


def _protocol_doc(p: Protocol) -> dict[str, Any]:
    """A protocol as plain data; the newer keys only when set, so that a folder made before
    they existed reads as unchanged."""
    doc = _plain(asdict(p))
    for key, unset in (("per_sample", False), ("arms", [])):
        if doc[key] == unset:
            del doc[key]
    return dict(doc)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """The file under check, and how a refusal names the table it is in."""

    source: Path

    def fail(self, table: str, message: str, hint: str | None = None) -> StudyFileError:
        where = f" [{table}]" if table else ""
        return StudyFileError(f"{self.source}{where}: {message}", hint=hint)

    def keys(self, data: Any, allowed: Sequence[str], table: str, what: str) -> dict[str, Any]:
        """``data`` as a table whose keys are all ``allowed`` (else the nearest is named)."""
        if not isinstance(data, Mapping):
            raise self.fail(
                table,
                f"must be a table, got {_kind(data)}.",
                hint=f"Write it as [{table}] with keys {', '.join(allowed)}.",
            )
        for key in data:
            if key not in allowed:
                near = nearest_choice(key, list(allowed))
                guess = f"Did you mean '{near}'? " if near else ""
                raise self.fail(
                    table,
                    f"unknown {what} '{key}'.",
                    hint=f"{guess}Valid {what}s: {', '.join(allowed)}.",
                )
        return dict(data)

    def name(self, value: Any, table: str) -> str:
        if not isinstance(value, str) or not NAME.match(value) or len(value) > 100:
            raise self.fail(
                table,
                f"the name {value!r} is not allowed.",
                hint="Names use letters, digits and . _ + - (at most 100).",
            )
        return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "a table" if isinstance(value, Mapping) else type(value).__name__


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The study file's content; ConfigError (exit 1) when it is missing or not TOML."""
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"The study file '{p}' " + ("is not a file." if p.exists() else "does not exist."),
            hint="Give the path of a study file (TOML), e.g. studies/tiny.toml.",
        )
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"The study file '{p}' is not valid TOML ({' '.join(str(exc).split())[:200]}).",
            hint="See docs/study.md for the format; studies/tiny.toml is an example.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The study file '{p}' could not be read ({exc}).") from None


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and validate a study file (everything that needs neither data nor models)."""
    return parse_study(read_toml(path), Path(path))


def parse_study(raw: Mapping[str, Any], source: Path) -> Study:
    """Validate the content of a study file read from ``source``."""
    w = _Where(source)
    raw = w.keys(raw, TOP_KEYS, "", "key")
    for key in ("seeds", "datasets", "arms", "protocols"):
        if key not in raw:
            raise w.fail(
                "",
                f"the key '{key}' is missing.",
                hint="See docs/study.md; studies/tiny.toml is an example.",
            )
    version = raw.get("format_version", STUDY_FORMAT_VERSION)
    if version != STUDY_FORMAT_VERSION:
        raise w.fail("", f"format_version is {version!r}; this qamoe reads {STUDY_FORMAT_VERSION}.")
    name = w.name(raw.get("name", _stem_name(source)), "")
    base = source.parent
    train = _train_section(raw.get("train", {}), w)
    tune = tunespec.parse_defaults(raw.get("tune", {}), w, base)
    arms = _named(raw["arms"], "arms", w, lambda n, t: _arm(n, t, w, base, tune))
    if "tune" in raw and not any(a.tune for a in arms):
        raise w.fail(
            "tune",
            "no arm is tuned: [tune] gives the defaults of the arms that say 'tune'.",
            hint="Add tune = true to each arm to tune (docs/study.md).",
        )
    tunespec.check_settings_from(arms, w)
    for arm in arms:
        _check_configs(arm, train, w)
    compare = _compare(raw.get("compare", {}), arms, w)
    figures, title = _report(raw.get("report", {}), w)
    datasets = _named(raw["datasets"], "datasets", w, lambda n, t: _dataset(n, t, w, base))
    return Study(
        source=source,
        name=name,
        seeds=_seeds(raw["seeds"], w),
        datasets=datasets,
        arms=arms,
        train=train,
        protocols=_protocols(raw["protocols"], arms, w),
        compare=compare,
        figures=figures,
        title=title,
        slurm=parse_slurm(raw.get("slurm", {}), w),
        pools=pooling.parse_pools(raw.get("pools", {}), [d.name for d in datasets], w),
    )


def _stem_name(source: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", source.stem).lstrip("._+-")
    return stem or "study"


def _named(data: Any, table: str, w: _Where, make: Any) -> tuple[Any, ...]:
    """The sub-tables of ``[table]``, each made into an object by ``make(name, table)``."""
    if not isinstance(data, Mapping) or not data:
        raise w.fail(
            table,
            f"needs at least one entry, e.g. [{table}.NAME], got {_kind(data)}.",
            hint="See docs/study.md.",
        )
    return tuple(make(w.name(name, f"{table}.{name}"), sub) for name, sub in data.items())


def _seeds(value: Any, w: _Where) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 10**15 for s in value)
    )
    if not ok:
        raise w.fail(
            "",
            f"'seeds' must be a count >= 1 or a list of integers >= 0, got {value!r}.",
            hint="e.g. seeds = [0, 1, 2] or seeds = 3.",
        )
    repeated = sorted({s for s in value if value.count(s) > 1})
    if repeated:
        raise w.fail(
            "",
            f"'seeds' repeats {', '.join(map(str, repeated))}: {value}.",
            hint="Each model seed is one replicate; list it once.",
        )
    return tuple(value)


def _dataset(name: str, data: Any, w: _Where, base: Path) -> Dataset:
    table = f"datasets.{name}"
    data = w.keys(data, DATASET_KEYS, table, "key")
    path = data.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise w.fail(table, f"'path' must be a file path, got {path!r}.")
    extract = data.get("extract", ())
    if isinstance(extract, str):
        extract = shlex.split(extract)
    if not isinstance(extract, list | tuple) or not all(isinstance(a, str) for a in extract):
        raise w.fail(
            table,
            f"'extract' must be a string or a list of strings, got {extract!r}.",
            hint='e.g. extract = "synthetic --preset tiny".',
        )
    if path is None and not extract:
        raise w.fail(
            table,
            "needs 'path' (a feature file) or 'extract' (the command that makes it).",
            hint='e.g. path = "data/mosi.h5".',
        )
    if extract:
        _check_extract(list(extract), table, w)
    full = None if path is None else (base / Path(path).expanduser())
    return Dataset(name, full, tuple(extract), extract_paths(extract, base) if extract else ())


def _under(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base.absolute() / path)


def extract_paths(args: Sequence[str], base: Path) -> tuple[str, ...]:
    """``args`` of `qamoe extract` with each path among them (its subcommand's positional
    paths and path-valued options, ``EXTRACT_PATHS``) relative to ``base``; absolute paths,
    ``~`` expanded, and every other argument unchanged."""
    n_paths, path_options, flags = EXTRACT_PATHS[args[0]]
    flags = (*flags, *EXTRACT_FLAGS)
    out, seen, i, rest = [args[0]], 0, 1, False
    while i < len(args):
        arg = args[i]
        if not rest and arg == "--":  # click's end of options: positionals only after it
            rest = True
        elif not rest and arg.startswith("-") and len(arg) > 1:
            name, eq, value = arg.partition("=")
            if eq:
                arg = f"{name}={_under(base, value)}" if name in path_options else arg
            elif name not in flags and i + 1 < len(args):
                value = args[i + 1]
                out += [arg, _under(base, value) if name in path_options else value]
                i += 2
                continue
        else:
            arg = _under(base, arg) if seen < n_paths else arg
            seen += 1
        out.append(arg)
        i += 1
    return tuple(out)


def _check_extract(args: list[str], table: str, w: _Where) -> None:
    if args[0] not in EXTRACT_COMMANDS:
        near = nearest_choice(args[0], list(EXTRACT_COMMANDS))
        raise w.fail(
            table,
            f"'extract' must start with one of {', '.join(EXTRACT_COMMANDS)}, got {args[0]!r}.",
            hint=f"Did you mean '{near}'?"
            if near
            else "It holds the arguments of `qamoe extract`.",
        )
    if any(a in ("--out", "-o") or a.startswith("--out=") for a in args):
        raise w.fail(
            table,
            "'extract' must not set --out: the study writes the file to 'path' "
            "(or into the study folder).",
        )


def _arm(name: str, data: Any, w: _Where, base: Path, tune: Mapping[str, Any]) -> Arm:
    table = f"arms.{name}"
    data = w.keys(data, ARM_KEYS, table, "field")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise w.fail(
            table,
            f"'model' must name a model, got {model!r}.",
            hint='e.g. model = "qamoe"; docs/models.md lists them.',
        )
    config = w.keys(data.get("config", {}), CONFIG_KEYS, f"{table}.config", "section")
    sections = {}
    for key, cls in (("model", ModelConfig), ("train", TrainConfig)):
        sections[key] = w.keys(
            config.get(key, {}), cls.field_names(), f"{table}.config.{key}", f"{key} config field"
        )
    if "seed" in sections["train"]:
        raise w.fail(f"{table}.config.train", "'seed' is set by the study's 'seeds' list.")
    for key in ("text_encoder", "text_model"):
        if key in data:
            if key in sections["model"]:
                raise w.fail(table, f"'{key}' is given twice (as a field and in config.model).")
            value = data[key]
            if key == "text_model" and isinstance(value, str) and value:
                value = str(base / Path(value).expanduser())
            sections["model"][key] = value
    tuned = tunespec.parse_tune(data.get("tune"), tune, name, w, base)
    source = data.get("settings_from")
    if source is not None and (not isinstance(source, str) or not source):
        raise w.fail(table, f"'settings_from' must name a tuned arm, got {source!r}.")
    return Arm(name, model, sections["model"], sections["train"], tuned, source)


def _train_section(data: Any, w: _Where) -> dict[str, Any]:
    train = w.keys(data, TrainConfig.field_names(), "train", "train config field")
    if "seed" in train:
        raise w.fail(
            "train",
            "'seed' is set by the study's 'seeds' list.",
            hint="Remove it from [train]; seeds = [0, 1, 2] lists the model seeds.",
        )
    return train


def _check_configs(arm: Arm, train: Mapping[str, Any], w: _Where) -> None:
    """config.py's own checks of the arm's model section and of its training protocol."""
    for key, build in (
        ("model", lambda: ModelConfig.from_dict(arm.model_config, "model")),
        ("train", lambda: TrainConfig.from_dict({**train, **arm.train_config}, "train")),
    ):
        try:
            build()
        except QamoeError as exc:
            error = StudyFileError if isinstance(exc, ConfigUsageError) else type(exc)
            raise error(
                f"{w.source} [arms.{arm.name}] config.{key}: {exc.message}", hint=exc.hint
            ) from None


def _protocols(data: Any, arms: Sequence[Arm], w: _Where) -> tuple[Protocol, ...]:
    """The protocols, each one's ``arms`` checked against the study's arms. The first
    protocol gives the table's clean column, so it must cover every arm."""
    protocols = _named(data, "protocols", w, lambda n, t: _protocol(n, t, w))
    names = [a.name for a in arms]
    for p in protocols:
        for arm in p.arms:
            if arm not in names:
                near = nearest_choice(arm, names)
                raise w.fail(
                    f"protocols.{p.name}",
                    f"'arms' names {arm!r}, which is not an arm of the study.",
                    hint=f"Did you mean '{near}'?" if near else f"Its arms: {', '.join(names)}.",
                )
        if len(set(p.arms)) != len(p.arms):
            raise w.fail(f"protocols.{p.name}", f"'arms' names an arm twice: {list(p.arms)}.")
    first = protocols[0]
    left = [n for n in names if not first.covers(n)]
    if left:
        raise w.fail(
            f"protocols.{first.name}",
            f"the first protocol gives the table's clean column, so it must sweep every arm; "
            f"it leaves out {', '.join(left)}.",
            hint="Put a protocol without 'arms' first.",
        )
    return protocols


def _protocol(name: str, data: Any, w: _Where) -> Protocol:
    table = f"protocols.{name}"
    data = w.keys(data, PROTOCOL_KEYS, table, "key")
    axes = data.get("axes", [])
    if isinstance(axes, str):
        axes = [axes]
    for axis in axes if isinstance(axes, list) else [axes]:
        if axis not in AXES:
            near = nearest_choice(axis, list(AXES))
            raise w.fail(
                table,
                f"'axes' must list axes among {', '.join(AXES)}, got {axis!r}.",
                hint=f"Did you mean '{near}'?"
                if near
                else "Each axis is swept "
                "separately; 'drop_sets = true' adds the fixed drop subsets.",
            )
    if len(set(axes)) != len(axes):
        raise w.fail(table, f"'axes' names an axis twice: {axes}.")
    drop = data.get("drop_sets", False)
    arms = data.get("arms", [])
    if isinstance(arms, str):
        data = {**data, "arms": [arms]}
    elif "arms" in data and not (
        isinstance(arms, list) and arms and all(isinstance(a, str) for a in arms)
    ):
        raise w.fail(table, f"'arms' must be a non-empty list of arm names, got {arms!r}.")
    seeds = data.get("corruption_seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 1000:
        raise w.fail(table, f"'corruption_seeds' must be an integer in [1, 1000], got {seeds!r}.")
    if not axes and drop is not True:
        raise w.fail(
            table,
            "needs 'axes' (the spectrum axes to sweep) or 'drop_sets = true'.",
            hint='e.g. axes = ["missing", "noise"].',
        )
    try:
        proto = Protocol(
            name,
            tuple(axes),
            _levels(data.get("levels"), axes),
            **{k: _tuple(v) for k, v in data.items() if k not in ("axes", "levels")},
        )
        proto.eval_config()  # evaluate.py's own checks of every field
    except (QamoeError, TypeError) as exc:
        message = exc.message if isinstance(exc, QamoeError) else str(exc)
        raise w.fail(table, message, hint=getattr(exc, "hint", None)) from None
    return proto


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _levels(value: Any, axes: Sequence[str]) -> tuple[float, ...]:
    from qamoe_core.evaluation.plan import DEFAULT_LEVELS, parse_levels  # torch

    if not axes:
        return ()
    if value is None:
        return DEFAULT_LEVELS
    if isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        if len(set(value)) != len(value):
            raise ConfigUsageError(f"'levels' repeats a level: {value}.")
        value = ",".join(repr(float(v)) for v in value)
    if not isinstance(value, str):
        raise ConfigUsageError(
            f"'levels' must be a list of numbers or 'start:stop:step', got {value!r}."
        )
    return parse_levels(value)


def _compare(data: Any, arms: Sequence[Arm], w: _Where) -> Compare:
    from qamoe_core.metrics import METRIC_NAMES

    data = w.keys(data, COMPARE_KEYS, "compare", "key")
    reference = data.get("reference")
    names = [a.name for a in arms]
    if reference is not None and reference not in names:
        near = nearest_choice(reference, names)
        raise w.fail(
            "compare",
            f"the reference arm {reference!r} is not in the study; its arms "
            f"are {', '.join(names)}.",
            hint=f"Did you mean '{near}'?"
            if near
            else "The reference names one of the [arms.NAME] tables.",
        )
    known = sorted({m for names_ in METRIC_NAMES.values() for m in names_})
    metrics = data.get("metrics", [])
    if isinstance(metrics, str):
        metrics = [metrics]
    for metric in metrics if isinstance(metrics, list) else [metrics]:
        if metric not in known:
            near = nearest_choice(metric, known)
            raise w.fail(
                "compare",
                f"unknown metric {metric!r}.",
                hint=(f"Did you mean '{near}'? " if near else "") + f"Metrics: {', '.join(known)}.",
            )
    digits = data.get("digits", 3)
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 10:
        raise w.fail("compare", f"'digits' must be an integer in [0, 10], got {digits!r}.")
    return Compare(reference, tuple(dict.fromkeys(metrics)), digits, _anchors(data, w))


def _anchors(data: Mapping[str, Any], w: _Where) -> tuple[str, ...]:
    anchors = data.get("anchors", [])
    if not isinstance(anchors, list) or not all(isinstance(a, str) for a in anchors):
        raise w.fail(
            "compare",
            f"'anchors' must be a list among {', '.join(ANCHORS)}, got {anchors!r}.",
            hint='e.g. anchors = ["constant", "ridge"].',
        )
    for anchor in anchors:
        if anchor not in ANCHORS:
            near = nearest_choice(anchor, list(ANCHORS))
            raise w.fail(
                "compare",
                f"unknown anchor {anchor!r}; the anchors are {', '.join(ANCHORS)}.",
                hint=f"Did you mean '{near}'?" if near else "See docs/study.md, [compare].",
            )
    return tuple(dict.fromkeys(anchors))


def _report(data: Any, w: _Where) -> tuple[tuple[str, ...], str]:
    data = w.keys(data, REPORT_KEYS, "report", "key")
    figures = data.get("figures", list(FIGURE_FORMATS))
    if isinstance(figures, str):
        figures = [figures]
    if not isinstance(figures, list) or not all(f in FIGURE_FORMATS for f in figures):
        raise w.fail(
            "report",
            f"'figures' must list formats among {', '.join(FIGURE_FORMATS)}, got {figures!r}.",
        )
    title = data.get("title", "")
    if not isinstance(title, str):
        raise w.fail("report", f"'title' must be a string, got {title!r}.")
    return tuple(dict.fromkeys(["png", *figures])), title


# --- SLURM ---------------------------------------------------------------------------------------


def parse_time(value: Any) -> int:
    """A SLURM time limit in whole minutes (rounded up), in SLURM's forms: minutes,
    minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes and
    days-hours:minutes:seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    text = value.strip() if isinstance(value, str) else ""
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    parts = rest.split(":")
    if not (days.isdigit() and 1 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
        raise ConfigUsageError(
            f"The SLURM time limit must be minutes, 'H:MM:SS' or 'D-H:MM:SS'. Got {value!r}.",
            hint='e.g. time = 90 or time = "1:30:00".',
        )
    nums = [int(p) for p in parts]
    if "-" in text:  # days-hours[:minutes[:seconds]]
        h, m, s = [*nums, 0, 0][:3]
    else:  # minutes, minutes:seconds, hours:minutes:seconds
        h, m, s = {1: (0, nums[0], 0), 2: (0, *nums), 3: tuple(nums)}[len(nums)]
    seconds = ((int(days) * 24 + h) * 60 + m) * 60 + s
    return max(1, math.ceil(seconds / 60))


def parse_slurm(data: Any, w: _Where | None = None, **flags: Any) -> Slurm:
    """The [slurm] table, then the flags given (None: not given) over it."""
    w = w or _Where(Path("--slurm flags"))
    table = w.keys(data, SLURM_KEYS, "slurm", "key")
    table.update({k: v for k, v in flags.items() if v is not None})
    out: dict[str, Any] = {}
    try:
        if "time" in table:
            out["time_min"] = parse_time(table["time"])
    except QamoeError as exc:
        raise w.fail("slurm", exc.message, exc.hint) from None
    for key, lo in (("gpus", 0), ("cpus", 1), ("array_parallelism", 1)):
        if key in table:
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise w.fail("slurm", f"'{key}' must be an integer >= {lo}, got {v!r}.")
            out[key] = v
    if "partition" in table:
        if not isinstance(table["partition"], str) or not table["partition"]:
            raise w.fail("slurm", f"'partition' must be a name, got {table['partition']!r}.")
        out["partition"] = table["partition"]
    if "mem_gb" in table:
        v = table["mem_gb"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e6:
            raise w.fail("slurm", f"'mem_gb' must be a number > 0, got {v!r}.")
        out["mem_gb"] = float(v)
    return Slurm(**out)


# --- checks that need the data and the model zoo -------------------------------------------------


@dataclass(frozen=True)
class DataInfo:
    """What the study needs to know of one feature file."""

    path: Path
    sha256: str
    modalities: tuple[str, ...]
    scheme: str
    splits: tuple[str, ...]


def check_against_data(study: Study, data: Mapping[str, DataInfo]) -> None:
    """Each arm's model fits each dataset's modalities; the metrics and splits exist there."""
    from qamoe_core.metrics import METRIC_NAMES
    from qamoe_core.models import get
    from qamoe_core.models.base import check_modalities

    w = _Where(study.source)
    for arm in study.arms:
        try:
            cls = get(arm.model, param="model")
        except QamoeError as exc:
            raise w.fail(f"arms.{arm.name}", exc.message, exc.hint) from None
        for ds in study.datasets:
            try:
                check_modalities(cls, data[ds.name].modalities)
            except QamoeError as exc:
                raise w.fail(
                    f"arms.{arm.name}", f"does not fit dataset '{ds.name}': {exc.message}", exc.hint
                ) from None
    pooling.check_schemes(study.pools, {n: i.scheme for n, i in data.items()}, w)
    for ds in study.datasets:
        info = data[ds.name]
        for metric in study.compare.metrics:
            if metric not in METRIC_NAMES[info.scheme]:
                raise w.fail(
                    "compare",
                    f"the metric '{metric}' is not one of dataset "
                    f"'{ds.name}' (scheme {info.scheme}).",
                    hint=f"Its metrics: {', '.join(METRIC_NAMES[info.scheme])}.",
                )
        for p in study.protocols:
            if p.split not in info.splits:
                raise w.fail(
                    f"protocols.{p.name}",
                    f"dataset '{ds.name}' has no split "
                    f"'{p.split}' (it has {', '.join(info.splits)}).",
                )
            extra = [m for m in p.modalities if m not in info.modalities]
            if extra:
                raise w.fail(
                    f"protocols.{p.name}",
                    f"dataset '{ds.name}' has no modality {', '.join(extra)}.",
                )


def table_metrics(study: Study, scheme: str) -> tuple[str, ...]:
    """The metrics the table and comparisons report for data of ``scheme``."""
    from qamoe_core.metrics import METRIC_NAMES, PRIMARY

    if study.compare.metrics:
        return study.compare.metrics
    primary = PRIMARY[scheme]
    return (primary, "MAE") if "MAE" in METRIC_NAMES[scheme] else (primary,)


__all__ = [
    "Arm",
    "Compare",
    "DataInfo",
    "Dataset",
    "Protocol",
    "Slurm",
    "Study",
    "StudyFileError",
    "check_against_data",
    "load_study",
    "parse_slurm",
    "parse_study",
    "parse_time",
    "table_metrics",
]
