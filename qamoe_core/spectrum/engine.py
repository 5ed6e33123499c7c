"""The Continuous Reliability Spectrum (docs/design.md §2): one engine for batches and files.

A spectrum point is a ``level`` ℓ in [0, 1] applied to chosen modalities (0 = clean, 1 = gone):

- ``missing``: each VALID step is dropped independently with probability ``missing_rate`` = ℓ.
  A dropped step is zeroed; for ``text_ids`` it becomes ``[UNK]`` (100) unless it holds
  ``[CLS]`` (101) or ``[SEP]`` (102), so a re-encoder still sees a well-formed sentence.
  The FEATURES at [CLS]/[SEP] are dropped like any step: a precomputed BERT [CLS] vector
  summarises the whole sentence, and sparing it would leak the modality at level 1.
  Lengths stay; a keep mask ``<m>_keep`` (B, T) bool records what survived.
- ``noise``: kept valid steps get N(0, (λ·s_d)²), λ = ℓ·noise_scale, s_d the per-dimension
  std of the TRAIN split, so ℓ means the same for every modality and dataset.
- ``mixed`` (default): both at once with the same ℓ.
- ``drop``: whole modalities zeroed (keep mask all False, lengths kept), the fixed-missing
  protocol. Dropping every modality is an error.
Padding is never touched; unchosen modalities are returned unchanged; ℓ = 0 is the identity
bit for bit (``where``, not ``x + 0·z``, which would turn -0.0 into +0.0).

Patterns (data/README.md, "Temporal patterns"): how the damage is spread over time, a
property of the draws only, so levels, common random numbers and :func:`apply_draws` are the
same for every pattern.

- missing ``random`` (default): as above, each valid step on its own.
- missing ``burst``: the valid steps are cut into bursts whose lengths are geometric with mean
  ``burst_mean`` = L >= 1 (P(len = k) = (1 - 1/L)^(k-1) / L; a new burst opens at each step
  with probability 1/L; the row's end truncates the last one), and a whole burst is dropped iff
  the ``u`` of its first step is < ℓ. Every step's ``u`` is still U[0, 1), so the expected share
  of dropped valid steps is exactly ℓ, drops stay nested in ℓ, ℓ = 1 drops everything. Two
  neighbouring bursts that are both dropped form one gap, so in a long row the maximal gaps
  have mean L / (1 - ℓ). L = 1 is the random pattern bit for bit. Models a face leaving the
  frame or a microphone cutting out (Gilbert's burst-loss channel, here in a form whose drop
  rate is ℓ for every ℓ in [0, 1]).
- noise ``white`` (default): ``z`` independent per step.
- noise ``correlated``: ``z`` replaced, per row and dimension, by the AR(1) process e_0 = z_0,
  e_t = ρ·e_(t-1) + sqrt(1 - ρ²)·z_t over the valid steps (``noise_rho`` = ρ in [0, 1)), so each
  step's noise is still N(0, (λ·s_d)²) while neighbouring steps share it (lag-k correlation ρ^k):
  a bad channel colouring an utterance, which pooling cannot average out. ρ = 0 is white.
- on ``mixed`` both patterns apply together (``missing_pattern`` and ``noise_pattern``); a
  pattern other than the default on an axis without it (burst on noise) is an error.

Randomness: draws are separate from levels. A step is dropped iff ``u < ℓ`` and its noise is
``ℓ·noise_scale·s_d·z``, with ``u`` ~ U[0, 1) (B, T) and ``z`` ~ N(0, 1) (B, T, D). The draws
come from one of two sources and are applied by ONE function, :func:`apply_draws` (torch; numpy
batches pass through ``torch.from_numpy`` and come back as numpy), so files, sweeps and training
share the same arithmetic:

- :func:`draw_keyed` (numpy): a pure function of (seed, split, modality, chain, row). Each row
  gets its own PCG64 stream keyed by ``SeedSequence(seed, spawn_key=(crc32(split),
  crc32(modality), chain, row))``. Keying per ROW, not per caller's chunk, is what makes a file
  corrupted in chunks of 64 or 1000 rows, a sweep over shuffled batches, and a per-sample
  Dataset all see the same bytes. The cost is one generator per row and modality (~10-30 µs),
  small next to drawing a MOSEI row's ~10^5 normals (~1 ms), and it needs no alignment logic.
  Only valid steps are drawn (u first, then z), so padding costs nothing.
- :func:`draw_torch`: ``torch.rand``/``torch.randn`` on the batch's device with an optional
  ``torch.Generator`` (on that device). Used in training, where draws need not be reproducible
  across batchings, only fast.

Because draws do not depend on the level, one set of draws serves a whole sweep (common random
numbers): the steps dropped at 0.3 are a subset of those dropped at 0.5 and the noise direction
is the same, so a reliability curve reflects the level rather than the luck of each draw.

Use from other modules::

    # a fixed spectrum point (files, evaluation); batch has 'index' = row numbers in the split;
    # modalities=None (default) means every modality the batch holds
    spec = CorruptionSpec(level=0.4, axis="mixed", modalities=("audio", "vision"), seed=0)
    out = apply_spec(batch, spec, split="test", train_std=stds)      # numpy or torch batch

    # sweeps: draw once per batch (CPU), move to the batch's device once, apply at every level
    draws = move_draws(draw_keyed(batch, ("text", "audio", "vision"), seed=0, split="test"), dev)
    for level in grid:
        out = apply_draws(batch, draws, dict.fromkeys(draws, level), train_std=stds)

    # training: per-sample, per-modality levels re-drawn for every batch (hence every epoch)
    levels = sample_levels(B, ("text", "audio", "vision"), clean_fraction=0.5, generator=g)
    out = corrupt_batch(batch, levels, train_std=stds, axis="mixed", generator=g)

``train_std[m]`` is the (D_m,) per-dimension std of the clean TRAIN split
(``FeatureFile.train_std``), numpy or torch. Every function returns a NEW dict carrying
``<m>_keep`` for every modality in the batch (valid steps, AND the incoming keep mask where the
batch had one). Inputs are never modified; arrays that need no change are shared, not copied.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from qamoe_core.base.errors import (
    ConfigError,
    DataFormatError,
    InputError,
    UsageError,
    check_choice,
    check_level,
)
from qamoe_core.base.names import AXES, MISSING_PATTERNS, MODALITIES, NOISE_PATTERNS
from qamoe_core.config import IN_RELATIONS, _Config, _spec

UNK_ID, CLS_ID, SEP_ID = 100, 101, 102  # BERT-base (uncased/chinese) vocabulary ids
MAX_SEED = 2**63 - 1

Array = Any  # np.ndarray or torch.Tensor


def _as_names(value: Any, name: str) -> tuple[str, ...]:
    """Accept 'audio,vision', ['audio', 'vision'] or a tuple; check against MODALITIES."""
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v != ""]
    for m in items:
        if m not in MODALITIES:
            raise UsageError(
                f"The '{name}' parameter must name modalities among {', '.join(MODALITIES)}. "
                f"Got {m!r} instead.",
                hint="Names are lower-case and comma-separated, e.g. audio,vision.",
            )
    if len(set(items)) != len(items):
        raise UsageError(
            f"The '{name}' parameter names a modality twice: {items}.",
            hint="Name each modality once, e.g. audio,vision.",
        )
    return tuple(m for m in MODALITIES if m in items)  # canonical order


# Noise beyond a million train stds is no spectrum point, and it overflows float32 features.
MAX_NOISE_SCALE = 1e6
_SEED_HINT = "Corruption seeds are whole numbers >= 0, e.g. --seed 0."


class Patterns(NamedTuple):
    """How a point spreads its damage over time (module docstring, "Patterns").

    ``missing``: ``random`` (each step alone) or ``burst`` (runs of geometric length with mean
    ``burst_mean`` steps); ``noise``: ``white`` or ``correlated`` (AR(1), lag-1 correlation
    ``noise_rho``). Values are checked by CorruptionSpec / TrainConfig, not here.
    """

    missing: str = "random"
    burst_mean: float = 5.0
    noise: str = "white"
    noise_rho: float = 0.9


@dataclass(frozen=True)
class CorruptionSpec(_Config):
    """One point of the spectrum. Validated on construction (config.py's declarative ``_spec``,
    raising InputError); saved as JSON in corrupted files (data/README.md, corruption record)."""

    error = UsageError
    # 0 = clean, 1 = the modality is gone (docs/design.md §2).
    level: float = _spec(0.0, 0.0, 1.0, hint="0 is clean, 1 removes the modality entirely.")
    # mixed is the single-knob spectrum: slightly noisy at 0.1, half gone and very noisy at 0.5.
    axis: str = _spec("mixed", choices=AXES, hint="Axes are missing, noise and mixed (both).")
    # None = every modality the data holds: "this dataset at level 0.4" degrades all of it
    # (and a file without vision is not an error). Checked in _check_relations.
    modalities: tuple[str, ...] | None = field(default=None, metadata=IN_RELATIONS)
    # Whole modalities removed (fixed-missing protocol), on top of the level.
    drop: tuple[str, ...] = field(default=(), metadata=IN_RELATIONS)
    # λ = level·noise_scale in units of the train std. 1.0 makes level 1 a per-dimension
    # signal-to-noise ratio of 1 (noise as large as the feature's own spread across the train
    # split): clearly unreliable yet not astronomically off-scale, and the mixed axis already
    # removes everything at level 1, so a larger scale would add nothing there.
    noise_scale: float = _spec(
        1.0,
        0.0,
        MAX_NOISE_SCALE,
        lo_open=True,
        hint="1.0 means level 1 adds noise as large as the train std of each dimension.",
    )
    # Corruption seed, independent of any model seed (same seed, same bytes).
    seed: int = _spec(0, 0, MAX_SEED, hint=_SEED_HINT)
    # Temporal patterns (module docstring); the defaults are the LNLN protocol of earlier versions.
    missing_pattern: str = _spec(
        "random", choices=MISSING_PATTERNS, hint="random drops steps alone, burst in runs."
    )
    # [ours] 5 steps: a word or two of aligned MOSI, a sixth of a second of 30 fps video.
    burst_mean: float = _spec(5.0, 1.0, 1e6, hint="The mean length of a burst, in time steps.")
    noise_pattern: str = _spec(
        "white", choices=NOISE_PATTERNS, hint="white is independent per step, correlated AR(1)."
    )
    # [ours] 0.9: noise stays correlated over ~10 steps (1 / (1 - rho)), a colouring that
    # pooling over a sequence of 50 cannot average away.
    noise_rho: float = _spec(
        0.9, 0.0, 1.0, hi_open=True, hint="The lag-1 correlation of AR(1) noise, in [0, 1)."
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise fields in place once
        set_(self, "level", check_level(self.level, "level"))  # accepts '0.4' from a flag
        if isinstance(self.seed, np.integer):
            set_(self, "seed", int(self.seed))
        super().__post_init__()

    def _check_relations(self) -> None:
        set_ = object.__setattr__
        if self.modalities is not None:
            mods = _as_names(self.modalities, "modalities")
            if not mods:
                raise UsageError(
                    "The 'modalities' parameter must name at least one modality. Got none.",
                    hint=f"Use e.g. --modalities {','.join(MODALITIES)}, or leave it out for all.",
                )
            set_(self, "modalities", mods)
        drop = _as_names(self.drop, "drop")
        set_(self, "drop", drop)
        if set(drop) >= set(MODALITIES):
            raise UsageError(
                f"The 'drop' parameter cannot remove every modality. Got {','.join(drop)}.",
                hint="Keep at least one modality; --level 1 on the others if that is the intent.",
            )
        drops, noise = _needs(self.axis)
        for name, on, default, axes in (
            ("missing_pattern", drops, "random", "missing and mixed"),
            ("noise_pattern", noise, "white", "noise and mixed"),
        ):
            if not on and getattr(self, name) != default:
                raise UsageError(
                    f"The '{name}' parameter applies to the {axes} axes only; the axis is "
                    f"{self.axis}. Got {getattr(self, name)!r} instead.",
                    hint=f"Leave it at {default} on the {self.axis} axis, or choose another axis.",
                )

    @property
    def missing_rate(self) -> float:
        """Nominal probability that a valid step of a chosen modality is dropped."""
        return self.level if self.axis in ("missing", "mixed") else 0.0

    @property
    def noise_std(self) -> float:
        """Nominal noise std in units of the per-dimension train std (λ)."""
        return self.level * self.noise_scale if self.axis in ("noise", "mixed") else 0.0

    @property
    def patterns(self) -> Patterns:
        """The temporal patterns, as draw_keyed takes them."""
        return Patterns(self.missing_pattern, self.burst_mean, self.noise_pattern, self.noise_rho)

    @property
    def pattern(self) -> str:
        """A results row's label: the patterns of the axis, e.g. 'burst', 'random+white'."""
        return pattern_label(self.axis, self.patterns)

    def resolve(self, available: Sequence[str]) -> tuple[str, ...]:
        """Modalities that receive the level, given those the data holds (canonical order).

        Raises InputError if the spec names a modality the data lacks, or drops all it has.
        """
        for name, names in (("modalities", self.modalities or ()), ("drop", self.drop)):
            for m in names:
                if m not in available:
                    raise InputError(
                        f"The '{name}' parameter names '{m}', which the data does not hold "
                        f"(it has {', '.join(available)}).",
                        hint=f"Choose among {', '.join(available)}.",
                    )
        if set(available) <= set(self.drop):
            raise InputError(
                f"The 'drop' parameter cannot remove every modality of the data "
                f"({', '.join(available)}).",
                hint="Keep at least one modality.",
            )
        chosen = self.modalities if self.modalities is not None else tuple(available)
        return tuple(m for m in MODALITIES if m in chosen and m not in self.drop)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], section: str = "") -> CorruptionSpec:
        """Build from ``to_dict`` output; unknown keys are an error, missing ones get their
        defaults. A corruption record holds more: read it with spectrum.record.spec_of.
        """
        names = set(cls.field_names())
        unknown = set(data) - names
        if unknown:
            raise ConfigError(
                f"Unknown corruption field(s): {', '.join(sorted(unknown))}.",
                hint=f"Fields are {', '.join(sorted(names))}.",
            )
        return cls(**{k: v for k, v in data.items() if k in names})


