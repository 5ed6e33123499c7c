"""A tuned arm in a study file: ``tune = {space = ..., trials = ...}`` (docs/study.md).

::

    [tune]                        # the defaults every tuned arm shares (the equal budget)
    trials = 30
    folds = 5

    [arms.tfn]
    model = "tfn"
    tune = true                   # tuned with [tune] as it is
    [arms.lmf]
    model = "lmf"
    tune = { space = "spaces/lmf.toml" }   # [tune], with its own search space

An arm's ``tune`` is ``true`` (the ``[tune]`` table), a table (``[tune]`` with the arm's keys
over it) or ``false``/absent (not tuned). The keys are those of `qamoe tune`: ``space`` (a
search space file, relative to the study file; default: the model's own space), ``trials``
(required, here or in ``[tune]``), ``folds`` (default 5; 0: the valid split), ``groups``
(``true``: videos by `qamoe audit`'s rule; ``false``: rows are their own groups; or a regex
whose first group is the video), ``metric`` and ``levels`` (the objective; default MAE over
clean and mixed 0.5), ``sampler``, ``pruner`` and ``seed`` (of the sampler and the folds).
Everything here is checked without the data; the space against the model and the data is
checked when the study is planned (tunearm.py), with `qamoe tune`'s own messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qamoe_core.base.errors import QamoeError, check_level, nearest_choice
from qamoe_core.data.audit import DEFAULT_GROUP_REGEX, compile_group_regex
from qamoe_core.tuning.objective import DEFAULT_LEVELS

TUNE_KEYS = (
    "space",
    "trials",
    "folds",
    "groups",
    "metric",
    "levels",
    "sampler",
    "pruner",
    "seed",
)
SAMPLERS = ("tpe", "random")  # as qamoe_core.tuning.plan (not imported: it imports torch)
PRUNERS = ("median", "halving", "none")


@dataclass(frozen=True)
class TuneArm:
    """How one arm is tuned before its seeds train (the settings of `qamoe tune`)."""

    trials: int
    space: Path | None = None  # None: the model's default space
    space_doc: Mapping[str, Any] | None = None  # the space file's content (the study's doc)
    folds: int = 5
    groups: str | None = DEFAULT_GROUP_REGEX  # None: every row is its own group
    metric: str = "auto"
    levels: tuple[float, ...] = DEFAULT_LEVELS
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0

    def to_doc(self) -> dict[str, Any]:
        """What decides the tuning, paths aside (the space by its content)."""
        return {
            "space": "default" if self.space_doc is None else dict(self.space_doc),
            "trials": self.trials,
            "folds": self.folds,
            "groups": self.groups,
            "metric": self.metric,
            "levels": list(self.levels),
            "sampler": self.sampler,
            "pruner": self.pruner,
            "seed": self.seed,
        }

    def budget(self, metric: str | None = None) -> str:
        """The budget in words: what the table states and what equal budgets share.
        ``metric``: what ``auto`` resolved to on the study's data, where known."""
        folds = (
            "the valid split"
            if self.folds == 0
            else f"{self.folds} {'grouped ' if self.groups else ''}folds over train+valid"
        )
        words = ["clean" if lv == 0 else f"{lv:g}" for lv in self.levels]
        if self.metric != "auto":
            metric = self.metric
        elif not metric:
            metric = "MAE (Acc_2 for binary labels)"
        return (
            f"{self.trials} trials ({self.sampler} sampler, {self.pruner} pruner, seed "
            f"{self.seed}), selected on {folds} by {metric} at validation levels "
            f"{', '.join(words)}"
        )


def parse_defaults(data: Any, w: Any, base: Path) -> dict[str, Any]:
    """The study's ``[tune]`` table, each value checked (``trials`` may wait for the arm)."""
    table = w.keys(data, TUNE_KEYS, "tune", "key")
    return _checked(table, "tune", w, base)


