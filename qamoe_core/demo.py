"""The demo: the whole chain on the built-in synthetic dataset, in about a minute on 2 cores.

extract (synthetic ``small``) → train QA-MoE and one baseline → corrupt at one level →
evaluate both (the corrupted file as given, and a sweep of the spectrum) → report.
Everything lands in one folder; the report's path is the last thing returned.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

import qamoe_core.base.rundir as rundir
import qamoe_core.runs.checkpoint as ckpt
from qamoe_core.base.errors import InputError, check_level
from qamoe_core.base.names import DEFAULT_MODEL
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.synthetic import MOSI_LITE_OFFSET, PRESETS, check_offset, write_synthetic
from qamoe_core.evaluation.plan import EvalConfig
from qamoe_core.evaluation.results import save
from qamoe_core.evaluation.summary import default_metric, summarize
from qamoe_core.evaluation.sweep import EvalResult, Evaluation
from qamoe_core.models.registry import baselines
from qamoe_core.report.build import build_report
from qamoe_core.runs.checkpoint import load_run, resolve_device
from qamoe_core.spectrum.engine import CorruptionSpec
from qamoe_core.spectrum.files import corrupt_file
from qamoe_core.training.loop import train
from qamoe_core.version import __version__

log = logging.getLogger(__name__)

MARKER = ".qamoe-demo"


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo; the defaults keep it near one minute on 2 CPU cores."""

    # 800/200/300 samples with short sequences: big enough for curves to separate.
    preset: str = "small"
    # Feature offsets of the synthetic data (‖mean‖/‖std‖ per modality): MOSI-lite's, so that a
    # dropped (zeroed) step is as foreign to the models as on real features. With centred
    # features a zeroed step sits at the mean, and even a model trained only on clean data
    # holds up across the whole missing axis: nothing for a robustness demo to show.
    offset: tuple[tuple[str, float], ...] = tuple(MOSI_LITE_OFFSET.items())
    # One seed for data, models and corruption, so the demo is reproducible.
    seed: int = 0
    # A short schedule: the point is the chain, not the last point of accuracy.
    epochs: int = 12
    baseline: str = "early-fusion"
    # The spectrum point materialised by `corrupt`, applied to audio and vision.
    level: float = 0.4
    corrupt_modalities: tuple[str, ...] = ("audio", "vision")
    # The sweep grid (LNLN's levels) with three corruption seeds, as `qamoe eval --sweep` and
    # LNLN use: the report's curves get seed bands, and the sweeps take ~15 s of the demo.
    levels: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
    corruption_seeds: tuple[int, ...] = (0, 1, 2)
    axes: tuple[str, ...] = ("mixed", "missing", "noise")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InputError(
                f"The 'preset' parameter must be one of {', '.join(PRESETS)}. "
                f"Got {self.preset!r} instead."
            )
        if self.baseline not in baselines():
            raise InputError(
                f"The 'baseline' parameter must be one of {', '.join(baselines())}. "
                f"Got {self.baseline!r} instead."
            )
        if self.epochs < 1:
            raise InputError(f"The 'epochs' parameter must be >= 1. Got {self.epochs} instead.")
        check_level(self.level)
        check_offset(dict(self.offset))

    def stage_count(self) -> int:
        """How many times ``run_demo`` calls ``stage``: extract, a training per model, corrupt,
        an eval of the corrupted copy and a sweep per model, the report."""
        models = 2  # QA-MoE and the baseline (a baseline is never QA-MoE)
        return 1 + models + 1 + 2 * models + 1


@dataclass
class DemoResult:
    out_dir: Path
    report_html: Path
    report_md: Path
    seconds: dict[str, float] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    corrupted_eval: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _own(name: str) -> bool:
    """What a demo writes (what --force replaces; anything else in the folder is kept)."""
    return name in (MARKER, "synthetic.h5", "runs", "report", "demo.json") or (
        name.startswith(("synthetic-", "results-")) and name.endswith((".h5", ".csv"))
    )


KIND = rundir.Kind("demo", MARKER, _own)


def _relocate(built: Path, out: Path, runs: Iterable[Path]) -> None:
    """The runs were trained on the data under the temporary name: record the final one."""
    for run in runs:
        config = json.loads((run / ckpt.CONFIG).read_text(encoding="utf-8"))
        path = Path(config["dataset"]["path"])
        if path.is_relative_to(built.resolve()):
            rel = path.relative_to(built.resolve())
            config["dataset"]["path"] = str(out.resolve() / rel)
            ckpt.write_config(run, config)


def _evaluate(
    model: Any, data: Path, cfg: EvalConfig, name: str, kind: str, device: str
) -> EvalResult:
    return Evaluation(model, data, cfg, run=name, model_name=kind, device=device).run()


