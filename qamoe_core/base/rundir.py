"""The one owner of output folders: prepare, resume, replace (``--force``) and recover.

Used by ``train`` (a run folder), ``demo``, ``report`` and ``export``; each kind has its own
marker (``config.json``, ``.qamoe-demo``, ``.qamoe-report``, ``.qamoe-export``) that says
"qamoe made this folder".

Invariant: at every instant, either the old output or the new one is complete under the
final name, and nothing qamoe did not create is ever deleted. How:

- A new output is built in a temporary sibling ``.NAME.qamoe-PID-RAND.tmp`` that holds a
  stage marker (``.qamoe-stage``) while it is unfinished. "Complete" is the kind's own
  commit point: the end of a report or a demo, the first checkpoint of a training run
  (from then on the folder is a resumable run, and training continues in place).
- At the commit the stage marker goes (the temporary is complete), then the temporary and
  the old output trade names in ONE atomic step
  (``renameat2(RENAME_EXCHANGE)``, Linux ≥ 3.15 on ext4, xfs, btrfs, tmpfs). Entries of
  the old folder that are not the kind's own (a user's notes, an input CSV kept there) are
  then moved into the new folder, and what is left of the old one (only qamoe's files) goes.
  Where the system cannot exchange (macOS, Windows, other file systems), two renames are
  used and the instant between them is the one exception; a command that finds it later
  (old folder aside, final name empty) puts the old output back.
- An advisory lock (``filelock`` on ``.NAME.qamoe-lock`` beside the output: ``flock`` on
  Unix, a byte-range lock on Windows; removed on release) makes a second command on the same
  output fail at once instead of racing.
- Temporaries carry their creator's pid: with the lock held, a later command on the same
  output sweeps those whose process is gone (or older than a day), and logs what it did.

Nothing here needs a Unix-only module: the exchange is looked up at call time and is absent
off Linux, the lock is ``filelock``'s, and a pid's liveness has a Windows path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from qamoe_core.base.errors import InputError, OutputExistsError, no_space

log = logging.getLogger(__name__)

STAGE = ".qamoe-stage"  # inside an unfinished new output: "this is not the old one"
LOCK_SUFFIX = ".qamoe-lock"
MAX_AGE_S = 24 * 3600  # a temporary this old is stale even if its pid was reused
_TEMP = re.compile(r"\.qamoe-(?P<pid>\d+)-[0-9a-z_]+\.(?P<kind>tmp|old)$")


class OutputBusyError(InputError):
    """Another qamoe command holds the output's lock."""


def short_name(name: str, limit: int = 200) -> str:
    """``name`` cut to at most ``limit`` bytes of UTF-8 (whole characters), for temporaries
    named after an output: the suffixes they add must still fit in NAME_MAX (255 bytes)."""
    return name.encode("utf-8", "surrogateescape")[:limit].decode("utf-8", "ignore")


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh temporary name beside ``target`` that :func:`sweep` recognises."""
    tag = f"qamoe-{os.getpid()}-{secrets.token_hex(4)}"
    return target.parent / f".{short_name(target.name)}.{tag}.{kind}"


def _unwritable(folder: Path, exc: OSError) -> InputError:
    full = no_space(exc, folder)
    if full is not None:
        return full
    return InputError(
        f"Cannot create a file in '{folder}': {exc.strerror or exc}.",
        hint="Check the folder's permissions (or a read-only disk), or choose another --out.",
    )


# --- locks --------------------------------------------------------------------------------


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of ``target``: ``.NAME.qamoe-lock`` beside it."""
    out = Path(target)
    return out.parent / f".{short_name(out.name)}{LOCK_SUFFIX}"


