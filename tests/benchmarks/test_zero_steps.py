"""benchmarks/zero_steps.py end to end on the tiny preset: it trains every configuration on
both datasets and prints the JSON its docstring promises. Its main() runs in this process (a
fresh interpreter would only add its start-up)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from benchmarks import zero_steps

pytestmark = pytest.mark.slow


def test_zero_steps_benchmark_prints_its_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["zero_steps.py", "--preset", "tiny", "--seeds", "2", "--epochs", "1",
            "--threads", "1", "--work", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    zero_steps.main()  # --threads 1: what the suite runs torch with anyway
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "tiny" and out["seeds"] == 2
    for ds in ("centred", "mosi-lite-offset"):
        assert set(out[ds]) == {"qamoe", "qamoe+mask", "early-fusion", "early-fusion+mask"}
        for row in out[ds].values():
            assert len(row["val_mae"]["values"]) == 2
            assert all(math.isfinite(v) and v > 0 for v in row["val_mae"]["values"])
            mae = row["test_mae_mixed"]
            assert set(mae) == {"clean", "at_0.5", "at_0.9", "grid_mean"}
            assert all(math.isfinite(v["mean"]) and v["mean"] > 0 for v in mae.values())
    # the runs were kept in --work, with the switch recorded in each run's config
    cfg = json.loads((tmp_path / "centred" / "qamoe+mask-s0" / "config.json").read_text())
    assert cfg["model"]["mask_zero_steps"] is True
    cfg = json.loads((tmp_path / "centred" / "qamoe-s1" / "config.json").read_text())
    assert cfg["model"]["mask_zero_steps"] is False
