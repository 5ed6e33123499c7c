"""The library API on wrong argument types and values (issue 26, item 9): one QamoeError that
names the parameter and says what it takes, never a TypeError, ValueError or AttributeError
from inside numpy or os, and never a silently wrong answer (a boolean mask read as rows 0/1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qamoe_core as qa
from qamoe_core.base.errors import QamoeError, UsageError


@pytest.fixture(scope="module")
def batch(tiny_h5: Path) -> dict[str, Any]:
    return qa.read_batch(tiny_h5, split="test")


def calls(data: Path, batch: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], str]]:
    """name -> (the call, the parameter its error must name)."""
    corrupt = dict(level=0.3, split="test", source=data)
    return {
        "load_run(int)": (lambda: qa.load_run(5), "path"),
        "load_run(None)": (lambda: qa.load_run(None), "path"),  # type: ignore[arg-type]
        "predict(run=int)": (lambda: qa.predict(7, data), "run"),  # type: ignore[arg-type]
        "read_batch(int)": (lambda: qa.read_batch(3), "source"),  # type: ignore[arg-type]
        "rows=str": (lambda: qa.read_batch(data, rows="abc"), "rows"),
        "rows=float": (lambda: qa.read_batch(data, rows=[1.5, 2.0]), "rows"),
        "rows=int": (lambda: qa.read_batch(data, rows=3), "rows"),
        "rows=2d": (lambda: qa.read_batch(data, rows=[[1, 2]]), "rows"),
        "rows=mask": (lambda: qa.read_batch(data, rows=np.ones(32, bool)), "rows"),
        "rows=slice(str)": (lambda: qa.read_batch(data, rows=slice("a", 3)), "rows"),
        "corrupt(batch=None)": (lambda: qa.corrupt_batch(None, **corrupt), "batch"),  # type: ignore[arg-type]
        "corrupt(batch=list)": (lambda: qa.corrupt_batch([1, 2], **corrupt), "batch"),  # type: ignore[arg-type]
        "corrupt(split=int)": (lambda: qa.corrupt_batch(batch, level=0.3, split=3), "split"),  # type: ignore[arg-type]
        "corrupt(split=typo)": (lambda: qa.corrupt_batch(batch, level=0.3, split="tset"), "split"),
        "corrupt(source=int)": (
            lambda: qa.corrupt_batch(batch, level=0.3, split="test", source=5),  # type: ignore[arg-type]
            "source",
        ),
        "corrupt(chain=str)": (lambda: qa.corrupt_batch(batch, **corrupt, chain="x"), "chain"),  # type: ignore[arg-type]
        "corrupt(chain=-1)": (lambda: qa.corrupt_batch(batch, **corrupt, chain=-1), "chain"),
        "corrupt(train_std=list)": (
            lambda: qa.corrupt_batch(batch, level=0.3, split="test", train_std=[1.0]),  # type: ignore[arg-type]
            "train_std",
        ),
        "corrupt(modalities=int)": (
            lambda: qa.corrupt_batch(batch, **corrupt, modalities=3),  # type: ignore[arg-type]
            "modalities",
        ),
        "metrics(binary, str)": (lambda: qa.compute_metrics(["a"], [1.0], "binary"), "pred"),
    }


CASES = list(calls(Path("x"), {}))


@pytest.mark.parametrize("case", CASES)
def test_wrong_arguments_are_one_qamoe_error(
    case: str, tiny_h5: Path, batch: dict[str, Any]
) -> None:
    fn, param = calls(tiny_h5, batch)[case]
    with pytest.raises(QamoeError) as info:
        fn()
    message = info.value.message
    assert "\n" not in message and f"'{param}'" in message, message
    assert info.value.hint, message
    if case.startswith(("load_run", "read_batch", "rows", "corrupt")):
        assert isinstance(info.value, UsageError)  # exit 2 in the CLI's terms: a bad request


def test_good_arguments_still_work(tiny_h5: Path, batch: dict[str, Any]) -> None:
    rows = qa.read_batch(tiny_h5, split="test", rows=np.array([5, 1], np.int32))
    assert rows["index"].tolist() == [5, 1]
    assert qa.read_batch(tiny_h5, split="test", rows=[])["label"].shape == (0,)
    assert qa.read_batch(tiny_h5, split="test", rows=slice(0, 4, 2))["index"].tolist() == [0, 2]
    one = qa.corrupt_batch(batch, level=0.5, split="test", source=tiny_h5, modalities="audio")
    both = qa.corrupt_batch(batch, level=0.5, split="test", source=tiny_h5, modalities=["audio"])
    assert np.array_equal(one["audio"], both["audio"])
    assert np.array_equal(one["text"], batch["text"]) and not np.array_equal(
        one["audio"], batch["audio"]
    )
    assert qa.corrupt_batch(batch, level=0.5, split="test", source=tiny_h5, chain=np.int64(0))
