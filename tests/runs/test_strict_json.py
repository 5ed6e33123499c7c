"""metrics.json and history.jsonl are strict JSON (issue 26, item 9): an undefined score (a
correlation of constant predictions) is written as null, never as a bare NaN, and files
of earlier versions that hold one are still read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

import qamoe_core.runs.checkpoint as ckpt
import qamoe_core.training.data as trainsets
from qamoe_cli.main import main


def strict(text: str) -> Any:
    """json.loads as a strict parser (JavaScript, jq) reads: NaN and Infinity are errors."""

    def refuse(name: str) -> NoReturn:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_scores_are_written_as_null(tmp_path: Path) -> None:
    metrics = {
        "val_score": float("nan"),
        "val": {"0.5": {"Corr": np.float32("nan"), "MAE": np.float64(0.75)}},
        "spread": (float("inf"), -float("inf"), 1),
    }
    ckpt.write_metrics(tmp_path, metrics)
    ckpt.write_history(tmp_path, [{"epoch": 1, "val_score": float("nan")}])
    data = strict((tmp_path / ckpt.METRICS).read_text())
    assert data == {"val_score": None, "val": {"0.5": {"Corr": None, "MAE": 0.75}},
                    "spread": [None, None, 1]}  # fmt: skip
    assert strict((tmp_path / ckpt.HISTORY).read_text()) == {"epoch": 1, "val_score": None}


def test_files_with_a_bare_nan_are_still_read(tmp_path: Path) -> None:
    (tmp_path / ckpt.METRICS).write_text('{"val_score": NaN, "best": Infinity, "MAE": 0.5}\n')
    (tmp_path / ckpt.HISTORY).write_text('{"epoch": 1, "val_score": NaN}\n')
    (tmp_path / ckpt.CONFIG).write_text("{}")  # check_run looks for the metrics file only
    assert ckpt.read_metrics(tmp_path) == {"val_score": None, "best": None, "MAE": 0.5}
    assert ckpt.read_history(tmp_path) == [{"epoch": 1, "val_score": None}]


def test_a_run_with_an_undefined_correlation(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    real = trainsets.compute

    def nan_corr(*args: Any, **kwargs: Any) -> dict[str, float]:
        return {**real(*args, **kwargs), "Corr": float("nan")}

    monkeypatch.setattr(trainsets, "compute", nan_corr)
    cfg = tmp_path / "cfg.json"
    model = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}
    cfg.write_text(json.dumps({"model": model, "train": {"epochs": 1, "batch_size": 16}}))
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "-q"]) == 0
    metrics = strict((out / ckpt.METRICS).read_text())
    assert metrics["val_clean"]["Corr"] is None and isinstance(metrics["val_clean"]["MAE"], float)
    for line in (out / ckpt.HISTORY).read_text().splitlines():
        strict(line)
    capsys.readouterr()
    # a finished run resumed shows what metrics.json holds: null is shown as n/a
    assert main(["train", str(tiny_h5), "--out", str(out), "--resume"]) == 0
    assert "n/a" in capsys.readouterr().out
