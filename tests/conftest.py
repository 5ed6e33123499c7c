"""Shared fixtures: small datasets written once per test session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from qamoe_core.data.synthetic import write_synthetic

# One intra-op thread: the models under test are tiny, and on a shared 2-core machine two
# threads fighting other processes made steps ~50x slower (measured while developing).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, path: Path) -> ModuleType:
    """A script that is not a package module (studies/analyses/*.py), imported by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mosi_lite_dir() -> Path | None:
    """The real MOSI-lite CSVs beside the repository (or $QAMOE_MOSI_LITE), if present."""
    path = Path(os.environ.get("QAMOE_MOSI_LITE", REPO.parent / "shared" / "data" / "mosi-lite"))
    return path if (path / "transcripts.csv").exists() else None


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic 'tiny' preset (64/24/32 samples), read-only for tests."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_synthetic(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic 'small' preset (800/200/300 samples), read-only for tests."""
    path = tmp_path_factory.mktemp("data") / "small.h5"
    write_synthetic(path, preset="small", seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    """A QA-MoE run trained once per session on ``tiny_h5`` (1 epoch), read-only for tests:
    a test that changes a run copies this folder first (shutil.copytree) instead of training
    its own. The modules that share it had each trained this same run (or a smaller one whose
    size their checks never read)."""
    from qamoe_core.config import ModelConfig, TrainConfig
    from qamoe_core.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "qa-tiny"
    model = ModelConfig(d_model=32, n_heads=2, segments=4, num_experts=4, top_k=2)
    train(tiny_h5, out, "qamoe", model, TrainConfig(epochs=1, batch_size=32), device="cpu")
    return out
