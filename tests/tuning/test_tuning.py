"""qamoe_core.tuning without trainings: the space and its checks, the default spaces, the
probe of used fields, the objective, and the grouped folds and their files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from qamoe_core.base.errors import ConfigUsageError, InputError, UsageError
from qamoe_core.config import ModelConfig
from qamoe_core.data.audit import DEFAULT_GROUP_REGEX, compile_group_regex, group_of
from qamoe_core.data.store import FeatureFile
from qamoe_core.models import get as model_class
from qamoe_core.models.registry import builtin_names
from qamoe_core.tuning import defaults, folds, objective, space
from qamoe_core.tuning.probe import used_fields

REPO = Path(__file__).resolve().parents[2]
DIMS = {"text": 6, "audio": 5, "vision": 4}


def ctx(
    model: str = "early-fusion", used: frozenset[str] | None = None, **base: Any
) -> space.Context:
    return space.Context(model, model_class(model).Options, base, {}, used)


def check(doc: dict[str, Any], c: space.Context | None = None) -> space.Space:
    return space.check_space(doc, c or ctx(), "'s.toml'")


# --- the space ---------------------------------------------------------------------------------


def test_a_space_resolves_types_and_applies_to_the_base() -> None:
    sp = check(
        {
            "train": {
                "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                "train_levels": {"choices": [[0.0, 1.0], [0.3, 0.3]]},
            },
            "model": {
                "n_layers": {"low": 0, "high": 2},
                "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
            },
        }
    )
    by = {p.path: p for p in sp.params}
    assert [p.path for p in sp.params] == sorted(by)
    assert by["model.n_layers"].integer and not by["train.lr"].integer and by["train.lr"].log
    assert by["train.train_levels"].listy
    dists = sp.distributions()
    assert type(dists["model.n_layers"]).__name__ == "IntDistribution"
    assert type(dists["train.train_levels"]).__name__ == "CategoricalDistribution"
    values = {
        "train.lr": 0.003,
        "model.n_layers": 2,
        "model.dropout": 0.2,
        "train.train_levels": "[0.3, 0.3]",
    }
    model_d, train_d = sp.apply({"d_model": 16}, {"epochs": 3}, values)
    assert model_d == {"d_model": 16, "n_layers": 2, "dropout": 0.2}
    assert train_d == {"epochs": 3, "lr": 0.003, "train_levels": [0.3, 0.3]}


def test_model_options_are_entries_of_their_own() -> None:
    sp = check({"model": {"options": {"rank": {"choices": [3, 4]}}}}, ctx("lmf"))
    assert [p.path for p in sp.params] == ["model.options.rank"]
    model_d, _ = sp.apply({"options": {"text_hidden": 64}}, {}, {"model.options.rank": 4})
    assert model_d["options"] == {"text_hidden": 64, "rank": 4}


@pytest.mark.parametrize(
    ("doc", "model", "words"),
    [
        (
            {"model": {"dropot": {"low": 0, "high": 0.5}}},
            "early-fusion",
            ["'model.dropot'", "model.dropout"],
        ),
        (
            {"train": {"lr": {"low": 1e-4, "high": 20.0}}},
            "early-fusion",
            [
                "'train.lr' high",
                "The 'lr' parameter must be a float in [1e-08, 10]. Got 20.0 instead.",
            ],
        ),
        (
            {"model": {"dropout": {"low": 0.0, "high": 1.2}}},
            "early-fusion",
            ["The 'dropout' parameter must be a float in [0, 0.9]. Got 1.2 instead."],
        ),
        ({"model": {"n_layers": {"choices": []}}}, "early-fusion", ["empty choice"]),
        ({"model": {"n_layers": {"low": 0.5, "high": 2}}}, "early-fusion", ["must be an integer"]),
        (
            {"model": {"dropout": {"low": 0.0, "high": 0.5}}},
            "tfn",
            ["'model.dropout', which the model 'tfn' does not use", "model.options.text_hidden"],
        ),
        (
            {"model": {"options": {"rnk": {"choices": [3]}}}},
            "lmf",
            ["'model.options.rnk'", "model.options.rank"],
        ),
        (
            {"train": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
            "early-fusion",
            ["needs low > 0"],
        ),
        (
            {"train": {"lr": {"low": 0.01, "high": 0.001}}},
            "early-fusion",
            ["low must be below high"],
        ),
        ({"train": {"axis": {"low": 0, "high": 1}}}, "early-fusion", ["can only list choices"]),
        (
            {"train": {"axis": {"choices": ["mixed", "nosie"]}}},
            "early-fusion",
            ["Did you mean 'noise'?"],
        ),
        ({"train": {"seed": {"low": 0, "high": 9}}}, "early-fusion", ["may not tune 'train.seed'"]),
        ({"train": {"val_levels": {"choices": [[0.5]]}}}, "early-fusion", ["--levels"]),
        (
            {"model": {"dropout": {"low": 0.0, "hihg": 0.5}}},
            "early-fusion",
            ["unknown key 'hihg'", "high"],
        ),
        (
            {"modle": {"dropout": {"low": 0.0, "high": 0.5}}},
            "early-fusion",
            ["unknown section 'modle'"],
        ),
        (
            {"model": {"dropout": {"low": 0.0, "high": 0.45, "step": 0.1}}},
            "early-fusion",
            ["whole number of steps"],
        ),
        ({"model": {}}, "early-fusion", ["has no entry"]),
    ],
)
def test_bad_spaces_are_one_line_usage_errors(doc: dict, model: str, words: list[str]) -> None:
    used = used_fields(model, ModelConfig(d_model=8, n_heads=2), DIMS, "regression")
    with pytest.raises(UsageError) as err:
        check(doc, ctx(model, used))
    text = f"{err.value.message} {err.value.hint or ''}"
    assert "\n" not in text
    for word in words:
        assert word in text, (word, text)


def test_a_bound_is_checked_on_top_of_the_base_config() -> None:
    # top_k <= num_experts is a relation: with the base's 2 experts, a top_k of 3 is refused
    doc = {"model": {"top_k": {"low": 1, "high": 3}}}
    check(doc, ctx("qamoe"))
    with pytest.raises(ConfigUsageError, match=r"'model.top_k' high: The 'top_k' parameter"):
        check(doc, ctx("qamoe", num_experts=2))


def test_the_space_file_reader(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        "model.dropout = {low = 0.0, high = 0.5}\n[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n"
    )
    doc = space.read_toml(path)
    assert [p for p, _ in space.entries(doc, "x")] == ["model.dropout", "train.lr"]
    path.write_text("[train.lr\n")
    with pytest.raises(Exception, match="not valid TOML"):
        space.read_toml(path)
    with pytest.raises(InputError, match="does not exist"):
        space.read_toml(tmp_path / "missing.toml")


# --- default spaces ----------------------------------------------------------------------------


def test_every_built_in_model_has_a_default_space_that_checks() -> None:
    assert set(defaults.SPACES) == set(builtin_names())
    for model in builtin_names():
        doc, notes = defaults.default_space(model)
        used = used_fields(model, ModelConfig(), DIMS, "regression")
        sp = space.check_space(doc, ctx(model, used), model, notes)
        paths = {p.path for p in sp.params}
        assert {"train.lr", "train.weight_decay"} <= paths, model
        assert any("dropout" in p for p in paths), model
        assert 4 <= len(paths) <= 5 and all(notes[p] for p in paths), model
    with pytest.raises(UsageError, match="no default search space"):
        defaults.default_space("examples.plugin.tiny_model:TinyModel")


def test_docs_list_the_default_spaces() -> None:
    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    assert defaults.markdown_table() in text


def test_the_probe_finds_what_a_model_reads() -> None:
    cfg = ModelConfig(d_model=8, n_heads=2)
    tfn = used_fields("tfn", cfg, DIMS, "regression")
    assert "dropout" not in tfn and "d_model" not in tfn and "nll_weight" in tfn
    fusion = used_fields("early-fusion", cfg, DIMS, "regression")
    assert {"dropout", "d_model", "n_layers"} <= fusion and "top_k" not in fusion
    assert "top_k" in used_fields("qamoe", cfg, DIMS, "regression")  # its own switches: options
    assert "text_lr" not in fusion
    assert "text_lr" in used_fields("early-fusion", cfg, DIMS, "regression", pretrained=True)


# --- objective ---------------------------------------------------------------------------------


def test_the_objective() -> None:
    assert objective.parse_levels("clean, 0.5") == (0.0, 0.5)
    for bad in ("", "0.5,0.5", "1.5", "clear"):
        with pytest.raises(UsageError):
            objective.parse_levels(bad)
    obj = objective.make_objective("auto", (0.0, 0.5), "regression", "mosi")
    assert obj.metric == "MAE" and obj.direction == "minimize"
    assert obj.train_fields() == {"val_levels": [0.0, 0.5], "select_metric": "MAE"}
    assert obj.score({"val": {"0": {"MAE": 1.0}, "0.5": {"MAE": 2.0}}}) == 1.5
    assert objective.make_objective("Corr", (0.5,), "regression", "mosi").direction == "maximize"
    assert objective.make_objective("auto", (0.5,), "binary", "binary").metric == "Acc_2"
    with pytest.raises(UsageError, match="one of Acc_2, F1_score"):
        objective.make_objective("MAE", (0.5,), "binary", "binary")
    mean, se = objective.mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(objective.mean_se([1.0])[1])


# --- folds -------------------------------------------------------------------------------------


def test_grouped_folds_keep_videos_together_and_cover_every_row(
    tiny_h5: Path, tmp_path: Path
) -> None:
    with FeatureFile(tiny_h5) as f:
        data = folds.TrainValid(f)
        plan = folds.plan_folds(data, 3, DEFAULT_GROUP_REGEX, seed=1)
        paths = folds.write_folds(data, plan, tmp_path, "tag")
        ids = data.ids("train") + data.ids("valid")
        n_train = f.n("train")
    assert plan.groups == 10 and len(paths) == 3
    groups, _ = group_of(ids, compile_group_regex(DEFAULT_GROUP_REGEX))
    fold_of = plan.assignment["train"] + plan.assignment["valid"]
    assert all(
        len({fold_of[i] for i, g in enumerate(groups) if g == grp}) == 1 for grp in set(groups)
    )
    seen: list[str] = []
    for k, path in enumerate(paths, start=1):
        with FeatureFile(path) as ff:
            assert ff.splits == ("train", "valid")  # no test split at all
            valid, train = ff.ids("valid"), ff.ids("train")
            assert not set(valid) & set(train) and len(valid) + len(train) == len(ids)
            assert valid == [ids[i] for i in range(len(ids)) if fold_of[i] == k]
            rows = ff.read("train", slice(None))
            steps = np.arange(rows["audio"].shape[1])[None, :] < rows["audio_len"][:, None]
            mean = rows["audio"][steps].mean(0)
            assert np.allclose(ff.train_mean("audio"), mean, atol=1e-4)  # its own train rows
        seen += valid
    assert sorted(seen) == sorted(ids)
    assert len(ids) - n_train == 24


def test_folds_zero_is_the_valid_split_and_too_few_groups_say_how_many(
    tiny_h5: Path, tmp_path: Path
) -> None:
    with FeatureFile(tiny_h5) as f:
        data = folds.TrainValid(f)
        plan = folds.plan_folds(data, 0, DEFAULT_GROUP_REGEX, seed=0)
        (path,) = folds.write_folds(data, plan, tmp_path, "tag")
        with FeatureFile(path) as ff:
            assert ff.ids("train") == f.ids("train") and ff.ids("valid") == f.ids("valid")
        with pytest.raises(InputError, match=r"has 10 video groups in train\+valid; 11 folds"):
            folds.plan_folds(data, 11, DEFAULT_GROUP_REGEX, seed=0)
        assert folds.plan_folds(data, 11, None, seed=0).groups == 88  # rows as groups
        with pytest.raises(AssertionError, match="never reads the 'test' split"):
            data.read("test", np.arange(2))


def test_the_fingerprint_sees_train_and_valid_but_not_test(tiny_h5: Path, tmp_path: Path) -> None:
    def sha(path: Path) -> str:
        with FeatureFile(path) as f:
            return folds.fingerprint(folds.TrainValid(f))

    base = sha(tiny_h5)
    for split, changed in (("test", False), ("valid", True)):
        copy = tmp_path / f"{split}.h5"
        copy.write_bytes(tiny_h5.read_bytes())
        with h5py.File(copy, "r+") as h5:
            h5[f"{split}/label"][0] = 0.123
        assert (sha(copy) != base) == changed, split
