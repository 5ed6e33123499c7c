"""Atomic outputs: write to a temporary sibling, rename over the target only on success.

A crash, Ctrl-C or a full disk therefore never leaves a half-written file under the
final name, and an existing output is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qamoe_core.errors import InputError, OutputExistsError


def check_output(path: str | os.PathLike[str], force: bool) -> Path:
    """Validate an output path: its folder must exist and it must not exist unless ``force``."""
    out = Path(path)
    if out.exists() and not force:
        raise OutputExistsError(out)
    if out.is_dir():
        raise InputError(
            f"The output '{out}' is a directory.", hint="Give a file path, e.g. data.h5."
        )
    if not out.parent.exists():
        raise InputError(
            f"The folder '{out.parent}' of the output does not exist.",
            hint=f"Create it first: mkdir -p {out.parent}",
        )
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary lives in the same folder so that the final ``os.replace`` is a rename on
    one file system. On any exception (including KeyboardInterrupt) it is removed.
    """
    out = check_output(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        if out.exists() and not force:  # created by someone else meanwhile
            raise OutputExistsError(out)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: build it under a temporary name, then rename."""
    out = Path(path)
    if out.exists() and not force:
        raise OutputExistsError(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
