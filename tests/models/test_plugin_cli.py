"""The example plug-in (examples/plugin/) trains, checkpoints and sweeps through the CLI."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest

from qamoe_cli.main import main
from qamoe_core.models import registry

PLUGIN = "examples.plugin.qamoe_example_plugin:MeanPoolModel"
MODEL = {"d_model": 16, "n_heads": 2, "options": {"hidden": 8}}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": MODEL, "train": {"epochs": 2, "batch_size": 32}}))
    return path


def train_and_sweep(
    data: Path, tmp_path: Path, cfg: Path, model: str, allow: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Train ``model`` and sweep the run; ``allow``: eval's --plugin flags."""
    run, results = tmp_path / "run", tmp_path / "results.csv"
    args = ["train", str(data), "--out", str(run), "--config", str(cfg), "--model", model]
    assert main([*args, "-q", "--device", "cpu"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_class"] == PLUGIN and saved["model"]["options"] == {"hidden": 8}
    sweep = ["eval", str(run), "--data", str(data), "--sweep", "--levels", "0,1",
             "--corruption-seeds", "1", "--out", str(results), "-q", "--device", "cpu"]  # fmt: skip
    assert main([*sweep, *(a for spec in allow for a in ("--plugin", spec))]) == 0
    import pandas as pd

    table = pd.read_csv(results)
    assert set(table["level"]) == {0.0, 1.0} and (table["model"] == model).all()
    return table.to_dict(orient="records")


def test_plugin_by_module_path(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = train_and_sweep(tiny_h5, tmp_path, cfg, PLUGIN, allow=(PLUGIN,))
    assert {r["axis"] for r in rows} >= {"mixed", "missing", "noise"}
    # Without --plugin, the class the run names is not imported: one line saying how.
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(tiny_h5), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"allow it with --plugin {PLUGIN}" in err and len(err.splitlines()) == 2
    # --resume with the same (partial) options: they merge into the saved ones, key by key.
    from qamoe_cli.train import _configs

    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"model": {"options": {}}}))
    model_cfg, _ = _configs(partial, True, tmp_path / "run", {})
    assert model_cfg is not None and model_cfg.options == {"hidden": 8}


def test_plugin_by_entry_point(
    tiny_h5: Path,
    tmp_path: Path,
    cfg: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class EntryPoint:
        name, value = "mean-pool", PLUGIN

        def load(self) -> Any:
            return registry._from_path(self.value)

    def entry_points(group: str | None = None, **_: Any) -> list[Any]:
        return [EntryPoint()] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    train_and_sweep(tiny_h5, tmp_path, cfg, "mean-pool")  # installed: no --plugin needed
    # Uninstalled: the run's recorded class is not imported unless allowed...
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    monkeypatch.setattr(registry, "_from_path", _not_installed)
    capsys.readouterr()
    eval_args = ["eval", str(tmp_path / "run"), "--data", str(tiny_h5), "-q"]
    assert main(eval_args) == 1
    err = capsys.readouterr().err
    assert f"names the model class '{PLUGIN}', which is not built in" in err
    assert err.startswith("error:") and len(err.splitlines()) == 2  # error and hint
    # ...and, allowed but not importable here, says so in one line naming it.
    assert main([*eval_args, "--plugin", PLUGIN]) == 1
    err = capsys.readouterr().err
    assert f"trained with the model '{PLUGIN}', which cannot be loaded here" in err
    assert err.startswith("error:") and len(err.splitlines()) == 2


def _not_installed(spec: str) -> Any:
    raise registry.InputError(f"The model plug-in '{spec}' could not be imported (gone).")


def test_unknown_and_broken_models_fail_in_one_line(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", str(tiny_h5), "--out", str(tmp_path / "x"), "--config", str(cfg)]
    assert main([*base, "--model", "mean-pol"]) == 2  # an unknown name is a usage error
    err = capsys.readouterr().err
    assert "error: The '--model' parameter must be one of qamoe" in err and "Traceback" not in err
    assert main([*base, "--model", "nosuch.module:Model"]) == 1
    err = capsys.readouterr().err
    assert "could not be imported (ModuleNotFoundError" in err and len(err.splitlines()) == 2
    assert not (tmp_path / "x").exists()  # nothing written before the name was checked
