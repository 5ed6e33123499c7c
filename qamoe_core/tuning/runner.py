"""The Optuna study behind `qamoe tune`: trials asked, trained fold by fold, pruned, told.

Storage: Optuna's journal file ``DIR/optuna.journal`` (one JSON line per change, appended and
fsynced), owned by this process alone while it holds the folder's lock. A tuning killed at any
point resumes where it stopped: trials left RUNNING are taken up again with the settings they
had drawn, each fold whose training finished is read back from its cell (``cells/<key>/``),
and an interrupted training continues from its last epoch (``train --resume``).

Reproducibility: before each new trial the sampler is made afresh with a seed derived from
(``--seed``, trial number), so trial N draws the same settings whether or not the tuning was
interrupted before it (TPE reads everything else from the storage). With ``--jobs 1`` a
killed and resumed tuning therefore gives the same ``trials.csv`` as an uninterrupted one,
apart from the seconds. With several jobs, what TPE sees when it draws depends on which trials
finished first (the ``constant_liar`` option keeps parallel draws apart).

Folds run in order within a trial; after each fold the running mean is reported as the trial's
intermediate value (step = folds done) and the pruner may stop the trial there. With
``--folds 0`` a trial has one fold, so nothing is pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import ConfigError
from qamoe_core.config import ModelConfig, TrainConfig, to_json
from qamoe_core.tuning import executor as ex
from qamoe_core.tuning.folds import fold_path
from qamoe_core.tuning.objective import mean_se
from qamoe_core.tuning.plan import Plan
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"
STUDY_NAME = "qamoe-tune"
KEY_CHARS = 20
Notify = Callable[[str], None]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own INFO lines and 'experimental' warnings off (our lines say what happens)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(before)


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number, 28]).generate_state(1)[0])


def make_sampler(kind: str, seed: int, number: int) -> Any:
    import optuna

    s = trial_seed(seed, number)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=s)
    return optuna.samplers.TPESampler(seed=s, constant_liar=True)


def make_pruner(kind: str) -> Any:
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _repair_journal(path: Path) -> None:
    """Cut a line torn by a kill mid-write (only this process writes the journal), and drop
    a lock file left by a killed writer (the folder's own lock is held)."""
    Path(f"{path}.lock").unlink(missing_ok=True)
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        text = fh.read()
        if text and not text.endswith(b"\n"):
            fh.truncate(text.rfind(b"\n") + 1)


def open_study(out: Path, plan: Plan) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = out / JOURNAL
    _repair_journal(path)
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction=plan.objective.direction,  # type: ignore[arg-type]
        pruner=make_pruner(plan.settings.pruner),
    )


@dataclass
class TrialRun:
    """A trial in progress: its trainings (one cell per fold) and what they gave."""

    trial: Any  # optuna.trial.Trial
    keys: list[str]
    scores: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)
    inflight: bool = False

    @property
    def number(self) -> int:
        return int(self.trial.number)


def cell_key(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_CHARS]


