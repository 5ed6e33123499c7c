"""The search space of `qamoe tune`: a TOML file (or a model's default space, ``defaults.py``),
checked against the config's own field specs, with the config's own messages.

The file names config fields as dotted keys, each with a range or a list of choices::

    [train.lr]                    # any TrainConfig field
    low = 1e-4
    high = 5e-3
    log = true                    # log-uniform (low must be > 0)

    [model.dropout]               # any ModelConfig field the model reads
    low = 0.0
    high = 0.5

    [model.options.rank]          # one of the model's own options (its Options class)
    choices = [3, 4, 5, 6]

(``train.lr = {low = 1e-4, high = 5e-3, log = true}`` is the same entry in TOML's inline form.)
A range takes its type from the field: an integer field draws integers (``step``, 1 by default),
a float field floats (``step`` makes a grid). Any field can take ``choices``: values the field
accepts, lists for list fields (``train_levels``). Boolean, text and list fields take choices
only. Every bound and choice is checked by building the config with it (on top of the tuning's
base ``--config``), so a value out of range fails with the config's own message.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qamoe_core.base.errors import ConfigError, ConfigUsageError, InputError, nearest_choice
from qamoe_core.config import ModelConfig, TrainConfig, default_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENTRY_KEYS = ("low", "high", "log", "step", "choices")
OPTIONS = "model.options."
# Fields a space may not name, and why: the tuner sets them, or they are no hyper-parameter.
FIXED: dict[str, str] = {
    "train.val_levels": "the validation levels are the objective's (--levels)",
    "train.select_metric": "the selection metric is the objective's (--metric)",
    "train.seed": "the model seed is no hyper-parameter (set it in --config)",
    "train.val_seed": "every trial is scored on the same validation copies",
    "model.options": "name one option at a time: model.options.NAME",
    "model.text_model_hash": "training records it",
}
# The text-encoder fields, read only with text_encoder = "pretrained" (docs/text-encoder.md).
TEXT_FIELDS = frozenset({"text_model", "fine_tune_layers", "text_lr", "text_pooling"})


@dataclass(frozen=True)
class Context:
    """What a space is checked against: the model, the base config and the fields it reads."""

    model: str
    options_cls: Any  # the model's ModelOptions subclass
    base_model: Mapping[str, Any]
    base_train: Mapping[str, Any]
    used: frozenset[str] | None = None  # ModelConfig fields the model reads; None: unknown

    def paths(self, section: str) -> list[str]:
        """Every path a space may name in ``section`` (model, train or options)."""
        if section == "train":
            return [f"train.{n}" for n in TrainConfig.field_names()]
        if section == "options":
            return [f"{OPTIONS}{n}" for n in self.options_cls.field_names()]
        return [f"model.{n}" for n in ModelConfig.field_names()]


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a range (``low``..``high``) or a list of ``choices``."""

    path: str
    integer: bool = False
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    listy: bool = False  # a list field: its choices are lists, JSON-encoded for Optuna

    @property
    def section(self) -> str:
        return "options" if self.path.startswith(OPTIONS) else self.path.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[1]

    def distribution(self) -> Any:
        """Optuna's distribution for this dimension."""
        from optuna import distributions as d

        if self.choices:
            return d.CategoricalDistribution([self.encode(c) for c in self.choices])
        assert self.low is not None and self.high is not None
        if self.integer:
            step = int(self.step or 1)
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def encode(self, value: Any) -> Any:
        return json.dumps(list(value)) if self.listy else value

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.listy and isinstance(value, str) else value

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        scale = "log" if self.log else "linear"
        step = f", step {self.step:g}" if self.step else ""
        kind = "integer" if self.integer else "float"
        return f"{kind} {self.low:g}..{self.high:g} ({scale}{step})"

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"path": self.path, "choices": [self.encode(c) for c in self.choices]}
        return {
            "path": self.path,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "step": self.step,
            "integer": self.integer,
        }