def run_demo(
    out_dir: str | os.PathLike[str] = "qamoe-demo",
    cfg: DemoConfig = DemoConfig(),
    *,
    force: bool = False,
    device: str = "auto",
    stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the chain into ``out_dir``; ``stage(text)`` is called as each step starts."""
    out = Path(out_dir)
    resolve_device(device)  # a bad --device fails before any folder is touched
    with rundir.OutputFolder(out, KIND, force=force) as folder:
        (folder.path / MARKER).write_text(f"qamoe {__version__}\n")
        return _run(folder.path, out, cfg, device, stage)


class _Steps:
    """Announces each step and times it (``DemoResult.seconds``)."""

    def __init__(self, stage: Callable[[str], None] | None) -> None:
        self.say = stage or (lambda text: log.info(text))
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, text: str, fn: Callable[[], Any]) -> Any:
        self.say(text)
        t0 = time.perf_counter()
        value = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return value


def _run(
    built: Path, out: Path, cfg: DemoConfig, device: str, stage: Callable[[str], None] | None
) -> DemoResult:
    """The chain, written into ``built`` (the temporary) and described as ``out``."""
    timed = _Steps(stage)
    data = built / "synthetic.h5"
    timed(
        "extract",
        f"extract: synthetic '{cfg.preset}' dataset (offsets {dict(cfg.offset)}) → "
        f"{out / data.name}",
        lambda: write_synthetic(data, preset=cfg.preset, seed=cfg.seed, offset=dict(cfg.offset)),
    )
    train_cfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
    runs = {name: built / "runs" / name for name in (DEFAULT_MODEL, cfg.baseline)}
    for name, run_dir in runs.items():
        timed(
            f"train_{name}",
            f"train: {name} ({cfg.epochs} epochs max) → {out / 'runs' / name}",
            partial(train, data, run_dir, name, ModelConfig(), train_cfg, device=device),
        )
    _relocate(built, out, runs.values())
    level_tag = f"{cfg.level:g}"
    corrupted = built / f"synthetic-{level_tag}.h5"
    spec = CorruptionSpec(level=cfg.level, modalities=cfg.corrupt_modalities, seed=cfg.seed)
    timed(
        "corrupt",
        f"corrupt: level {level_tag} on {'+'.join(cfg.corrupt_modalities)} → "
        f"{out / corrupted.name}",
        lambda: corrupt_file(data, corrupted, spec, splits=["test"]),
    )
    tables, corrupted_eval = _evaluate_runs(runs, data, corrupted, cfg, device, timed)
    results = pd.concat(tables, ignore_index=True)
    report = timed(
        "report",
        f"report: curves and tables → {out / 'report'}",
        lambda: build_report(
            results,
            built / "report",
            title="qamoe demo: QA-MoE vs " + cfg.baseline + " on synthetic data",
            sources=[str(out / f"results-{n}.csv") for n in runs],
        ),
    )
    summary = summarize(results, [default_metric(results)]).to_dict(orient="records")
    result = DemoResult(
        out_dir=out,
        report_html=out / "report" / report.html.name,
        report_md=out / "report" / report.markdown.name,
        seconds=timed.seconds,
        summary=summary,
        corrupted_eval=corrupted_eval,
    )
    (built / "demo.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def _evaluate_runs(
    runs: dict[str, Path], data: Path, corrupted: Path, cfg: DemoConfig, device: str,
    timed: _Steps,
) -> tuple[list[pd.DataFrame], dict[str, dict[str, float]]]:  # fmt: skip
    """Each run on the corrupted copy as given, then swept over the spectrum (results CSVs
    beside the data)."""
    sweep_cfg = EvalConfig(
        sweep=True,
        levels=cfg.levels,
        seeds=cfg.corruption_seeds,
        axes=cfg.axes,
        drop_sets=True,
    )
    tables: list[pd.DataFrame] = []
    corrupted_eval: dict[str, dict[str, float]] = {}
    for name, run_dir in runs.items():
        model, _, meta = load_run(run_dir, device=resolve_device(device))  # once for both evals
        kind = str(meta["model_name"])
        given = timed(
            f"eval_corrupted_{name}",
            f"eval: {name} on {corrupted.name}",
            partial(_evaluate, model, corrupted, EvalConfig(), name, kind, device),
        )
        corrupted_eval[name] = given.clean
        result = timed(
            f"sweep_{name}",
            f"eval --sweep: {name} over {len(cfg.levels)} levels x {len(cfg.axes)} axes x "
            f"{len(cfg.corruption_seeds)} seeds",
            partial(_evaluate, model, data, sweep_cfg, name, kind, device),
        )
        save(result.table, data.parent / f"results-{name}.csv")
        tables.append(result.table)
    return tables, corrupted_eval
