"""Issue 26, item 1: a run folder never chooses a module that qamoe imports.

A class named in config.json (``model_name`` or ``model_class``) is imported only when it is
built in, registered through the ``qamoe.models`` entry point group, or allowed by the user
(``--plugin`` / ``plugins=[...]``). Everything else is refused in one line naming the flag.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import qamoe_core as qa
from qamoe_cli.main import main
from qamoe_core.base.errors import CheckpointError, UsageError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.store import FeatureFile
from qamoe_core.models import class_path, get, registry, resolve
from qamoe_core.runs import checkpoint as ckpt

PLUGIN = "examples.plugin.qamoe_example_plugin:MeanPoolModel"
TINY = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
ZEN = "Beautiful is better than ugly"


def write_run(run: Path, data: Path, name: str = "qamoe", **edit: Any) -> Path:
    """A finished-looking run of ``name`` on ``data`` (untrained weights), then ``edit``
    applied to its config.json."""
    with FeatureFile(data) as f:
        dims = {m: int(f.dims[m]) for m in f.modalities}
    choice = resolve(name)
    cfg = choice.complete(TINY)
    model = choice.build(cfg, dims, "regression")
    run.mkdir(parents=True)
    config = ckpt.run_config(choice, cfg, TrainConfig(), dims=dims, task="regression",
                             scheme="mosi", dataset={})  # fmt: skip
    ckpt.write_config(run, {**config, **edit})
    ckpt.save_weights(run, model.state_dict())
    return run


def test_a_module_named_in_config_json_is_not_imported(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = write_run(tmp_path / "run", tiny_h5, model_name="this:Zen")
    sys.modules.pop("this", None)
    assert main(["eval", str(run), "--data", str(tiny_h5), "--device", "cpu", "-q"]) == 1
    captured = capsys.readouterr()
    assert ZEN not in captured.out and ZEN not in captured.err
    assert "this" not in sys.modules
    first, *rest = captured.err.splitlines()
    assert first.startswith("error:") and "'this:Zen'" in first and "--plugin this:Zen" in first
    assert len(rest) == 1 and rest[0].startswith("hint:")
    # The same class through model_class (model_name an unknown plain name) is refused too.
    write_run(tmp_path / "other", tiny_h5, model_name="zen", model_class="this:Zen")
    with pytest.raises(CheckpointError, match="--plugin this:Zen"):
        qa.load_run(tmp_path / "other")
    assert "this" not in sys.modules


def test_a_payload_shipped_in_the_run_folder_never_runs(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "payload-ran"
    run = write_run(tmp_path / "shared_run", tiny_h5, model_name="shared_run.payload:Model",
                    model_class="qamoe_core.models.qamoe:QAMoE")  # fmt: skip
    (run / "payload.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom qamoe_core.models.qamoe import QAMoE as Model\n"
    )
    # As when a user runs Python from the folder holding the downloaded run.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckpointError, match="not allowed") as exc:
        qa.load_run("shared_run")
    assert not marker.exists() and "shared_run.payload" not in sys.modules
    message = exc.value.message
    assert "\n" not in message and "--plugin shared_run.payload:Model" in message
    # Allowed by the user, it loads (and runs: the user said it may).
    loaded = qa.load_run("shared_run", plugins=["shared_run.payload:Model"])
    assert marker.exists() and type(loaded.model).__name__ == "QAMoE"


def test_builtin_names_and_class_paths_need_no_permission(tiny_h5: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "a", tiny_h5, "late-fusion", model_class="gone.module:Renamed")
    assert type(qa.load_run(run).model) is get("late-fusion")
    path = class_path(get("qamoe"))  # a built-in by its class path: no module is imported
    run = write_run(tmp_path / "b", tiny_h5, model_name=path)
    assert type(qa.load_run(run).model) is get("qamoe")


def test_a_plugin_run_loads_with_plugins_or_an_entry_point(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_run(tmp_path / "p", tiny_h5, name=PLUGIN)
    with pytest.raises(CheckpointError, match=f"--plugin {PLUGIN}"):
        ckpt.load_run(run)
    model, _, meta = ckpt.load_run(run, plugins=[PLUGIN])
    assert type(model).__name__ == "MeanPoolModel" and meta["model_name"] == PLUGIN

    class EntryPoint:  # installed: the entry point registers the class
        name, value = "mean-pool", PLUGIN

        def load(self) -> Any:
            return registry._from_path(self.value)

    monkeypatch.setattr(registry, "_entry_points", lambda: {"mean-pool": EntryPoint()})
    assert type(ckpt.load_run(run)[0]).__name__ == "MeanPoolModel"


def test_bad_plugin_flags_are_usage_errors(tiny_h5: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", tiny_h5)
    with pytest.raises(UsageError, match=r"package\.module:ClassName"):
        qa.load_run(run, plugins=["no-colon"])
    with pytest.raises(UsageError, match="list of"):
        qa.load_run(run, plugins="pkg.mod:Cls")  # type: ignore[arg-type]
    args = ["eval", str(run), "--data", str(tiny_h5), "--plugin", "nocolon", "-q"]
    assert main(args) == 2


def test_resume_imports_a_recorded_plugin_only_when_allowed(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qamoe_core.training.loop import train

    run = tmp_path / "run"
    train(tiny_h5, run, PLUGIN, TINY, TrainConfig(epochs=1, batch_size=32), device="cpu")
    config = json.loads((run / "config.json").read_text())
    config["model_name"] = "this:Zen"
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").unlink()  # unfinished: --resume would build the model
    sys.modules.pop("this", None)
    args = ["train", str(tiny_h5), "--out", str(run), "--resume", "-q"]
    assert main([*args, "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert ZEN not in captured.out and "this" not in sys.modules
    assert "--plugin this:Zen" in captured.err
    config["model_name"] = PLUGIN
    (run / "config.json").write_text(json.dumps(config))
    assert main([*args, "--device", "cpu"]) == 1  # the plug-in: allowed only by name
    assert f"--plugin {PLUGIN}" in capsys.readouterr().err
    assert main([*args, "--device", "cpu", "--plugin", PLUGIN]) == 0