def pattern_label(axis: str, patterns: Patterns = Patterns()) -> str:
    """'random'/'burst' on missing, 'white'/'correlated' on noise, both joined by '+' on mixed;
    '' for axes without patterns (clean, drop)."""
    parts = {"missing": [patterns.missing], "noise": [patterns.noise]}.get(axis)
    if axis == "mixed":
        parts = [patterns.missing, patterns.noise]
    return "+".join(parts or [])


def parse_pattern(
    value: str | Sequence[str] | None,
    burst_mean: float | None = None,
    noise_rho: float | None = None,
) -> dict[str, Any]:
    """``--pattern burst``, ``correlated`` or ``burst,correlated`` (+ their parameters) ->
    CorruptionSpec fields, for flags of `corrupt` and `eval --sweep`.

    Each name goes to the axis that has it (MISSING_PATTERNS or NOISE_PATTERNS); an unknown
    name, two patterns of one axis, or a parameter without its pattern is a UsageError.
    """
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or ())
    out: dict[str, Any] = {}
    for item in (i for i in items if i):
        key = "missing_pattern" if item in MISSING_PATTERNS else "noise_pattern"
        if item not in MISSING_PATTERNS + NOISE_PATTERNS or key in out:
            raise UsageError(
                f"The 'pattern' parameter must be one of {', '.join(MISSING_PATTERNS)} and/or "
                f"one of {', '.join(NOISE_PATTERNS)}. Got {value!r} instead.",
                hint="e.g. --pattern burst, --pattern correlated or --pattern burst,correlated.",
            )
        out[key] = item
    needs_of = {
        "burst_mean": ("missing_pattern", "burst"),
        "noise_rho": ("noise_pattern", "correlated"),
    }
    for name, given in (("burst_mean", burst_mean), ("noise_rho", noise_rho)):
        needs = needs_of[name]
        if given is None:
            continue
        if out.get(needs[0]) != needs[1]:
            raise UsageError(
                f"The '{name}' parameter applies to the {needs[1]} pattern only. "
                f"Got {name} = {given!r} with pattern {value!r}.",
                hint=f"Add --pattern {needs[1]}, or leave {name} out.",
            )
        out[name] = given
    return out


