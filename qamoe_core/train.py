"""Training for One-Checkpoint-for-All (DESIGN §2, §4).

Every batch is corrupted on the fly at per-sample, per-modality levels drawn from the spectrum
(``spectrum.sample_levels``, a share left clean), re-drawn every batch; the model sees the
corrupted batch and, for its self-supervised uncertainty loss, the clean one. AdamW with a
linear warm-up then cosine decay. Selection uses the VALIDATION split only, corrupted at fixed
levels with a fixed seed (keyed draws), so it is deterministic; the test split is never used
to select, only reported at the end for reference.

Reproducibility and resume: all randomness of an epoch (shuffling, corruption, dropout) is
seeded from (seed, epoch), and the run's state is saved after every epoch. A run interrupted
anywhere (Ctrl-C, a crash) and resumed with ``resume=True`` restarts at the last completed
epoch and ends with the same weights as an uninterrupted run (same machine and thread count).

Scale: under ``torchrun`` (env RANK, WORLD_SIZE, LOCAL_RANK) the same call trains with
DistributedDataParallel and a DistributedSampler (gloo on CPU, nccl on GPUs); only rank 0
writes. The batch size is per process.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import qamoe_core.checkpoint as ckpt
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.errors import (
    CheckpointError,
    DataFormatError,
    InputError,
    TrainingError,
)
from qamoe_core.h5store import FeatureFile
from qamoe_core.metrics import compute, higher_is_better
from qamoe_core.models import MultimodalModel, build_model, check_output, complete_config
from qamoe_core.spectrum import CorruptionSpec, apply_spec, corrupt_batch, sample_levels
from qamoe_core.torchdata import H5Dataset, to_torch
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


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


ProgressFn = Callable[[TrainEvent], None]


# --- distributed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read torchrun's environment (single process when WORLD_SIZE is unset or 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers.") from None
    return DistInfo(rank, world, local)


def _setup_distributed(info: DistInfo, device: torch.device) -> bool:
    """Initialise the process group if needed; True if this call created it."""
    if info.world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def _broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision for everyone (early stopping must stop every rank together)."""
    if info.world_size <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


# --- data ---------------------------------------------------------------------------------------


def _split_gib(f: FeatureFile, split: str) -> float:
    n = f.n(split)
    return sum(n * f.seq_lens[m] * f.dims[m] * 4 for m in f.modalities) / 2**30


class SplitData:
    """One split, in memory when small enough, else read lazily from the HDF5 file.

    ``batches(indices, batch_size)`` yields batch dicts of torch tensors on ``device``.
    """

    def __init__(self, f: FeatureFile, split: str, device: torch.device, max_gib: float) -> None:
        self.split, self.device, self.n = split, device, f.n(split)
        self.memory: Batch | None = None
        self.dataset: H5Dataset | None = None
        if _split_gib(f, split) <= max_gib:  # FeatureFile.read checks what it reads
            self.memory = to_torch(f.read(split, slice(None)), device)
        else:
            log.info("reading split '%s' lazily (%.1f GiB)", split, _split_gib(f, split))
            self.dataset = H5Dataset(f.path, split)

    def batches(self, indices: list[int] | np.ndarray, batch_size: int) -> Iterator[Batch]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.memory is not None:
            for start in range(0, len(idx), batch_size):
                sel = torch.from_numpy(idx[start : start + batch_size]).to(self.device)
                yield {k: v.index_select(0, sel) for k, v in self.memory.items()}
            return
        assert self.dataset is not None
        chunks = [idx[s : s + batch_size].tolist() for s in range(0, len(idx), batch_size)]
        # Its own generator: a DataLoader otherwise draws a seed from the global RNG, which
        # would shift the dropout stream and make lazy and in-memory runs differ.
        loader = DataLoader(self.dataset, batch_sampler=chunks, num_workers=0,
                            generator=torch.Generator())  # fmt: skip
        for batch in loader:  # H5Dataset.__getitems__ reads each chunk in one HDF5 call
            yield {k: v.to(self.device) for k, v in batch.items()}


