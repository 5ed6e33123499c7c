"""The job runner and shared settings of the remaining research scripts in benchmarks/.

This file was the MOSI-lite experiment's script. The experiment is now a study
(``qamoe study studies/mosi-lite.toml``) and its analysis tables a reader of the study folder
(``studies/analyses/mosi_lite.py``); the study reproduced the script's tables
(docs/results/mosi-lite/README.md, "Reproduced as a study"). What is left here is what
``mosi_std_experiment.py``, ``mosi_std_patterns.py``, ``mosi_bclstm_cv_experiment.py``,
``text_finetune_experiment.py`` and ``mosi_lite_tune.py`` import: ``qamoe`` commands run as
jobs, one torch thread each, a finished job (its output exists) skipped, a log per job; and
the model, ablation and specialist lists those experiments share. It goes with the last of
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = ("qamoe", "early-fusion", "late-fusion", "dense-moe")
# The ablations of docs/design.md §3.7 as model-config overrides of the QA-MoE defaults (its
# own switches are its options: "model": {"options": {...}}).
ABLATIONS: dict[str, dict[str, Any]] = {
    "qamoe-no-gate": {"options": {"quality_gate": False}},
    "qamoe-no-prior": {"options": {"prior_fallback": False}},
    "qamoe-router-no-quality": {"options": {"router_uses_quality": False}},
    "qamoe-dense-routing": {"top_k": 8},
    # Not ablations of the paper but choices of our reconstruction (docs/design.md §3.3): what the
    # self-supervised uncertainty regresses, and whether that loss may shape the encoders.
    "qamoe-clean-input-target": {"options": {"uncertainty_target": "clean_input"}},
    "qamoe-unc-detached": {"options": {"unc_encoder_grad": False}},
    "qamoe-no-fuse-quality": {"options": {"fuse_uses_quality": False}},
    # All-zero steps as inputs, and no coverage for the quality head: the defaults before
    # mask_zero_steps (at sequence length 1 the only difference is the coverage input).
    "qamoe-no-mask": {"mask_zero_steps": False},
}
SPECIALIST_LEVELS = (0.0, 0.3, 0.6, 0.9)


@dataclass
class Job:
    name: str
    argv: list[str]
    done_when: Path  # the job is skipped when this exists
    log: Path
    seconds: float = 0.0
    skipped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def qamoe_exe() -> str:
    exe = Path(sys.executable).with_name("qamoe")
    if not exe.exists():
        sys.exit(f"error: {exe} not found; run 'bash scripts/setup.sh' first")
    return str(exe)


def train_argv(q: str, data: Path, run: Path, model: str, seed: int, *extra: str) -> list[str]:
    """``qamoe train`` of one run on the CPU, replacing a stale folder (the experiments' form)."""
    return [q, "train", str(data), "--out", str(run), "--model", model, "--seed", str(seed),
            "--device", "cpu", "--quiet", "--force", *extra]  # fmt: skip


def sweep_argv(q: str, run: Path, data: Path, out: Path, name: str, *extra: str) -> list[str]:
    """``qamoe eval --sweep`` of one run into one results file labelled ``name``."""
    return [q, "eval", str(run), "--data", str(data), "--sweep", "--quiet", "--force",
            "--out", str(out), "--name", name, *extra]  # fmt: skip


def pooled_report(
    q: str, files: list[Path], out: Path, title: str, log: Path, figures: str = "png,pdf,svg"
) -> None:
    """``qamoe report`` of the results files that exist, model seeds pooled, into ``out``."""
    argv = [q, "report", *[str(f) for f in files if f.exists()], "--pool-seeds",
            "--out", str(out), "--force", "--title", title, "--figures", figures]  # fmt: skip
    run_all([Job("report", argv, out / "never", log)], 1, "report")


def run_job(job: Job) -> Job:
    if job.done_when.exists():
        job.skipped = True
        return job
    job.log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    with job.log.open("w") as log:
        proc = subprocess.run(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    job.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = job.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{job.name} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return job


def run_all(jobs: list[Job], workers: int, stage: str) -> list[Job]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(run_job, jobs))
    ran = [j for j in done if not j.skipped]
    print(
        f"[{stage}] {len(ran)} ran, {len(done) - len(ran)} already done, "
        f"{time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return done


def write_config(path: Path, model: dict[str, Any], train: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format_version": 1, "model": model, "train": train}, indent=2))
    return path