@dataclass(frozen=True)
class Space:
    """The checked space, dimensions sorted by path, and where it came from."""

    params: tuple[Param, ...]
    source: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)  # path -> where the range is from

    def distributions(self) -> dict[str, Any]:
        return {p.path: p.distribution() for p in self.params}

    def canonical(self) -> list[dict[str, Any]]:
        """What identifies the space (a resumed tuning must have the same)."""
        return [p.to_dict() for p in self.params]

    def decode(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna's parameter values -> config values, by path."""
        by_path = {p.path: p for p in self.params}
        return {k: by_path[k].decode(v) for k, v in values.items()}

    def apply(
        self, base_model: Mapping[str, Any], base_train: Mapping[str, Any], values: Mapping
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (model, train) sections of one trial: the base with ``values`` set."""
        model, train = dict(base_model), dict(base_train)
        options = dict(model.get("options") or {})
        for path, value in self.decode(values).items():
            if path.startswith(OPTIONS):
                options[path[len(OPTIONS) :]] = value
            elif path.startswith("model."):
                model[path[len("model.") :]] = value
            else:
                train[path[len("train.") :]] = value
        if options:
            model["options"] = options
        return model, train


# --- reading ----------------------------------------------------------------------------------


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A space file's content; InputError when it is missing, ConfigError when not TOML."""
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"The search space file '{p}' "
            + ("is not a file." if p.exists() else "does not exist."),
            hint="Give a TOML file (docs/tuning.md), or leave --space out for the model's "
            "default space.",
        )
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"The search space file '{p}' is not valid TOML ({' '.join(str(exc).split())[:200]}).",
            hint="An entry looks like: [train.lr] low = 1e-4, high = 5e-3, log = true.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"The search space file '{p}' could not be read ({exc}).") from None


def entries(doc: Mapping[str, Any], source: str) -> list[tuple[str, Any]]:
    """(path, entry) for every entry of a space document (a parsed TOML file)."""
    out: list[tuple[str, Any]] = []
    for section, table in doc.items():
        if section not in ("model", "train"):
            raise _unknown(section, ["model", "train"], source, "section")
        if not isinstance(table, Mapping):
            raise ConfigUsageError(
                f"'{section}' in {source} must be a table of fields.",
                hint=f"For example [{section}.{'dropout' if section == 'model' else 'lr'}].",
            )
        for name, entry in table.items():
            if section == "model" and name == "options" and _is_table_of_tables(entry):
                out += [(f"{OPTIONS}{k}", v) for k, v in entry.items()]
            else:
                out.append((f"{section}.{name}", entry))
    if not out:
        raise ConfigUsageError(
            f"The search space {source} has no entry.",
            hint="Name at least one field, e.g. [train.lr] low = 1e-4, high = 5e-3, log = true.",
        )
    return sorted(out, key=lambda e: e[0])


def _is_table_of_tables(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values())


def _unknown(name: str, valid: list[str], source: str, what: str) -> ConfigUsageError:
    near = nearest_choice(name, valid)
    hint = f"Did you mean '{near}'?" if near else f"Valid: {', '.join(valid)}."
    return ConfigUsageError(f"The search space {source} names an unknown {what} '{name}'.", hint)


# --- checking ---------------------------------------------------------------------------------


def check_space(
    doc: Mapping[str, Any], ctx: Context, source: str, notes: Mapping[str, str] | None = None
) -> Space:
    """Check every entry of a space document against the config; the checked Space."""
    params = tuple(check_entry(path, entry, ctx, source) for path, entry in entries(doc, source))
    return Space(params, source, dict(notes or {}))


def _default(ctx: Context, path: str) -> Any:
    section = "options" if path.startswith(OPTIONS) else path.split(".", 1)[0]
    cls = {"model": ModelConfig, "train": TrainConfig, "options": ctx.options_cls}[section]
    return default_of(cls, path.rsplit(".", 1)[1])


def check_entry(path: str, entry: Any, ctx: Context, source: str) -> Param:
    """One entry: the field exists, may be tuned, is used by the model; a valid range."""
    section = "options" if path.startswith(OPTIONS) else path.split(".", 1)[0]
    valid = ctx.paths(section)
    if path not in valid:
        what = f"option of the model '{ctx.model}'" if section == "options" else "field"
        if section == "options" and not valid:
            raise ConfigUsageError(
                f"The search space {source} names '{path}', but the model '{ctx.model}' has "
                "no options of its own.",
                hint="Tune its shared fields instead (model.NAME, train.NAME).",
            )
        raise _unknown(path, valid, source, what)
    if path in FIXED:
        raise ConfigUsageError(f"The search space {source} may not tune '{path}': {FIXED[path]}.")
    _check_used(path, ctx, source)
    if not isinstance(entry, Mapping):
        raise ConfigUsageError(
            f"'{path}' in {source} must be a table with low and high, or with choices. "
            f"Got {entry!r:.80} instead.",
            hint=f"For example {path} = {{low = 0.1, high = 0.5}} or {path} = {{choices = [...]}}.",
        )
    for key in entry:
        if key not in ENTRY_KEYS:
            raise _unknown(key, list(ENTRY_KEYS), f"{source} entry '{path}'", "key")
    default = _default(ctx, path)
    if "choices" in entry:
        return _check_choices(path, entry, default, ctx, source)
    return _check_range(path, entry, default, ctx, source)


def _check_used(path: str, ctx: Context, source: str) -> None:
    if not path.startswith("model.") or path.startswith(OPTIONS) or ctx.used is None:
        return
    name = path[len("model.") :]
    if name in ctx.used:
        return
    own = [f"{OPTIONS}{n}" for n in ctx.options_cls.field_names()]
    if name in TEXT_FIELDS:
        hint = 'It is read only with model.text_encoder = "pretrained" (set it in --config).'
    elif own:
        hint = (
            f"Its own options are tuned as {', '.join(own[:6])}{', ...' if len(own) > 6 else ''}."
        )
    else:
        hint = "Remove the entry: it would change nothing."
    raise ConfigUsageError(
        f"The search space {source} tunes '{path}', which the model '{ctx.model}' does not use.",
        hint=hint,
    )


def check_value(path: str, value: Any, ctx: Context, what: str, source: str) -> None:
    """Build the config with ``value`` at ``path`` (on the base): the config's own message
    names what is wrong, prefixed with the entry."""
    name = path.rsplit(".", 1)[1]
    try:
        if path.startswith(OPTIONS):
            options = dict(ctx.base_model.get("options") or {})
            ctx.options_cls.from_dict({**options, name: value}, ctx.model)
        elif path.startswith("model."):
            ModelConfig.from_dict({**ctx.base_model, name: value}, "model")
        else:
            TrainConfig.from_dict({**ctx.base_train, name: value}, "train")
    except ConfigError as exc:
        raise ConfigUsageError(
            f"The search space {source}, '{path}' {what}: {exc.message}", exc.hint
        ) from None


def _check_choices(path: str, entry: Mapping, default: Any, ctx: Context, source: str) -> Param:
    if set(entry) != {"choices"}:
        extra = sorted(set(entry) - {"choices"})
        raise ConfigUsageError(
            f"'{path}' in {source} has choices and {', '.join(extra)}; give one or the other.",
            hint="choices lists the values; low/high/log/step describe a range.",
        )
    choices = entry["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigUsageError(
            f"'{path}' in {source} has an empty choice: choices must list at least one value. "
            f"Got {choices!r:.80} instead.",
            hint=f"For example {path} = {{choices = [...]}} with the values to try.",
        )
    seen: list[str] = []
    for value in choices:
        check_value(path, value, ctx, f"choice {json.dumps(value)}", source)
        if json.dumps(value) in seen:
            raise ConfigUsageError(
                f"'{path}' in {source} lists the choice {json.dumps(value)} twice."
            )
        seen.append(json.dumps(value))
    listy = isinstance(default, tuple)
    return Param(path, choices=tuple(choices), listy=listy)


def _number(path: str, entry: Mapping, key: str, source: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigUsageError(
            f"'{path}' in {source} needs a number '{key}'. Got {value!r:.80} instead.",
            hint="A range is low and high (log = true for a log-uniform draw), or give choices.",
        )
    return value


def _check_range(path: str, entry: Mapping, default: Any, ctx: Context, source: str) -> Param:
    if isinstance(default, bool) or not isinstance(default, int | float):
        kind = "list" if isinstance(default, tuple) else type(default).__name__
        raise ConfigUsageError(
            f"'{path}' is a {kind} field: the search space {source} can only list choices for it.",
            hint=f"For example {path} = {{choices = [{json.dumps(_jsonable(default))}]}}.",
        )
    low, high = _number(path, entry, "low", source), _number(path, entry, "high", source)
    for what, value in (("low", low), ("high", high)):
        check_value(path, value, ctx, what, source)
    if not low < high:
        raise ConfigUsageError(
            f"'{path}' in {source} has low {low:g} and high {high:g}; low must be below high.",
            hint="For a fixed value, set the field in --config instead.",
        )
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigUsageError(f"'{path}' in {source}: log must be true or false. Got {log!r}.")
    if log and low <= 0:
        raise ConfigUsageError(
            f"'{path}' in {source} is a log range from {low:g}; a log range needs low > 0.",
            hint="Start it at a small positive value (e.g. 1e-5), or make it linear.",
        )
    step = _check_step(path, entry, isinstance(default, int), low, high, log, source)
    integer = isinstance(default, int)
    if integer:
        low, high = int(low), int(high)
    return Param(path, integer, low, high, log, step)


def _check_step(
    path: str, entry: Mapping, integer: bool, low: float, high: float, log: bool, source: str
) -> float | None:
    if "step" not in entry:
        return None
    step = _number(path, entry, "step", source)
    if step <= 0 or (integer and step != int(step)):
        raise ConfigUsageError(
            f"'{path}' in {source}: step must be a positive {'integer' if integer else 'number'}."
            f" Got {step!r} instead."
        )
    if log and step != 1:
        raise ConfigUsageError(
            f"'{path}' in {source} has both log and a step; a grid is linear.",
            hint="Drop log = true, or drop the step.",
        )
    spans = (high - low) / step
    if abs(spans - round(spans)) > 1e-9 * max(1.0, spans):
        raise ConfigUsageError(
            f"'{path}' in {source}: high - low ({high - low:g}) is not a whole number of steps "
            f"({step:g}).",
            hint="Choose low, high and step so that the grid ends at high.",
        )
    return int(step) if integer else float(step)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
