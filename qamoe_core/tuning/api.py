"""`qamoe tune` as functions: :func:`run_tuning` (settings in, result out; what a study's tuned
arm runs, qamoe_core/study/tunearm.py) and :func:`tune` (the path of best.json)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qamoe_core.data.store import FeatureFile
from qamoe_core.tuning import executor as ex
from qamoe_core.tuning import folds, outputs, plan, report, runner


@dataclass(frozen=True)
class TuneResult:
    out: Path
    best_config: Path
    best_trial: int
    params: dict[str, Any]
    mean: float
    se: float
    folds: int
    within_se: int | None
    finished: int
    trials: int
    line: str
    # wall seconds of each stage in this process: plan (checks, probe, data fingerprint),
    # folds (written or found), loop (the trials), outputs (trials.csv, best.json, report)
    seconds: dict[str, float]


def _finish(out: Path, p: plan.Plan, study: Any, tuning: runner.Tuning,
            seconds: dict[str, float]) -> TuneResult:  # fmt: skip
    t0 = time.perf_counter()
    table = outputs.rows(study, p)
    outputs.write_trials(out, p, table)
    best = outputs.best_of(table, p)
    frozen = study.get_trials(deepcopy=False)[best.row.number]
    best_path = outputs.write_best(out, p, tuning.configs(frozen))
    report.write_report(out, p, study, table, best)
    seconds = {**seconds, "outputs": time.perf_counter() - t0}
    return TuneResult(out, best_path, best.row.number, best.row.params, best.mean, best.se,
                      len(best.row.scores), best.within, best.finished, len(table),
                      best.line(p), seconds)  # fmt: skip


def run_tuning(
    settings: plan.TuneSettings,
    notify: Callable[[str], None] | None = None,
    executor: ex.Executor | None = None,
    made: plan.Plan | None = None,
    progress: Callable[..., None] | None = None,
) -> TuneResult:
    """Tune ``settings.model`` on ``settings.data`` into ``settings.out`` (resuming what is
    there when it is the same tuning). ``executor``: where the trainings run (default: this
    process with ``jobs`` 1, else ``jobs`` children). ``made``: the plan of ``settings``
    when the caller made it already (a study checks every tuning before it runs any).
    ``progress(n, total=None)``: called with ``n=0`` and the trials left to end once they are
    known, then with ``n=1`` as each trial ends (finished, pruned or failed)."""
    say = notify or (lambda line: None)
    advance = progress or (lambda n, total=None: None)
    t0 = time.perf_counter()
    p = made if made is not None and made.settings == settings else plan.make_plan(settings)
    out = Path(settings.out)
    seconds = {"plan": time.perf_counter() - t0}
    with plan.tune_folder(out), runner.quiet_optuna():
        plan.check_manifest(out, p.manifest)
        t0 = time.perf_counter()
        with FeatureFile(settings.data) as f:
            tag = runner.cell_key(p.manifest)
            folds.write_folds(folds.TrainValid(f), p.folds, out / "folds", tag)
        seconds["folds"] = time.perf_counter() - t0
        study = runner.open_study(out, p)
        done = len(study.get_trials(deepcopy=False))
        if done:
            say(f"resuming: {done} trial(s) recorded in '{out}'")
        ended = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        advance(0, total=max(0, settings.trials - ended))

        def trial_ended() -> None:
            outputs.write_trials(out, p, outputs.rows(study, p))
            advance(1)

        tuning = runner.Tuning(
            out,
            p,
            study,
            executor or ex.make_executor(out, settings.jobs),
            say,
            trial_ended,
        )
        t0 = time.perf_counter()
        tuning.run()
        seconds["loop"] = time.perf_counter() - t0
        return _finish(out, p, study, tuning, seconds)


def tune(
    data: str | os.PathLike[str],
    model: str,
    space: str | os.PathLike[str] | None,
    trials: int,
    out: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Tune ``model`` on ``data`` with ``trials`` trials over ``space`` (None: the model's
    default) into ``out``; returns the path of ``best.json``. ``options``: any other field
    of :class:`plan.TuneSettings` (folds, group_regex, metric, levels, sampler, pruner, seed,
    jobs, config, device)."""
    settings = plan.TuneSettings(
        Path(data), Path(out), model, None if space is None else Path(space), trials
    )
    settings = replace(settings, **options)
    return run_tuning(settings).best_config