def _seed_for(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from (seed, parts): independent streams per epoch and purpose."""
    words = np.random.SeedSequence([seed, *parts]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


# --- schedule and optimizer ---------------------------------------------------------------------


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``peak`` to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases, norms and the prior vectors are exempt)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# --- evaluation helpers -------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: MultimodalModel, batches: Iterator[Batch] | list[Batch]
) -> dict[str, np.ndarray]:
    """Run ``model`` (eval mode) over batches: prediction, label and task loss per sample."""
    was = model.training
    model.eval()
    preds, labels, losses = [], [], []
    for batch in batches:
        out = model(batch)
        preds.append(out.prediction.float().cpu())
        labels.append(batch["label"].float().cpu())
        if out.loss_task is not None:
            losses.append(out.loss_task.float().cpu().repeat(len(batch["label"])))
    model.train(was)
    return {
        "pred": torch.cat(preds).numpy(),
        "label": torch.cat(labels).numpy(),
        "loss": torch.cat(losses).numpy() if losses else np.zeros(0),
    }


def score(result: Mapping[str, np.ndarray], scheme: str, metric: str) -> tuple[float, dict]:
    """(selection score, all metrics) for predictions from :func:`predict`."""
    metrics = ckpt.plain(compute(result["pred"], result["label"], scheme))
    metrics["loss"] = float(result["loss"].mean()) if len(result["loss"]) else math.nan
    return float(metrics[metric]), metrics


def _better(new: float, best: float | None, metric: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(new)
    lower = metric == "loss" or not higher_is_better(metric)
    return new < best if lower else new > best


# --- the trainer --------------------------------------------------------------------------------


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


# --force sets the run it replaces aside here (inside the run folder) until the new run has
# written its first checkpoint, so a run that fails at once does not cost the old one.
ASIDE = ".qamoe-replaced"


def _recover(out: Path, announce: bool = True) -> None:
    """Settle a --force replacement that ended, or that a hard kill (SIGKILL, power loss)
    cut short: once the new run has a checkpoint the set-aside run is stale; before that, it
    is the run to keep, and comes back."""
    aside = out / ASIDE
    if not aside.is_dir():
        return
    if (out / ckpt.STATE).exists():
        shutil.rmtree(aside)
        return
    ckpt.clear_run(out)
    for p in aside.iterdir():
        os.replace(p, out / p.name)
    aside.rmdir()
    if announce:  # a kill found later; a failure says so in its own error
        log.warning("'%s': restored the run an unfinished --force replacement had set aside", out)


def _prepare_out_dir(out: Path, resume: bool, force: bool) -> tuple[Path | None, bool]:
    """Make ``out`` ready for a run; return the folder holding a replaced run (if any) and
    whether ``out`` was created here."""
    if out.is_dir():
        _recover(out)
    if resume:
        ckpt.check_run(out, require=(ckpt.CONFIG, ckpt.STATE))
        return None, False
    if out.exists() and not out.is_dir():
        raise InputError(
            f"The output '{out}' is a file; --out takes a run directory.",
            hint="Choose a folder path, e.g. --out runs/NAME.",
        )
    aside = None
    if out.is_dir() and any(out.iterdir()):
        if not ckpt.is_run_dir(out):
            raise InputError(
                f"The output folder '{out}' is not empty and holds no qamoe run.",
                hint="Choose a new folder: qamoe never deletes files it did not write.",
            )
        if not force:
            raise InputError(
                f"The output folder '{out}' already holds a run.",
                hint="Choose another --out, continue it with --resume, or replace it with --force.",
            )
        aside = out / ASIDE
        aside.mkdir()
        for name in ckpt.ALL_FILES:
            if (out / name).exists():
                os.replace(out / name, aside / name)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return aside, created


def _settle(out: Path, aside: Path | None, fresh: bool, created: bool) -> None:
    """After training ends (or fails): a run that wrote a checkpoint stays and the replaced
    one goes; one that did not is undone, and the replaced run (if any) comes back."""
    if aside is not None:
        _recover(out, announce=False)
    elif fresh and not (out / ckpt.STATE).exists():
        ckpt.clear_run(out)
        if created and not any(out.iterdir()):
            out.rmdir()


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


def _resume_configs(
    out: Path,
    f: FeatureFile,
    model_name: str,
    model_cfg: ModelConfig | None,
    train_cfg: TrainConfig | None,
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    saved = ckpt.read_config(out)
    dims = {m: int(f.dims[m]) for m in f.modalities}
    if saved["dims"] != dims:
        raise CheckpointError(
            f"The data's feature dims {dims} do not match the run being resumed ({saved['dims']}).",
            hint="Resume with the same DATA.h5 the run was started with.",
        )
    if saved["dataset"].get("sha256") not in (None, f.sha256()):
        raise CheckpointError(
            f"'{f.path}' is not the file the run in '{out}' was trained on (SHA-256 differs).",
            hint="Resume with the same DATA.h5, or start a new run with --force.",
        )
    if saved["model_name"] != model_name:
        raise CheckpointError(
            f"The run in '{out}' trains '{saved['model_name']}', not '{model_name}'.",
            hint=f"Resume with --model {saved['model_name']}.",
        )
    for given, key in ((model_cfg, "model_config"), (train_cfg, "train_config")):
        if given is not None and given != saved[key]:
            diff = [k for k, v in given.to_dict().items() if saved[key].to_dict().get(k) != v]
            raise CheckpointError(
                f"The config differs from the run being resumed in: {', '.join(diff)}.",
                hint="Resume without changing the config (drop the flags), or use --force.",
            )
    return saved["model_config"], saved["train_config"], saved


class _Trainer:
    """State of one training run (kept small: the loop is in :func:`train`)."""

    def __init__(
        self,
        model: MultimodalModel,
        cfg: TrainConfig,
        device: torch.device,
        info: DistInfo,
        train_std: Mapping[str, torch.Tensor],
        modalities: tuple[str, ...],
    ) -> None:
        self.model, self.cfg, self.device, self.info = model, cfg, device, info
        self.train_std = train_std
        self.corrupt_mods = tuple(m for m in cfg.corrupt_modalities if m in modalities)
        self.net: torch.nn.Module = model
        if info.world_size > 1:
            ids = [device.index or 0] if device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids)
        self.opt = make_optimizer(model, cfg)
        self.step = 0
        # Exponential moving average of the weights (Polyak averaging): what is validated,
        # selected and saved when cfg.ema_decay > 0.
        self.ema: MultimodalModel | None = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(model).eval()
            self.ema.requires_grad_(False)

    @property
    def eval_model(self) -> MultimodalModel:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        # Warm-up as in TensorFlow's ExponentialMovingAverage(num_updates): early averages
        # would otherwise be dominated by the random initialisation.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p: list[torch.Tensor] = list(self.ema.parameters())
        new_p: list[torch.Tensor] = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, new_p, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)

    def corrupt(self, clean: Batch, gen: torch.Generator) -> Batch:
        if not self.corrupt_mods:
            return clean
        b = clean["label"].shape[0]
        low, high = self.cfg.train_levels
        levels = sample_levels(
            b, self.corrupt_mods, clean_fraction=self.cfg.clean_fraction, low=low, high=high,
            generator=gen,
        )  # fmt: skip
        return corrupt_batch(
            clean,
            levels,
            train_std=self.train_std,
            axis=self.cfg.axis,
            noise_scale=self.cfg.noise_scale,
            generator=gen,
        )

    def train_step(self, clean: Batch, gen: torch.Generator, total: int, warmup: int) -> dict:
        batch = self.corrupt(clean, gen)
        lr = lr_at(self.step, total, warmup, self.cfg.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        out = self.net(batch, clean)
        check_output(out, clean["label"].shape[0], True, self.model.name)  # µs; plug-ins
        assert out.loss is not None
        parts = torch.stack(
            [
                out.loss.detach(),
                out.loss_task.detach() if out.loss_task is not None else out.loss.detach() * 0,
                out.loss_unc.detach() if out.loss_unc is not None else out.loss.detach() * 0,
            ]
        )
        if self.info.world_size > 1:  # every rank sees the same numbers and stops together
            dist.all_reduce(parts)
            parts /= self.info.world_size
        values = parts.tolist()
        if not math.isfinite(values[0]):
            return {"loss": values[0], "finite": False}
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self.update_ema()
        return {"loss": values[0], "loss_task": values[1], "loss_unc": values[2], "finite": True}


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


class ValidationSet:
    """The validation split at one fixed spectrum level (keyed draws: the same every epoch).

    Cached in memory when the split is; otherwise corrupted again, identically, on each pass
    (a MOSEI-sized validation copy per level would not fit).
    """

    def __init__(
        self, data: SplitData, level: float, spec: CorruptionSpec | None, train_std: Any, bs: int
    ) -> None:
        self.data, self.level, self.spec, self.train_std, self.bs = data, level, spec, train_std, bs
        self.cache = list(self._make()) if data.memory is not None else None

    def _make(self) -> Iterator[Batch]:
        for batch in self.data.batches(np.arange(self.data.n), self.bs):
            if self.spec is not None:
                batch = apply_spec(batch, self.spec, split="valid", train_std=self.train_std)
            yield batch

    def batches(self) -> Iterator[Batch] | list[Batch]:
        return self.cache if self.cache is not None else self._make()


def _validation_sets(
    data: SplitData, f: FeatureFile, cfg: TrainConfig, train_std: Mapping[str, Any], bs: int
) -> list[ValidationSet]:
    mods = tuple(m for m in cfg.corrupt_modalities if m in f.modalities)
    out = []
    for level in cfg.val_levels:
        spec = None
        if level > 0 and mods:
            spec = CorruptionSpec(level=level, axis=cfg.axis, modalities=mods,
                                  noise_scale=cfg.noise_scale, seed=cfg.val_seed)  # fmt: skip
        out.append(ValidationSet(data, level, spec, train_std, bs))
    return out


def train(
    data_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_name: str = "qamoe",
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``data_path`` into the run directory ``out_dir``.

    Returns the content of metrics.json (plus ``run_dir``). With ``resume``, the run's saved
    configs are used (given configs must equal them) and training continues after the last
    completed epoch. Raises InputError/DataFormatError for bad inputs, CheckpointError for an
    unusable run to resume, TrainingError (naming epoch and batch) on a non-finite loss.
    """
    info = dist_info()
    dev = ckpt.resolve_device(device)
    if dev.type == "cuda" and info.world_size > 1:
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    created_group = _setup_distributed(info, dev)
    try:
        with FeatureFile(data_path) as f:
            return _train(f, Path(out_dir), model_name, model_cfg, train_cfg,
                          resume, force, dev, info, progress)  # fmt: skip
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(
    f: FeatureFile,
    out: Path,
    model_name: str,
    model_cfg: ModelConfig | None,
    train_cfg: TrainConfig | None,
    resume: bool,
    force: bool,
    dev: torch.device,
    info: DistInfo,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    _check_data(f)
    notify = progress or (lambda event: None)
    # Every check that can fail runs before the output folder is touched.
    if resume:
        ckpt.check_run(out, require=(ckpt.CONFIG, ckpt.STATE))
        mcfg, tcfg, _saved = _resume_configs(out, f, model_name, model_cfg, train_cfg)
    else:
        mcfg, tcfg = model_cfg or ModelConfig(), train_cfg or TrainConfig()
        mcfg = complete_config(model_name, mcfg)  # checks the name and the model's options
    metric = _select_metric(tcfg, f.scheme, f.task)
    aside, created = _prepare_out_dir(out, resume, force) if info.main else (None, False)
    try:
        _barrier(info)
        result = _fit(f, out, model_name, mcfg, tcfg, metric, resume, dev, info, notify, t0)
    except BaseException:
        if info.main:
            _settle(out, aside, fresh=not resume, created=created)
        raise
    if info.main:
        _settle(out, aside, fresh=not resume, created=created)
    return result


def _fit(
    f: FeatureFile,
    out: Path,
    model_name: str,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    metric: str,
    resume: bool,
    dev: torch.device,
    info: DistInfo,
    notify: ProgressFn,
    t0: float,
) -> dict[str, Any]:
    """The training proper, once the output folder is ready (see :func:`_train`)."""
    dims = {m: int(f.dims[m]) for m in f.modalities}
    if not resume and info.main:
        config = ckpt.run_config(model_name, mcfg, tcfg, dims=dims, task=f.task,
                                 scheme=f.scheme, dataset=_dataset_info(f))  # fmt: skip
        ckpt.write_config(out, config)

    torch.manual_seed(tcfg.seed)  # initial weights
    model = build_model(model_name, mcfg, dims, f.task)
    model.set_feature_stats(
        {m: torch.from_numpy(f.train_mean(m)) for m in f.modalities},
        {m: torch.from_numpy(f.train_std(m)) for m in f.modalities},
    )
    model.to(dev)
    train_std = {m: torch.from_numpy(f.train_std(m)).to(dev) for m in f.modalities}
    train_data = SplitData(f, "train", dev, tcfg.in_memory_gib)
    valid_data = SplitData(f, "valid", dev, tcfg.in_memory_gib)
    # read (and checked) now, so that bad test data stops the run before training, not after
    test = SplitData(f, "test", dev, tcfg.in_memory_gib) if "test" in f.splits else None
    val_sets = _validation_sets(valid_data, f, tcfg, train_std, max(tcfg.batch_size, 256))
    trainer = _Trainer(model, tcfg, dev, info, train_std, f.modalities)

    sampler: DistributedSampler[int] = DistributedSampler(
        range(train_data.n),  # type: ignore[arg-type]  # any sized sequence works
        num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=tcfg.seed,
        drop_last=False,
    )  # fmt: skip
    batches_per_epoch = math.ceil(len(sampler) / tcfg.batch_size)
    total_steps = tcfg.epochs * batches_per_epoch
    warmup = round(tcfg.warmup_epochs * batches_per_epoch)

    start_epoch, best_score, best_epoch, bad_epochs = 0, None, 0, 0
    history: list[dict[str, Any]] = []
    evaluated = trainer.eval_model  # the EMA weights when enabled, else the trained ones
    best_weights = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
    stopped_early = False
    if resume:
        state = ckpt.load_state(out, dev)
        ckpt.load_weights(model, out, state["model"], source=ckpt.STATE)
        if trainer.ema is not None:
            ckpt.load_weights(trainer.ema, out, state["ema_model"], source=ckpt.STATE)
        best_weights = state["best_model"]
        trainer.opt.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        start_epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
        best_score = state["best_score"]
        bad_epochs, stopped_early = int(state["bad_epochs"]), bool(state["stopped_early"])
        history = list(state["history"])
        if int(state.get("world_size", 1)) != info.world_size:
            raise CheckpointError(
                f"The run was trained with {state.get('world_size')} processes; "
                f"resuming with {info.world_size} would not give the same result.",
                hint="Resume with the same torchrun --nproc-per-node.",
            )
        log.info("resuming '%s' after epoch %d", out, start_epoch)

    notify(TrainEvent("start", start_epoch, tcfg.epochs, 0, batches_per_epoch, metric=metric))
    for epoch in range(start_epoch, tcfg.epochs):
        if stopped_early:
            break
        t_epoch = time.perf_counter()
        # Everything random in this epoch derives from (seed, epoch): resume restarts exactly.
        # (each rank its own stream, so processes do not corrupt their shards identically)
        torch.manual_seed(_seed_for(tcfg.seed, epoch, 1, info.rank))  # dropout
        gen = torch.Generator(device=dev)
        gen.manual_seed(_seed_for(tcfg.seed, epoch, 2, info.rank))  # corruption draws
        sampler.set_epoch(epoch)
        model.train()
        sums = np.zeros(3)
        n_batches = 0
        for b, clean in enumerate(train_data.batches(list(sampler), tcfg.batch_size), start=1):
            res = trainer.train_step(clean, gen, total_steps, warmup)
            if not res["finite"]:
                kept = (
                    f"The last good checkpoint (epoch {epoch}) is kept in '{out}'."
                    if epoch > 0
                    else f"Nothing was kept: '{out}' is as it was before this run."
                )
                raise TrainingError(
                    f"The training loss became {res['loss']} at epoch {epoch + 1}, batch {b}.",
                    hint=f"{kept} Lower the learning rate (train.lr) or keep train.grad_clip > 0.",
                )
            sums += [res["loss"], res["loss_task"], res["loss_unc"]]
            n_batches += 1
            notify(TrainEvent("batch", epoch + 1, tcfg.epochs, b, batches_per_epoch,
                              loss=res["loss"], best_score=best_score, metric=metric))  # fmt: skip

        val_scores, val_metrics = [], {}
        for vs in val_sets:
            s, mets = score(predict(evaluated, vs.batches()), f.scheme, metric)
            val_scores.append(s)
            val_metrics[f"{vs.level:g}"] = mets
        val_score = float(np.mean(val_scores))
        improved = _better(val_score, best_score, metric)
        if improved:
            best_score, best_epoch, bad_epochs = val_score, epoch + 1, 0
            best_weights = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
        else:
            bad_epochs += 1
        stopped_early = _broadcast_flag(bad_epochs >= tcfg.patience, info, dev)
        mean = [float(v) for v in sums / max(n_batches, 1)]
        record = {
            "epoch": epoch + 1,
            "train_loss": mean[0],
            "train_loss_task": mean[1],
            "train_loss_unc": mean[2],
            "lr": trainer.opt.param_groups[0]["lr"],
            "val_metric": metric,
            "val_score": val_score,
            "val": val_metrics,
            "best": improved,
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(record)
        if info.main:
            # train_state.pt is the commit point; model.pt and history.jsonl follow from it.
            ckpt.save_state(out, {
                "epoch": epoch + 1, "step": trainer.step, "world_size": info.world_size,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema_model": None if trainer.ema is None else {
                    k: v.detach().cpu() for k, v in trainer.ema.state_dict().items()},
                "best_model": {k: v.detach().cpu() for k, v in best_weights.items()},
                "optimizer": trainer.opt.state_dict(), "best_score": best_score,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "stopped_early": stopped_early, "history": history, "rng": _rng_state(dev),
            })  # fmt: skip
            if improved:
                ckpt.save_weights(out, best_weights)
            ckpt.write_history(out, history)
        _barrier(info)
        notify(TrainEvent("epoch", epoch + 1, tcfg.epochs, n_batches, batches_per_epoch,
                          loss=mean[0], val_score=val_score, best_score=best_score,
                          metric=metric))  # fmt: skip

    # Final report with the selected weights (validation decides; test is for reference only).
    model = evaluated
    ckpt.load_weights(model, out, best_weights)
    final: dict[str, Any] = {
        "format_version": ckpt.RUN_FORMAT_VERSION,
        "model_name": model_name,
        "select_metric": metric,
        "best_epoch": best_epoch,
        "val_score": best_score,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "val": {},
    }
    for vs in val_sets:
        final["val"][f"{vs.level:g}"] = score(predict(model, vs.batches()), f.scheme, metric)[1]
    final["val_clean"] = score(
        predict(model, list(valid_data.batches(np.arange(valid_data.n), 256))), f.scheme, metric
    )[1]
    if test is not None:
        try:
            final["test_clean"] = score(
                predict(model, test.batches(np.arange(test.n), 256)), f.scheme, metric
            )[1]
            final["test_note"] = "reported for reference; never used for selection"
        except DataFormatError as exc:  # a lazily read test split is only checked here
            log.warning("test split not scored: %s", exc.message)
            final["test_clean"] = None
            final["test_note"] = f"not scored: {exc.message}"
    final["device"] = str(dev)
    final["world_size"] = info.world_size
    final["train_seconds"] = time.perf_counter() - t0
    final["created_by"] = f"qamoe {__version__}"
    if info.main:
        ckpt.save_weights(out, best_weights)
        ckpt.write_metrics(out, final)
    _barrier(info)
    notify(TrainEvent("end", len(history), tcfg.epochs, 0, batches_per_epoch,
                      val_score=best_score, best_score=best_score, metric=metric))  # fmt: skip
    return {**final, "run_dir": str(out)}
