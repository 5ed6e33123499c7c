"""Importers: external feature releases -> the qamoe HDF5 store (see data/README.md).

- :func:`import_mmsa`: MMSA's feature pickles (MOSI, MOSEI, SIMS; aligned and unaligned),
  loaded through a restricted unpickler that refuses code.
- :func:`import_mosilite`: the MOSI-lite CSVs (real CMU-MOSI utterance features, binary labels).
"""

from qamoe_core.data.importers.mmsa import import_mmsa
from qamoe_core.data.importers.mosilite import import_mosilite
from qamoe_core.data.importers.safe_pickle import safe_load, safe_loads

__all__ = ["import_mmsa", "import_mosilite", "safe_load", "safe_loads"]
