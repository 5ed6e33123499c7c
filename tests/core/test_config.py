"""ModelConfig / TrainConfig: validation, JSON round trip, precedence, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qamoe_core.base.errors import ConfigError
from qamoe_core.config import ModelConfig, TrainConfig, from_json, resolve, to_json


def test_defaults_follow_design() -> None:
    from qamoe_core.models import get

    m = ModelConfig()
    assert (m.d_model, m.num_experts, m.top_k) == (128, 8, 3)
    q = get("qamoe").Options()  # QA-MoE's own switches live in its Options
    assert q.quality_gate and q.prior_fallback and q.router_uses_quality
    assert q.uncertainty_target == "clean_encoding"
    assert (q.unc_weight, q.balance_weight) == (0.1, 0.01)
    t = TrainConfig()
    assert t.clean_fraction == 0.5 and t.val_levels == (0.5,) and t.axis == "mixed"


def test_json_round_trip(tmp_path: Path) -> None:
    m = ModelConfig(d_model=64, top_k=2, options={"quality_gate": False})
    t = TrainConfig(epochs=3, val_levels=(0.25, 0.75), corrupt_modalities=("audio",))
    path = tmp_path / "cfg.json"
    to_json(path, m, t)
    m2, t2 = from_json(path)
    assert (m2, t2) == (m, t)
    assert json.loads(path.read_text())["format_version"] == 1


def test_precedence_defaults_file_flags(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"d_model": 64}, "train": {"epochs": 7, "lr": 0.01}}))
    m, t = resolve(path, {"top_k": 2}, {"epochs": 3, "seed": None})
    assert m.d_model == 64 and m.top_k == 2  # file, flag
    assert t.epochs == 3 and t.lr == 0.01  # flag beats file; file beats default
    assert t.seed == TrainConfig().seed  # None = flag not given


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("quality_gate", "yes", r"'quality_gate' parameter must be a boolean"),
        ("uncertainty_target", "labels", r"one of clean_encoding, clean_input"),
        ("unc_weight", -1.0, r"'unc_weight' parameter must be a float in \[0, 1e\+06\]"),
    ],
)
def test_qamoe_options_are_checked(field: str, value: object, expected: str) -> None:
    from qamoe_core.models import complete_config

    with pytest.raises(ConfigError, match=expected):
        complete_config("qamoe", ModelConfig(options={field: value}))


def test_a_qamoe_switch_at_the_top_of_the_model_section_points_to_options(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"d_model": 64, "quality_gate": False}}))
    with pytest.raises(ConfigError) as exc:
        from_json(path)
    message = exc.value.message
    assert "\n" not in message and "in section 'model': quality_gate." in message
    assert "goes in model.options" in message and '"options": {"quality_gate": ...}' in message
    with pytest.raises(ConfigError, match=r"goes in model\.options"):
        ModelConfig().override(unc_weight=0.5)
    path.write_text(json.dumps({"model": {"options": {"quality_gate": False}}}))
    assert from_json(path)[0].options == {"quality_gate": False}


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"d_modle": 64}}))
    with pytest.raises(ConfigError, match="d_modle") as exc:
        from_json(path)
    assert exc.value.hint is not None and "d_model" in exc.value.hint
    path.write_text(json.dumps({"optimizer": {}}))
    with pytest.raises(ConfigError, match="optimizer"):
        from_json(path)


@pytest.mark.parametrize(
    ("cls", "field", "value", "expected"),
    [
        (ModelConfig, "dropout", 1.5, r"The 'dropout' parameter must be a float in \[0, 0.9\]"),
        (ModelConfig, "d_model", 64.5, r"'d_model' parameter must be an integer"),
        (ModelConfig, "mask_zero_steps", "yes", r"'mask_zero_steps' parameter must be a boolean"),
        (ModelConfig, "text_pooling", "labels", r"one of tokens, mean, cls"),
        (TrainConfig, "clean_fraction", -0.1, r"'clean_fraction' parameter must be a float"),
        (TrainConfig, "val_levels", [0.5, 2.0], r"'val_levels' parameter must be a list"),
        (TrainConfig, "epochs", 0, r"'epochs' parameter must be an integer in \[1, 100000\]"),
        (TrainConfig, "corrupt_modalities", ["smell"], r"among text, audio, vision"),
    ],
)
def test_out_of_range_is_sklearn_style(cls: type, field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as exc:
        cls(**{field: value})
    assert f"Got {value!r} instead." in exc.value.message


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match=r"top_k.*num_experts=4"):
        ModelConfig(num_experts=4, top_k=5)
    with pytest.raises(ConfigError, match="divisible by 'n_heads'"):
        ModelConfig(d_model=30, n_heads=4)
    ModelConfig(num_experts=4, top_k=4)  # dense is allowed
    with pytest.raises(ConfigError, match=r"'train_levels'.*\[0.6, 0.3\]"):
        TrainConfig(train_levels=(0.6, 0.3))
    with pytest.raises(ConfigError, match=r"'train_levels'.*\[0.5\]"):
        TrainConfig(train_levels=(0.5,))
    with pytest.raises(ConfigError, match=r"'train_levels' parameter must be a list"):
        TrainConfig(train_levels=(0.2, 1.5))
    assert TrainConfig(train_levels=[0.3, 0.3]).train_levels == (0.3, 0.3)


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        from_json(path)
    with pytest.raises(ConfigError, match="does not exist"):
        from_json(tmp_path / "nope.json")
    path.write_text(json.dumps({"model": [1, 2]}))
    with pytest.raises(ConfigError, match="must be a JSON object"):
        from_json(path)


def test_override_ignores_none_and_rejects_unknown() -> None:
    t = TrainConfig().override(epochs=5, lr=None)
    assert t.epochs == 5 and t.lr == TrainConfig().lr
    with pytest.raises(ConfigError, match="epoch"):
        TrainConfig().override(epoch=5)


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    """The error's message, checked to be one line with a one-line hint (the CLI's contract)."""
    message, hint = exc.value.message, exc.value.hint
    assert "\n" not in message and hint and "\n" not in hint
    return message


@pytest.mark.parametrize(
    ("version", "expected", "hint"),
    [
        (99, r"has format_version 99; this qamoe reads 1\.", "upgrade qamoe"),
        (0, r"has format_version 0; this qamoe reads 1\.", '"format_version": 1'),
        ("1", r"'format_version' of .* must be an integer\. Got '1' instead\.", "reads"),
        (True, r"'format_version' of .* must be an integer\. Got True instead\.", "reads"),
    ],
)
def test_format_version_is_checked_without_format_key(
    tmp_path: Path, version: object, expected: str, hint: str
) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"format_version": version, "train": {"epochs": 3}}))
    for load in (from_json, resolve):
        with pytest.raises(ConfigError, match=expected) as exc:
            load(path)
        assert f"'{path}'" in one_line(exc) and hint in (exc.value.hint or "")
    path.write_text(json.dumps({"format_version": 1, "train": {"epochs": 3}}))
    assert resolve(path)[1].epochs == 3


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"The config file '.*' is a directory, not a JSON"
    ) as exc:
        resolve(tmp_path)
    assert "does not exist" not in one_line(exc) and "config.json" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("content", "expected", "hint"),
    [
        (None, r"The config file '.*' does not exist\.", "--config"),
        ([1, 2], r"must hold a JSON object\. Got a JSON list instead\.", '"model": {...}'),
        ({"model": [1, 2]}, r"The 'model' section of .* must be a JSON object\.", '"d_model"'),
        ({"train": 3}, r"The 'train' section of .* must be a JSON object\.", '"epochs"'),
        ({"model": {"d_model": 30, "n_heads": 4}}, r"divisible by 'n_heads' \(4\)", "d_model 32"),
        (
            {"train": {"corrupt_modalities": ["text", "text"]}},
            r"'corrupt_modalities' parameter names a modality twice\. Got \['text', 'text'\]",
            "each modality once",
        ),
        ({"train": {"select_metric": "R2"}}, r"'select_metric' parameter must be one of", "scheme"),
    ],
)
def test_config_errors_have_hints(
    tmp_path: Path, content: object, expected: str, hint: str
) -> None:
    path = tmp_path / "cfg.json"
    if content is not None:
        path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=expected) as exc:
        resolve(path)
    one_line(exc)
    assert hint in (exc.value.hint or "")


def test_section_that_is_not_an_object_has_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"The 'train' section must be a JSON object") as exc:
        TrainConfig.from_dict([1], "train")  # type: ignore[arg-type]
    one_line(exc)
    assert '"train": {"epochs": 30}' in (exc.value.hint or "")
