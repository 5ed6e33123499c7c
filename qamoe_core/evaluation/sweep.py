"""Evaluation of one checkpoint: the clean split, a corrupted file, or a whole spectrum sweep.

A sweep walks every (axis, level, corruption seed) of :class:`EvalConfig`, plus optionally the
fixed-missing protocol (every non-empty proper subset of modalities kept, the others removed;
its rows name the removed ones, like every row names the modalities it corrupted),
from ONE checkpoint, and returns the tidy table of ``results.py``. For models with quality
scores it also runs the quality-shuffle control (r permuted across samples: if the numbers
do not move, the router ignores quality) and records per-point diagnostics: the mean quality
score per modality and each expert's share of the routing weight.

How it stays fast (benchmarks/bench_sweep.py times a 10-level x 3-seed x 3-axis sweep of the
mosi preset's 686 test samples):

- the split is read from the HDF5 file ONCE, in row blocks of at most ``block_mib`` (the whole
  split when it fits, so a MOSEI-sized file never has to), and every grid point is computed
  from the block in memory;
- the random draws of a corruption seed are made once per block and reused for every axis and
  level (the spectrum's common random numbers, ``spectrum.draw_keyed``); corruption is applied
  in torch by ``spectrum.apply_draws``, the same function `qamoe corrupt` uses, so the sweep
  at (level, seed) gives the same numbers as evaluating ``qamoe corrupt --level ... --seed ...``
  of the same file;
- level 0 is the identity, so those points share the clean point's predictions (9 of the
  default 91 points);
- the quality-shuffle variant reuses the encoder outputs of the normal pass (the encoders are
  ~all of the cost and do not see r), and everything runs under ``torch.inference_mode``.

Quality shuffling permutes r within fixed windows of ``shuffle_window`` rows of the split (not
within mini-batches: a batch of one would permute nothing), with one permutation per window
seeded by (shuffle_seed, window): reproducible whatever the batch size, block or grid.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import (
    ConfigUsageError,
    DataFormatError,
    InputError,
    QamoeError,
    TooLargeError,
    UsageError,
)
from qamoe_core.base.names import AXES, MISSING_PATTERNS, MODALITIES, NOISE_PATTERNS, SPLITS
from qamoe_core.base.runtime import format_size, memory_budget
from qamoe_core.config import _Config, _spec
from qamoe_core.data.store import FeatureFile
from qamoe_core.evaluation.results import (
    QUALITY_PREFIX,
    SHUFFLED,
    SPECTRUM_AXES,
    USAGE_PREFIX,
    constant_rows,
    csv_safe,
    join_modalities,
    make_table,
    summarize,
)
from qamoe_core.metrics import METRIC_NAMES, compute
from qamoe_core.models.base import MultimodalModel
from qamoe_core.models.text_front import check_text_ids
from qamoe_core.runs.checkpoint import load_run, resolve_device
from qamoe_core.spectrum.engine import (
    CorruptionSpec,
    ModalityDraws,
    Patterns,
    apply_draws,
    draw_keyed,
    pattern_label,
)

log = logging.getLogger(__name__)

# LNLN's random-missing protocol: rates 0.0 ... 0.9, three seeds (docs/design.md §2, §7).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(10))
Progress = Callable[..., None]
# A model's encode_with_coverage(batch): pooled encodings and coverages per modality.
Encodings = tuple[dict[str, Tensor], dict[str, Tensor | None]]


# Float32 copies of a block alive at once (the read, the keyed draws, corrupted mini-batches):
# blocks shrink so that these fit the memory budget (runtime.memory_budget).
_BLOCK_COPIES = 4
# Bytes kept per (point, variant, row): the prediction, and with per_sample a table row.
_POINT_BYTES, _SAMPLE_ROW_BYTES = 4, 320

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
    "A library option of EvalConfig (no flag); see help(qamoe_core.evaluation.sweep.EvalConfig)."
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
    # The spectrum's default: level 1 adds noise as large as the train std per dimension.
    noise_scale: float = _spec(1.0, 1e-6, 1e6, hint=_LIBRARY)
    # Rows per forward pass. Single-thread throughput is flat from 32 to 686 rows on the mosi
    # preset (~1,000 samples/s); larger batches give a second thread more work per operation.
    batch_size: int = _spec(256, 1, hint=_flag("--batch-size"))
    # Bounds the features read into memory at once; 512 MiB holds MOSI's or SIMS's test split.
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


@dataclass
class EvalResult:
    """The table (results.py schema), its summary, and facts about the evaluation."""

    table: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    # With EvalConfig.per_sample: one row per (point, variant, sample), see SAMPLE_COLUMNS.
    samples: pd.DataFrame | None = None

    @property
    def clean(self) -> dict[str, float]:
        """Metric -> value at the first point (clean, or the file as given), normal variant."""
        return self.first("normal")

    def first(self, variant: str) -> dict[str, float]:
        """Metric -> value at the first point for ``variant`` (empty when it was not run)."""
        t = self.table
        first = t[(t["axis"] == self.info["first_axis"]) & (t["variant"] == variant)]
        first = first[first["level"] == self.info["first_level"]]
        return {str(r.metric): float(r.value) for r in first.itertuples()}

    def to_dict(self) -> dict[str, Any]:
        """The facts, the first point's metrics, the summary and every row of the table (the
        per-point results that ``--out`` writes as CSV)."""
        return {
            **self.info,
            "metrics": self.clean,
            "summary": self.summary.to_dict(orient="records"),
            "results": self.table.to_dict(orient="records"),
        }


class _Accumulator:
    """Predictions and diagnostic sums for every (point, variant)."""

    def __init__(self, n: int, per_sample: bool = False) -> None:
        self.n, self.per_sample = n, per_sample
        self.pred: dict[tuple[int, str], np.ndarray] = {}
        self.sums: dict[tuple[int, str], dict[str, float]] = {}
        # per-sample r_m, kept only when asked for: {(point, variant): {modality: (N,)}}
        self.quality: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        self.alias: dict[int, int] = {}  # point -> the point whose outputs it shares

    def resolve_aliases(self) -> None:
        for i, j in self.alias.items():
            for variant in ("normal", "quality_shuffle"):
                if (j, variant) in self.pred:
                    self.pred[(i, variant)] = self.pred[(j, variant)]
                    self.sums[(i, variant)] = self.sums[(j, variant)]
                    if (j, variant) in self.quality:
                        self.quality[(i, variant)] = self.quality[(j, variant)]

    def add(self, key: tuple[int, str], rows: slice, out: Any) -> None:
        if key not in self.pred:
            self.pred[key] = np.full(self.n, np.nan, dtype=np.float32)
            self.sums[key] = {}
        self.pred[key][rows] = out.prediction.float().cpu().numpy()
        sums = self.sums[key]
        if out.quality is not None:
            for m, r in out.quality.items():
                name = f"{QUALITY_PREFIX}{m}"
                sums[name] = sums.get(name, 0.0) + float(r.float().sum())
                if self.per_sample:
                    q = self.quality.setdefault(key, {})
                    q.setdefault(m, np.full(self.n, np.nan, dtype=np.float32))
                    q[m][rows] = r.float().cpu().numpy()
        if out.routing is not None:
            for e, share in enumerate(out.routing.float().sum(0).tolist()):
                name = f"{USAGE_PREFIX}{e}"
                sums[name] = sums.get(name, 0.0) + share


def _bad_record(f: FeatureFile, key: str, value: Any, expected: str) -> DataFormatError:
    return DataFormatError(
        f"'{f.path}': the corruption record's '{key}' is {value!r}, not {expected}.",
        hint="It is written by `qamoe corrupt`; re-create the corrupted copy from the clean file.",
    )


def _record(f: FeatureFile, rec: Mapping[str, Any]) -> dict[str, Any]:
    """One corruption record with every field eval reads checked and given its default."""

    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = rec.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise _bad_record(f, key, v, f"a number in [{lo:g}, {hi:g}]")
        return float(v)

    def names(key: str, allowed: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
        v = rec.get(key, default)
        if (
            not isinstance(v, list | tuple)
            or not all(isinstance(x, str) for x in v)
            or any(x not in allowed for x in v)
        ):
            raise _bad_record(f, key, v, f"a list of names among {', '.join(allowed)}")
        return tuple(v)

    seed = rec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _bad_record(f, "seed", seed, "an integer >= 0")
    axis = rec.get("axis", "mixed")
    if axis not in AXES:
        raise _bad_record(f, "axis", axis, f"one of {', '.join(AXES)}")
    return {
        "level": number("level", 0.0, 0.0, 1.0),
        "noise_scale": number("noise_scale", 1.0, 0.0, math.inf),
        "seed": seed,
        "axis": axis,
        "modalities": names("modalities", MODALITIES, MODALITIES),
        "drop": names("drop", MODALITIES, ()),
        "splits": names("splits", SPLITS, SPLITS),
    }


def _check_text_noise(f: FeatureFile, split: str) -> None:
    """A corrupted file's text noise lives in its text features, which a model that encodes
    the ids does not read: refused rather than scored as if it were there."""
    for raw in f.corruption:
        rec = _record(f, raw)
        if (
            split in rec["splits"]
            and rec["axis"] in ("noise", "mixed")
            and rec["level"] > 0
            and "text" in rec["modalities"]
        ):
            raise InputError(
                f"'{f.path}' holds noise on its text features, which this model does not read "
                "(its pretrained text encoder reads the token ids).",
                hint="Evaluate the clean file with --sweep: noise then reaches the token "
                "embeddings. Files corrupted on the missing axis work as they are.",
            )


def _given_point(
    f: FeatureFile, modalities: tuple[str, ...], split: str, noise_scale: float
) -> Point:
    """The point ``split`` of a (possibly corrupted) file stands for, as one results row key.

    Every corruption record is checked first (a DataFormatError before any work). Only the
    records that covered ``split`` count (`qamoe corrupt --splits` copies the others
    unchanged). A file the row key cannot describe exactly is refused rather than
    mislabelled: a level and whole-modality drops in one record, or noise at a noise_scale
    other than this evaluation's (its level means another amount of noise).
    """
    pairs = [(_record(f, rec), rec) for rec in f.corruption]
    chain = [r for r in pairs if split in r[0]["splits"]]
    if not chain:
        return Point("clean", 0.0, modalities, given=True)
    if len(chain) > 1:
        raise InputError(
            f"'{f.path}' was corrupted {len(chain)} times on the '{split}' split; a results "
            "row describes one corruption, so it cannot be labelled.",
            hint="Corrupt the clean file once at the point you want to evaluate.",
        )
    rec, raw = chain[0]
    drop, level, axis = rec["drop"], rec["level"], rec["axis"]
    if drop and level == 0.0:
        return Point("drop", 1.0, tuple(m for m in modalities if m in drop), given=True)
    if drop:
        raise InputError(
            f"'{f.path}' was corrupted at level {level:g} AND had {'+'.join(drop)} dropped; "
            "a results row can record one or the other, not both.",
            hint="Corrupt with --level or with --drop (or sweep the clean file with --drop-sets).",
        )
    scale = rec["noise_scale"]
    if axis != "missing" and level > 0 and not math.isclose(scale, noise_scale):
        level = _on_this_scale(f, axis, level, scale, noise_scale)
    corrupted = tuple(m for m in rec["modalities"] if m in modalities)
    return Point(axis, level, corrupted, rec["seed"], given=True, pattern=_record_pattern(f, raw))


def _record_pattern(f: FeatureFile, rec: Mapping[str, Any]) -> str:
    """The pattern label of a corruption record (records before patterns: the defaults)."""
    try:
        return CorruptionSpec.from_dict(rec).pattern
    except QamoeError as exc:
        raise DataFormatError(
            f"'{f.path}': its corruption record does not describe a point: {exc}",
            hint="It is written by `qamoe corrupt`; re-create the corrupted copy from the "
            "clean file.",
        ) from None


def _on_this_scale(f: FeatureFile, axis: str, level: float, scale: float, ours: float) -> float:
    """The level on this evaluation's noise scale of noise at ``level`` x ``scale``.

    Pure noise of level·scale train stds IS the point level·scale/ours of this spectrum;
    mixed couples the drop rate to the level, so it has no equivalent.
    """
    equivalent = level * scale / ours
    if axis != "noise" or equivalent > 1:
        raise InputError(
            f"'{f.path}' was corrupted on the {axis} axis with noise_scale {scale:g}; that "
            f"point lies off the spectrum's scale ({ours:g}), so no level names it.",
            hint="Corrupt with the default --noise-scale (on the noise axis, any scale with "
            "level x scale <= 1 is fine).",
        )
    return equivalent


def check_compatible(model: MultimodalModel, f: FeatureFile, task: str) -> None:
    """Raise DataFormatError when the data's modalities, dims or task differ from the model's."""
    dims = dict(model.file_dims)
    if model.reads_text_ids:
        dims.pop("text", None)  # the encoder reads ids, whatever the stored features' width
        check_text_ids(f, model.text_special_ids)
    missing = [m for m in dims if m not in f.modalities]
    if missing:
        raise DataFormatError(
            f"'{f.path}' lacks the modality {', '.join(missing)} that the checkpoint was "
            f"trained on (it has {', '.join(f.modalities)}).",
            hint="Evaluate on a file with the same modalities as the training data.",
        )
    for m, d in dims.items():
        if f.dims[m] != d:
            raise DataFormatError(
                f"'{f.path}': modality '{m}' has {f.dims[m]} feature dims but the checkpoint "
                f"expects {d}.",
                hint="Evaluate on features from the same extractor as the training data.",
            )
    if (task == "binary") != (f.scheme == "binary"):
        raise DataFormatError(
            f"'{f.path}' is a {f.task} dataset (scheme {f.scheme}) but the checkpoint was "
            f"trained for {task}.",
            hint="Evaluate on the kind of labels the model was trained on.",
        )


class Evaluation:
    """One planned evaluation, its steps as methods: validated and planned on construction,
    run with :meth:`run` (read a block, corrupt a point, encode, predict, score).

    Construction checks the model against the data (modalities, dims, task), the split and
    the corruption record, and plans the points, so a CLI can size its progress bar
    (:attr:`steps`) and fail on bad input before any work.
    """

    def __init__(
        self,
        model: MultimodalModel,
        data: str | os.PathLike[str],
        cfg: EvalConfig = EvalConfig(),
        *,
        run: str = "run",
        model_name: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.run_name, self.data = cfg, run, Path(data)
        self.run_dir: Path | None = None  # set by from_run
        self.text_encoder: str | None = None  # from_run: the encoder folder used, and why
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.task = str(getattr(model, "task", "regression"))
        self.model_name = model_name or str(getattr(model, "name", type(model).__name__))
        self.modalities = tuple(getattr(model, "modalities", MODALITIES))
        # Declared on the model: whether a control pass may skip the encoders, and whether
        # it offers the quality-shuffle control at all.
        self.takes_encodings = model.reuses_encodings
        self.shuffles = cfg.quality_shuffle and SHUFFLED in model.controls
        with FeatureFile(self.data) as f:
            self._check_data(f)
            given = _given_point(f, self.modalities, cfg.split, cfg.noise_scale)
            self.points = plan(cfg, self.modalities, given)
            self.n = f.n(cfg.split)  # InputError naming the splits if absent
            self.scheme, self.dataset = f.scheme, f.dataset
            self._check_results_fit(f)
            self.block = self._block_rows(f)
        self.targets = sorted(
            {m for p in self.points if p.axis in SPECTRUM_AXES for m in p.modalities}
        )
        self.n_blocks = -(-self.n // self.block)
        # State of one run (reset by run()).
        self._acc = _Accumulator(self.n, cfg.per_sample)
        self._train_std: dict[str, Tensor] = {}

    def _block_rows(self, f: FeatureFile) -> int:
        """Rows read at once: ``block_mib`` worth (at least a batch), in whole shuffle windows
        (no window is split between two blocks), and no more than the memory budget allows."""
        cfg = self.cfg
        row_bytes = sum(4 * f.seq_lens[m] * f.dims[m] for m in f.modalities)
        block = max(cfg.batch_size, int(cfg.block_mib * 2**20 // max(row_bytes, 1)))
        block = -(-block // cfg.shuffle_window) * cfg.shuffle_window
        fit = f.block_rows(cfg.split, block, _BLOCK_COPIES)
        if fit == block or not cfg.quality_shuffle:
            return fit
        # Results do not depend on the block, but a shuffle window must fit in one.
        f.check_rows(cfg.split, cfg.shuffle_window, _BLOCK_COPIES, "a quality-shuffle window of")
        return fit // cfg.shuffle_window * cfg.shuffle_window

    def _check_results_fit(self, f: FeatureFile) -> None:
        """Refuse a grid whose predictions (and per-sample rows) would pass the memory budget."""
        per_row = 2 * len(self.points) * (_POINT_BYTES + self.cfg.per_sample * _SAMPLE_ROW_BYTES)
        need, budget = self.n * per_row, memory_budget()
        if need > budget:
            raise TooLargeError(
                f"'{f.path}': {len(self.points)} points x {self.n:,} rows of split "
                f"'{self.cfg.split}' keep about {format_size(need)} of results"
                f"{' (per-sample rows)' if self.cfg.per_sample else ''}, beyond the memory "
                f"budget of {format_size(budget)}.",
                hint="Evaluate fewer points (--levels, --axis) or without --per-sample, or "
                "raise the budget with --memory-budget SIZE.",
            )

    def _check_data(self, f: FeatureFile) -> None:
        check_compatible(self.model, f, self.task)
        if self.model.reads_text_ids:
            _check_text_noise(f, self.cfg.split)
        if (self.cfg.sweep or self.cfg.drop_sets) and f.corruption:
            raise InputError(
                f"'{f.path}' is already corrupted; a sweep on top of it would compound levels.",
                hint="Sweep the clean file, or evaluate this one without --sweep/--drop-sets.",
            )
        extra = [m for m in self.cfg.modalities if m not in self.modalities]
        if extra:
            raise UsageError(
                f"The 'modalities' parameter names {', '.join(extra)}, which the model "
                f"does not use (it has {', '.join(self.modalities)})."
            )

    @property
    def steps(self) -> int:
        """How many times :meth:`run` calls ``progress``: points x row blocks."""
        return len(self.points) * self.n_blocks

    def run(self, progress: Progress | None = None) -> EvalResult:
        """Evaluate every point; ``progress(1, point="mixed 0.3")`` after each (per block)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        self._acc = _Accumulator(self.n, cfg.per_sample)
        with FeatureFile(self.data) as f, torch.inference_mode():
            labels = f.labels(cfg.split)
            ids = np.asarray(f.ids(cfg.split), dtype=object) if cfg.per_sample else None
            noisy = any(p.axis in ("noise", "mixed") and not p.given for p in self.points)
            self._train_std = {
                m: torch.from_numpy(f.train_std(m)).to(self.device) for m in self.targets
            } if noisy else {}  # fmt: skip
            for start in range(0, self.n, self.block):
                self.evaluate_block(f, slice(start, min(self.n, start + self.block)), progress)
        self._acc.resolve_aliases()
        return self.result(labels, ids, time.perf_counter() - t0)

    def evaluate_block(self, f: FeatureFile, rows: slice, progress: Progress | None) -> None:
        """Every point on one block of rows, read once.

        Corruption and prediction go mini-batch by mini-batch, so corrupted copies of the whole
        block never exist at once.
        """
        raw = f.read(self.cfg.split, rows)
        batch = {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
            for k, v in raw.items()
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
        }
        draws: dict[str, ModalityDraws] = {}
        drawn_seed: int | None = None
        for i, p in enumerate(self.points):
            if not p.given and p.axis in SPECTRUM_AXES and p.level == 0 and self._clean_first:
                # Level 0 is the identity bit for bit (spectrum.py), so it IS the clean point:
                # share its predictions instead of recomputing them (9 of a default sweep's 91).
                self._acc.alias[i] = 0
            else:
                if p.axis in SPECTRUM_AXES and not p.given and drawn_seed != p.seed:
                    draws, drawn_seed = self.draws(raw, p.seed, batch), p.seed  # once per seed
                corrupter = _PointCorrupter(p, draws, self.cfg.noise_scale, self._train_std,
                                            self.model.spectrum_options())  # fmt: skip
                self.evaluate_point(i, corrupter, batch, rows)
            if progress is not None:
                progress(1, point=f"{p.axis} {p.level:g}")

    @property
    def _clean_first(self) -> bool:
        return self.points[0].axis == "clean"

    def draws(
        self, raw: Mapping[str, np.ndarray], seed: int, batch: Mapping[str, Tensor]
    ) -> dict[str, ModalityDraws]:
        """Keyed draws (u, z) of one corruption seed for every target modality of the block,
        as tensors on the batch's device: shared by every axis and level (common random
        numbers, spectrum.draw_keyed)."""
        axes = self.cfg.axes
        need_u = any(a in ("missing", "mixed") for a in axes)
        need_z = any(a in ("noise", "mixed") for a in axes)
        axis = "mixed" if need_u and need_z else ("missing" if need_u else "noise")
        dev = batch[self.targets[0]].device
        out = {}
        drawn = draw_keyed(
            raw, self.targets, seed=seed, split=self.cfg.split, axis=axis,
            patterns=self.cfg.patterns,
        )  # fmt: skip
        for m, d in drawn.items():
            u = torch.from_numpy(d.u).to(dev) if d.u is not None else None
            z = torch.from_numpy(d.z).to(dev) if d.z is not None else None
            out[m] = ModalityDraws(u, z)
        return out

    def evaluate_point(
        self, i: int, corrupter: _PointCorrupter, batch: Mapping[str, Tensor], rows: slice
    ) -> None:
        """Point ``i`` on one block: corrupt, encode once, predict; then the shuffle control."""
        n, size = batch["label"].shape[0], self.cfg.batch_size
        kept: list[Encodings] = []
        for s in range(0, n, size):
            e = min(n, s + size)
            mb = _unlabelled(corrupter.rows(batch, s, e))
            encodings = self.encode(mb)
            out = self.predict(mb, encodings)
            self._acc.add((i, "normal"), slice(rows.start + s, rows.start + e), out)
            if self.shuffles and encodings is not None:
                kept.append(encodings)
        if self.shuffles:
            self.shuffle_point(i, corrupter, batch, rows, _cat(kept) if kept else None)

    def shuffle_point(
        self,
        i: int,
        corrupter: _PointCorrupter,
        batch: Mapping[str, Tensor],
        rows: slice,
        encodings: Encodings | None,
    ) -> None:
        """The quality-shuffle control at point ``i`` on one block: r permuted within each
        window of ``shuffle_window`` rows of the split.

        Windows start at multiples of the window from the split's first row (blocks are whole
        windows), so the permutation depends on neither the batch size nor the block, and it
        is keyed by (shuffle_seed, window) alone: the same at every point, whatever else is in
        the grid. The encodings of the normal pass are reused when the model takes them;
        otherwise the window is corrupted and encoded again.
        """
        n, w = batch["label"].shape[0], self.cfg.shuffle_window
        for s in range(0, n, w):
            e = min(n, s + w)
            sub = slice(rows.start + s, rows.start + e)
            if encodings is None:
                mb, enc = _unlabelled(corrupter.rows(batch, s, e)), None
            else:  # the model reads only the encodings (and a label, which there is not)
                mb, enc = {}, _rows_of(encodings, s, e)
            out = self.predict(mb, enc, shuffle=self._generator(sub.start // w))
            self._acc.add((i, "quality_shuffle"), sub, out)

    def encode(self, mb: Mapping[str, Tensor]) -> Encodings | None:
        """The model's encodings of ``mb`` (None when its forward cannot take them)."""
        if not self.takes_encodings:
            return None
        return self.model.encode_with_coverage(mb)  # type: ignore[no-any-return, operator]

    def predict(
        self,
        mb: Mapping[str, Tensor],
        encodings: Encodings | None,
        shuffle: torch.Generator | None = None,
    ) -> Any:
        """The model's output on ``mb``; with ``shuffle``, r permuted by that generator."""
        kwargs: dict[str, Any] = {} if encodings is None else {"encodings": encodings}
        if shuffle is not None:
            kwargs.update(shuffle_quality=True, generator=shuffle)
        return self.model(mb, **kwargs)

    def _generator(self, window: int) -> torch.Generator:
        seq = np.random.SeedSequence([self.cfg.shuffle_seed, self.cfg.shuffle_window, window])
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))

    def result(self, labels: np.ndarray, ids: np.ndarray | None, seconds: float) -> EvalResult:
        """The scored table, its summary, the facts of the run and the per-sample rows."""
        table = make_table(self.score(labels) + self.reference_rows(labels))
        names = [m for m in METRIC_NAMES[self.scheme] if m in set(table["metric"])]
        points = self.points
        info = {
            "run": self.run_name,
            "model": self.model_name,
            "dataset": self.dataset,
            "data": str(self.data),
            "split": self.cfg.split,
            "scheme": self.scheme,
            "n_samples": self.n,
            "points": len(points),
            "quality_shuffle": any(k[1] != "normal" for k in self._acc.pred),
            "seconds": round(seconds, 3),
            "first_axis": points[0].axis,
            "first_level": points[0].level,
            "device": str(self.device),
        }
        log.info("evaluated %d points on %d samples in %.1f s", len(points), self.n, seconds)
        samples = None if ids is None else self.sample_rows(ids, labels)
        return EvalResult(table, summarize(table, names), info, samples)

    def _outputs(self) -> list[tuple[Point, str, np.ndarray, tuple[int, str]]]:
        """(point, variant, predictions, key) in table order: by point, then variant."""
        keys = sorted(self._acc.pred)
        return [(self.points[k[0]], k[1], self._acc.pred[k], k) for k in keys]

    def score(self, labels: np.ndarray) -> list[dict[str, Any]]:
        """Result rows: every metric and diagnostic at every (point, variant)."""
        rows: list[dict[str, Any]] = []
        base = self._row_base()
        for p, variant, pred, key in self._outputs():
            values = compute(pred, labels, self.scheme) | self.diagnostics(key)
            for metric, value in values.items():
                rows.append(base | _point_key(p) | {"variant": variant, "metric": metric,
                                                    "value": value})  # fmt: skip
        return rows

    def diagnostics(self, key: tuple[int, str]) -> dict[str, float]:
        """Mean quality score per modality and each expert's share of the routing weight."""
        return {k: v / self._acc.n for k, v in self._acc.sums[key].items()}

    def reference_rows(self, labels: np.ndarray) -> list[dict[str, Any]]:
        """Rows of reference scores that need no model: the best constant predictor's score
        on this split's ``labels`` (variant ``constant``), the floor every curve is read
        against, and the sample count."""
        return constant_rows(labels, self.scheme, **self._row_base())

    def _row_base(self) -> dict[str, Any]:
        return {"run": self.run_name, "model": self.model_name, "dataset": self.dataset,
                "split": self.cfg.split}  # fmt: skip

    def sample_rows(self, ids: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
        """One row per (point, variant, sample): what the model said about each sample."""
        frames = []
        for p, variant, pred, key in self._outputs():
            cols: dict[str, Any] = {"run": self.run_name, "split": self.cfg.split}
            cols |= _point_key(p) | {"variant": variant, "id": ids, "label": labels,
                                     "prediction": pred}  # fmt: skip
            for m, r in self._acc.quality.get(key, {}).items():
                cols[f"{QUALITY_PREFIX}{m}"] = r
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike[str],
        data: str | os.PathLike[str],
        cfg: EvalConfig = EvalConfig(),
        *,
        name: str | None = None,
        device: str | torch.device = "auto",
        plugins: Sequence[str] = (),
        text_model: str | os.PathLike[str] | None = None,
    ) -> Evaluation:
        """Plan the evaluation of a run directory's checkpoint (see checkpoint.load_run, which
        also says what ``plugins`` and ``text_model`` allow).

        ``name`` labels the run in the results (default: the folder's name). Raises
        CheckpointError naming a missing, damaged or refused file of the run.
        """
        dev = resolve_device(device)
        model, _, meta = load_run(run_dir, device=dev, plugins=plugins, text_model=text_model)
        label = name or Path(run_dir).resolve().name
        ev = cls(model, data, cfg, run=label, model_name=str(meta["model_name"]), device=dev)
        ev.run_dir = Path(run_dir)
        ev.text_encoder = meta["text_encoder"]
        return ev


