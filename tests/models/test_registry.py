"""The model registry: names, plug-ins by path and entry point, options, and bad input."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from qamoe_core.base.errors import CheckpointError, ConfigError, InputError
from qamoe_core.base.names import DEFAULT_MODEL
from qamoe_core.config import ModelConfig
from qamoe_core.models import (
    ModelOptions,
    ModelOutput,
    MultimodalModel,
    build_model,
    check_output,
    class_path,
    complete_config,
    get,
    names,
    option,
    registry,
    resolve,
)
from qamoe_core.runs import checkpoint as ckpt

PLUGIN = "examples.plugin.qamoe_example_plugin:MeanPoolModel"
TINY = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)
DIMS = {"text": 12, "audio": 5, "vision": 7}


class NeedsText(MultimodalModel):
    name = "needs-text"
    needs = ("text",)
    min_modalities = 2


class TupleOutput(MultimodalModel):
    """Breaks the contract: a tuple instead of a ModelOutput."""

    name = "tuple-output"

    def forward(self, batch: Mapping[str, Tensor], clean: Any = None, **_: Any) -> Any:
        b = batch["text"].shape[0]
        return (torch.zeros(b), torch.zeros(b))


class WithOptions(MultimodalModel):
    name = "with-options"

    @dataclass(frozen=True)
    class Options(ModelOptions):
        rank: int = option(4, 1, 64)  # a made-up default for the test


def batch(b: int = 3, dims: Mapping[str, int] = DIMS) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {"label": torch.zeros(b)}
    for m, d in dims.items():
        out[m] = torch.randn(b, 4, d)
        out[f"{m}_len"] = torch.full((b,), 4)
    return out


def one_line(exc: pytest.ExceptionInfo[Any]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_names_list_every_builtin_and_each_resolves() -> None:
    listed = names()
    assert listed[0] == "qamoe" == DEFAULT_MODEL
    assert {"late-fusion", "early-fusion", "dense-moe"} <= set(listed)
    for name in listed:
        assert get(name).name == name


def test_the_baselines_are_a_registry_query() -> None:
    # Our fusion baselines come right after QA-MoE, in the order fusion.py registers them.
    assert registry.baselines() == ("late-fusion", "early-fusion", "dense-moe")
    assert names()[1:4] == registry.baselines()
    assert all(get(n).__module__ == "qamoe_core.models.fusion" for n in registry.baselines())


def test_what_models_declare_is_checked() -> None:
    for name in names():  # every built-in honours its own declarations
        registry._check_declarations(get(name), name)
    assert get("qamoe").loss_weights == {"loss_unc": "unc_weight", "loss_balance": "balance_weight"}

    class Unweighed(MultimodalModel):
        name = "unweighed"
        loss_weights = {"loss_balance": "balance_weight"}  # noqa: RUF012  # not an option

    with pytest.raises(InputError, match="declares the loss_weights") as exc:
        registry._checked(Unweighed, "x.y:Unweighed")
    one_line(exc)


def test_a_choice_is_resolved_once_and_passed_on() -> None:
    choice = resolve("late-fusion")
    assert choice.cls is get("late-fusion") and choice.name == "late-fusion"
    assert resolve(choice) is choice  # a choice made is not looked up again
    assert choice.class_path == "qamoe_core.models.fusion:LateFusion"
    assert isinstance(choice.build(TINY, DIMS, "regression"), choice.cls)
    with pytest.raises(InputError, match="'--model' parameter must be one of qamoe"):
        resolve("late-fusin", "--model")


def test_unknown_name_lists_the_names_and_mentions_plugins() -> None:
    with pytest.raises(InputError, match="'model' parameter must be one of qamoe") as exc:
        get("late-fusin")
    assert "late-fusion" in one_line(exc) and "package.module:ClassName" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nosuchpkg.mod:Model", r"could not be imported \(ModuleNotFoundError"),
        ("examples.plugin.qamoe_example_plugin:Nope", "has no attribute 'Nope'"),
        ("examples.plugin.qamoe_example_plugin:option", "is a function, not a subclass"),
        (":Model", "must be written package.module:ClassName"),
    ],
)
def test_bad_plugin_paths(spec: str, expected: str) -> None:
    with pytest.raises(InputError, match=expected) as exc:
        get(spec)
    one_line(exc)


def test_plugin_by_path() -> None:
    cls = get(PLUGIN)
    assert cls.name == "mean-pool" and class_path(cls) == PLUGIN
    model = build_model(PLUGIN, TINY, DIMS, "regression")
    out = model(batch())
    check_output(out, 3, labelled=True)


class FakeEntryPoint:
    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def load(self) -> Any:
        return registry._from_path(self.value)


def fake_entry_points(points: list[FakeEntryPoint]) -> Any:
    def entry_points(group: str | None = None, **_: Any) -> list[FakeEntryPoint]:
        return points if group == registry.ENTRY_POINT_GROUP else []

    return entry_points


def test_plugin_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [FakeEntryPoint("mean-pool", PLUGIN), FakeEntryPoint("gone", "nosuch.mod:X")]
    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points(points))
    assert names()[-2:] == ("gone", "mean-pool")  # listed without being loaded
    assert get("mean-pool") is get(PLUGIN)
    with pytest.raises(InputError, match=r"'gone = nosuch.mod:X' could not be imported"):
        get("gone")


def test_modalities_a_model_needs() -> None:
    with pytest.raises(InputError, match="needs the modalities text; the data has audio"):
        NeedsText(TINY, {"audio": 5, "vision": 7}, "regression")
    with pytest.raises(InputError, match="needs at least 2 modalities; the data has text"):
        NeedsText(TINY, {"text": 5}, "regression")
    NeedsText(TINY, {"text": 5, "audio": 3}, "regression")  # enough


def test_check_output_names_what_was_expected() -> None:
    model = TupleOutput(TINY, DIMS, "regression")
    with pytest.raises(InputError, match=r"returned a tuple; expected a qamoe_core\.models\.Mod"):
        check_output(model(batch()), 3, labelled=True, name="tuple-output")
    good = ModelOutput(torch.zeros(3), torch.zeros(3), loss=torch.zeros(()))
    check_output(good, 3, labelled=True)
    with pytest.raises(InputError, match=r"returned prediction \(3, 1\); expected .* \(3,\)"):
        check_output(good._replace(prediction=torch.zeros(3, 1)), 3, labelled=True)
    with pytest.raises(InputError, match="returned loss None for a labelled batch"):
        check_output(good._replace(loss=None), 3, labelled=True)
    check_output(good._replace(loss=None), 3, labelled=False)


def test_options_come_from_the_config_and_are_checked() -> None:
    model = WithOptions(TINY.override(options={"rank": 8}), DIMS, "regression")
    assert model.options.rank == 8
    assert WithOptions(TINY, DIMS, "regression").options.rank == 4  # the default
    match = r"'model\.options' for the model 'with-options': rnak"
    with pytest.raises(ConfigError, match=match) as exc:
        WithOptions(TINY.override(options={"rnak": 8}), DIMS, "regression")
    assert "rank" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="'rank' parameter must be an integer in"):
        WithOptions(TINY.override(options={"rank": 0}), DIMS, "regression")
    with pytest.raises(ConfigError, match="for the model 'late-fusion': rank") as exc:
        complete_config("late-fusion", TINY.override(options={"rank": 8}))
    assert "has no options" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="for the model 'qamoe': rank") as exc:
        complete_config("qamoe", TINY.override(options={"rank": 8}))
    assert "quality_gate" in (exc.value.hint or "")  # QA-MoE's switches are its options
    assert complete_config(PLUGIN, TINY).options == {"hidden": 32}


def test_trainer_refuses_a_broken_plugin_in_one_line(tiny_h5: Path, tmp_path: Path) -> None:
    from qamoe_core.config import TrainConfig
    from qamoe_core.training.loop import train

    spec = f"{__name__}:TupleOutput"
    with pytest.raises(InputError, match="returned a tuple; expected") as exc:
        train(tiny_h5, tmp_path / "run", spec, TINY, TrainConfig(epochs=1), device="cpu")
    one_line(exc)


def test_checkpoint_of_a_missing_plugin(tiny_h5: Path, tmp_path: Path) -> None:
    from qamoe_core.config import TrainConfig
    from qamoe_core.training.loop import train

    run = tmp_path / "run"
    train(tiny_h5, run, PLUGIN, TINY, TrainConfig(epochs=1, batch_size=32), device="cpu")
    config = json.loads((run / "config.json").read_text())
    assert config["model_class"] == PLUGIN and config["model"]["options"] == {"hidden": 32}
    model, _, meta = ckpt.load_run(run, plugins=[PLUGIN])
    assert type(model).__name__ == "MeanPoolModel" and meta["model_name"] == PLUGIN
    config["model_name"] = config["model_class"] = "gone_pkg.models:Gone"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"trained with the model 'gone_pkg\.models:Gone'"):
        ckpt.load_run(run, plugins=["gone_pkg.models:Gone"])
