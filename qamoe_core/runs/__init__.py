"""Run folders: the on-disk format of a trained model and `load_run`."""
