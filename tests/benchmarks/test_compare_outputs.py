"""scripts/compare_outputs.py: the renovation's same-outputs check between two folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_outputs.py"
spec = importlib.util.spec_from_file_location("compare_outputs", SCRIPT)
assert spec is not None and spec.loader is not None
cmp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cmp)


def _run(root: Path, seconds: float, weight: float) -> None:
    root.mkdir()
    (root / "same.csv").write_text("a,b\n1,2\n")
    meta = {"path": str(root / "x.h5"), "train_seconds": seconds, "MAE": 0.5}
    (root / "metrics.json").write_text(json.dumps(meta))
    torch.save(
        {"w": torch.tensor([weight]), "data": str(root), "seconds": seconds}, root / "model.pt"
    )


def test_paths_and_timings_are_set_aside_but_values_are_not(tmp_path: Path) -> None:
    _run(tmp_path / "old", 1.5, 1.0)
    _run(tmp_path / "new", 9.0, 1.0)
    assert cmp.compare(tmp_path / "old", tmp_path / "new") == {
        "byte-identical": 1,
        "same up to paths/timings": 1,
        "same tensors": 1,
        "different": 0,
        "missing": 0,
    }
    _run(tmp_path / "changed", 1.5, 2.0)  # one weight differs
    (tmp_path / "changed" / "same.csv").unlink()
    got = cmp.compare(tmp_path / "old", tmp_path / "changed")
    assert got["different"] == 1 and got["missing"] == 1


def test_a_runs_environment_is_set_aside_present_or_not(tmp_path: Path) -> None:
    """Two checkouts or machines record different versions and commits; an older run has none."""
    for name, env in (("old", None), ("a", {"git_commit": "1" * 40}), ("b", {"git_commit": "2"})):
        (tmp_path / name).mkdir()
        config = {"model": {"d": 16}, "train": {"lr": 0.001}}
        if env is not None:
            config["environment"] = {"torch": "2.13.0", "python": "3.11.7", **env}
        (tmp_path / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    assert cmp.compare(tmp_path / "old", tmp_path / "a")["different"] == 0
    assert cmp.compare(tmp_path / "a", tmp_path / "b")["different"] == 0
    (tmp_path / "b" / "config.json").write_text(json.dumps({"model": {"d": 32}}))
    assert cmp.compare(tmp_path / "a", tmp_path / "b")["different"] == 1


def test_the_recorded_environment_is_set_aside_but_a_metric_next_to_it_is_not(
    tmp_path: Path,
) -> None:
    env = {"threads": 2, "wait_policy": "unset", "busy_at_start": 0.2, "torch": "2.13.0+cpu"}
    for name, extra in (
        ("old", {}),
        ("new", {"environment": env}),
        ("other", {"environment": {**env, "threads": 1}}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"MAE": 0.5, **extra}, indent=2))
    same = cmp.compare(tmp_path / "old", tmp_path / "new")
    assert same["same up to paths/timings"] == 1 and same["different"] == 0
    assert cmp.compare(tmp_path / "new", tmp_path / "other")["different"] == 0
    (tmp_path / "other" / "metrics.json").write_text(json.dumps({"MAE": 0.6, "environment": env}))
    assert cmp.compare(tmp_path / "new", tmp_path / "other")["different"] == 1
