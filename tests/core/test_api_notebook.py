"""The notebook face of qamoe_core: dir() lists it; train, sweep, report, load_results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import qamoe_core as qa
from qamoe_core.base.errors import ConfigError, QamoeError, UsageError

NEW = ("train", "sweep", "write_report", "load_results")


def test_dir_lists_the_lazy_functions_before_first_use() -> None:
    code = "import qamoe_core as qa, sys; print(sorted(dir(qa))); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed, torch_loaded = out.stdout.splitlines()
    for name in (*NEW, "load_run", "predict", "read_batch", "corrupt_batch", "compute_metrics"):
        assert f"'{name}'" in listed, name
    assert torch_loaded == "False"


def test_train_sweep_report_in_a_notebook(tiny_h5: Path, tmp_path: Path) -> None:
    small = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}
    metrics = qa.train(tiny_h5, tmp_path / "run", model_config=small,
                       train_config={"epochs": 1, "batch_size": 32})  # fmt: skip
    assert "test_clean" in metrics
    table = qa.sweep(tmp_path / "run", tiny_h5, levels="0,0.5", axis="missing",
                     corruption_seeds=1, out=tmp_path / "r.csv")  # fmt: skip
    assert set(table["axis"]) >= {"missing"}
    again = qa.load_results(tmp_path / "r.csv")
    assert len(again) == len(table)
    rep = qa.write_report(tmp_path / "r.csv", tmp_path / "rep")
    assert Path(rep.html).is_file() and rep.images


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: qa.train(3, "out"), "The 'data' parameter must be a path"),
        (lambda: qa.train("d.h5", "o", train_config=[1]), "'train_config' parameter must be"),
        (lambda: qa.sweep("r", "d.h5", levels="0:2:1"), "'levels' parameter must be"),
        (lambda: qa.sweep("r", "d.h5", corruption_seeds="3"), "'corruption_seeds' parameter"),
        (lambda: qa.load_results([None]), "The 'paths' parameter must be a path"),
    ],
)
def test_bad_arguments_are_one_line(call: object, words: str) -> None:
    with pytest.raises(QamoeError) as exc:
        call()  # type: ignore[operator]
    assert isinstance(exc.value, UsageError | ConfigError)
    assert words in exc.value.message and "\n" not in exc.value.message


def test_a_batch_without_text_len_is_one_line(tiny_h5: Path, tmp_path: Path) -> None:
    batch = qa.read_batch(tiny_h5, split="test", rows=slice(0, 4))
    del batch["text_len"]
    with pytest.raises(UsageError) as exc:
        qa.corrupt_batch(batch, level=0.3, split="test", source=tiny_h5)
    assert "text_len" in exc.value.message and "\n" not in exc.value.message


def test_the_api_names_survive_importing_every_stage_package() -> None:
    """A submodule import sets the package attribute of its name: an API function named like a
    stage package (``report``) would be replaced by the package once anything imported it."""
    import importlib

    for pkg in ("base", "data", "spectrum", "text", "models", "runs", "training", "evaluation",
                "report", "tuning", "study"):  # fmt: skip
        importlib.import_module(f"qamoe_core.{pkg}")
    for name in NEW:
        assert callable(getattr(qa, name)), name
