"""Input files: refuse, before opening, anything but a regular file.

Opening a named pipe (FIFO) for reading blocks until some other process writes to it, which
may be never; a character device (``/dev/zero``, ``/dev/urandom``) never ends. A command
handed one of these must say so at once, in one line, rather than hang. :func:`check_file`
looks with ``stat`` (which never blocks); :func:`open_regular` also closes the gap between
that look and the open (the path swapped for a pipe meanwhile) by opening without blocking
and checking what was opened (where ``O_NONBLOCK`` exists: Windows has no FIFOs at file paths,
so there the check by ``stat`` is the whole of it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from qamoe_core.base.errors import InputError, QamoeError

__all__ = ["check_file", "check_present", "file_kind", "open_regular", "problem"]

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # 0 on Windows
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _mode(p: Path) -> int | None:
    """st_mode, links followed; None when nothing is there (OSError for other failures)."""
    try:
        return p.stat().st_mode
    except FileNotFoundError:
        return None


def _message(p: Path, mode: int | None, what: str) -> str:
    if mode is None:
        return f"The {what} '{p}' does not exist."
    kind = file_kind(mode)
    return f"The {what} '{p}' is {kind}, not a regular file; qamoe reads regular files only."


def problem(path: str | os.PathLike[str]) -> str | None:
    """None for a regular file, else a few words: "file not found", "a named pipe (FIFO),
    not a regular file", ... (for messages that list several inputs)."""
    try:
        mode = _mode(Path(path))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if mode is None:
        return "file not found"
    return None if stat.S_ISREG(mode) else f"{file_kind(mode)}, not a regular file"


def check_file(
    path: str | os.PathLike[str],
    what: str = "file",
    hint: str | None = None,
    error: type[QamoeError] = InputError,
) -> Path:
    """``path`` as a Path if it is a regular file (links followed); otherwise ``error`` (an
    InputError by default) saying that it is missing, a directory, or a pipe/socket/device.
    ``what`` names the input in the message ("config file", "results file")."""
    p = Path(path)
    try:
        mode = _mode(p)
    except OSError as exc:  # a loop of links, a name too long, no permission on a folder
        raise error(
            f"The {what} '{p}' cannot be read ({exc.strerror or exc}).", hint=hint
        ) from None
    if mode is None or not stat.S_ISREG(mode):
        default = "Check the path." if mode is None else "Give the path of the file itself."
        raise error(_message(p, mode, what), hint=hint or default)
    return p


def check_present(
    paths: Iterable[str | os.PathLike[str]],
    what: str = "file",
    hint: str | None = None,
    error: type[QamoeError] = InputError,
) -> None:
    """:func:`check_file` on each of ``paths`` that exists (the caller names missing ones)."""
    for path in paths:
        if os.path.lexists(path):
            check_file(path, what, hint, error)


def open_regular(
    path: str | os.PathLike[str],
    what: str = "file",
    hint: str | None = None,
    error: type[QamoeError] = InputError,
) -> IO[bytes]:
    """Open a regular file for binary reading, refusing anything else without blocking."""
    p = check_file(path, what, hint, error)
    try:
        fd = os.open(p, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | _BINARY)
    except OSError as exc:
        raise error(
            f"The {what} '{p}' cannot be read ({exc.strerror or exc}).", hint=hint
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced after the check above
            raise error(_message(p, mode, what), hint=hint or "Give the path of the file itself.")
        if _NONBLOCK:
            os.set_blocking(fd, True)  # reads of the regular file from here on as usual
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