@contextlib.contextmanager
def locked(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the advisory lock of ``target`` (whose folder must exist), or fail at once.

    One try (``timeout=0``): a busy output is an error now, never a wait. The lock file is
    removed while still held; filelock (>= 3.20.4) discards a lock it won on a file removed
    meanwhile, so a command that opened the old file never shares the lock with one that
    made a new file (it reports the output busy instead).
    """
    out = Path(target)
    path = lock_path(out)
    lock = filelock.FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise OutputBusyError(
            f"Another qamoe command is writing '{out}' right now.",
            hint="Wait for it to finish, or choose another --out.",
        ) from None
    except OSError as exc:
        raise _unwritable(out.parent, exc) from None
    try:
        yield
    finally:
        try:
            with contextlib.suppress(OSError):  # Windows: filelock removes it on release
                path.unlink()
        finally:
            lock.release()


# --- temporaries ----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    if os.name == "nt":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)  # signal 0: only asks (on Windows os.kill would end the process)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _alive_windows(
    pid: int, kernel32: Any = None, last_error: Callable[[], int] | None = None
) -> bool:
    """Whether process ``pid`` runs, asked of kernel32 (the arguments: stand-ins for tests)."""
    import ctypes

    if kernel32 is None:
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        last_error = ctypes.get_last_error  # type: ignore[attr-defined]
    assert last_error is not None
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return last_error() == 5  # ERROR_ACCESS_DENIED: it exists (another user's)
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True  # unknown: keep its files
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def stale_temps(target: Path) -> list[Path]:
    """Temporaries of ``target`` whose creator is gone (or that are older than a day)."""
    prefix = f".{short_name(target.name)}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        m = _TEMP.fullmatch(p.name[len(prefix) - 1 :])
        if m is None or int(m["pid"]) == os.getpid():
            continue
        try:
            old = time.time() - p.lstat().st_mtime > MAX_AGE_S
        except FileNotFoundError:
            continue
        if old or not _alive(int(m["pid"])):
            found.append(p)
    return sorted(found)


def sweep_files(target: Path) -> None:
    """Remove stale temporary FILES of ``target`` (atomic writes cut short by a kill)."""
    for p in stale_temps(target):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            log.warning("removed '%s', a temporary left by an interrupted qamoe command", p)


# --- folders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What one command's output folder is: its marker and which entries are its own."""

    name: str  # "train", "demo", "report": for messages
    marker: str  # a file whose presence means "made by this command"
    own: Callable[[str], bool]  # the entries of a finished output that the command wrote
    allow_empty: bool = False  # may --out be an existing EMPTY folder without --force
    force_over_empty: bool = False  # and with --force (no marker needed: nothing to lose)
    foreign: str = ""  # how refusals say "not this kind's folder" (default: not made by)
    # (target, force) -> None or an InputError: the kind's own wording of the refusals;
    # None uses check_target's
    check: Callable[[Path, bool], None] | None = None


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (then nothing happened).

    Linux's ``renameat2(RENAME_EXCHANGE)`` through the C library; elsewhere (macOS, Windows,
    a libc without it, a file system that refuses it) False, and the caller falls back to
    two renames (the module docstring says what that costs).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _rename_folder(new: Path, target: Path) -> None:
    """Rename the folder ``new`` to ``target``, absent or an empty folder (fails if one filled
    meanwhile). POSIX renames over an empty folder; Windows refuses, so there it goes first."""
    try:
        os.rename(new, target)
    except (FileExistsError, PermissionError):
        if not is_empty_dir(target):
            raise
        os.rmdir(target)
        os.rename(new, target)


def _carry_and_remove(old: Path, new: Path, kind: Kind) -> None:
    """Move the entries of the replaced folder that are not the kind's own into the new
    one, then remove the rest (qamoe's files only)."""
    for p in sorted(old.iterdir()):
        if p.name == STAGE:
            p.unlink()
        elif not kind.own(p.name) and not os.path.lexists(new / p.name):
            os.rename(p, new / p.name)
            log.info("kept '%s' (not written by qamoe %s) in the new output", p.name, kind.name)
    for p in sorted(old.iterdir()):
        if not kind.own(p.name):  # a name the new output also uses: keep the old folder
            log.warning("'%s' holds files qamoe did not write; left in place", old)
            return
    shutil.rmtree(old)


def recover(target: Path, kind: Kind) -> None:
    """Settle what an interrupted command left around ``target`` (call with the lock held)."""
    with contextlib.suppress(FileNotFoundError):
        if target.is_dir() and (target / STAGE).is_file():
            (target / STAGE).unlink()  # a commit cut short right after the exchange
    for p in stale_temps(target):
        if not p.is_dir() or p.is_symlink():
            p.unlink(missing_ok=True)
            log.warning("removed '%s', a temporary of an interrupted command", p)
        elif (p / STAGE).is_file() or not any(p.iterdir()):  # unfinished (or just made)
            shutil.rmtree(p)
            log.warning("removed '%s', the unfinished output of an interrupted command", p)
        elif not os.path.lexists(target):  # a commit cut short, or the fallback's instant
            os.rename(p, target)  # between two renames: the only complete output goes back
            log.warning("'%s': put in place the complete output of an interrupted command", target)
        else:
            _carry_and_remove(p, target, kind)
            log.warning("removed '%s', an output replaced by an interrupted --force", p)


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_target(target: Path, kind: Kind, force: bool) -> None:
    """Refuse, before any work, an output that may not become this kind's folder."""
    if not os.path.lexists(target):
        parent = next((p for p in target.parents if os.path.lexists(p)), None)
        if parent is not None and not parent.is_dir():  # a file, or a dangling link
            raise InputError(
                f"The output '{target}' cannot be created: '{parent}' is not a folder.",
                hint="Choose an --out folder whose parents are folders (or do not exist yet).",
            )
        return
    if not target.is_dir() or target.is_symlink():
        raise InputError(
            f"The output '{target}' is not a folder; --out takes a folder for `qamoe {kind.name}`.",
            hint="Choose a folder path that does not exist yet.",
        )
    empty = is_empty_dir(target)
    if kind.allow_empty and empty:
        return
    if not force:
        raise OutputExistsError(target)
    if not (target / kind.marker).exists() and not (kind.force_over_empty and empty):
        raise InputError(
            f"The folder '{target}' exists and "
            f"{kind.foreign or f'was not made by `qamoe {kind.name}`'}; refusing to replace it.",
            hint="Choose a new folder with --out: qamoe never deletes files it did not write.",
        )