def _unlabelled(mb: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch without its label: evaluation computes no loss."""
    return {k: v for k, v in mb.items() if k != "label"}


def _cat(parts: Sequence[Encodings]) -> Encodings:
    """The encodings of consecutive mini-batches as one."""
    h = {m: torch.cat([p[0][m] for p in parts]) for m in parts[0][0]}
    cov = {
        m: None if parts[0][1][m] is None else torch.cat([p[1][m] for p in parts])  # type: ignore[misc]
        for m in parts[0][1]
    }
    return h, cov


def _rows_of(enc: Encodings, s: int, e: int) -> Encodings:
    h, cov = enc
    return {m: v[s:e] for m, v in h.items()}, {
        m: None if v is None else v[s:e] for m, v in cov.items()
    }


def _point_key(p: Point) -> dict[str, Any]:
    """The columns that name a point in the results and per-sample tables."""
    return {"axis": p.axis, "level": p.level, "modalities": join_modalities(p.modalities),
            "seed": p.seed, "pattern": p.pattern}  # fmt: skip


def evaluate_model(
    model: MultimodalModel,
    data: str | os.PathLike[str],
    cfg: EvalConfig = EvalConfig(),
    *,
    run: str = "run",
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate ``model`` (a MultimodalModel: the model contract) on ``data`` per ``cfg``."""
    ev = Evaluation(model, data, cfg, run=run, model_name=model_name, device=device)
    return ev.run(progress)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    cfg: EvalConfig = EvalConfig(),
    *,
    name: str | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    plugins: Sequence[str] = (),
    text_model: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Evaluate the checkpoint in ``run_dir`` on ``data`` per ``cfg`` (one call; ``plugins``
    and ``text_model`` as in checkpoint.load_run)."""
    ev = Evaluation.from_run(run_dir, data, cfg, name=name, device=device, plugins=plugins,
                             text_model=text_model)  # fmt: skip
    result = ev.run(progress)
    result.info["run_dir"] = str(run_dir)
    return result


# Rows per corruption call: on the mosi preset corrupting 64 rows at a time measured 3x faster
# than 256 or the whole split (the float temporaries of the text features stay in cache).
CORRUPT_ROWS = 64


@dataclass(frozen=True)
class _PointCorrupter:
    """Corrupts rows of one block at one point ``p`` (``draws`` are the whole block's)."""

    p: Point
    draws: Mapping[str, ModalityDraws]
    noise_scale: float
    train_std: Mapping[str, Tensor]
    # MultimodalModel.spectrum_options of the model: {} unless it fine-tunes a text encoder
    text_options: Mapping[str, Any] = field(default_factory=dict)

    def rows(self, batch: Mapping[str, Tensor], s: int, e: int) -> Mapping[str, Tensor]:
        """Rows s:e of the block, corrupted CORRUPT_ROWS rows at a time."""
        mb = {k: v[s:e] for k, v in batch.items()}
        if self.p.given or e - s <= CORRUPT_ROWS:
            return self._apply(mb, s, e)
        parts, inputs = [], []
        for a in range(s, e, CORRUPT_ROWS):
            b = min(e, a + CORRUPT_ROWS)
            inputs.append({k: v[a:b] for k, v in batch.items()})
            parts.append(self._apply(inputs[-1], a, b))
        out: dict[str, Tensor] = {}
        for k in parts[0]:
            if k in mb and all(part[k] is inp[k] for part, inp in zip(parts, inputs, strict=True)):
                out[k] = mb[k]  # untouched by the corruption: no copy
            else:
                out[k] = torch.cat([part[k] for part in parts])
        return out

    def _apply(self, mb: dict[str, Tensor], s: int, e: int) -> Mapping[str, Tensor]:
        """The rows ``mb`` (= rows s:e of the block) at the point; draws sliced to them."""
        p = self.p
        if p.given:
            return mb
        if p.axis == "drop":
            return apply_draws(
                mb, {}, {}, drop=[m for m in batch_modalities(mb) if m in p.modalities],
                **self.text_options,
            )  # fmt: skip
        part = {
            m: ModalityDraws(None if d.u is None else d.u[s:e], None if d.z is None else d.z[s:e])
            for m, d in self.draws.items()
        }
        levels = {m: p.level for m in p.modalities}
        return apply_draws(mb, part, levels, axis=p.axis, noise_scale=self.noise_scale,
                           train_std=self.train_std, **self.text_options)  # fmt: skip


def batch_modalities(batch: Mapping[str, Any]) -> list[str]:
    return [m for m in MODALITIES if m in batch and f"{m}_len" in batch]


SAMPLE_COLUMNS: tuple[str, ...] = (
    "run", "split", "axis", "level", "modalities", "seed", "pattern", "variant", "id",
    "label", "prediction",
)  # fmt: skip
"""Columns of EvalResult.samples, followed by ``quality_<modality>`` for models with r."""


def save_samples(df: pd.DataFrame, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write EvalResult.samples as CSV, atomically (gzip-compressed when the name ends .gz)."""
    target = Path(path)
    compression = "gzip" if target.name.endswith(".gz") else None
    with atomic_path(target, force=force) as tmp:
        csv_safe(df).to_csv(tmp, index=False, float_format="%.6g", compression=compression)
    return target
