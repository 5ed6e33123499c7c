"""Training for One-Checkpoint-for-All (docs/design.md §2, §4): the loop, and nothing else.

Every batch is corrupted on the fly at per-sample, per-modality levels drawn from the spectrum
(``spectrum.sample_levels``, a share left clean), re-drawn every batch; the model sees the
corrupted batch and, for its self-supervised uncertainty loss, the clean one. AdamW with a
linear warm-up then cosine decay. Selection uses the VALIDATION split only, corrupted at fixed
levels with a fixed seed (keyed draws), so it is deterministic; the test split is never used
to select, only reported at the end for reference.

Reproducibility and resume: all randomness of an epoch (shuffling, corruption, dropout) is
seeded from (seed, epoch), and the run's state is saved after every epoch. A run interrupted
anywhere (Ctrl-C, a crash, a kill) and resumed with ``resume=True`` restarts at the last
completed epoch and ends with the same weights as an uninterrupted run (same machine and
thread count). No RNG state is saved: the seeds of each epoch are derived again.

The run folder (fresh, ``--force`` replacement, resume, recovery after a kill) belongs to
``rundir.OutputFolder``: a new run is written under a temporary name until its first
checkpoint, which is its commit point. What a resume keeps and what must match is
``resume``; data and scoring helpers live in ``data``, the torchrun set-up in ``ddp``.
Under ``torchrun`` the same call trains with DistributedDataParallel and a
DistributedSampler; only rank 0 writes; the batch size is per process.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

import qamoe_core.base.rundir as rundir
import qamoe_core.base.runtime as runtime
import qamoe_core.runs.checkpoint as ckpt
import qamoe_core.training.ddp as ddp
import qamoe_core.training.resume as resume_policy
import qamoe_core.training.tracking as tracking
from qamoe_core.base.errors import (
    DataFormatError,
    InputError,
    NoSpaceError,
    TrainingError,
)
from qamoe_core.base.names import DEFAULT_MODEL
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.audit import train_label_problem
from qamoe_core.data.store import FeatureFile
from qamoe_core.models import ModelChoice, resolve
from qamoe_core.models.text_front import text_config
from qamoe_core.runs.environment import environment
from qamoe_core.training.data import (
    BATCH_COPIES,
    SplitData,
    better,
    check_fits,
    predict,
    score,
    validation_sets,
)
from qamoe_core.training.ddp import DistInfo, dist_info
from qamoe_core.training.step import Trainer, lr_at, make_optimizer
from qamoe_core.version import __version__

__all__ = ["DistInfo", "TrainEvent", "dist_info", "lr_at", "make_optimizer", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainEvent:
    """What the progress callback receives.

    kind: "start" (before the first epoch), "batch" (after each step), "epoch" (after
    validation and the checkpoint write), "end". ``epoch`` counts from 1; ``batch`` from 1
    within the epoch. ``loss`` is the step's (batch) or the epoch's mean (epoch) total loss;
    ``val_score`` the epoch's validation score on ``metric``.
    """

    kind: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float | None = None
    val_score: float | None = None
    best_score: float | None = None
    metric: str = ""
    seconds: float | None = None  # the epoch's wall time (epoch events)
    note: str = ""  # start of a resumed run: which text encoder folder it loads, and why


ProgressFn = Callable[[TrainEvent], None]


# --- checks before the folder is touched --------------------------------------------------------


def _check_data(f: FeatureFile) -> None:
    for split in ("train", "valid"):
        if split not in f.splits:
            raise DataFormatError(
                f"'{f.path}' has no '{split}' split (it has {', '.join(f.splits)}).",
                hint=(
                    "Training selects on a validation split and never on test: re-import the "
                    "data with a validation split (importers carve one out of train)."
                ),
            )
    if f.corruption:
        log.warning("'%s' is already corrupted; training corrupts it further", f.path)
    _check_labels(f)


def _check_labels(f: FeatureFile) -> None:
    """What `qamoe audit` refuses, training refuses too: train labels with nothing to learn
    (one sample, one value, one class). A valid or test split with a single label value is
    only warned about: MAE and accuracy are still defined there, a correlation is not."""
    problem = train_label_problem(f.h5["train"]["label"][:], f.task, "training")
    if problem is not None:
        raise DataFormatError(
            f"'{f.path}': {problem}.",
            hint=f"`qamoe audit {f.path}` shows what each split holds; re-import the data "
            "with a train split that varies.",
        )
    for split in ("valid", "test"):
        y = f.h5[split]["label"][:] if split in f.splits else np.arange(2)  # no test: fine
        if len(np.unique(y)) < 2:
            log.warning(
                "'%s' [%s]: every label is %s (%d sample(s)): the correlation is undefined "
                "there (null in metrics.json); `qamoe audit %s` shows each split",
                f.path, split, f"{y[0]:g}" if len(y) else "absent", len(y), f.path,
            )  # fmt: skip


def _select_metric(cfg: TrainConfig, scheme: str, task: str) -> str:
    if cfg.select_metric == "auto":
        return "MAE" if task == "regression" else "Acc_2"
    if cfg.select_metric == "loss":
        return "loss"
    from qamoe_core.metrics import METRIC_NAMES

    if cfg.select_metric not in METRIC_NAMES[scheme]:
        raise InputError(
            f"The 'select_metric' parameter must be auto, loss or one of "
            f"{', '.join(METRIC_NAMES[scheme])} for scheme '{scheme}'. "
            f"Got {cfg.select_metric!r} instead.",
            hint="'auto' picks MAE for regression and Acc_2 for binary labels.",
        )
    return cfg.select_metric


def _dataset_info(f: FeatureFile) -> dict[str, Any]:
    return {
        "name": f.dataset,
        "path": str(f.path.resolve()),
        "sha256": f.sha256(),
        "seq_lens": dict(f.seq_lens),
        "label_range": list(f.label_range),
        "corruption": f.corruption,
        "n": {s: f.n(s) for s in f.splits},
    }


def _cpu(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in weights.items()}


@dataclass
class _Progress:
    """What train_state.pt records besides weights: where the run is and how it goes."""

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False


class _Loop:
    """One training run over an opened file, writing into ``folder`` (rank 0 only)."""

    text_note = ""  # a resumed run: which text encoder folder was located (locate_encoder)

    def __init__(self, f: FeatureFile, out: Path, folder: rundir.OutputFolder | None,
                 choice: ModelChoice, mcfg: ModelConfig, tcfg: TrainConfig, metric: str,
                 dev: torch.device, info: DistInfo, notify: ProgressFn) -> None:  # fmt: skip
        self.f, self.out, self.folder, self.choice = f, out, folder, choice
        self.mcfg, self.tcfg, self.metric, self.dev, self.info = mcfg, tcfg, metric, dev, info
        self.notify, self.t0 = notify, time.perf_counter()
        self.dims = {m: int(f.dims[m]) for m in f.modalities}
        torch.manual_seed(tcfg.seed)  # initial weights
        model = self.choice.build(mcfg, self.dims, f.task)
        model.set_feature_stats(
            {m: torch.from_numpy(f.train_mean(m)) for m in f.modalities},
            {m: torch.from_numpy(f.train_std(m)) for m in f.modalities},
        )
        self.model = model.to(dev)
        train_std = {m: torch.from_numpy(f.train_std(m)).to(dev) for m in f.modalities}
        self.train_data = SplitData(f, "train", dev, tcfg.in_memory_gib)
        self.valid_data = SplitData(f, "valid", dev, tcfg.in_memory_gib)
        # read (and checked) now, so that bad test data stops the run before training, not after
        self.test = SplitData(f, "test", dev, tcfg.in_memory_gib) if "test" in f.splits else None
        bs = f.block_rows("valid", max(tcfg.batch_size, 256), BATCH_COPIES)
        self.val_sets = validation_sets(self.valid_data, f, tcfg, train_std, bs,
                                        model.spectrum_options())  # fmt: skip
        self.trainer = Trainer(self.model, tcfg, dev, info, train_std, f.modalities)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(self.train_data.n),  # type: ignore[arg-type]  # any sized sequence works
            num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=tcfg.seed,
            drop_last=False,
        )  # fmt: skip
        self.batches = math.ceil(len(self.sampler) / tcfg.batch_size)
        self.total_steps = tcfg.epochs * self.batches
        self.warmup = round(tcfg.warmup_epochs * self.batches)
        self.evaluated = self.trainer.eval_model  # the EMA weights when enabled
        self.best_weights = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}
        self.state = _Progress()
        self.history: list[dict[str, Any]] = []

    @property
    def path(self) -> Path:
        """Where rank 0 writes now: the temporary until the first checkpoint, then ``out``."""
        return self.folder.path if self.folder is not None else self.out

    def restore(self) -> None:
        """Continue after the last completed epoch of the run in ``out``."""
        state = resume_policy.read_state(self.out, self.dev, self.info.world_size)
        ckpt.load_weights(self.model, self.out, state["model"], source=ckpt.STATE)
        if self.trainer.ema is not None:
            ckpt.load_weights(self.trainer.ema, self.out, state["ema_model"], source=ckpt.STATE)
        self.best_weights = state["best_model"]
        self.trainer.opt.load_state_dict(state["optimizer"])
        self.trainer.step = int(state["step"])
        self.state = _Progress(int(state["epoch"]), state["best_score"], int(state["best_epoch"]),
                               int(state["bad_epochs"]), bool(state["stopped_early"]))  # fmt: skip
        self.history = list(state["history"])
        log.info("resuming '%s' after epoch %d of %d", self.out, self.state.epoch, self.tcfg.epochs)

    def run_epoch(self, epoch: int) -> tuple[list[float], int]:
        """Train one epoch (0-based); returns the mean (loss, task loss, uncertainty loss)."""
        cfg, info = self.tcfg, self.info
        # Everything random in this epoch derives from (seed, epoch): resume restarts exactly.
        # (each rank its own stream, so processes do not corrupt their shards identically)
        torch.manual_seed(ddp.seed_for(cfg.seed, epoch, 1, info.rank))  # dropout
        gen = torch.Generator(device=self.dev)
        gen.manual_seed(ddp.seed_for(cfg.seed, epoch, 2, info.rank))  # corruption draws
        self.sampler.set_epoch(epoch)
        self.model.train()
        sums, n = np.zeros(3), 0
        for b, clean in enumerate(self.train_data.batches(list(self.sampler), cfg.batch_size), 1):
            res = self.trainer.train_step(clean, gen, self.total_steps, self.warmup)
            if not res["finite"]:
                kept = (
                    f"The last good checkpoint (epoch {epoch}) is kept in '{self.out}'."
                    if epoch > 0
                    else f"Nothing was kept: '{self.out}' is as it was before this run."
                )
                raise TrainingError(
                    f"The training loss became {res['loss']} at epoch {epoch + 1}, batch {b}.",
                    hint=f"{kept} Lower the learning rate (train.lr) or keep train.grad_clip > 0.",
                )
            sums += [res["loss"], res["loss_task"], res["loss_unc"]]
            n += 1
            self.notify(TrainEvent("batch", epoch + 1, cfg.epochs, b, self.batches,
                                   loss=res["loss"], best_score=self.state.best_score,
                                   metric=self.metric))  # fmt: skip
        return [float(v) for v in sums / max(n, 1)], n

    def validate(self) -> tuple[float, dict[str, Any]]:
        """The mean selection score over the validation levels, and every level's metrics."""
        scores, metrics = [], {}
        for vs in self.val_sets:
            s, mets = score(predict(self.evaluated, vs.batches()), self.f.scheme, self.metric)
            scores.append(s)
            metrics[f"{vs.level:g}"] = mets
        return float(np.mean(scores)), metrics

    def save(self, improved: bool) -> None:
        """train_state.pt is the commit point; the weights and history.jsonl follow from it.
        The first save also commits a new run folder (``rundir``)."""
        if not self.info.main:
            return
        s, ema = self.state, self.trainer.ema
        ckpt.save_state(self.path, {
            "epoch": s.epoch, "step": self.trainer.step, "world_size": self.info.world_size,
            "model": _cpu(self.model.state_dict()),
            "ema_model": None if ema is None else _cpu(ema.state_dict()),
            "best_model": _cpu(self.best_weights), "optimizer": self.trainer.opt.state_dict(),
            "best_score": s.best_score, "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
            "stopped_early": s.stopped_early, "history": self.history,
        })  # fmt: skip
        if improved or not (self.path / ckpt.WEIGHTS).exists():
            ckpt.save_weights(self.path, self.best_weights)
        ckpt.write_history(self.path, self.history)
        if self.folder is not None:
            self.folder.commit()

    def epoch(self, epoch: int) -> None:
        """Train, validate, select and save one epoch (0-based)."""
        t_epoch = time.perf_counter()
        mean, n_batches = self.run_epoch(epoch)
        val_score, val_metrics = self.validate()
        s = self.state
        improved = better(val_score, s.best_score, self.metric)
        if improved:
            s.best_score, s.best_epoch, s.bad_epochs = val_score, epoch + 1, 0
            self.best_weights = {k: v.detach().clone()
                                 for k, v in self.evaluated.state_dict().items()}  # fmt: skip
        else:
            s.bad_epochs += 1
        stop = s.bad_epochs >= self.tcfg.patience
        s.stopped_early = ddp.broadcast_flag(stop, self.info, self.dev)
        s.epoch = epoch + 1
        seconds = time.perf_counter() - t_epoch
        self.history.append({
            "epoch": epoch + 1, "train_loss": mean[0], "train_loss_task": mean[1],
            "train_loss_unc": mean[2], "lr": self.trainer.opt.param_groups[0]["lr"],
            "val_metric": self.metric, "val_score": val_score, "val": val_metrics,
            "best": improved, "seconds": seconds,
        })  # fmt: skip
        self.save(improved)
        ddp.barrier(self.info)
        self.notify(TrainEvent("epoch", epoch + 1, self.tcfg.epochs, n_batches, self.batches,
                               loss=mean[0], val_score=val_score, best_score=s.best_score,
                               metric=self.metric, seconds=seconds))  # fmt: skip

    def final_metrics(self) -> dict[str, Any]:
        """Scores of the selected weights (validation decides; test is for reference only)."""
        model, f, metric = self.evaluated, self.f, self.metric
        ckpt.load_weights(model, self.out, self.best_weights)
        final: dict[str, Any] = {
            "format_version": ckpt.RUN_FORMAT_VERSION, "model_name": self.choice.name,
            "select_metric": metric, "best_epoch": self.state.best_epoch,
            "val_score": self.state.best_score, "epochs_run": len(self.history),
            "stopped_early": self.state.stopped_early, "val": {},
        }  # fmt: skip
        for vs in self.val_sets:
            final["val"][f"{vs.level:g}"] = score(predict(model, vs.batches()), f.scheme, metric)[1]
        valid = list(self.valid_data.batches(np.arange(self.valid_data.n), 256))
        final["val_clean"] = score(predict(model, valid), f.scheme, metric)[1]
        if self.test is not None:
            try:
                batches = self.test.batches(np.arange(self.test.n), 256)
                final["test_clean"] = score(predict(model, batches), f.scheme, metric)[1]
                final["test_note"] = "reported for reference; never used for selection"
            except DataFormatError as exc:  # a lazily read test split is only checked here
                log.warning("test split not scored: %s", exc.message)
                final["test_clean"] = None
                final["test_note"] = f"not scored: {exc.message}"
        if f.corruption:  # "clean" then means "as in the file": no further corruption
            final["data_corrupted"] = True
        final["device"] = str(self.dev)
        final["world_size"] = self.info.world_size
        final["train_seconds"] = time.perf_counter() - self.t0
        final["created_by"] = f"qamoe {__version__}"
        # of this process (a resume's own): versions, device, commit, and the conditions behind
        # train_seconds (torch's threads and how they waited); one level, no nesting
        final["environment"] = {**environment(self.dev), **runtime.thread_record()}
        return final

    def fit(self, resume: bool, board: tracking.Board) -> dict[str, Any]:
        if resume:
            self.restore()
        elif self.info.main:
            config = ckpt.run_config(self.choice, self.mcfg, self.tcfg, dims=self.dims,
                                     task=self.f.task, scheme=self.f.scheme,
                                     dataset=_dataset_info(self.f))  # fmt: skip
            config["environment"] = environment(self.dev)
            ckpt.write_config(self.path, config)
            board.config(config)
        cfg = self.tcfg
        self.notify(TrainEvent("start", self.state.epoch, cfg.epochs, 0, self.batches,
                               metric=self.metric, note=self.text_note))  # fmt: skip
        for epoch in range(self.state.epoch, cfg.epochs):
            if self.state.stopped_early:
                break
            self.epoch(epoch)
            board.epoch(self.history[-1])
        final = self.final_metrics()
        if self.info.main:
            ckpt.save_weights(self.path, self.best_weights)
            # again: a kill between train_state.pt and history.jsonl of the last epoch
            # leaves the history one epoch short, and a resume has no epoch left to write it
            ckpt.write_history(self.path, self.history)
            ckpt.write_metrics(self.path, final)
            board.final(final, self.path)
        ddp.barrier(self.info)
        self.notify(TrainEvent("end", len(self.history), cfg.epochs, 0, self.batches,
                               val_score=self.state.best_score, best_score=self.state.best_score,
                               metric=self.metric))  # fmt: skip
        return {**final, "run_dir": str(self.out)}


