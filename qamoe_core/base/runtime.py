"""Process policy, kept out of domain code: torch's thread count, handing memory back, and
the memory budget that readers compare a file's declared sizes with (:func:`memory_budget`).

The CLI applies these around the work it starts (qamoe_cli/process.py); library functions
such as :func:`qamoe_core.spectrum.files.corrupt_file` never change process-wide settings
themselves, so a caller embedding qamoe keeps control of its own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from qamoe_core.base.errors import UsageError

# Above this resident size, :func:`trim_memory` hands free heap pages back to the OS.
TRIM_ABOVE = 512 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with torch's intra-op thread count at ``n``, restored afterwards.

    `corrupt` overlaps compute with HDF5 I/O in two threads of its own; torch's intra-op threads
    on top oversubscribe small machines (on a busy 2-core box, elementwise ops on a 5 MB tensor
    took ~10 ms with 2 threads against ~1 ms with 1).
    """
    import torch  # here, so importing this module stays cheap

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return cast("Callable[[int], int] | None", getattr(libc, "malloc_trim", None))


_MALLOC_TRIM = _load_malloc_trim()


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def trim_memory(above: int = TRIM_ABOVE) -> bool:
    """Hand free heap pages back (glibc malloc_trim) once RSS passes ``above``; True if it did.

    Streaming `corrupt` allocates blocks in a worker thread and frees them in another, in sizes
    that vary between modalities; glibc's per-thread arenas and sliding mmap threshold then keep
    freed pages resident and RSS ratchets up with the file size (measured without a remedy: peak
    507 MiB for a 0.9 GB file, 573 MiB for 2.6 GB, 873 MiB for 5.4 GB). Calling this after each
    block bounds it. Not unconditionally: pages that stay mapped make the next block's
    allocations cheap (no page faults).
    """
    if _MALLOC_TRIM is None or rss_bytes() <= above:
        return False
    _MALLOC_TRIM(0)
    return True


# -- the memory budget -------------------------------------------------------------------------
BUDGET_ENV = "QAMOE_MEMORY_BUDGET"
# Without a flag or BUDGET_ENV: this share of the memory the machine has available at the
# first call (MemAvailable in /proc/meminfo), or FALLBACK_BUDGET where that is not known.
DEFAULT_SHARE = 0.5
FALLBACK_BUDGET = 4 << 30
MIN_BUDGET = 16 << 20
_BUDGET: dict[str, int | None] = {"set": None, "default": None}
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, name: str = "--memory-budget") -> int:
    """Bytes from ``8G``, ``512M``, ``1.5GiB``, ``4096K`` or a plain number of bytes (binary
    units); a UsageError naming ``name`` for anything else or below MIN_BUDGET."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    value = float(m.group(1)) * _UNITS[m.group(2).lower()] if m else math.nan
    if not (math.isfinite(value) and MIN_BUDGET <= value < 1 << 62):
        raise UsageError(
            f"The '{name}' value must be a size of at least {format_size(MIN_BUDGET)} such as "
            f"8G or 512M. Got {text!r} instead.",
            hint="Units are binary: K, M, G, T (KiB, MiB, GiB, TiB); a bare number is bytes.",
        )
    return int(value)


def format_size(n: float) -> str:
    """``n`` bytes for a message: ``512 MiB``, ``7.2 GiB``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def set_memory_budget(value: int | str | None) -> None:
    """Set the budget for this process (the CLI's ``--memory-budget``); None: back to the
    environment variable or the default."""
    _BUDGET["set"] = None if value is None else parse_size(str(value))


def memory_budget() -> int:
    """Bytes a command may hold for the data it reads: ``--memory-budget`` (set_memory_budget),
    else $QAMOE_MEMORY_BUDGET, else DEFAULT_SHARE of the available memory (measured once)."""
    chosen = _BUDGET["set"]
    if chosen is not None:
        return chosen
    env = os.environ.get(BUDGET_ENV, "").strip()
    if env:
        return parse_size(env, BUDGET_ENV)
    default = _BUDGET["default"]
    if default is None:
        available = _available_memory()
        share = int(available * DEFAULT_SHARE) if available else FALLBACK_BUDGET
        default = _BUDGET["default"] = max(MIN_BUDGET, share)
    return default
