"""Optional experiment tracking of a training run: TensorBoard, MLflow, Weights & Biases.

Off unless asked for (``qamoe train --track BACKEND``, repeatable; ``--tensorboard DIR`` as
before): a run folder stays self-contained without it. Each backend gets the same things:

- params: the run's config.json (model and train configs, dataset, environment), flattened
  to ``model.d_model``, ``train.lr``, ``dataset.sha256``, ``environment.torch``, ...;
- per epoch (step = epoch): ``train/train_loss``, ``train/lr``, ``train/val_score``, ... and
  each validation level's metrics ``val/LEVEL/METRIC``;
- at the end: the selected weights' scores ``final/val/LEVEL/METRIC``, ``final/val_clean/*``,
  ``final/test_clean/*`` (for reference), and the run folder's ``config.json``,
  ``metrics.json`` and ``history.jsonl`` as artefacts (not TensorBoard: it has none).

Where each backend writes (``--track-dir DIR``, default the current folder, as MLflow's and
W&B's own defaults are): TensorBoard ``DIR/tensorboard/RUN`` (``--tensorboard DIR``: that
exact folder); MLflow a local file store ``DIR/mlruns`` unless ``--track-uri`` (any tracking
URI: ``sqlite:///mlflow.db``, ``http://host:5000``) or ``$MLFLOW_TRACKING_URI`` names another;
W&B ``DIR/wandb``, offline (``wandb sync`` uploads it later) unless ``$WANDB_MODE`` says
otherwise. The MLflow experiment and the W&B project are ``qamoe`` unless
``$MLFLOW_EXPERIMENT_NAME`` / ``$WANDB_PROJECT`` are set; the tracked run is named after the
run folder and tagged with its path. Each ``qamoe train`` (a ``--resume`` too) is one tracked
run. A backend that cannot start is an error before training; one that fails later is
dropped with a warning, and training goes on.

Each needs its package: the extras ``tensorboard``, ``mlflow`` (mlflow-skinny; a full
``mlflow`` serves too) and ``wandb``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qamoe_core.base.errors import InputError, QamoeError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "mlflow", "wandb")
PROJECT = "qamoe"  # the MLflow experiment and the W&B project, unless the environment names one
ARTEFACTS = ("config.json", "metrics.json", "history.jsonl")
_PARAM_CHARS = 500  # MLflow's smallest limit on a param value (older servers)
_PACKAGE = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass(frozen=True)
class Target:
    """One tracking destination: a backend, and where it writes: ``where`` exactly (a log
    folder, an MLflow URI), else its own folder under ``under`` (None: the current folder)."""

    backend: str
    where: str | None = None
    under: str | None = None


def targets(
    track: Iterable[str | Target] = (),
    track_dir: str | os.PathLike[str] | None = None,
    track_uri: str | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
) -> tuple[Target, ...]:
    """The destinations that ``--track``, ``--track-dir``, ``--track-uri`` and
    ``--tensorboard`` ask for, each resolved to where it writes; a UsageError otherwise."""
    asked = [t if isinstance(t, Target) else Target(str(t).strip().lower()) for t in track]
    for t in asked:
        if t.backend not in BACKENDS:
            raise UsageError(
                f"The '--track' parameter must be one of {', '.join(BACKENDS)}. "
                f"Got {t.backend!r} instead.",
                hint="Repeat --track for several backends, e.g. --track mlflow --track wandb.",
            )
    if tensorboard is not None:
        asked.append(Target("tensorboard", os.fspath(tensorboard)))
    names = [t.backend for t in asked]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(
            f"The tracking backend {twice[0]!r} is asked for twice.",
            hint="--tensorboard DIR is the same as --track tensorboard with that folder.",
        )
    if track_uri is not None and "mlflow" not in names:
        raise UsageError("--track-uri is MLflow's tracking URI: it needs --track mlflow.")
    if track_dir is not None and not any(t.where is None for t in asked):
        raise UsageError("--track-dir says where --track writes: it needs --track BACKEND.")
    if not asked:
        return ()
    base = Path(track_dir) if track_dir is not None else Path.cwd()
    return tuple(_resolve(t, base, track_uri) for t in asked)


def _resolve(t: Target, base: Path, track_uri: str | None) -> Target:
    """Where ``t`` writes, made absolute (a resolved target stays as it is)."""
    under = t.under or str(base.resolve())
    if t.backend == "mlflow":
        uri = track_uri or t.where or os.environ.get("MLFLOW_TRACKING_URI")
        return Target(t.backend, uri or (Path(under) / "mlruns").as_uri(), under)
    return Target(t.backend, t.where and str(Path(t.where).resolve()), under)


def check(asked: Iterable[Target] | str | os.PathLike[str] | None) -> None:
    """Fail before training when a backend's package is not installed."""
    for t in _as_targets(asked):
        try:
            __import__(_PACKAGE[t.backend])
        except ImportError:
            flag = "--tensorboard" if t.backend == "tensorboard" else f"--track {t.backend}"
            raise InputError(
                f"{flag} needs the '{_PACKAGE[t.backend]}' package, which is not installed.",
                hint=f"Install it with: pip install 'qamoe[{t.backend}]' (or drop {flag}).",
            ) from None


