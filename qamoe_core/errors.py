"""Typed errors. The CLI turns each into ``error: <message>`` plus ``hint: <hint>``.

Core code raises these for anything a user can cause (bad files, bad parameters,
damaged checkpoints); plain exceptions are reserved for programming errors.
"""

from __future__ import annotations

import math
from typing import Any


class QamoeError(Exception):
    """Base class: a one-line message and an optional one-line hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InputError(QamoeError):
    """A parameter or path given by the user is not acceptable."""


class DataFormatError(QamoeError):
    """A data file does not follow the expected schema (names the file and key)."""


class ConfigError(QamoeError):
    """A configuration file or field is unknown or out of range."""


class CheckpointError(QamoeError):
    """A checkpoint directory is missing a file, damaged, or incompatible."""


class TrainingError(QamoeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class NoSpaceError(InputError):
    """An output could not be written for lack of room (disk full, quota, file-size limit)."""


class OutputExistsError(InputError):
    """An output exists and ``force`` was not given."""

    def __init__(self, path: Any) -> None:
        super().__init__(
            f"The output '{path}' already exists.",
            hint="Choose another path, or pass --force to replace it.",
        )


def check_level(value: Any, name: str = "level") -> float:
    """Return ``value`` as a float in [0, 1] or raise an sklearn-style InputError."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"The '{name}' parameter must be a float in [0, 1]. Got {value!r} instead.",
            hint="0 is clean, 1 removes the modality entirely.",
        ) from None
    if not math.isfinite(level) or not 0.0 <= level <= 1.0:
        raise InputError(
            f"The '{name}' parameter must be a float in [0, 1]. Got {value!r} instead.",
            hint="0 is clean, 1 removes the modality entirely.",
        )
    return level


def check_choice(value: Any, choices: tuple[str, ...] | list[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices`` or raise an InputError naming them."""
    if value not in choices:
        raise InputError(
            f"The '{name}' parameter must be one of {', '.join(map(str, choices))}. "
            f"Got {value!r} instead.",
            hint="Names are case-sensitive; the command's --help lists them.",
        )
    return str(value)
