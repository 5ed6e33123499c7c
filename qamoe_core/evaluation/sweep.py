"""Evaluation of one checkpoint: the clean split, a corrupted file, or a whole spectrum sweep.

A sweep walks every (axis, level, corruption seed) of :class:`EvalConfig`, plus optionally the
fixed-missing protocol (every non-empty proper subset of modalities kept, the others removed;
its rows name the removed ones, like every row names the modalities it corrupted): the points
of ``plan.py``, from ONE checkpoint. It returns the tidy table of ``results.py``. For models
with quality scores it also runs the quality-shuffle control (r permuted across samples: if
the numbers do not move, the router ignores quality) and records per-point diagnostics: the
mean quality score per modality and each expert's share of the routing weight.

How it stays fast (benchmarks/bench_sweep.py times a 10-level x 3-seed x 3-axis sweep of the
mosi preset's 686 test samples):

- the split is read from the HDF5 file ONCE, in row blocks of at most ``block_mib`` (the whole
  split when it fits, so a MOSEI-sized file never has to), and every grid point is computed
  from the block in memory;
- the random draws of a corruption seed are made once per block and reused for every axis and
  level (the spectrum's common random numbers, ``spectrum.draw_keyed``); corruption is applied
  in torch by ``spectrum.apply_draws``, the same function `qamoe corrupt` uses, so the sweep
  at (level, seed) gives the same numbers as evaluating ``qamoe corrupt --level ... --seed ...``
  of the same file;
- level 0 is the identity, so those points share the clean point's predictions (9 of the
  default 91 points);
- the quality-shuffle variant reuses the encoder outputs of the normal pass (the encoders are
  ~all of the cost and do not see r), and everything runs under ``torch.inference_mode``.

Quality shuffling permutes r within fixed windows of ``shuffle_window`` rows of the split (not
within mini-batches: a batch of one would permute nothing), with one permutation per window
seeded by (shuffle_seed, window): reproducible whatever the batch size, block or grid.

Mini-batches start at multiples of ``batch_size`` from the split's first row: blocks are whole
batches (and whole windows), so the results are the same bits whatever the memory budget or
``block_mib`` (batched products and sums round by which rows share a batch).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from qamoe_core.base.errors import (
    DataFormatError,
    InputError,
    TooLargeError,
    UsageError,
)
from qamoe_core.base.names import MODALITIES
from qamoe_core.base.runtime import format_size, memory_budget
from qamoe_core.data.store import FeatureFile
from qamoe_core.evaluation.controls import (
    CONSTANT_R,
    as_batch,
    constant_quality,
    mean_quality,
    oracle_quality,
)
from qamoe_core.evaluation.plan import EvalConfig, Point, given_point, plan
from qamoe_core.evaluation.results import (
    QUALITY_PREFIX,
    RESIDUAL_PREFIX,
    SHUFFLED,
    SIGMA2_PREFIX,
    SPECTRUM_AXES,
    USAGE_PREFIX,
    constant_rows,
    make_table,
)
from qamoe_core.evaluation.samples import Output, sample_rows
from qamoe_core.evaluation.summary import summarize
from qamoe_core.metrics import METRIC_NAMES, compute
from qamoe_core.models.base import MultimodalModel
from qamoe_core.models.text_front import check_text_ids
from qamoe_core.runs.checkpoint import load_run, resolve_device
from qamoe_core.spectrum.engine import (
    ModalityDraws,
    apply_draws,
    batch_modalities,
    draw_keyed,
)
from qamoe_core.spectrum.record import check_text_noise

log = logging.getLogger(__name__)

Progress = Callable[..., None]
# A model's encode_with_coverage(batch): pooled encodings and coverages per modality.
Encodings = tuple[dict[str, Tensor], dict[str, Tensor | None]]


# Float32 copies of a block alive at once (the read, the keyed draws, corrupted mini-batches):
# blocks shrink so that these fit the memory budget (runtime.memory_budget).
_BLOCK_COPIES = 4
# Bytes kept per (point, variant, row): the prediction, and with per_sample a table row.
_POINT_BYTES, _SAMPLE_ROW_BYTES = 4, 320


@dataclass
class EvalResult:
    """The table (results.py schema), its summary, and facts about the evaluation."""

    table: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    # With EvalConfig.per_sample: one row per (point, variant, sample), see SAMPLE_COLUMNS.
    samples: pd.DataFrame | None = None

    @property
    def clean(self) -> dict[str, float]:
        """Metric -> value at the first point (clean, or the file as given), normal variant."""
        return self.first("normal")

    def first(self, variant: str) -> dict[str, float]:
        """Metric -> value at the first point for ``variant`` (empty when it was not run)."""
        t = self.table
        first = t[(t["axis"] == self.info["first_axis"]) & (t["variant"] == variant)]
        first = first[first["level"] == self.info["first_level"]]
        return {str(r.metric): float(r.value) for r in first.itertuples()}

    def to_dict(self) -> dict[str, Any]:
        """The facts, the first point's metrics, the summary and every row of the table (the
        per-point results that ``--out`` writes as CSV)."""
        return {
            **self.info,
            "metrics": self.clean,
            "summary": self.summary.to_dict(orient="records"),
            "results": self.table.to_dict(orient="records"),
        }


class _Accumulator:
    """Predictions and diagnostic sums for every (point, variant)."""

    def __init__(self, n: int, per_sample: bool = False) -> None:
        self.n, self.per_sample = n, per_sample
        self.pred: dict[tuple[int, str], np.ndarray] = {}
        self.sums: dict[tuple[int, str], dict[str, float]] = {}
        # per-sample r_m, kept only when asked for: {(point, variant): {modality: (N,)}}
        self.quality: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        # per-sample values of add_sums (the residual diagnostic), kept only when asked for:
        # {(point, variant): {column: (N,)}}
        self.extra: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        self.alias: dict[int, int] = {}  # point -> the point whose outputs it shares

    def resolve_aliases(self) -> None:
        variants = {v for _, v in self.pred}
        for i, j in self.alias.items():
            for variant in sorted(variants):
                if (j, variant) in self.pred:
                    self.pred[(i, variant)] = self.pred[(j, variant)]
                    self.sums[(i, variant)] = self.sums[(j, variant)]
                    if (j, variant) in self.quality:
                        self.quality[(i, variant)] = self.quality[(j, variant)]
                    if (j, variant) in self.extra:
                        self.extra[(i, variant)] = self.extra[(j, variant)]

    def add_sums(self, key: tuple[int, str], rows: slice, values: Mapping[str, Tensor]) -> None:
        """Fold per-sample values {name: (B,)} of ``rows`` into the point's sums (after
        :meth:`add`), and keep them per sample when asked for."""
        sums = self.sums[key]
        for name, v in values.items():
            sums[name] = sums.get(name, 0.0) + float(v.double().sum())
            if self.per_sample:
                col = self.extra.setdefault(key, {})
                col.setdefault(name, np.full(self.n, np.nan, dtype=np.float32))
                col[name][rows] = v.float().cpu().numpy()

    def add(self, key: tuple[int, str], rows: slice, out: Any) -> None:
        if key not in self.pred:
            self.pred[key] = np.full(self.n, np.nan, dtype=np.float32)
            self.sums[key] = {}
        self.pred[key][rows] = out.prediction.float().cpu().numpy()
        sums = self.sums[key]
        if out.quality is not None:
            for m, r in out.quality.items():
                name = f"{QUALITY_PREFIX}{m}"
                sums[name] = sums.get(name, 0.0) + float(r.float().sum())
                if self.per_sample:
                    q = self.quality.setdefault(key, {})
                    q.setdefault(m, np.full(self.n, np.nan, dtype=np.float32))
                    q[m][rows] = r.float().cpu().numpy()
        if out.routing is not None:
            for e, share in enumerate(out.routing.float().sum(0).tolist()):
                name = f"{USAGE_PREFIX}{e}"
                sums[name] = sums.get(name, 0.0) + share


def check_compatible(model: MultimodalModel, f: FeatureFile, task: str) -> None:
    """Raise DataFormatError when the data's modalities, dims or task differ from the model's."""
    dims = dict(model.file_dims)
    if model.reads_text_ids:
        dims.pop("text", None)  # the encoder reads ids, whatever the stored features' width
        check_text_ids(f, model.text_special_ids)
    missing = [m for m in dims if m not in f.modalities]
    if missing:
        raise DataFormatError(
            f"'{f.path}' lacks the modality {', '.join(missing)} that the checkpoint was "
            f"trained on (it has {', '.join(f.modalities)}).",
            hint="Evaluate on a file with the same modalities as the training data.",
        )
    for m, d in dims.items():
        if f.dims[m] != d:
            raise DataFormatError(
                f"'{f.path}': modality '{m}' has {f.dims[m]} feature dims but the checkpoint "
                f"expects {d}.",
                hint="Evaluate on features from the same extractor as the training data.",
            )
    if (task == "binary") != (f.scheme == "binary"):
        raise DataFormatError(
            f"'{f.path}' is a {f.task} dataset (scheme {f.scheme}) but the checkpoint was "
            f"trained for {task}.",
            hint="Evaluate on the kind of labels the model was trained on.",
        )


class Evaluation:
    """One planned evaluation, its steps as methods: validated and planned on construction,
    run with :meth:`run` (read a block, corrupt a point, encode, predict, score).

    Construction checks the model against the data (modalities, dims, task), the split and
    the corruption record, and plans the points, so a CLI can size its progress bar
    (:attr:`steps`) and fail on bad input before any work.
    """

    def __init__(
        self,
        model: MultimodalModel,
        data: str | os.PathLike[str],
        cfg: EvalConfig = EvalConfig(),
        *,
        run: str = "run",
        model_name: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.run_name, self.data = cfg, run, Path(data)
        self.run_dir: Path | None = None  # set by from_run
        self.text_encoder: str | None = None  # from_run: the encoder folder used, and why
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.task = str(getattr(model, "task", "regression"))
        self.model_name = model_name or str(getattr(model, "name", type(model).__name__))
        self.modalities = tuple(getattr(model, "modalities", MODALITIES))
        # Declared on the model: whether a control pass may skip the encoders, and whether
        # it offers the quality-shuffle control at all.
        self.takes_encodings = model.reuses_encodings
        self.shuffles = cfg.quality_shuffle and SHUFFLED in model.controls
        # The r-controls asked for that the model offers (evaluation/controls.py).
        self.r_controls = tuple(c for c in cfg.controls if c in model.controls)
        skipped = [c for c in cfg.controls if c not in model.controls]
        if skipped:
            log.warning("the model '%s' offers no %s control; not run", self.model_name,
                        ", ".join(skipped))  # fmt: skip
        self._clean_r: dict[str, float] = {}  # constant_r's value, set by run()
        # The quality-head diagnostic (EvalConfig.residuals), for a model that offers it.
        self.residuals = cfg.residuals and model.diagnoses_quality and self.takes_encodings
        with FeatureFile(self.data) as f:
            self._check_data(f)
            given = given_point(f, self.modalities, cfg.split, cfg.noise_scale)
            self.points = plan(cfg, self.modalities, given)
            self.n = f.n(cfg.split)  # InputError naming the splits if absent
            self.scheme, self.dataset = f.scheme, f.dataset
            self._check_results_fit(f)
            self.block = self._block_rows(f)
        self.targets = sorted(
            {m for p in self.points if p.axis in SPECTRUM_AXES for m in p.modalities}
        )
        self.n_blocks = -(-self.n // self.block)
        # State of one run (reset by run()).
        self._acc = _Accumulator(self.n, cfg.per_sample)
        self._train_std: dict[str, Tensor] = {}

    def _block_rows(self, f: FeatureFile) -> int:
        """Rows read at once: ``block_mib`` worth, no more than the memory budget allows, and
        a whole number of units unless the block is the whole split.

        A unit is a mini-batch, or with the quality-shuffle control the least common multiple
        of the batch size and ``shuffle_window``. Mini-batches and windows then start at the
        same rows of the split whatever the block: batched products and sums round by which
        rows share a batch, so a block that cut a batch made the results depend on the memory
        budget (by up to 3e-8 on a wide-row file). A budget too small for one unit is refused.
        """
        cfg = self.cfg
        unit = math.lcm(cfg.batch_size, cfg.shuffle_window) if self.shuffles else cfg.batch_size
        row_bytes = sum(4 * f.seq_lens[m] * f.dims[m] for m in f.modalities)
        wanted = int(cfg.block_mib * 2**20 // max(row_bytes, 1)) // unit * unit
        wanted = max(1, min(self.n, max(unit, wanted)))
        fit = f.block_rows(cfg.split, wanted, _BLOCK_COPIES)
        if fit == wanted:  # the whole split, or a whole number of units
            return fit
        if fit < unit:
            what = ("a mini-batch (whole quality-shuffle windows) of" if self.shuffles
                    else "a mini-batch of")  # fmt: skip
            f.check_rows(cfg.split, min(unit, self.n), _BLOCK_COPIES, what)  # raises
        return max(fit // unit * unit, min(unit, self.n))

    def _check_results_fit(self, f: FeatureFile) -> None:
        """Refuse a grid whose predictions (and per-sample rows) would pass the memory budget."""
        variants = 2 + len(self.cfg.controls)  # normal, shuffle and the r-controls
        point_bytes = _POINT_BYTES + self.cfg.per_sample * _SAMPLE_ROW_BYTES
        per_row = variants * len(self.points) * point_bytes
        need, budget = self.n * per_row, memory_budget()
        if need > budget:
            raise TooLargeError(
                f"'{f.path}': {len(self.points)} points x {self.n:,} rows of split "
                f"'{self.cfg.split}' keep about {format_size(need)} of results"
                f"{' (per-sample rows)' if self.cfg.per_sample else ''}, beyond the memory "
                f"budget of {format_size(budget)}.",
                hint="Evaluate fewer points (--levels, --axis) or without --per-sample, or "
                "raise the budget with --memory-budget SIZE.",
            )

    def _check_data(self, f: FeatureFile) -> None:
        check_compatible(self.model, f, self.task)
        if self.model.reads_text_ids:
            check_text_noise(f.corruption, f"'{f.path}'", self.cfg.split)
        if (self.cfg.sweep or self.cfg.drop_sets) and f.corruption:
            raise InputError(
                f"'{f.path}' is already corrupted; a sweep on top of it would compound levels.",
                hint="Sweep the clean file, or evaluate this one without --sweep/--drop-sets.",
            )
        extra = [m for m in self.cfg.modalities if m not in self.modalities]
        if extra:
            raise UsageError(
                f"The 'modalities' parameter names {', '.join(extra)}, which the model "
                f"does not use (it has {', '.join(self.modalities)})."
            )

    @property
    def steps(self) -> int:
        """How many times :meth:`run` calls ``progress``: points x row blocks."""
        return len(self.points) * self.n_blocks

    def run(self, progress: Progress | None = None) -> EvalResult:
        """Evaluate every point; ``progress(1, point="mixed 0.3")`` after each (per block)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        self._acc = _Accumulator(self.n, cfg.per_sample)
        with FeatureFile(self.data) as f, torch.inference_mode():
            labels = f.labels(cfg.split)
            ids = np.asarray(f.ids(cfg.split), dtype=object) if cfg.per_sample else None
            noisy = any(p.axis in ("noise", "mixed") and not p.given for p in self.points)
            self._train_std = {
                m: torch.from_numpy(f.train_std(m)).to(self.device) for m in self.targets
            } if noisy else {}  # fmt: skip
            if CONSTANT_R in self.r_controls:  # one pass over the split as the file holds it
                self._clean_r = mean_quality(self.model, f, cfg.split, self.block,
                                             cfg.batch_size, self.device)  # fmt: skip
            for start in range(0, self.n, self.block):
                self.evaluate_block(f, slice(start, min(self.n, start + self.block)), progress)
        self._acc.resolve_aliases()
        return self.result(labels, ids, time.perf_counter() - t0)

    def evaluate_block(self, f: FeatureFile, rows: slice, progress: Progress | None) -> None:
        """Every point on one block of rows, read once.

        Corruption and prediction go mini-batch by mini-batch, so corrupted copies of the whole
        block never exist at once.
        """
        raw = f.read(self.cfg.split, rows)
        batch = as_batch(raw, self.device)
        draws: dict[str, ModalityDraws] = {}
        drawn_seed: int | None = None
        targets = self.clean_targets(batch) if self.residuals else None
        for i, p in enumerate(self.points):
            if not p.given and p.axis in SPECTRUM_AXES and p.level == 0 and self._clean_first:
                # Level 0 is the identity bit for bit (spectrum.py), so it IS the clean point:
                # share its predictions instead of recomputing them (9 of a default sweep's 91).
                self._acc.alias[i] = 0
            else:
                if p.axis in SPECTRUM_AXES and not p.given and drawn_seed != p.seed:
                    draws, drawn_seed = self.draws(raw, p.seed, batch), p.seed  # once per seed
                corrupter = _PointCorrupter(p, draws, self.cfg.noise_scale, self._train_std,
                                            self.model.spectrum_options())  # fmt: skip
                self.evaluate_point(i, corrupter, batch, rows, targets)
            if progress is not None:
                progress(1, point=f"{p.axis} {p.level:g}")

    @property
    def _clean_first(self) -> bool:
        return self.points[0].axis == "clean"

    def draws(
        self, raw: Mapping[str, np.ndarray], seed: int, batch: Mapping[str, Tensor]
    ) -> dict[str, ModalityDraws]:
        """Keyed draws (u, z) of one corruption seed for every target modality of the block,
        as tensors on the batch's device: shared by every axis and level (common random
        numbers, spectrum.draw_keyed)."""
        axes = self.cfg.axes
        need_u = any(a in ("missing", "mixed") for a in axes)
        need_z = any(a in ("noise", "mixed") for a in axes)
        axis = "mixed" if need_u and need_z else ("missing" if need_u else "noise")
        dev = batch[self.targets[0]].device
        out = {}
        drawn = draw_keyed(
            raw, self.targets, seed=seed, split=self.cfg.split, axis=axis,
            patterns=self.cfg.patterns,
        )  # fmt: skip
        for m, d in drawn.items():
            u = torch.from_numpy(d.u).to(dev) if d.u is not None else None
            z = torch.from_numpy(d.z).to(dev) if d.z is not None else None
            out[m] = ModalityDraws(u, z)
        return out

    def evaluate_point(
        self,
        i: int,
        corrupter: _PointCorrupter,
        batch: Mapping[str, Tensor],
        rows: slice,
        targets: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Point ``i`` on one block: corrupt, encode once, predict (and with ``targets``, the
        block's clean targets, the quality-head residuals); then the controls."""
        n, size = batch["label"].shape[0], self.cfg.batch_size
        kept: list[Encodings] = []
        for s in range(0, n, size):
            e = min(n, s + size)
            mb = _unlabelled(corrupter.rows(batch, s, e))
            encodings = self.encode(mb)
            out = self.predict(mb, encodings)
            self._acc.add((i, "normal"), slice(rows.start + s, rows.start + e), out)
            if targets is not None and encodings is not None:
                sums = self.residual_sums(encodings, targets, s, e)
                self._acc.add_sums((i, "normal"), slice(rows.start + s, rows.start + e), sums)
            for control in self.r_controls:  # r set, not estimated (evaluation/controls.py)
                given = self.control_quality(control, mb, corrupter.p, e - s)
                self._acc.add((i, control), slice(rows.start + s, rows.start + e),
                              self.predict(mb, encodings, quality=given))  # fmt: skip
            if self.shuffles and encodings is not None:
                kept.append(encodings)
        if self.shuffles:
            self.shuffle_point(i, corrupter, batch, rows, _cat(kept) if kept else None)

    def shuffle_point(
        self,
        i: int,
        corrupter: _PointCorrupter,
        batch: Mapping[str, Tensor],
        rows: slice,
        encodings: Encodings | None,
    ) -> None:
        """The quality-shuffle control at point ``i`` on one block: r permuted within each
        window of ``shuffle_window`` rows of the split.

        Windows start at multiples of the window from the split's first row (blocks are whole
        windows), so the permutation depends on neither the batch size nor the block, and it
        is keyed by (shuffle_seed, window) alone: the same at every point, whatever else is in
        the grid. The encodings of the normal pass are reused when the model takes them;
        otherwise the window is corrupted and encoded again.
        """
        n, w = batch["label"].shape[0], self.cfg.shuffle_window
        for s in range(0, n, w):
            e = min(n, s + w)
            sub = slice(rows.start + s, rows.start + e)
            if encodings is None:
                mb, enc = _unlabelled(corrupter.rows(batch, s, e)), None
            else:  # the model reads only the encodings (and a label, which there is not)
                mb, enc = {}, _rows_of(encodings, s, e)
            out = self.predict(mb, enc, shuffle=self._generator(sub.start // w))
            self._acc.add((i, "quality_shuffle"), sub, out)

    def clean_targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{m: (N, out)} the model's clean targets of the block's rows (as read), per
        mini-batch (the diagnostic's reference; eval mode: no statistic moves)."""
        n, size = batch["label"].shape[0], self.cfg.batch_size
        model: Any = self.model  # diagnoses_quality: it has clean_targets
        parts = [model.clean_targets(_unlabelled({k: v[s : s + size] for k, v in batch.items()}))
                 for s in range(0, n, size)]  # fmt: skip
        return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}

    def residual_sums(
        self, encodings: Encodings, targets: Mapping[str, Tensor], s: int, e: int
    ) -> dict[str, Tensor]:
        """{residual_<m>, sigma2_<m>: (B,)} of rows s:e of the block."""
        model: Any = self.model  # diagnoses_quality: it has quality_residuals
        got = model.quality_residuals(encodings, {m: t[s:e] for m, t in targets.items()})
        out = {}
        for m, (residual, sigma2) in got.items():
            out[f"{RESIDUAL_PREFIX}{m}"], out[f"{SIGMA2_PREFIX}{m}"] = residual, sigma2
        return out

    def control_quality(
        self, control: str, mb: Mapping[str, Tensor], p: Point, b: int
    ) -> dict[str, Tensor]:
        """{m: (B,)} the r that ``control`` (an R_CONTROLS name) sets on the rows ``mb``."""
        if control == CONSTANT_R:
            return constant_quality(self._clean_r, b, self.device)
        return oracle_quality(mb, p, self.modalities)

    def encode(self, mb: Mapping[str, Tensor]) -> Encodings | None:
        """The model's encodings of ``mb`` (None when its forward cannot take them)."""
        if not self.takes_encodings:
            return None
        return self.model.encode_with_coverage(mb)  # type: ignore[no-any-return, operator]

    def predict(
        self,
        mb: Mapping[str, Tensor],
        encodings: Encodings | None,
        shuffle: torch.Generator | None = None,
        quality: Mapping[str, Tensor] | None = None,
    ) -> Any:
        """The model's output on ``mb``; with ``shuffle``, r permuted by that generator; with
        ``quality``, r set to it (the r-controls)."""
        kwargs: dict[str, Any] = {} if encodings is None else {"encodings": encodings}
        if shuffle is not None:
            kwargs.update(shuffle_quality=True, generator=shuffle)
        if quality is not None:
            kwargs.update(quality_override=quality)
        return self.model(mb, **kwargs)

    def _generator(self, window: int) -> torch.Generator:
        seq = np.random.SeedSequence([self.cfg.shuffle_seed, self.cfg.shuffle_window, window])
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))

    def result(self, labels: np.ndarray, ids: np.ndarray | None, seconds: float) -> EvalResult:
        """The scored table, its summary, the facts of the run and the per-sample rows."""
        table = make_table(self.score(labels) + self.reference_rows(labels))
        names = [m for m in METRIC_NAMES[self.scheme] if m in set(table["metric"])]
        points = self.points
        info = {
            "run": self.run_name,
            "model": self.model_name,
            "dataset": self.dataset,
            "data": str(self.data),
            "split": self.cfg.split,
            "scheme": self.scheme,
            "n_samples": self.n,
            "points": len(points),
            "quality_shuffle": any(k[1] == SHUFFLED for k in self._acc.pred),
            "seconds": round(seconds, 3),
            "first_axis": points[0].axis,
            "first_level": points[0].level,
            "device": str(self.device),
        }
        if self.r_controls:  # absent otherwise: the facts of earlier versions, unchanged
            info["controls"] = list(self.r_controls)
            if self._clean_r:
                info["constant_r"] = dict(self._clean_r)
        log.info("evaluated %d points on %d samples in %.1f s", len(points), self.n, seconds)
        samples = None
        if ids is not None:
            samples = sample_rows(self._outputs(), self._acc.quality, run=self.run_name,
                                  split=self.cfg.split, ids=ids, labels=labels,
                                  extra=self._acc.extra)  # fmt: skip
        return EvalResult(table, summarize(table, names), info, samples)

    def _outputs(self) -> list[Output]:
        """(point, variant, predictions, key) in table order: by point, then variant."""
        keys = sorted(self._acc.pred)
        return [(self.points[k[0]], k[1], self._acc.pred[k], k) for k in keys]

    def score(self, labels: np.ndarray) -> list[dict[str, Any]]:
        """Result rows: every metric and diagnostic at every (point, variant)."""
        rows: list[dict[str, Any]] = []
        base = self._row_base()
        for p, variant, pred, key in self._outputs():
            values = compute(pred, labels, self.scheme) | self.diagnostics(key)
            for metric, value in values.items():
                rows.append(base | p.columns() | {"variant": variant, "metric": metric,
                                                    "value": value})  # fmt: skip
        return rows

    def diagnostics(self, key: tuple[int, str]) -> dict[str, float]:
        """Mean quality score per modality and each expert's share of the routing weight."""
        return {k: v / self._acc.n for k, v in self._acc.sums[key].items()}

    def reference_rows(self, labels: np.ndarray) -> list[dict[str, Any]]:
        """Rows of reference scores that need no model: the best constant predictor's score
        on this split's ``labels`` (variant ``constant``), the floor every curve is read
        against, and the sample count."""
        return constant_rows(labels, self.scheme, **self._row_base())

    def _row_base(self) -> dict[str, Any]:
        return {"run": self.run_name, "model": self.model_name, "dataset": self.dataset,
                "split": self.cfg.split}  # fmt: skip

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike[str],
        data: str | os.PathLike[str],
        cfg: EvalConfig = EvalConfig(),
        *,
        name: str | None = None,
        device: str | torch.device = "auto",
        plugins: Sequence[str] = (),
        text_model: str | os.PathLike[str] | None = None,
    ) -> Evaluation:
        """Plan the evaluation of a run directory's checkpoint (see checkpoint.load_run, which
        also says what ``plugins`` and ``text_model`` allow).

        ``name`` labels the run in the results (default: the folder's name). Raises
        CheckpointError naming a missing, damaged or refused file of the run.
        """
        dev = resolve_device(device)
        model, _, meta = load_run(run_dir, device=dev, plugins=plugins, text_model=text_model)
        label = name or Path(run_dir).resolve().name
        ev = cls(model, data, cfg, run=label, model_name=str(meta["model_name"]), device=dev)
        ev.run_dir = Path(run_dir)
        ev.text_encoder = meta["text_encoder"]
        return ev


def _unlabelled(mb: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch without its label: evaluation computes no loss."""
    return {k: v for k, v in mb.items() if k != "label"}


def _cat(parts: Sequence[Encodings]) -> Encodings:
    """The encodings of consecutive mini-batches as one."""
    h = {m: torch.cat([p[0][m] for p in parts]) for m in parts[0][0]}
    cov = {
        m: None if parts[0][1][m] is None else torch.cat([p[1][m] for p in parts])  # type: ignore[misc]
        for m in parts[0][1]
    }
    return h, cov


def _rows_of(enc: Encodings, s: int, e: int) -> Encodings:
    h, cov = enc
    return {m: v[s:e] for m, v in h.items()}, {
        m: None if v is None else v[s:e] for m, v in cov.items()
    }


def evaluate_model(
    model: MultimodalModel,
    data: str | os.PathLike[str],
    cfg: EvalConfig = EvalConfig(),
    *,
    run: str = "run",
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> EvalResult:
    """Evaluate ``model`` (a MultimodalModel: the model contract) on ``data`` per ``cfg``."""
    ev = Evaluation(model, data, cfg, run=run, model_name=model_name, device=device)
    return ev.run(progress)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    cfg: EvalConfig = EvalConfig(),
    *,
    name: str | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    plugins: Sequence[str] = (),
    text_model: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Evaluate the checkpoint in ``run_dir`` on ``data`` per ``cfg`` (one call; ``plugins``
    and ``text_model`` as in checkpoint.load_run)."""
    ev = Evaluation.from_run(run_dir, data, cfg, name=name, device=device, plugins=plugins,
                             text_model=text_model)  # fmt: skip
    result = ev.run(progress)
    result.info["run_dir"] = str(run_dir)
    return result


# Rows per corruption call: on the mosi preset corrupting 64 rows at a time measured 3x faster
# than 256 or the whole split (the float temporaries of the text features stay in cache).
CORRUPT_ROWS = 64


@dataclass(frozen=True)
class _PointCorrupter:
    """Corrupts rows of one block at one point ``p`` (``draws`` are the whole block's)."""

    p: Point
    draws: Mapping[str, ModalityDraws]
    noise_scale: float
    train_std: Mapping[str, Tensor]
    # MultimodalModel.spectrum_options of the model: {} unless it fine-tunes a text encoder
    text_options: Mapping[str, Any] = field(default_factory=dict)

    def rows(self, batch: Mapping[str, Tensor], s: int, e: int) -> Mapping[str, Tensor]:
        """Rows s:e of the block, corrupted CORRUPT_ROWS rows at a time."""
        mb = {k: v[s:e] for k, v in batch.items()}
        if self.p.given or e - s <= CORRUPT_ROWS:
            return self._apply(mb, s, e)
        parts, inputs = [], []
        for a in range(s, e, CORRUPT_ROWS):
            b = min(e, a + CORRUPT_ROWS)
            inputs.append({k: v[a:b] for k, v in batch.items()})
            parts.append(self._apply(inputs[-1], a, b))
        out: dict[str, Tensor] = {}
        for k in parts[0]:
            if k in mb and all(part[k] is inp[k] for part, inp in zip(parts, inputs, strict=True)):
                out[k] = mb[k]  # untouched by the corruption: no copy
            else:
                out[k] = torch.cat([part[k] for part in parts])
        return out

    def _apply(self, mb: dict[str, Tensor], s: int, e: int) -> Mapping[str, Tensor]:
        """The rows ``mb`` (= rows s:e of the block) at the point; draws sliced to them."""
        p = self.p
        if p.given:
            return mb
        if p.axis == "drop":
            return apply_draws(
                mb, {}, {}, drop=[m for m in batch_modalities(mb) if m in p.modalities],
                **self.text_options,
            )  # fmt: skip
        part = {
            m: ModalityDraws(None if d.u is None else d.u[s:e], None if d.z is None else d.z[s:e])
            for m, d in self.draws.items()
        }
        levels = {m: p.level for m in p.modalities}
        return apply_draws(mb, part, levels, axis=p.axis, noise_scale=self.noise_scale,
                           train_std=self.train_std, **self.text_options)  # fmt: skip
