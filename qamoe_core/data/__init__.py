"""Stage 1, data: the HDF5 feature store and its torch side, importers, raw media, the synthetic
generator and the audit.
"""
