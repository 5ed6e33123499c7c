"""The corruption record: the one owner of what `qamoe corrupt` writes about each pass and of
what a reader makes of it (data/README.md lists every field).

A corrupted feature file's root attribute ``corruption`` (:data:`ATTR`) holds a JSON list of
records, one per pass, oldest first: the chain. A record is the pass's
:class:`~qamoe_core.spectrum.engine.CorruptionSpec` fields plus :data:`EXTRA_KEYS`. Here:

- :func:`make`: a pass's record, as ``spectrum.files`` writes it;
- :func:`read_chain`: the attribute parsed and type-checked, as ``FeatureFile.corruption``
  returns it (a hostile file is refused on read, before anyone interprets it);
- :func:`spec_of`, :func:`recorded_point`, :func:`check_text_noise`: what a record means to
  ``qamoe eval`` (the point a split stands for, and what it cannot describe).

No torch at import: the store reads records, and it does not import torch. The spectrum engine
(which does) is imported only where a record becomes a spec.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from qamoe_core.base import jsontext
from qamoe_core.base.errors import DataFormatError, InputError, QamoeError
from qamoe_core.base.names import AXES, MODALITIES, SPLITS
from qamoe_core.version import __version__

if TYPE_CHECKING:
    from qamoe_core.spectrum.engine import CorruptionSpec

ATTR = "corruption"
# Keys of a record that are not CorruptionSpec fields: the nominal amounts, what was
# corrupted, and where the pass came from.
EXTRA_KEYS: tuple[str, ...] = (
    "missing_rate", "noise_std", "splits", "source_sha256", "chain_index", "created_by",
)  # fmt: skip
# Keys whose values must be numbers, and lists of names, in any record a reader accepts.
_NUMBERS = ("level", "noise_scale", "seed", "burst_mean", "noise_rho", "chain_index")
_NAME_LISTS = ("modalities", "drop", "splits")
_REWRITE = "It is written by `qamoe corrupt`; re-create the corrupted copy"


def make(
    spec: CorruptionSpec,
    modalities: Sequence[str],
    splits: Sequence[str],
    source_sha256: str,
    chain_index: int,
) -> dict[str, Any]:
    """The record of one pass at ``spec`` over ``splits`` of the file hashed ``source_sha256``;
    ``modalities``: those that received the level (resolved against the file)."""
    return {
        **spec.to_dict(),
        "modalities": list(modalities),
        "missing_rate": spec.missing_rate,
        "noise_std": spec.noise_std,
        "splits": list(splits),
        "source_sha256": source_sha256,
        "chain_index": chain_index,
        "created_by": f"qamoe {__version__}",
    }


def read_chain(raw: Any, where: str) -> list[dict[str, Any]]:
    """The chain stored in the attribute value ``raw`` (None: a clean file, []).

    Raises DataFormatError naming ``where`` (the file) when it is not a JSON list of records,
    or a record's numbers are not numbers or its name lists not lists of names.
    """
    if raw is None:
        return []
    try:
        chain = jsontext.loads(raw)
    except (TypeError, ValueError):
        chain = None
    if not isinstance(chain, list) or not all(isinstance(r, dict) for r in chain):
        raise DataFormatError(
            f"{where}: the '{ATTR}' attribute is not a JSON list of records.",
            hint=f"{_REWRITE}.",
        )
    for k, record in enumerate(chain):
        _check_types(record, k, where)
    return chain


def _check_types(record: Mapping[str, Any], k: int, where: str) -> None:
    """One-line errors for a record whose numbers or name lists are malformed."""
    for key in _NUMBERS:
        value = record.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataFormatError(
                f"{where}: corruption record {k} has a non-numeric '{key}' ({value!r}).",
                hint=f"{_REWRITE}.",
            )
    for key in _NAME_LISTS:
        value = record.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise DataFormatError(
                f"{where}: corruption record {k} has '{key}' = {value!r}, not a list of names.",
                hint=f"{_REWRITE}.",
            )


def spec_of(record: Mapping[str, Any]) -> CorruptionSpec:
    """The CorruptionSpec a record was written from; unknown keys are a ConfigError.

    Records written before the temporal patterns lack their fields and get the defaults,
    which are what those versions drew.
    """
    from qamoe_core.spectrum.engine import CorruptionSpec  # torch: only when interpreting

    return CorruptionSpec.from_dict({k: v for k, v in record.items() if k not in EXTRA_KEYS})


def _bad(where: str, key: str, value: Any, expected: str) -> DataFormatError:
    return DataFormatError(
        f"{where}: the corruption record's '{key}' is {value!r}, not {expected}.",
        hint="It is written by `qamoe corrupt`; re-create the corrupted copy from the clean file.",
    )


def _fields(rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The fields a reader interprets, each checked and given its default."""

    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = rec.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise _bad(where, key, v, f"a number in [{lo:g}, {hi:g}]")
        return float(v)

    def names(key: str, allowed: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
        v = rec.get(key, default)
        if (
            not isinstance(v, list | tuple)
            or not all(isinstance(x, str) for x in v)
            or any(x not in allowed for x in v)
        ):
            raise _bad(where, key, v, f"a list of names among {', '.join(allowed)}")
        return tuple(v)

    seed = rec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _bad(where, "seed", seed, "an integer >= 0")
    axis = rec.get("axis", "mixed")
    if axis not in AXES:
        raise _bad(where, "axis", axis, f"one of {', '.join(AXES)}")
    return {
        "level": number("level", 0.0, 0.0, 1.0),
        "noise_scale": number("noise_scale", 1.0, 0.0, math.inf),
        "seed": seed,
        "axis": axis,
        "modalities": names("modalities", MODALITIES, MODALITIES),
        "drop": names("drop", MODALITIES, ()),
        "splits": names("splits", SPLITS, SPLITS),
    }


def check_text_noise(chain: Sequence[Mapping[str, Any]], where: str, split: str) -> None:
    """A corrupted file's text noise lives in its text features, which a model that encodes
    the ids does not read: refused rather than scored as if it were there."""
    for raw in chain:
        rec = _fields(raw, where)
        if (
            split in rec["splits"]
            and rec["axis"] in ("noise", "mixed")
            and rec["level"] > 0
            and "text" in rec["modalities"]
        ):
            raise InputError(
                f"{where} holds noise on its text features, which this model does not read "
                "(its pretrained text encoder reads the token ids).",
                hint="Evaluate the clean file with --sweep: noise then reaches the token "
                "embeddings. Files corrupted on the missing axis work as they are.",
            )


class RecordedPoint(NamedTuple):
    """The spectrum point a split of a feature file stands for (a results row's key)."""

    axis: str  # clean | mixed | missing | noise | drop
    level: float
    modalities: tuple[str, ...]  # the corrupted ones; for drop the dropped ones
    seed: int = 0
    pattern: str = ""  # spectrum.pattern_label; '' on clean and drop


def recorded_point(
    chain: Sequence[Mapping[str, Any]],
    where: str,
    split: str,
    modalities: tuple[str, ...],
    noise_scale: float,
) -> RecordedPoint:
    """The point ``split`` of a file with corruption ``chain`` stands for, for a model of
    ``modalities`` evaluated on the spectrum of ``noise_scale``.

    Every record is checked first (a DataFormatError before any work). Only the records that
    covered ``split`` count (`qamoe corrupt --splits` copies the others unchanged). A file the
    row key cannot describe exactly is refused rather than mislabelled: a level and
    whole-modality drops in one record, or noise at a noise_scale other than this
    evaluation's (its level means another amount of noise).
    """
    pairs = [(_fields(rec, where), rec) for rec in chain]
    covering = [r for r in pairs if split in r[0]["splits"]]
    if not covering:
        return RecordedPoint("clean", 0.0, modalities)
    if len(covering) > 1:
        raise InputError(
            f"{where} was corrupted {len(covering)} times on the '{split}' split; a results "
            "row describes one corruption, so it cannot be labelled.",
            hint="Corrupt the clean file once at the point you want to evaluate.",
        )
    rec, raw = covering[0]
    drop, level, axis = rec["drop"], rec["level"], rec["axis"]
    if drop and level == 0.0:
        return RecordedPoint("drop", 1.0, tuple(m for m in modalities if m in drop))
    if drop:
        raise InputError(
            f"{where} was corrupted at level {level:g} AND had {'+'.join(drop)} dropped; "
            "a results row can record one or the other, not both.",
            hint="Corrupt with --level or with --drop (or sweep the clean file with --drop-sets).",
        )
    scale = rec["noise_scale"]
    if axis != "missing" and level > 0 and not math.isclose(scale, noise_scale):
        level = _on_this_scale(where, axis, level, scale, noise_scale)
    corrupted = tuple(m for m in rec["modalities"] if m in modalities)
    return RecordedPoint(axis, level, corrupted, rec["seed"], _pattern(raw, where))


def _pattern(rec: Mapping[str, Any], where: str) -> str:
    """The pattern label of a record (records before patterns: the defaults)."""
    try:
        return spec_of(rec).pattern
    except QamoeError as exc:
        raise DataFormatError(
            f"{where}: its corruption record does not describe a point: {exc}",
            hint="It is written by `qamoe corrupt`; re-create the corrupted copy from the "
            "clean file.",
        ) from None


def _on_this_scale(where: str, axis: str, level: float, scale: float, ours: float) -> float:
    """The level on this evaluation's noise scale of noise at ``level`` x ``scale``.

    Pure noise of level·scale train stds IS the point level·scale/ours of this spectrum;
    mixed couples the drop rate to the level, so it has no equivalent.
    """
    equivalent = level * scale / ours
    if axis != "noise" or equivalent > 1:
        raise InputError(
            f"{where} was corrupted on the {axis} axis with noise_scale {scale:g}; that "
            f"point lies off the spectrum's scale ({ours:g}), so no level names it.",
            hint="Corrupt with the default --noise-scale (on the noise axis, any scale with "
            "level x scale <= 1 is fine).",
        )
    return equivalent