def parse_tune(
    value: Any, defaults: Mapping[str, Any], arm: str, w: Any, base: Path
) -> TuneArm | None:
    """An arm's ``tune`` over the study's ``[tune]``: a :class:`TuneArm`, or None."""
    table = f"arms.{arm}.tune"
    if value is None or value is False:
        return None
    if value is True:
        own: dict[str, Any] = {}
    else:
        own = _checked(w.keys(value, TUNE_KEYS, table, "tune key"), table, w, base)
    merged = {**defaults, **own}
    if "trials" not in merged:
        raise w.fail(
            table,
            "'trials' is missing: the tuning's budget.",
            hint="Give it in [tune] (trials = 30) so that every tuned arm gets the same.",
        )
    return TuneArm(**merged)


def _checked(table: Mapping[str, Any], where: str, w: Any, base: Path) -> dict[str, Any]:
    """The values of a tune table, checked, as TuneArm's fields."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        try:
            out.update(_CHECKS[key](value, base))
        except _Bad as bad:
            raise w.fail(where, f"'{key}' {bad.args[0]}", hint=bad.hint) from None
        except QamoeError as exc:  # the space file or the regex: tune's own message
            raise type(exc)(f"{w.source} [{where}]: {exc.message}", hint=exc.hint) from None
    return out


class _Bad(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _trials(value: Any, base: Path) -> dict[str, Any]:
    if not _int(value) or value < 1:
        raise _Bad(
            f"must be an integer >= 1, got {value!r}.",
            hint="Give every tuned arm the same budget, e.g. trials = 30 in [tune].",
        )
    return {"trials": value}


def _folds(value: Any, base: Path) -> dict[str, Any]:
    if not _int(value) or value == 1 or value < 0 or value > 100:
        raise _Bad(
            f"must be 0 (the valid split) or an integer in [2, 100], got {value!r}.",
            hint="5 grouped folds is the usual choice.",
        )
    return {"folds": value}


def _seed(value: Any, base: Path) -> dict[str, Any]:
    if not _int(value) or not 0 <= value < 2**32:
        raise _Bad(f"must be an integer in [0, 2**32), got {value!r}.")
    return {"seed": value}


def _choice(key: str, choices: Sequence[str]) -> Any:
    def check(value: Any, base: Path) -> dict[str, Any]:
        if value not in choices:
            near = nearest_choice(str(value), list(choices))
            raise _Bad(
                f"must be one of {', '.join(choices)}, got {value!r}.",
                hint=f"Did you mean '{near}'?" if near else None,
            )
        return {key: value}

    return check


def _metric(value: Any, base: Path) -> dict[str, Any]:
    from qamoe_core.metrics import METRIC_NAMES

    known = ["auto", *sorted({m for names in METRIC_NAMES.values() for m in names})]
    if value not in known:
        near = nearest_choice(str(value), known)
        raise _Bad(
            f"must be auto or a metric, got {value!r}.",
            hint=(f"Did you mean '{near}'? " if near else "") + f"Metrics: {', '.join(known)}.",
        )
    return {"metric": value}


def _levels(value: Any, base: Path) -> dict[str, Any]:
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _Bad(f"must list levels (clean or numbers in [0, 1]), got {value!r}.")
    levels: list[float] = []
    for item in items:
        if item == "clean":
            level = 0.0
        elif isinstance(item, bool) or not isinstance(item, int | float | str):
            raise _Bad(f"holds {item!r}, which is not a level (clean or a number in [0, 1]).")
        else:
            try:
                level = check_level(item, "levels")
            except QamoeError as exc:
                raise _Bad(f"holds {item!r}: {exc.message}") from None
        if level in levels:
            raise _Bad(f"names the level {level:g} twice.", hint="clean is level 0.")
        levels.append(level)
    return {"levels": tuple(sorted(levels))}


def _groups(value: Any, base: Path) -> dict[str, Any]:
    if value is True:
        return {"groups": DEFAULT_GROUP_REGEX}
    if value is False:
        return {"groups": None}
    if not isinstance(value, str) or not value:
        raise _Bad(f"must be true, false or a regex whose first group is the video, got {value!r}.")
    compile_group_regex(value)
    return {"groups": value}


def _space(value: Any, base: Path) -> dict[str, Any]:
    from qamoe_core.tuning.space import read_toml

    if not isinstance(value, str) or not value:
        raise _Bad(
            f"must be the path of a search space file (TOML), got {value!r}.",
            hint="Leave it out for the model's default space (docs/models.md).",
        )
    path = base / Path(value).expanduser()
    return {"space": path, "space_doc": read_toml(path)}


_CHECKS: dict[str, Any] = {
    "space": _space,
    "trials": _trials,
    "folds": _folds,
    "groups": _groups,
    "metric": _metric,
    "levels": _levels,
    "sampler": _choice("sampler", SAMPLERS),
    "pruner": _choice("pruner", PRUNERS),
    "seed": _seed,
}


def check_settings_from(arms: Sequence[Any], w: Any) -> None:
    """Each ``settings_from`` names a tuned arm of the same model (not the arm itself), and
    an arm that takes another's setting is not tuned itself."""
    by_name = {a.name: a for a in arms}
    for arm in arms:
        source = arm.settings_from
        if source is None:
            continue
        table = f"arms.{arm.name}"
        if arm.tune is not None:
            raise w.fail(
                table,
                f"is tuned and also takes the setting of '{source}' (settings_from).",
                hint="An arm is either tuned (tune) or trained at a tuned arm's setting "
                "(settings_from); remove one.",
            )
        tuned = [a.name for a in arms if a.tune is not None and a.name != arm.name]
        if source not in by_name or source == arm.name:
            near = nearest_choice(source, tuned)
            raise w.fail(
                table,
                f"'settings_from' names {source!r}, which is not another arm of the study.",
                hint=f"Did you mean '{near}'?" if near else _tuned_arms_hint(tuned),
            )
        other = by_name[source]
        if other.tune is None:
            raise w.fail(
                table,
                f"'settings_from' names '{source}', which is not tuned: there is no setting "
                "to take.",
                hint=_tuned_arms_hint(tuned),
            )
        if not arm.model_config and not arm.train_config:
            raise w.fail(
                table,
                f"takes the setting of '{source}' and changes nothing in it: it would train "
                f"the same models as '{source}'.",
                hint="Give it the config it changes, e.g. "
                "config = { model = { options = { quality_gate = false } } }.",
            )
        if other.model != arm.model:
            raise w.fail(
                table,
                f"'settings_from' names '{source}', a tuned {other.model}, but this arm is "
                f"a {arm.model}: a setting is taken from a tuned arm of the same model.",
                hint=f'Set model = "{other.model}", or tune this arm (tune = true).',
            )