class ModalityDraws(NamedTuple):
    """Random draws for one modality: ``u`` (B, T) U[0, 1) for dropping, ``z`` (B, T, D) N(0, 1)
    for noise; either is None when the axis does not need it. numpy or torch."""

    u: Array | None
    z: Array | None


def _needs(axis: str) -> tuple[bool, bool]:
    """(drops steps, adds noise) for an axis."""
    return axis in ("missing", "mixed"), axis in ("noise", "mixed")


def _code(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))  # stable across runs and platforms (unlike hash())


def _to_numpy(value: Array) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def row_generator(
    seed: int, split: str, modality: str, row: int, chain: int = 0
) -> np.random.Generator:
    """The generator that owns the draws of one (split, modality, row) for ``seed``.

    ``spawn_key`` entries are each < 2**32 (one word), so distinct tuples never collide;
    ``chain`` is the position in a corruption chain, so corrupting a corrupted file with the
    same seed draws fresh randomness instead of repeating the first corruption.
    """
    ss = np.random.SeedSequence(seed, spawn_key=(_code(split), _code(modality), chain, row))
    return np.random.Generator(np.random.PCG64(ss))


def draw_keyed(
    batch: Mapping[str, Array],
    modalities: Iterable[str],
    *,
    seed: int,
    split: str,
    axis: str = "mixed",
    chain: int = 0,
    patterns: Patterns = Patterns(),
) -> dict[str, ModalityDraws]:
    """Reproducible draws for the rows ``batch['index']`` of ``split`` (numpy arrays on CPU).

    Depends only on (seed, split, modality, chain, row), the row's valid length and
    ``patterns``: the same row gets the same draws whatever batch it sits in. Padding gets
    u = 1 (never dropped) and z = 0.
    """
    if "index" not in batch:
        raise InputError(
            "Keyed corruption needs the batch's 'index' (row numbers within the split).",
            hint="Read batches with FeatureFile.read or H5Dataset, which add it.",
        )
    index = _to_numpy(batch["index"]).astype(np.int64)
    drops, noise = _needs(check_choice(axis, AXES, "axis"))
    burst = drops and patterns.missing == "burst"
    out: dict[str, ModalityDraws] = {}
    for m in modalities:
        b, t, d = batch[m].shape
        lens = _to_numpy(batch[f"{m}_len"]).astype(np.int64)
        u = np.ones((b, t), dtype=np.float32)
        z = np.zeros((b, t, d), dtype=np.float32) if noise else None
        for i in range(b):
            n_valid = int(lens[i])
            if n_valid == 0:
                continue
            g = row_generator(seed, split, m, int(index[i]), chain)
            # Always draw u then z in this order so the noise of a row is the same on every axis
            # and pattern; a burst's extra draws come last for the same reason.
            g.random(out=u[i, :n_valid], dtype=np.float32)
            if z is not None:
                g.standard_normal(out=z[i, :n_valid], dtype=np.float32)
            if burst:
                starts = g.random(n_valid) < 1.0 / patterns.burst_mean
                u[i, :n_valid] = u[i, :n_valid][_run_starts(starts)]
        if z is not None and patterns.noise == "correlated":
            _ar1_numpy(z, lens, patterns.noise_rho)
        out[m] = ModalityDraws(u if drops else None, z)
    return out


