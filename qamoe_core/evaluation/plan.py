"""What an evaluation walks: the CLI's level grammar, :class:`EvalConfig` and the grid of points.

``parse_levels`` reads ``--levels`` (``0:0.9:0.1`` or ``0,0.3,0.6``); :class:`EvalConfig` holds
what to evaluate (validated by config.py's field specs); :func:`plan` turns it into the ordered
list of :class:`Point` that ``sweep.Evaluation`` evaluates: the clean point (or the point a
corrupted file stands for, :func:`given_point`), then every (seed, axis, level) of a sweep, then
the fixed-missing subsets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from qamoe_core.base.errors import ConfigUsageError, UsageError
from qamoe_core.base.names import MISSING_PATTERNS, MODALITIES, NOISE_PATTERNS, SPLITS
from qamoe_core.config import _Config, _spec
from qamoe_core.data.store import FeatureFile
from qamoe_core.evaluation.results import R_VARIANTS, SPECTRUM_AXES, join_modalities
from qamoe_core.spectrum.engine import Patterns, pattern_label
from qamoe_core.spectrum.record import recorded_point

# LNLN's random-missing protocol: rates 0.0 ... 0.9, three seeds (docs/design.md §2, §7).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(10))

# A step of 0.001 over [0, 1]; finer grids only cost time (each point is a pass over the split).
MAX_LEVELS = 1001
_LEVELS_HINT = "e.g. --levels 0:0.9:0.1 or --levels 0,0.3,0.6"


def _check_grid_size(count: int, text: str) -> None:
    if count > MAX_LEVELS:
        raise UsageError(
            f"The 'levels' grid {text} has {count:,} points; at most {MAX_LEVELS} are "
            "allowed (each is a pass over the split per axis and seed).",
            hint="Use a coarser step, e.g. --levels 0:1:0.05",
        )


def parse_levels(text: str) -> tuple[float, ...]:
    """'0:0.9:0.1' (start:stop:step, stop included) or '0,0.25,0.5' -> sorted unique levels.

    Only parses: the range [0, 1] and the size of the grid are checked by EvalConfig (the
    one boundary every caller passes). A range is sized before it is built, so a step of
    1e-12 fails at once instead of filling memory. Raises UsageError for a malformed text.
    """
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(
                f"The 'levels' parameter must be start:stop:step or a comma list. Got {text!r}.",
                hint=_LEVELS_HINT,
            )
        start, stop, step = (_level_number(p, text) for p in parts)
        if not step > 0:
            raise UsageError(
                f"The step of 'levels' must be > 0. Got {step:g} instead.", hint=_LEVELS_HINT
            )
        count = math.floor((stop - start) / step + 1e-9) + 1
        _check_grid_size(count, repr(text))
        values = [start + i * step for i in range(max(count, 0))]
    else:
        values = [_level_number(p, text) for p in text.split(",") if p.strip()]
    levels = tuple(sorted({round(v, 10) for v in values}))
    if not levels:
        raise UsageError(
            f"The 'levels' parameter gives an empty grid: {text!r}.",
            hint="start must not exceed stop, e.g. --levels 0:0.9:0.1",
        )
    return levels


def _level_number(part: str, text: str) -> float:
    try:
        value = float(part)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"The 'levels' parameter holds a non-number: {text!r}.", hint=_LEVELS_HINT)
    return value


def _flag(flag: str) -> str:
    return f"Set it with {flag}; see `qamoe eval --help`."


_LIBRARY = (
    "A library option of EvalConfig (no flag); see help(qamoe_core.evaluation.plan.EvalConfig)."
)


@dataclass(frozen=True)
class EvalConfig(_Config):
    """What to evaluate. Defaults give the clean split; ``sweep=True`` walks the spectrum.

    Validated on construction by config.py's field specs (a ConfigError naming the field).
    """

    split: str = _spec("test", choices=SPLITS, hint=_flag("--split"))
    # Walk the spectrum; without it, evaluate the file as given (clean or corrupted).
    sweep: bool = _spec(False, hint=_flag("--sweep"))
    axes: tuple[str, ...] = _spec(SPECTRUM_AXES, choices=SPECTRUM_AXES, hint=_flag("--axis"))
    # LNLN's grid. Level 1 is left out by default: with every modality at 1 nothing is left
    # and Corr of the resulting constant prediction is undefined.
    levels: tuple[float, ...] = _spec(DEFAULT_LEVELS, 0.0, 1.0, hint=_LEVELS_HINT)
    # Corruption seeds per point; three as LNLN reports mean and spread over three.
    seeds: tuple[int, ...] = _spec((0, 1, 2), 0, 2**63 - 1, hint=_flag("--corruption-seeds"))
    # Modalities that receive the level (empty: all of the model's).
    modalities: tuple[str, ...] = field(
        default=(),
        metadata={"choices": MODALITIES, "empty_ok": True, "hint": _flag("--modalities")},
    )
    # The fixed-missing protocol: every non-empty proper subset of modalities kept.
    drop_sets: bool = _spec(False, hint=_flag("--drop-sets"))
    # Run the quality-shuffle control for models with quality scores.
    quality_shuffle: bool = _spec(True, hint=_flag("--no-shuffle"))
    # Record QA-MoE's quality-head diagnostic at every point (normal variant): the residual
    # of μ_m against the clean target and the σ² predicted for it (results.RESIDUAL_PREFIX).
    # Costs one encoding of the clean rows per block and a head pass per point.
    residuals: bool = _spec(False, hint=_flag("--residuals"))
    # The r-controls to run as well, for models that offer them (evaluation/controls.py):
    # constant_r (r fixed to its mean on the split) and oracle_r (r from each sample's true
    # corruption). None by default: each costs a pass of the fusion at every point.
    controls: tuple[str, ...] = field(
        default=(),
        metadata={"choices": R_VARIANTS, "empty_ok": True, "hint": _flag("--control")},
    )
    # The spectrum's default: level 1 adds noise as large as the train std per dimension.
    noise_scale: float = _spec(1.0, 1e-6, 1e6, hint=_LIBRARY)
    # Rows per forward pass. Single-thread throughput is flat from 32 to 686 rows on the mosi
    # preset (~1,000 samples/s); larger batches give a second thread more work per operation.
    batch_size: int = _spec(256, 1, hint=_flag("--batch-size"))
    # Bounds the features read into memory at once; 512 MiB holds MOSI's or SIMS's test split.
    # Blocks are whole mini-batches (and shuffle windows), so it never changes the results.
    block_mib: float = _spec(512.0, 1e-6, hint=_LIBRARY)
    # Seed of the quality permutations (independent of corruption and model seeds).
    shuffle_seed: int = _spec(0, 0, 2**63 - 1, hint=_LIBRARY)
    # The shuffle control permutes r within windows of this many rows of the split, whatever
    # the batch size (within a batch of one it would permute nothing). 256 was the default
    # batch size, within which the control always permuted.
    shuffle_window: int = _spec(256, 2, hint=_LIBRARY)
    # Keep every sample's prediction and quality scores at every point (EvalResult.samples):
    # for error analysis and per-sample checks of r_m. Costs a row per sample and point.
    per_sample: bool = _spec(False, hint=_flag("--per-sample"))
    # The sweep's temporal patterns (spectrum.py, data/README.md); one set per evaluation, kept
    # in every row's pattern column. Defaults: the LNLN protocol (random steps, white noise).
    missing_pattern: str = _spec("random", choices=MISSING_PATTERNS, hint=_flag("--pattern"))
    burst_mean: float = _spec(5.0, 1.0, 1e6, hint=_flag("--burst-mean"))
    noise_pattern: str = _spec("white", choices=NOISE_PATTERNS, hint=_flag("--pattern"))
    noise_rho: float = _spec(0.9, 0.0, 1.0, hi_open=True, hint=_flag("--noise-rho"))

    @property
    def patterns(self) -> Patterns:
        """The sweep's patterns, as spectrum.draw_keyed takes them."""
        return Patterns(self.missing_pattern, self.burst_mean, self.noise_pattern, self.noise_rho)

    def __post_init__(self) -> None:
        if self.modalities is None:  # type: ignore[comparison-overlap]  # older "all"
            object.__setattr__(self, "modalities", ())
        seeds = self.seeds
        super().__post_init__()
        # The field specs read number lists as floats; seeds must stay exact integers.
        if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            raise ConfigUsageError(
                f"The 'seeds' parameter must be a list of integers >= 0. Got {seeds!r} instead.",
                hint=_flag("--corruption-seeds"),
            )
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

    def _check_relations(self) -> None:
        levels = tuple(sorted(set(self.levels)))
        _check_grid_size(len(levels), "given")
        object.__setattr__(self, "levels", levels)
        for name, default, axes in (
            ("missing_pattern", "random", ("missing", "mixed")),
            ("noise_pattern", "white", ("noise", "mixed")),
        ):
            value = getattr(self, name)
            if value != default and not self.sweep:
                raise ConfigUsageError(
                    f"The '{name}' parameter {value!r} sets the pattern of a sweep, and "
                    "this evaluation has none (a corrupted file records its own pattern).",
                    hint="Add --sweep, or leave --pattern out.",
                )
            if value != default and not set(axes) & set(self.axes):
                raise ConfigUsageError(
                    f"The '{name}' parameter {value!r} applies to the {' and '.join(axes)} "
                    f"axes, and the sweep has only {', '.join(self.axes)}.",
                    hint=f"Add --axis {axes[0]}, or leave the {value} pattern out.",
                )