def _tuned_arms_hint(tuned: Sequence[str]) -> str:
    if not tuned:
        return "No arm of the study is tuned: add tune = true to the arm to take from."
    return f"The tuned arms: {', '.join(tuned)}."


def budget_note(arms: Sequence[Any], metrics: Mapping[str, str] | None = None) -> str:
    """One sentence for the table: the tuned arms and their budget (equal or not), then the
    arms trained at another arm's tuned setting (``settings_from``), which cost no budget.
    ``metrics``: per arm, the metric its objective resolved to (for ``metric = "auto"``)."""
    tuned = [a for a in arms if getattr(a, "tune", None) is not None]
    if not tuned:
        return ""
    taken = [a for a in arms if getattr(a, "settings_from", None)]
    note = _tuned_note(tuned, metrics)
    if taken:
        each = "; ".join(f"{a.name} took {a.settings_from}'s setting" for a in taken)
        note += (
            " Not tuned (no budget of their own), trained at a tuned arm's setting with "
            f"their own config over it: {each}."
        )
    return note


def _tuned_note(tuned: Sequence[Any], metrics: Mapping[str, str] | None) -> str:
    budgets = {a.name: a.tune.budget((metrics or {}).get(a.name)) for a in tuned}
    names = ", ".join(budgets)
    if len(budgets) == 1:
        return f"Tuned before training ({names}): {next(iter(budgets.values()))}."
    if len(set(budgets.values())) == 1:
        return (
            f"Tuned before training, each with the same budget ({names}): "
            f"{next(iter(budgets.values()))}."
        )
    parts = "; ".join(f"{n}: {b}" for n, b in budgets.items())
    return f"Tuned before training, with UNEQUAL budgets as the study file sets them: {parts}."
