"""qamoe_core: the library behind the ``qamoe`` command (no UI code here).

QA-MoE (Quality-Aware Mixture of Experts over a Continuous Reliability Spectrum,
Zhu et al., ACL 2026) and the tooling around it: an HDF5 feature store, importers,
a corruption engine, training, evaluation sweeps and reports.
"""

__version__ = "0.1.0"

from qamoe_core.names import MODALITIES, SPLITS

__all__ = ["MODALITIES", "SPLITS", "__version__"]