@dataclass(frozen=True)
class Point:
    """One evaluated condition (a row group of the results table)."""

    axis: str  # clean | mixed | missing | noise | drop
    level: float
    # The corrupted ones; for drop the DROPPED (removed) ones, as in the results schema v2.
    modalities: tuple[str, ...]
    seed: int = 0
    # The data as read from the file (clean, or corrupted by `qamoe corrupt`): not corrupted here.
    given: bool = False
    # The temporal pattern's label (spectrum.pattern_label); '' on clean and drop.
    pattern: str = ""

    def columns(self) -> dict[str, Any]:
        """The columns that name this point in the results and per-sample tables."""
        return {"axis": self.axis, "level": self.level,
                "modalities": join_modalities(self.modalities), "seed": self.seed,
                "pattern": self.pattern}  # fmt: skip


def plan(cfg: EvalConfig, modalities: Sequence[str], as_given: Point | None = None) -> list[Point]:
    """The grid of points in evaluation order: the clean (or given) point first."""
    mods = tuple(modalities)
    points = [as_given or Point("clean", 0.0, mods, given=True)]
    if cfg.sweep:
        targets = tuple(m for m in mods if not cfg.modalities or m in cfg.modalities)
        for seed, axis, level in itertools.product(cfg.seeds, cfg.axes, cfg.levels):
            label = pattern_label(axis, cfg.patterns)
            points.append(Point(axis, level, targets, int(seed), pattern=label))
    if cfg.drop_sets:
        for k in range(1, len(mods)):
            for kept in itertools.combinations(mods, k):
                points.append(Point("drop", 1.0, tuple(m for m in mods if m not in kept)))
    return points


def given_point(
    f: FeatureFile, modalities: tuple[str, ...], split: str, noise_scale: float
) -> Point:
    """The point ``split`` of a (possibly corrupted) file stands for: the clean point, or the
    one its corruption record describes (spectrum.record.recorded_point, which also says what
    it refuses rather than mislabel)."""
    where = f"'{f.path}'"
    point = recorded_point(f.corruption, where, split, modalities, noise_scale)
    return Point(**point._asdict(), given=True)
