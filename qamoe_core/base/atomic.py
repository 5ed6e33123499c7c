"""Atomic outputs: write to a temporary sibling, rename over the target only on success.

A crash, Ctrl-C or a full disk therefore never leaves a half-written file under the
final name, and an existing output is only replaced when the caller says so.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import qamoe_core.base.rundir as rundir
from qamoe_core.base.errors import InputError, NoSpaceError, OutputExistsError, no_space
from qamoe_core.base.rundir import short_name

__all__ = ["atomic_path", "check_output", "same_file", "short_name", "write_failure"]


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (through links too), existing or not."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output(
    path: str | os.PathLike[str], force: bool, inputs: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Validate an output path before any work: its folder must exist, it must not exist
    unless ``force``, and even with ``force`` it may not be one of the ``inputs`` files nor
    anything but a regular file (a device, a pipe)."""
    out = Path(path)
    if len(os.fsencode(out.name)) > 255:  # NAME_MAX of every common file system
        raise InputError(
            f"The output's file name is too long ({len(os.fsencode(out.name))} bytes; the "
            "limit is 255).",
            hint="Choose a shorter file name.",
        )
    for src in inputs:
        if same_file(src, out):
            raise InputError(
                f"The output '{out}' is an input of this command; writing it would destroy it.",
                hint="Write the result to another path, e.g. --out data.h5.",
            )
    if out.exists() and not force:
        raise OutputExistsError(out)
    if out.is_dir():
        raise InputError(
            f"The output '{out}' is a directory.", hint="Give a file path, e.g. data.h5."
        )
    if out.exists() and not stat.S_ISREG(out.stat().st_mode):
        raise InputError(
            f"The output '{out}' is not a regular file (a device, pipe or socket); qamoe "
            "replaces outputs by renaming, which would remove it.",
            hint="Give a path for a new file.",
        )
    if not out.parent.exists():
        raise InputError(
            f"The folder '{out.parent}' of the output does not exist.",
            hint=f"Create it first: mkdir -p {out.parent}",
        )
    return out


def write_failure(exc: BaseException, out: Path) -> NoSpaceError | None:
    """A NoSpaceError for a write of ``out`` that failed for lack of room (disk full, quota,
    file-size limit), or None for any other failure (``errors.no_space``)."""
    return no_space(exc, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary lives in the same folder so that the final ``os.replace`` is a rename on
    one file system. On any exception (including KeyboardInterrupt) it is removed; one left
    by a hard kill carries its pid in its name (``rundir.temp_path``) and is swept by the
    next write of the same output. The output's lock is held throughout, so a second
    command writing the same file fails at once instead of racing this one.
    """
    out = check_output(path, force)
    with rundir.locked(out):
        rundir.sweep_files(out)
        # mkstemp's name, in the form rundir.temp_path gives (so that sweeps know it)
        prefix = rundir.temp_path(out).name.rsplit("-", 1)[0] + "-"
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=out.parent)
        except OSError as exc:
            raise write_failure(exc, out) or InputError(
                f"Cannot create a file in '{out.parent}': {exc.strerror or exc}.",
                hint="Check the folder's permissions, or write somewhere else with --out.",
            ) from None
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual ones
        try:
            yield tmp
            if out.exists() and not force:  # created by someone else meanwhile
                raise OutputExistsError(out)
            os.replace(tmp, out)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            failure = write_failure(exc, out)
            if failure is not None:
                raise failure from None
            raise