def _run_starts(starts: np.ndarray) -> np.ndarray:
    """For each step, the index of the step that opened its burst (step 0 always opens one)."""
    pos = np.where(starts, np.arange(starts.shape[0]), 0)
    return np.maximum.accumulate(pos)


def _ar1_numpy(z: np.ndarray, lens: np.ndarray, rho: float) -> None:
    """In place: e_0 = z_0, e_t = rho·e_(t-1) + sqrt(1-rho²)·z_t along T, so every e_t is
    N(0, 1) with lag-1 correlation rho. Elementwise float32 ops, one rounding each, so a row's
    result does not depend on the rows beside it; padding is zeroed again afterwards."""
    r = np.float32(rho)
    c = np.float32(math.sqrt(1.0 - rho * rho))
    z[:, 1:] *= c  # the innovations, scaled in one pass
    carry = np.empty_like(z[:, 0])
    for step in range(1, z.shape[1]):
        np.multiply(z[:, step - 1], r, out=carry)
        z[:, step] += carry
    z[np.arange(z.shape[1])[None, :] >= lens[:, None]] = 0.0


def _ar1_torch(z: torch.Tensor, rho: float) -> torch.Tensor:
    """:func:`_ar1_numpy` for a torch (B, T, D) tensor (training draws; padding is never used)."""
    c = math.sqrt(1.0 - rho * rho)
    steps = [z[:, 0]]
    for step in range(1, z.shape[1]):
        steps.append(steps[-1] * rho + z[:, step] * c)
    return torch.stack(steps, dim=1)


