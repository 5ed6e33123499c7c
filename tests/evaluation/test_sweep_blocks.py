"""A sweep's results do not depend on how many rows the memory budget lets it read at once.

Mini-batches used to start at each block's first row, so a smaller budget (smaller blocks)
changed which rows shared a batch, and batched products and sums rounded differently: on a
wide-row file a 16 MiB and a 4 GiB budget gave tables that differed by up to 3e-8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qamoe_core.base.errors import TooLargeError
from qamoe_core.base.runtime import BUDGET_ENV
from qamoe_core.data.store import SplitArrays, write_features
from qamoe_core.evaluation.plan import EvalConfig
from qamoe_core.evaluation.results import save
from qamoe_core.evaluation.sweep import Evaluation, evaluate_model
from tests.evaluation.test_sweep import make_model

# (T, D) per modality: ~122 KiB a row, so the smallest budget (16 MiB, four copies of a block)
# holds 33 rows and the 48-row test split needs two blocks; 4 GiB holds it in one.
SHAPES = {"text": (40, 768), "audio": (20, 5), "vision": (20, 20)}
N_TEST = 48


def _split(rng: np.random.Generator, n: int, tag: str) -> SplitArrays:
    features, lengths = {}, {}
    for m, (t, d) in SHAPES.items():
        lens = rng.integers(1, t + 1, n)
        x = rng.standard_normal((n, t, d)).astype(np.float32)
        x *= (np.arange(t)[None, :] < lens[:, None])[:, :, None]  # zero after the valid steps
        features[m], lengths[m] = x, lens
    label = rng.uniform(-3, 3, n).astype(np.float32)
    return SplitArrays([f"{tag}{i}" for i in range(n)], label, features, lengths)


@pytest.fixture(scope="module")
def wide_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("wide") / "wide.h5"
    splits = {"train": _split(rng, 6, "tr"), "valid": _split(rng, 2, "va"),
              "test": _split(rng, N_TEST, "te")}  # fmt: skip
    return write_features(path, splits, dataset="wide", task="regression", scheme="mosi",
                          label_range=(-3.0, 3.0), extractor={"name": "synthetic"})  # fmt: skip


# Batches of 12 (windows of 4): the budget's 33 rows are 8 whole windows but no whole number
# of batches, which is what made the results move.
BASE = EvalConfig(sweep=True, levels=(0.3, 0.7), seeds=(1,), axes=("mixed", "noise"),
                  batch_size=12, shuffle_window=4)  # fmt: skip


@pytest.mark.parametrize(
    "cfg",
    [
        BASE.override(quality_shuffle=False),
        BASE.override(controls=("constant_r", "oracle_r"), residuals=True),
    ],
    ids=["normal-only", "shuffle-controls-residuals"],
)
def test_results_csv_is_the_same_under_any_budget(
    wide_h5: Path, cfg: EvalConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written, blocks = [], []
    for budget in ("4G", "16M"):
        monkeypatch.setenv(BUDGET_ENV, budget)
        blocks.append(Evaluation(make_model(wide_h5), wide_h5, cfg).n_blocks)
        table = evaluate_model(make_model(wide_h5), wide_h5, cfg).table
        written.append(save(table, tmp_path / f"results-{budget}.csv").read_bytes())
    assert blocks == [1, 2]  # the budget does change the blocking...
    assert b"quality_shuffle" in written[0] or not cfg.quality_shuffle
    assert written[0] == written[1]  # ...and nothing else


@pytest.mark.parametrize(
    ("cfg", "what"),
    [
        (BASE.override(batch_size=40, quality_shuffle=False), "a mini-batch of 40 row(s)"),
        # lcm(12, 32) = 96 rows: more than the split, so the block must be all 48 of them.
        (BASE.override(shuffle_window=32), "whole quality-shuffle windows) of 48 row(s)"),
    ],
    ids=["batch", "shuffle-window"],
)
def test_budget_below_one_batch_is_refused(
    wide_h5: Path, cfg: EvalConfig, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the block was cut to the 33 rows that fit, mid-batch; now the batch is whole or
    # the evaluation is refused, in one line naming the budget.
    monkeypatch.setenv(BUDGET_ENV, "16M")
    with pytest.raises(TooLargeError) as err:
        Evaluation(make_model(wide_h5), wide_h5, cfg)
    message = str(err.value)
    assert what in message and "memory budget of 16 MiB" in message and "\n" not in message
