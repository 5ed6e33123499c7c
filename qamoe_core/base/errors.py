"""Typed errors. The CLI turns each into ``error: <message>`` plus ``hint: <hint>``.

Core code raises these for anything a user can cause (bad files, bad parameters,
damaged checkpoints); plain exceptions are reserved for programming errors.

Exit statuses (the CLI funnel, qamoe_cli/main.py): a :class:`UsageError` means the request
itself is not valid (an unknown choice, a value out of range, options that contradict each
other) and exits 2, as Click's own usage errors do; every other error means a valid request
could not be carried out (a missing or damaged file, bad data, an existing output, a full
disk, a diverged training) and exits 1.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import unicodedata
from typing import Any

# Longest message or hint kept whole: past it the middle is left out (one_line).
MAX_LINE = 1000


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` as one readable line, whatever a file put into it: control, format and
    line-separator characters (and lone surrogates, h5py's decoding of bytes that are not
    UTF-8) are escaped as Python writes them (``\\n``, ``\\x1b``, ``\\u202e``), so a value quoted
    from a file can neither break an error into several lines nor send escape sequences to
    the terminal; past ``limit`` characters the middle is left out."""
    if not text.isprintable():
        text = "".join(
            c.encode("unicode_escape").decode("ascii")
            if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            else c
            for c in text
        )
    if len(text) > limit:
        head, tail = limit * 2 // 3, limit // 4
        text = f"{text[:head]} … ({len(text) - head - tail} characters left out) … {text[-tail:]}"
    return text


class QamoeError(Exception):
    """Base class: a one-line message and an optional one-line hint (made so by
    :func:`one_line`, since messages quote what files hold)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.hint = None if hint is None else one_line(hint)

    def __str__(self) -> str:
        return self.message


class InputError(QamoeError):
    """A parameter or path given by the user is not acceptable."""


class UsageError(InputError):
    """The request is not valid: a parameter value (from a flag, a function argument or a
    --config field) is not allowed, or options contradict each other. The CLI exits 2."""


class DataFormatError(QamoeError):
    """A data file does not follow the expected schema (names the file and key)."""


class ConfigError(QamoeError):
    """A configuration file or field is unknown or out of range."""


class ConfigUsageError(ConfigError, UsageError):
    """A config field is unknown, or its value (from a flag or a --config file) is out of its
    range: the request is not valid (exit 2). A config file that is missing or not JSON
    stays a plain ConfigError (exit 1)."""


class CheckpointError(QamoeError):
    """A checkpoint directory is missing a file, damaged, or incompatible."""


class TrainingError(QamoeError):
    """Training cannot go on (e.g. a non-finite loss)."""


_NO_ROOM_HINT = "Free some space (or raise the limit), or write to another disk with --out."


class NoSpaceError(InputError):
    """An output could not be written for lack of room (disk full, quota, file-size limit).

    One message wherever it happens: "No space left on device at 'PATH'; nothing was
    written." (the C library's wording for a quota or a file-size limit). ``code`` is the
    errno, ``path`` the output named (None where the writer did not say)."""

    def __init__(self, code: int, path: Any, hint: str | None = None) -> None:
        where = "" if path is None else f" at '{path}'"
        super().__init__(
            f"{os.strerror(code)}{where}; nothing was written.",
            hint=hint or _NO_ROOM_HINT,
        )
        self.code, self.path = code, path


NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def no_space(exc: BaseException, path: Any) -> NoSpaceError | None:
    """A :class:`NoSpaceError` at ``path`` when ``exc`` is a write that failed for lack of
    room, else None. h5py reports these as OSError or RuntimeError with the C library's
    ``errno = N`` in the message, so the message is read too; a NoSpaceError is re-aimed at
    ``path`` (an output built under a temporary name reports its final name)."""
    if isinstance(exc, NoSpaceError):
        return NoSpaceError(exc.code, path, exc.hint)
    if not isinstance(exc, OSError | RuntimeError):
        return None
    codes = [exc.errno] if isinstance(exc, OSError) and exc.errno else []
    codes += [int(c) for c in re.findall(r"errno = (\d+)", str(exc))]
    code = next((c for c in codes if c in NO_ROOM), None)
    return None if code is None else NoSpaceError(code, path)


class OutputExistsError(InputError):
    """An output exists and ``force`` was not given."""

    def __init__(self, path: Any) -> None:
        super().__init__(
            f"The output '{path}' already exists.",
            hint="Choose another path, or pass --force to replace it.",
        )


_LEVEL_HINT = "0 is clean, 1 removes the modality entirely."


def check_level(value: Any, name: str = "level") -> float:
    """Return ``value`` as a float in [0, 1] or raise an sklearn-style UsageError."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        level = math.nan
    if not math.isfinite(level) or not 0.0 <= level <= 1.0:
        raise UsageError(
            f"The '{name}' parameter must be a float in [0, 1]. Got {value!r} instead.",
            hint=_LEVEL_HINT,
        )
    return level


def _normalised(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def nearest_choice(value: Any, choices: tuple[str, ...] | list[str]) -> str | None:
    """The allowed value closest to ``value``: the same name up to case and ``_``/``-``
    (``late_fusion`` -> ``late-fusion``), else the nearest spelling (difflib), else None."""
    if not isinstance(value, str) or not choices:
        return None
    by_norm = {_normalised(str(c)): str(c) for c in choices}
    if _normalised(value) in by_norm:
        return by_norm[_normalised(value)]
    close = difflib.get_close_matches(_normalised(value), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def check_choice(value: Any, choices: tuple[str, ...] | list[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a UsageError naming them and,
    where one is close, suggesting it ("did you mean 'late-fusion'?")."""
    if value in choices:
        return str(value)
    guess = nearest_choice(value, choices)
    raise UsageError(
        f"The '{name}' parameter must be one of {', '.join(map(str, choices))}. "
        f"Got {value!r} instead.",
        hint=f"Did you mean '{guess}'?"
        if guess
        else "Names are case-sensitive; the command's --help lists them.",
    )


class TooLargeError(DataFormatError):
    """A file declares more than a command can hold within the memory budget
    (``runtime.memory_budget``), or more structure (group depth, objects) than qamoe walks."""
