"""Where the shared data sets live, whatever the current directory (data/README.md).

The documented place is ``../shared/data`` beside the repository root (on this project's
machines: the team's shared folder). ``data_dir`` (the CLI's ``--data-dir``) or the
environment variable ``QAMOE_DATA_DIR`` names another folder; a data set is a sub-folder of
it (``mosi-lite``, ``cmu-mosi-labels``). Nothing here depends on the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from qamoe_core.base.errors import InputError

ENV = "QAMOE_DATA_DIR"
# qamoe_core/data/location.py -> the repository root is three levels up.
REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = REPO_ROOT.parent / "shared" / "data"


def data_root(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """(the data folder, where that choice came from): the argument, else $QAMOE_DATA_DIR,
    else the documented ``<repository>/../shared/data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ENV, "")
    if env:
        return Path(env).expanduser(), f"${ENV}"
    return DOCUMENTED, "the documented location <repository>/../shared/data"


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the data set ``name`` under :func:`data_root`; one InputError naming the
    path looked for (and how it was chosen) when it is not there."""
    root, source = data_root(data_dir)
    path = root / name
    if not path.is_dir():
        raise InputError(
            f"No '{name}' data folder: looked for {path} (from {source}).",
            hint=f"Pass --data-dir DIR or set {ENV}=DIR to the folder holding '{name}/', "
            "or give the data set's folder itself (data/README.md says where to get it).",
        )
    return path
