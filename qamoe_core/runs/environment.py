"""What a run was made with: the versions, the device, the platform and the git commit of the
qamoe source, recorded in every run's config.json and metrics.json (``environment``).

Flat (one level of keys), so that tools comparing two runs can set it aside as a whole
(scripts/compare_outputs.py). The git commit is read only where qamoe runs from a checkout
(a ``.git`` beside the ``qamoe_core`` folder): an installed copy has none, and a missing
``git`` program, a timeout or any git error gives ``None``, never a failure.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

from qamoe_core.version import __version__

GIT_TIMEOUT_S = 10.0


def source_root() -> Path:
    """The folder that holds the ``qamoe_core`` package (a checkout's root, or site-packages)."""
    return Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS``'s output, or None when git is absent or fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def git_state(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the qamoe source, or (None, None) outside a checkout or without git.
    ``dirty``: tracked files differ from the commit. Read once per process."""
    root = source_root() if root is None else root
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def environment(device: object = None) -> dict[str, Any]:
    """The ``environment`` record of a run (JSON-able, flat)."""
    import numpy as np
    import torch

    commit, dirty = git_state()
    dev = str(device) if device is not None else None
    cuda_name = None
    if dev is not None and dev.startswith("cuda") and torch.cuda.is_available():
        cuda_name = torch.cuda.get_device_name(torch.device(dev))
    return {
        "qamoe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "device": dev,
        "device_name": cuda_name,
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