class PatternMix(NamedTuple):
    """Training's share of corrupted samples with each non-default pattern (TrainConfig)."""

    burst_fraction: float = 0.0
    burst_mean: float = 5.0
    correlated_fraction: float = 0.0
    noise_rho: float = 0.9

    @classmethod
    def from_config(cls, cfg: Any) -> PatternMix:
        """The mix a TrainConfig asks for (its burst_* / correlated_fraction / noise_rho)."""
        return cls(cfg.burst_fraction, cfg.burst_mean, cfg.correlated_fraction, cfg.noise_rho)


def draw_torch(
    batch: Mapping[str, torch.Tensor],
    modalities: Iterable[str],
    *,
    axis: str = "mixed",
    generator: torch.Generator | None = None,
    patterns: PatternMix = PatternMix(),
) -> dict[str, ModalityDraws]:
    """Fresh draws on the batch's device (training). ``generator`` must live on that device.

    Each sample's draws follow a burst (correlated) pattern with probability
    ``patterns.burst_fraction`` (``correlated_fraction``), per modality; with both at 0 (the
    default) nothing extra is drawn, so the generator's stream is that of earlier versions.
    """
    drops, noise = _needs(check_choice(axis, AXES, "axis"))
    out: dict[str, ModalityDraws] = {}
    for m in modalities:
        x = batch[m]
        b, t = x.shape[:2]
        u = torch.rand(x.shape[:2], generator=generator, device=x.device) if drops else None
        z = torch.randn(x.shape, generator=generator, device=x.device) if noise else None
        if u is not None and patterns.burst_fraction > 0:
            pick = torch.rand(b, generator=generator, device=x.device) < patterns.burst_fraction
            starts = torch.rand((b, t), generator=generator, device=x.device)
            starts = starts < 1.0 / patterns.burst_mean
            starts[:, 0] = True
            steps = torch.arange(t, device=x.device).expand(b, t)
            opener = torch.where(starts, steps, 0).cummax(dim=1).values
            u = torch.where(pick[:, None], u.gather(1, opener), u)
        if z is not None and patterns.correlated_fraction > 0:
            pick = torch.rand(b, generator=generator, device=x.device)
            pick = pick < patterns.correlated_fraction
            z = torch.where(pick[:, None, None], _ar1_torch(z, patterns.noise_rho), z)
        out[m] = ModalityDraws(u, z)
    return out


def move_draws(
    draws: Mapping[str, ModalityDraws], device: str | torch.device
) -> dict[str, ModalityDraws]:
    """Draws as torch tensors on ``device`` (do it once per batch when sweeping levels)."""
    dev = torch.device(device)
    return {
        m: ModalityDraws(*(None if a is None else _tensor(a, dev) for a in d))
        for m, d in draws.items()
    }


