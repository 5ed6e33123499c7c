"""`qamoe train` refuses what `qamoe audit` refuses (issue 26, item 9): a train split with one
sample, one label value or (binary) fewer than 2 of a class; one rule, in audit.py. A valid
or test split with a single label value trains, with a warning naming the split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qamoe_cli.main import main
from qamoe_core.base.errors import QamoeError
from qamoe_core.data.audit import audit
from qamoe_core.data.store import SplitArrays, write_features
from qamoe_core.data.synthetic import generate

Edit = Callable[[dict[str, SplitArrays]], None]


def first_rows(split: str, n: int) -> Edit:
    def edit(splits: dict[str, SplitArrays]) -> None:
        a = splits[split]
        a.ids, a.label = list(a.ids)[:n], a.label[:n]
        a.features = {m: v[:n] for m, v in a.features.items()}
        a.lengths = {m: v[:n] for m, v in a.lengths.items()}

    return edit


def constant(split: str, value: float) -> Edit:
    def edit(splits: dict[str, SplitArrays]) -> None:
        splits[split].label = np.full(len(splits[split]), value, np.float32)

    return edit


def one_positive(splits: dict[str, SplitArrays]) -> None:
    label = np.zeros(len(splits["train"]), np.float32)
    label[0] = 1.0
    splits["train"].label = label


def make(path: Path, edit: Edit, binary: bool = False) -> Path:
    splits = generate("tiny", seed=0)
    if binary:
        for a in splits.values():
            a.label = (a.label > 0).astype(np.float32)
    edit(splits)
    write_features(path, splits, dataset="t", task="binary" if binary else "regression",
                   scheme="binary" if binary else "mosi",
                   label_range=(0.0, 1.0) if binary else (-3.0, 3.0), extractor={})  # fmt: skip
    return path


ARGS = ["--epochs", "1", "--batch-size", "16", "--device", "cpu", "-q"]


@pytest.mark.parametrize(
    ("edit", "binary", "said"),
    [
        (first_rows("train", 1), False, "(1 sample); there is nothing to predict"),
        (constant("train", 1.5), False, "every train label is 1.5 (64 samples)"),
        (one_positive, True, "63 negative and 1 positive labels; training needs at least 2"),
    ],
    ids=["one-sample", "one-value", "one-positive"],
)
def test_train_refuses_what_audit_refuses(
    tmp_path: Path, edit: Edit, binary: bool, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make(tmp_path / "d.h5", edit, binary)
    with pytest.raises(QamoeError):
        audit(data)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), *ARGS]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and said in lines[0] and str(data) in lines[0], lines
    assert lines[1] == (
        f"hint: `qamoe audit {data}` shows what each split holds; re-import the data with "
        "a train split that varies."
    )
    assert not out.exists()


def test_a_valid_split_with_one_label_value_trains_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from qamoe_core.config import ModelConfig, TrainConfig
    from qamoe_core.training.loop import train

    data = make(tmp_path / "d.h5", constant("valid", 0.5))
    model = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
    with caplog.at_level(logging.WARNING, logger="qamoe_core.training.loop"):
        result = train(data, tmp_path / "run", "qamoe", model, TrainConfig(epochs=1), device="cpu")
    assert result["epochs_run"] == 1
    warned = [r.getMessage() for r in caplog.records if "[valid]" in r.getMessage()]
    assert len(warned) == 1 and "every label is 0.5 (24 sample(s))" in warned[0]
    assert not any("[test]" in r.getMessage() for r in caplog.records)