class Tuning:
    """The loop: keep the executor busy with folds of running trials, ask new trials while
    the budget lasts, tell Optuna each result."""

    def __init__(
        self,
        out: Path,
        plan: Plan,
        study: Any,
        executor: ex.Executor,
        notify: Notify,
        on_trial_end: Callable[[], object],
    ) -> None:
        self.out, self.plan, self.study, self.executor = out, plan, study, executor
        self.notify, self.on_trial_end = notify, on_trial_end
        self.active: list[TrialRun] = []
        self.inflight: dict[str, TrialRun] = {}

    # -- trials -------------------------------------------------------------------------
    def adopt(self) -> None:
        """Take up the trials a killed tuning left RUNNING, in their order."""
        import optuna

        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in sorted(running, key=lambda t: t.number):
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            if set(frozen.params) != {p.path for p in self.plan.space.params}:
                self._fail(trial, "interrupted while its settings were being drawn")
                continue
            self.notify(f"trial {frozen.number}: resumed")
            self._begin(trial, set(frozen.intermediate_values))

    def budget_left(self) -> bool:
        return len(self.study.get_trials(deepcopy=False)) < self.plan.settings.trials

    def ask(self) -> None:
        s = self.plan.settings
        number = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = make_sampler(s.sampler, s.seed, number)
        trial = self.study.ask(self.plan.space.distributions())
        self._begin(trial, set())

    def _begin(self, trial: Any, reported: set[int]) -> None:
        try:
            keys = self._cells(trial)
        except ConfigError as exc:  # two drawn values that the config refuses together
            self._fail(trial, exc.message)
            return
        self.active.append(TrialRun(trial, keys, reported=reported))

    def configs(self, trial: Any) -> tuple[ModelConfig, TrainConfig]:
        from qamoe_core.models import complete_config

        model_d, train_d = self.plan.space.apply(
            self.plan.base_model, self.plan.base_train, trial.params
        )
        mcfg = ModelConfig.from_dict(model_d, "model")
        return complete_config(self.plan.settings.model, mcfg), TrainConfig.from_dict(train_d)

    def _cells(self, trial: Any) -> list[str]:
        """Write the cell of each fold of ``trial`` (unless it exists); their keys."""
        mcfg, tcfg = self.configs(trial)
        s, keys = self.plan.settings, []
        for k in range(1, self.plan.folds.count + 1):
            content = {
                "kind": "train",
                "qamoe": __version__,
                "data_sha256": self.plan.data_sha,
                "folds": self.plan.folds.to_dict(),
                "fold": k,
                "model": s.model,
                "model_config": mcfg.to_dict(),
                "train_config": tcfg.to_dict(),
            }
            key = cell_key(content)
            keys.append(key)
            folder = ex.cell_dir(self.out, key)
            if ex.is_done(self.out, key) is None:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_path(folder / "config.json", force=True) as tmp:
                    to_json(tmp, mcfg, tcfg, model_name=s.model)
                ex.write_json(folder / ex.CELL_FILE, self._cell_doc(key, folder, k, trial.number))
        return keys

    def _cell_doc(self, key: str, folder: Path, k: int, number: int) -> dict[str, Any]:
        s = self.plan.settings
        data, run = str(fold_path(self.out.resolve() / "folds", k)), str(folder.resolve() / ex.RUN)
        config = str(folder.resolve() / "config.json")
        return {
            "key": key,
            "kind": "train",
            "trial": number,
            "fold": k,
            "fresh": [
                "train",
                data,
                "--out",
                run,
                "--model",
                s.model,
                "--config",
                config,
                "--device",
                s.device,
                "--quiet",
            ],
            "resume": ["train", data, "--out", run, "--resume", "--device", s.device, "--quiet"],
            "call": {
                "data": data,
                "out": run,
                "model": s.model,
                "config": config,
                "device": s.device,
            },
        }

    # -- results ------------------------------------------------------------------------
    def _fail(self, trial: Any, error: str) -> None:
        import optuna

        trial.set_user_attr("error", error)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.notify(f"trial {trial.number}: failed: {error}")
        self.on_trial_end()

    def _fold_done(self, run: TrialRun, score: float, seconds: float) -> None:
        """Record a fold; report, maybe prune, or finish the trial after its last fold."""
        import optuna

        run.scores.append(score)
        run.seconds.append(seconds)
        run.trial.set_user_attr("fold_scores", list(run.scores))
        run.trial.set_user_attr("fold_seconds", list(run.seconds))
        step, mean = len(run.scores), float(np.mean(run.scores))
        if step not in run.reported:
            run.trial.report(mean, step)
            run.reported.add(step)
        self.active.remove(run)
        if step < len(run.keys):
            if not run.trial.should_prune():
                self.active.append(run)
                return
            self.study.tell(run.trial, state=optuna.trial.TrialState.PRUNED)
            self.notify(f"trial {run.number}: pruned after {step} fold(s) ({mean:.4g})")
        else:
            mean, se = mean_se(run.scores)
            run.trial.set_user_attr("se", se)
            self.study.tell(run.trial, mean)
            spread = "" if math.isnan(se) else f" ± {se:.2g}"
            self.notify(f"trial {run.number}: {mean:.4g}{spread}  {_params(run.trial.params)}")
        self.on_trial_end()

    def _read(self, run: TrialRun, key: str) -> None:
        """A finished cell of ``run``: its score from the run's metrics.json."""
        done = ex.is_done(self.out, key) or {}
        metrics = ex.read_json(ex.cell_dir(self.out, key) / ex.RUN / "metrics.json") or {}
        score = self.plan.objective.score(metrics)
        if not math.isfinite(score):
            self.active.remove(run)
            self._fail(
                run.trial, f"fold {len(run.scores) + 1} gave no finite {self.plan.objective.metric}"
            )
            return
        self._fold_done(run, score, float(done.get("seconds", 0.0)))

    def on_outcome(self, outcome: ex.Outcome) -> None:
        run = self.inflight.pop(outcome.key)
        run.inflight = False
        if outcome.ok:
            self._read(run, outcome.key)
        else:
            self.active.remove(run)
            self._fail(run.trial, f"fold {len(run.scores) + 1}: {outcome.error}")

    # -- the loop -----------------------------------------------------------------------
    def _feed(self) -> bool:
        """Start the next fold of each waiting trial (reading back finished ones); ask a new
        trial when a slot is free. Returns whether anything moved."""
        for run in list(self.active):
            while run in self.active and not run.inflight and len(run.scores) < len(run.keys):
                key = run.keys[len(run.scores)]
                if ex.is_done(self.out, key) is not None:
                    self._read(run, key)
                    continue
                if key in self.inflight:  # another trial drew the same setting: wait for it
                    break
                if self.executor.free() <= 0:
                    return False
                self.executor.start(key)
                run.inflight, self.inflight[key] = True, run
        if self.executor.free() > 0 and self.budget_left():
            self.ask()
            return True
        return False

    def run(self) -> None:
        self.adopt()
        try:
            while True:
                while self._feed():
                    pass
                if not self.inflight:
                    if not self.active and not self.budget_left():
                        return
                    continue
                for outcome in self.executor.wait(0.5):
                    self.on_outcome(outcome)
        finally:
            self.executor.stop()


def _params(params: dict[str, Any]) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items())
    )
