"""`qamoe tune`: every model tuned the same way, selected on grouped cross-validation over
train+valid, never on test (docs/tuning.md).

Modules: ``space`` (the search space file and its checks), ``defaults`` (each built-in model's
default space and its sources), ``probe`` (which config fields a model reads), ``folds`` (the
grouped folds and their files; the only reader of the data), ``objective`` (the validation
criterion), ``executor`` (where trainings run; the study's executors fit the same cells),
``plan`` (the request resolved, the folder, resuming), ``runner`` (the Optuna loop),
``outputs`` and ``report`` (trials.csv, best.json, report.md), ``api``
(``qamoe_core.tuning.api.tune`` and ``run_tuning``). Importing this package imports none of
them (torch and Optuna load only when a tuning runs).
"""