def _as_targets(asked: Iterable[Target] | str | os.PathLike[str] | None) -> tuple[Target, ...]:
    """``None`` (nothing), a folder (a TensorBoard log there, as before) or targets."""
    if asked is None:
        return ()
    if isinstance(asked, str | os.PathLike):
        return (Target("tensorboard", os.fspath(asked)),)
    return tuple(asked)


def scalars(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten nested metrics into ``prefix/a/b`` -> finite float."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(scalars(tag, value))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            flat[tag] = float(value)
    return flat


def params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a config into ``a.b.c`` -> text (lists as JSON), each value cut to fit MLflow."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(params(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:_PARAM_CHARS]
    return flat


# --- the backends ---------------------------------------------------------------------------


class _Backend:
    """What every backend does; a subclass overrides what it supports."""

    name = ""

    def config(self, config: Mapping[str, Any]) -> None: ...

    def epoch(self, step: int, values: Mapping[str, float]) -> None: ...

    def final(self, step: int, values: Mapping[str, float], files: Sequence[Path]) -> None: ...

    def close(self, failed: bool) -> None: ...


class _TensorBoard(_Backend):
    name = "TensorBoard"

    def __init__(self, folder: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder)

    def config(self, config: Mapping[str, Any]) -> None:  # a code block keeps the JSON readable
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def epoch(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def final(self, step: int, values: Mapping[str, float], files: Sequence[Path]) -> None:
        self.epoch(step, values)

    def close(self, failed: bool) -> None:
        self.writer.close()


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` says otherwise; a
    local file store is what ``--track mlflow`` means without a URI, so allow it here."""
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


class _MLflow(_Backend):
    name = "MLflow"

    def __init__(self, uri: str, run_name: str, tags: Mapping[str, str]) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        with _file_store_allowed(uri):
            self.client = MlflowClient(tracking_uri=uri)
            eid = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
            run = self.client.create_run(eid, run_name=run_name, tags=dict(tags))
            self.run_id = run.info.run_id

    def _experiment(self, name: str) -> str:
        """The experiment's id, made if new."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # made by another process meanwhile
            made = self.client.get_experiment_by_name(name)
            if made is None:
                raise
            return str(made.experiment_id)

    def config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params(config).items()]
        with _file_store_allowed(self.uri):
            for i in range(0, len(items), 100):  # log_batch takes at most 100 params
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def epoch(self, step: int, values: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        with _file_store_allowed(self.uri):
            for i in range(0, len(items), 1000):  # and at most 1000 metrics
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def final(self, step: int, values: Mapping[str, float], files: Sequence[Path]) -> None:
        self.epoch(step, values)
        with _file_store_allowed(self.uri):
            for path in files:
                self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool) -> None:
        with _file_store_allowed(self.uri):
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class _WandB(_Backend):
    name = "W&B"

    def __init__(self, folder: str, run_name: str, tags: Mapping[str, str]) -> None:
        import wandb

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.run_name = run_name
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT), name=run_name, dir=folder,
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            notes=tags.get("qamoe.run_dir"),
            settings=wandb.Settings(console="off", quiet=True),  # qamoe's own output stays
        )  # fmt: skip

    def config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def epoch(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def final(self, step: int, values: Mapping[str, float], files: Sequence[Path]) -> None:
        import wandb

        self.run.summary.update(dict(values))
        if files:
            name = re.sub(r"[^\w.-]", "-", f"run-{self.run_name}")
            artefact = wandb.Artifact(name, type="qamoe-run")
            for path in files:
                artefact.add_file(str(path))
            self.run.log_artifact(artefact)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _open(t: Target, run_dir: Path) -> _Backend:
    tags = {"qamoe.run_dir": str(run_dir.resolve())}
    under = Path(t.under) if t.under is not None else Path.cwd()
    if t.backend == "tensorboard":
        return _TensorBoard(t.where or str(under / "tensorboard" / run_dir.name))
    if t.backend == "mlflow":
        return _MLflow(t.where or (under / "mlruns").as_uri(), run_dir.name, tags)
    return _WandB(str(under), run_dir.name, tags)


class Board:
    """The tracking of one run, a context manager; ``Board(None)`` does nothing (rank > 0, or
    no tracking asked for). A folder stands for a TensorBoard log there (the old form)."""

    def __init__(self, asked: Iterable[Target] | str | os.PathLike[str] | None,
                 run_dir: str | os.PathLike[str] = "run") -> None:  # fmt: skip
        self.targets, self.run_dir = _as_targets(asked), Path(run_dir)
        self.backends: list[_Backend] = []

    def __enter__(self) -> Board:
        check(self.targets)
        try:
            for t in self.targets:
                self.backends.append(_start(t, self.run_dir))
        except BaseException:
            self.__exit__(RuntimeError, None, None)
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._each(lambda b: b.close(failed=exc_type is not None))
        self.backends = []

    def _each(self, call: Any) -> None:
        """``call(backend)`` for each; one that fails is dropped (training goes on)."""
        for backend in list(self.backends):
            try:
                call(backend)
            except Exception as exc:
                log.warning("%s tracking failed and is off for the rest of this run: %s",
                            backend.name, " ".join(str(exc).split())[:300])  # fmt: skip
                self.backends.remove(backend)

    def config(self, config: Mapping[str, Any]) -> None:
        self._each(lambda b: b.config(config))

    def epoch(self, record: Mapping[str, Any]) -> None:
        step = int(record["epoch"])
        keys = ("train_loss", "train_loss_task", "train_loss_unc", "lr", "val_score")
        values = {f"train/{k}": float(record[k]) for k in keys}
        values.update(scalars("val", record.get("val", {})))
        self._each(lambda b: b.epoch(step, values))

    def final(
        self, metrics: Mapping[str, Any], run_dir: str | os.PathLike[str] | None = None
    ) -> None:
        """The selected weights' scores; the run folder's files as artefacts."""
        step = int(metrics.get("epochs_run", 0))
        values: dict[str, float] = {}
        for part in ("val", "val_clean", "test_clean"):
            if isinstance(metrics.get(part), Mapping):
                values.update(scalars(f"final/{part}", metrics[part]))
        folder = Path(run_dir) if run_dir is not None else None
        files = [] if folder is None else [folder / n for n in ARTEFACTS if (folder / n).is_file()]
        self._each(lambda b: b.final(step, values, files))


def _start(t: Target, run_dir: Path) -> _Backend:
    """Open one backend; what stops it is one error before training."""
    try:
        return _open(t, run_dir)
    except QamoeError:
        raise
    except Exception as exc:
        where = t.where or t.under or "the current folder"
        raise InputError(
            f"{t.backend} tracking could not start at '{where}': "
            f"{' '.join(str(exc).split())[:300]}",
            hint="Check --track-dir / --track-uri and the backend's settings, or drop --track.",
        ) from None
