"""qamoe_core: the library behind the ``qamoe`` command (no UI code here).

QA-MoE (Quality-Aware Mixture of Experts over a Continuous Reliability Spectrum,
Zhu et al., ACL 2026) and the tooling around it: an HDF5 feature store, importers,
a corruption engine, training, evaluation sweeps and reports.
"""

from typing import Any

from qamoe_core.base.names import MODALITIES, SPLITS
from qamoe_core.version import __version__

# The public functions of qamoe_core/api.py, imported on first use: they need torch, and
# `import qamoe_core` (which the command line's --help does) must stay fast without it.
_API = (
    *("Run", "compute_metrics", "corrupt_batch", "load_results", "load_run", "predict"),
    *("read_batch", "write_report", "sweep", "train"),
)

__all__ = ["MODALITIES", "SPLITS", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from qamoe_core import api

        return getattr(api, name)
    raise AttributeError(f"module 'qamoe_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy functions too, so dir() and tab completion list them before first use."""
    return sorted({*globals(), *_API})
