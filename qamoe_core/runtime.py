"""Process policy, kept out of domain code: torch's thread count and handing memory back.

The CLI applies these around the work it starts (`qamoe corrupt` today); library functions
such as :func:`qamoe_core.corrupt.corrupt_file` never change process-wide settings themselves,
so a caller embedding qamoe keeps control of its own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

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