class OutputFolder:
    """One output folder being made; a context manager that holds the output's lock.

    ``path`` is where to write now: the temporary until :meth:`commit`, then the final
    name. Leaving the block without an exception commits (if not done yet); with one, an
    uncommitted temporary is removed and the old output stays as it was.
    """

    def __init__(self, target: str | os.PathLike[str], kind: Kind, *, force: bool = False,
                 resume: bool = False) -> None:  # fmt: skip
        self.target, self.kind, self.force, self.resume = Path(target), kind, force, resume
        self.path = self.target
        self.committed = resume
        self._lock: contextlib.ExitStack | None = None

    def __enter__(self) -> OutputFolder:
        if not self.target.parent.is_dir():  # nothing to recover: check before mkdir
            self._check()
            try:
                self.target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _unwritable(self.target.parent, exc) from None
        stack = contextlib.ExitStack()
        stack.enter_context(locked(self.target))
        self._lock = stack
        try:
            recover(self.target, self.kind)
            self._check()  # again: the recovery may have changed what is there
            if not self.resume:
                self.path = temp_path(self.target)
                self.path.mkdir(0o777)
                (self.path / STAGE).write_text(f"{os.getpid()}\n")
        except OSError as exc:
            stack.close()
            raise _unwritable(self.target.parent, exc) from None
        except BaseException:
            stack.close()
            raise
        return self

    def _check(self) -> None:
        force = self.force or self.resume
        if self.kind.check is not None:
            self.kind.check(self.target, force)
        else:
            check_target(self.target, self.kind, force)

    def commit(self) -> None:
        """Make the temporary the output under the final name (the old one goes)."""
        if self.committed:
            return
        new, target = self.path, self.target
        replacing = os.path.lexists(target) and not is_empty_dir(target)
        if replacing and not (self.force and (target / self.kind.marker).exists()):
            raise OutputExistsError(target)  # appeared meanwhile: never removed
        # Complete now: without its stage marker a temporary found by recover() is either put
        # in place (nothing at the final name) or removed (the old output is still there).
        (new / STAGE).unlink()
        if not replacing:
            _rename_folder(new, target)
            self.path, self.committed = target, True
            return
        if _rename_exchange(new, target):
            old = new
        else:
            old = temp_path(target, "old")
            os.rename(target, old)
            os.rename(new, target)
        # Committed: from here on a failure leaves the old folder for recover(), which
        # carries over what is not qamoe's before removing the rest.
        self.path, self.committed = target, True
        _carry_and_remove(old, target, self.kind)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._close(commit=exc_type is None)
        except OSError as failed:  # the commit's own renames and removals
            full = self._no_space(failed)
            if full is None:
                raise
            raise full from None
        full = None if exc is None else self._no_space(exc)
        if full is not None:
            raise full from None

    def _close(self, commit: bool) -> None:
        assert self._lock is not None
        try:
            if commit:
                self.commit()
        finally:
            try:
                if not self.committed and self.path != self.target:
                    shutil.rmtree(self.path, ignore_errors=True)
            finally:
                self._lock.close()

    def _no_space(self, exc: BaseException) -> InputError | None:
        """A full disk, said once and at the right name: an uncommitted output left nothing
        behind, so it names the output; a committed one names the file that failed."""
        if not self.committed:
            return no_space(exc, self.target)
        if isinstance(exc, InputError):  # from atomic_path: names its file already
            return None
        return no_space(exc, getattr(exc, "filename", None) or self.target)