def train(
    data_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str | ModelChoice | None = DEFAULT_MODEL,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    progress: ProgressFn | None = None,
    tensorboard: str | os.PathLike[str] | None = None,
    plugins: Iterable[str] = (),
    track: Iterable[str | tracking.Target] = (),
) -> dict[str, Any]:
    """Train ``model`` (a name, see models.get, or a choice resolved already:
    models.resolve) on ``data_path`` into the run directory ``out_dir``.

    Returns the content of metrics.json (plus ``run_dir``). With ``resume``, the run's saved
    configs and model are used (given ones must equal them; ``model=None`` takes the
    run's) and training continues after the last completed epoch; a run that had finished
    is left as it is (the result then has ``already_finished: True``). ``track``: tracking
    backends (``tensorboard``, ``mlflow``, ``wandb`` or ``tracking.targets(...)``), and
    ``tensorboard``: a folder for a TensorBoard log (``tracking``). ``plugins``: ``module:Class``
    plug-ins that a resumed run may name (``--plugin``; docs/security.md). Raises
    InputError/DataFormatError for bad inputs, CheckpointError for an unusable run to resume,
    TrainingError (naming epoch and batch) on a non-finite loss, rundir.OutputBusyError while
    another command writes ``out_dir``.
    """
    info = dist_info()
    dev = ckpt.resolve_device(device)
    if dev.type == "cuda" and info.world_size > 1:
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    asked = tracking.targets(track, tensorboard=tensorboard)  # usage errors before any work
    created_group = ddp.setup(info, dev)
    try:
        with FeatureFile(data_path) as f:
            return _train(f, Path(out_dir), model, model_cfg, train_cfg, resume, force,
                          dev, info, progress or (lambda event: None), asked,
                          tuple(plugins))  # fmt: skip
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(f: FeatureFile, out: Path, model: str | ModelChoice | None,
           model_cfg: ModelConfig | None,
           train_cfg: TrainConfig | None, resume: bool, force: bool, dev: torch.device,
           info: DistInfo, notify: ProgressFn,
           asked: tuple[tracking.Target, ...],
           plugins: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    _check_data(f)
    # Every check that can fail runs before the output folder is touched; the model's name
    # is resolved to its class here, once (a choice given is used as it is).
    given = None if model is None else resolve(model)
    note = ""
    if resume:
        choice, mcfg, tcfg, note = resume_policy.resume_configs(
            out, f, given, model_cfg, train_cfg, plugins
        )
    else:
        choice = given or resolve(DEFAULT_MODEL)
        mcfg, tcfg = model_cfg or ModelConfig(), train_cfg or TrainConfig()
        mcfg = choice.complete(mcfg)  # checks the model's options
        mcfg = text_config(mcfg, f)
    metric = _select_metric(tcfg, f.scheme, f.task)
    check_fits(f, mcfg.d_model, tcfg.batch_size)
    tracking.check(asked if info.main else None)
    done = resume_policy.finished_metrics(out, tcfg.epochs) if resume else None
    if not info.main:  # rank 0 owns the folder; the others only read a resumed run
        if done is not None:
            return {**done, "run_dir": str(out), "already_finished": True}
        ddp.barrier(info)
        loop = _Loop(f, out, None, choice, mcfg, tcfg, metric, dev, info, notify)
        loop.text_note = note
        return loop.fit(resume, tracking.Board(None))
    with rundir.OutputFolder(out, ckpt.RUN_KIND, force=force, resume=resume) as folder:
        if done is not None:  # entered all the same: the lock, and a sweep of leftovers
            log.warning("'%s' finished already (%d epochs): nothing to resume", out,
                        done.get("epochs_run", 0))  # fmt: skip
            return {**done, "run_dir": str(out), "already_finished": True}
        ddp.barrier(info)
        loop = _Loop(f, out, folder, choice, mcfg, tcfg, metric, dev, info, notify)
        loop.text_note = note
        with tracking.Board(asked, out) as board:
            try:
                return loop.fit(resume, board)
            except NoSpaceError as exc:
                if not folder.committed:
                    raise
                hint = (f"The run keeps its last completed epoch: free some space, then continue "
                        f"it with `qamoe train {f.path} --out {out} --resume`.")  # fmt: skip
                raise NoSpaceError(exc.code, exc.path, hint) from None