def _tensor(value: Array, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def _levels_tensor(level: Any, b: int, device: torch.device) -> torch.Tensor:
    """A level given as a float, (B,) array or (B,) tensor -> (B,) float32 tensor."""
    if isinstance(level, torch.Tensor | np.ndarray):
        lv = _tensor(level, device, torch.float32).reshape(-1)
        if lv.numel() == 1:
            lv = lv.expand(b)
    else:
        lv = torch.full((b,), check_level(level), dtype=torch.float32, device=device)
    if lv.shape != (b,):
        raise InputError(f"Per-sample levels must have shape ({b},); got {tuple(lv.shape)}.")
    if bool(((lv < 0) | (lv > 1) | torch.isnan(lv)).any()):
        raise InputError("Per-sample levels must lie in [0, 1].")
    return lv


class _Corruption(NamedTuple):
    """What :func:`apply_draws` applies, shared by every modality of the batch."""

    draws: Mapping[str, ModalityDraws]
    levels: Mapping[str, Any]
    drop: Sequence[str]
    drops: bool  # the axis drops steps
    noise: bool  # the axis adds noise
    noise_scale: float
    train_std: Mapping[str, Array] | None
    special_ids: tuple[int, int, int]  # (unk, cls, sep)
    text_noise: bool
    device: torch.device
    # Levels of the noise where they differ from ``levels`` (independent draws); None: tied.
    noise_levels: Mapping[str, Any] | None = None


def batch_modalities(
    batch: Mapping[str, Array], levels: Mapping[str, Any] | None = None, drop: Sequence[str] = ()
) -> list[str]:
    """The modalities the batch holds (features and lengths), in canonical order; refuse
    ``levels`` or ``drop`` for any other."""
    mods = [m for m in MODALITIES if m in batch and f"{m}_len" in batch]
    for m in [*(levels or {}), *drop]:
        if m not in mods:
            raise InputError(
                f"Cannot corrupt modality '{m}': the batch has {', '.join(mods) or 'none'}."
            )
    return mods


def _add_noise(
    x_new: torch.Tensor,
    keep: torch.Tensor,
    lv: torch.Tensor,
    z: Array,
    m: str,
    c: _Corruption,
    new: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``x_new`` plus ℓ·noise_scale·s_d·z on the kept steps of rows with ℓ > 0.

    Also puts the unit-free text noise in ``new['text_noise']`` when it is asked for.
    """
    if c.train_std is None or m not in c.train_std:
        raise InputError(f"The noise axis needs the train std of '{m}'.")
    d = x_new.shape[2]
    std = _tensor(c.train_std[m], c.device, torch.float32).reshape(-1)  # (D,)
    if std.shape != (d,):
        raise DataFormatError(
            f"train_std of '{m}' has {std.numel()} dims but the features have {d}."
        )
    # Float32 throughout, one rounding per op (no fused multiply-add), so CPU and
    # CUDA and numpy-fed batches give the same bits.
    sigma = lv * torch.tensor(c.noise_scale, dtype=torch.float32, device=c.device)
    scale = sigma[:, None] * std[None, :]  # (B, D)
    noisy = _tensor(z, c.device) * scale[:, None, :]  # (B, T, D), fresh
    noisy += x_new  # in place on the fresh tensor; a + b == b + a bit for bit
    hit = keep & (lv > 0)[:, None]  # (B, T)
    x_new = torch.where(hit[:, :, None], noisy, x_new)
    if m == "text" and c.text_noise:
        unit = _tensor(z, c.device) * sigma[:, None, None]  # (B, T, D)
        new["text_noise"] = torch.where(hit[:, :, None], unit, unit.new_zeros(()))
    return x_new


def _apply_level(
    x: torch.Tensor, keep_in: torch.Tensor, m: str, c: _Corruption, new: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt modality ``m`` at its level(s) with its draws; return (features, keep mask)."""
    lv = _levels_tensor(c.levels[m], x.shape[0], c.device)  # (B,)
    lv_noise = lv  # the tied knob: one level for both
    if c.noise_levels is not None and m in c.noise_levels:
        lv_noise = _levels_tensor(c.noise_levels[m], x.shape[0], c.device)
    if not bool((lv > 0).any() or (lv_noise > 0).any()):
        return x, keep_in
    if m not in c.draws:
        raise InputError(f"No draws for modality '{m}' (draws hold {list(c.draws)}).")
    dr = c.draws[m]
    keep, x_new = keep_in, x
    if c.drops:
        u = _tensor(dr.u, c.device)  # (B, T)
        keep = keep_in & ~(u < lv[:, None])
        # where() with a broadcast mask is ~3x faster than masked_fill on CPU
        x_new = torch.where((keep_in & ~keep)[:, :, None], x.new_zeros(()), x)
    if c.noise:
        x_new = _add_noise(x_new, keep, lv_noise, dr.z, m, c, new)
    return x_new, keep


def _drop_text_ids(
    ids_in: Array, x: torch.Tensor, keep_in: torch.Tensor, keep: torch.Tensor, c: _Corruption
) -> torch.Tensor:
    """``text_ids`` with the steps dropped from text features ``x`` set to [UNK], sparing
    [CLS] and [SEP]."""
    unk_id, cls_id, sep_id = c.special_ids
    b, t = x.shape[:2]
    ids = _tensor(ids_in, c.device)  # (B, T)
    if ids.shape != (b, t):
        raise DataFormatError(
            f"text_ids has shape {tuple(ids.shape)} but text features have ({b}, {t}).",
            hint="Token ids must align with text steps to be dropped with them.",
        )
    special = (ids == cls_id) | (ids == sep_id)
    gone = keep_in & ~keep & ~special
    return ids.masked_fill(gone, unk_id)


def _corrupt_modality(
    batch: Mapping[str, Array], m: str, c: _Corruption
) -> dict[str, torch.Tensor]:
    """The tensors that change for modality ``m``: ``m``, ``<m>_keep`` and, for text, the ids
    (when steps are dropped) and ``text_noise`` (when asked for)."""
    x = _tensor(batch[m], c.device)  # (B, T, D)
    t = x.shape[1]
    lens = _tensor(batch[f"{m}_len"], c.device)
    valid = torch.arange(t, device=c.device)[None, :] < lens[:, None]  # (B, T)
    keep_in = valid if f"{m}_keep" not in batch else valid & _tensor(batch[f"{m}_keep"], c.device)
    new: dict[str, torch.Tensor] = {}
    keep, x_new = keep_in, x
    if m in c.drop:
        keep = torch.zeros_like(keep_in)
        x_new = torch.where(valid[:, :, None], x.new_zeros(()), x)
    elif m in c.levels:
        x_new, keep = _apply_level(x, keep_in, m, c, new)
    steps_dropped = m in c.drop or (m in c.levels and c.drops)
    if m == "text" and "text_ids" in batch and steps_dropped:
        new["text_ids"] = _drop_text_ids(batch["text_ids"], x, keep_in, keep, c)
    new[m] = x_new
    new[f"{m}_keep"] = keep
    return new


def apply_draws(
    batch: Mapping[str, Array],
    draws: Mapping[str, ModalityDraws],
    levels: Mapping[str, Any],
    *,
    axis: str = "mixed",
    noise_scale: float = 1.0,
    train_std: Mapping[str, Array] | None = None,
    drop: Sequence[str] = (),
    special_ids: tuple[int, int, int] | None = None,
    text_noise: bool = False,
    noise_levels: Mapping[str, Any] | None = None,
) -> dict[str, Array]:
    """Corrupt ``batch`` with given draws: the one place where levels become corruption.

    ``levels[m]``: a float or a (B,) per-sample level for each modality to corrupt (those
    absent are untouched unless in ``drop``). ``draws[m]`` from draw_keyed / draw_torch.
    ``train_std[m]``: (D,) per-dimension train std, needed when the axis adds noise.
    numpy in -> numpy out (computed with torch on CPU, no copies in); torch in -> torch out
    on the batch's device. Returns a new dict with ``<m>_keep`` (B, T) bool for every modality.
    ``special_ids``: (unk, cls, sep) of the tokenizer behind ``text_ids`` (default BERT's
    100, 101, 102). ``text_noise``: also return ``text_noise`` (B, T, D), the unit-free noise
    z·ℓ·noise_scale where a kept text step is hit (else 0), for a model that fine-tunes a text
    encoder on the ids and adds it to the token embeddings (models/text_front.py).
    ``noise_levels[m]``: the noise level of ``m`` when it is not ``levels[m]`` (the mixed
    axis with missing and noise levels drawn independently, :func:`sample_level_pairs`);
    ``levels[m]`` then sets the missing rate only.
    """
    drops, noise = _needs(check_choice(axis, AXES, "axis"))
    mods = batch_modalities(batch, levels, drop)
    as_numpy = not isinstance(batch[mods[0]], torch.Tensor) if mods else False
    device = torch.device("cpu") if as_numpy else batch[mods[0]].device
    ids = special_ids if special_ids is not None else (UNK_ID, CLS_ID, SEP_ID)
    c = _Corruption(
        draws,
        levels,
        drop,
        drops,
        noise,
        noise_scale,
        train_std,
        ids,
        text_noise,
        device,
        noise_levels,
    )
    out: dict[str, Array] = dict(batch)
    for m in mods:
        for key, value in _corrupt_modality(batch, m, c).items():
            out[key] = value.cpu().numpy() if as_numpy else value
    return out


def apply_spec(
    batch: Mapping[str, Array],
    spec: CorruptionSpec,
    *,
    split: str,
    train_std: Mapping[str, Array] | None = None,
    chain: int = 0,
    special_ids: tuple[int, int, int] | None = None,
    text_noise: bool = False,
) -> dict[str, Array]:
    """Corrupt a batch at the fixed spectrum point ``spec`` with keyed draws.

    The result depends only on the rows' data, ``spec``, ``split`` and ``batch['index']``:
    identical for numpy and torch batches, on CPU or CUDA, in any batching.
    ``special_ids`` and ``text_noise`` as in :func:`apply_draws`.
    """
    available = [m for m in MODALITIES if m in batch and f"{m}_len" in batch]
    targets = [m for m in spec.resolve(available) if spec.level > 0]
    draws = draw_keyed(
        batch,
        targets,
        seed=spec.seed,
        split=split,
        axis=spec.axis,
        chain=chain,
        patterns=spec.patterns,
    )
    return apply_draws(
        batch,
        draws,
        {m: spec.level for m in targets},
        axis=spec.axis,
        noise_scale=spec.noise_scale,
        train_std=train_std,
        drop=spec.drop,
        special_ids=special_ids,
        text_noise=text_noise,
    )


def _clean_mask(
    batch_size: int,
    clean_fraction: float,
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, float, float]:
    """The arguments of the training level samplers checked, and the (B,) mask of the samples
    left clean (the first draw of the stream)."""
    clean_fraction = check_level(clean_fraction, "clean_fraction")
    low, high = check_level(low, "low"), check_level(high, "high")
    if low > high:
        raise InputError(f"The 'low' level ({low:g}) must not exceed 'high' ({high:g}).")
    if batch_size < 1:
        raise InputError(f"The 'batch_size' parameter must be >= 1. Got {batch_size}.")
    dev = (
        torch.device(device)
        if device is not None
        else (generator.device if generator is not None else torch.device("cpu"))
    )
    return torch.rand(batch_size, generator=generator, device=dev) < clean_fraction, low, high


def sample_levels(
    batch_size: int,
    modalities: Sequence[str] = MODALITIES,
    *,
    clean_fraction: float = 0.5,
    low: float = 0.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Training-time levels: ``{m: (B,) float32}``, ℓ ~ U(low, high) per sample and modality.

    A fraction ``clean_fraction`` of SAMPLES (all their modalities) is left clean (ℓ = 0), as
    LNLN keeps half of each batch clean; call it for every batch so levels are re-drawn every
    epoch. ``low == high`` gives every other sample that one level (a specialist's training).
    ``device`` defaults to the generator's device (CPU without one).
    """
    clean, low, high = _clean_mask(batch_size, clean_fraction, low, high, generator, device)
    out: dict[str, torch.Tensor] = {}
    for m in _as_names(modalities, "modalities"):
        lv = torch.rand(batch_size, generator=generator, device=clean.device)
        if (low, high) != (0.0, 1.0):  # the default draws stay bit-identical to U(0, 1)
            lv = low + (high - low) * lv
        out[m] = lv.masked_fill(clean, 0.0)
    return out


def sample_level_pairs(
    batch_size: int,
    modalities: Sequence[str] = MODALITIES,
    *,
    clean_fraction: float = 0.5,
    low: float = 0.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Training levels with the missing rate η and the noise level λ drawn INDEPENDENTLY
    (the paper's η ~ U(0, 1), λ ~ U(0, 1)): ``({m: η (B,)}, {m: λ (B,)})``.

    The same clean share as :func:`sample_levels` (a clean sample is clean on both); the
    stream is the clean mask, then per modality η and λ, so a generator seeded alike gives
    the same levels bit for bit. ``low``/``high`` bound both.
    """
    clean, low, high = _clean_mask(batch_size, clean_fraction, low, high, generator, device)
    missing: dict[str, torch.Tensor] = {}
    noise: dict[str, torch.Tensor] = {}
    for m in _as_names(modalities, "modalities"):
        for out in (missing, noise):
            u = torch.rand(batch_size, generator=generator, device=clean.device)
            lv = low + (high - low) * u
            out[m] = lv.masked_fill(clean, 0.0)
    return missing, noise


def corrupt_batch(
    batch: Mapping[str, torch.Tensor],
    levels: Mapping[str, Any],
    *,
    train_std: Mapping[str, Array] | None = None,
    axis: str = "mixed",
    noise_scale: float = 1.0,
    drop: Sequence[str] = (),
    generator: torch.Generator | None = None,
    patterns: PatternMix = PatternMix(),
    special_ids: tuple[int, int, int] | None = None,
    text_noise: bool = False,
    noise_levels: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """On-the-fly corruption for training: per-sample levels, fresh torch draws.

    ``levels`` as from :func:`sample_levels` (or floats); ``train_std[m]`` (D,) tensors/arrays;
    ``patterns`` the shares of samples drawn with burst / correlated patterns
    (:meth:`PatternMix.from_config` reads them from a TrainConfig); ``special_ids`` and
    ``text_noise`` and ``noise_levels`` as in :func:`apply_draws`.
    """
    draws = draw_torch(batch, list(levels), axis=axis, generator=generator, patterns=patterns)
    return apply_draws(
        batch, draws, levels, axis=axis, noise_scale=noise_scale, train_std=train_std, drop=drop,
        special_ids=special_ids, text_noise=text_noise, noise_levels=noise_levels,
    )  # fmt: skip
