"""`qamoe study`: a whole comparison (datasets × arms × model seeds × protocols) in one
resumable command (docs/study.md).

- :mod:`~qamoe_core.study.spec` reads and validates the study file (TOML);
- :mod:`~qamoe_core.study.cells` keys every training and sweep by its content and runs one;
- :mod:`~qamoe_core.study.executors` runs cells on this machine or through SLURM;
- :mod:`~qamoe_core.study.runner` plans, resumes, schedules and collects a study;
- :mod:`~qamoe_core.study.table` writes the paper table.
"""
