"""`qamoe export`: a run as a Hub model folder that `qamoe eval` and `qa.load_run` read."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import qamoe_core as qa
from qamoe_cli.main import main
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.runs.export import MARKER, export_run


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "qa-export"
    result = export_run(tiny_run, out)
    assert result["files"] == ["config.json", "model.safetensors", "metrics.json", "README.md"]
    return out


def _errors(err: str) -> list[str]:
    """The lines of a refusal: one error line and its hint, never a traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[0].startswith("error: ")
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), lines
    return lines


def test_the_folder_holds_the_run_without_its_records(tiny_run: Path, exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert names == {MARKER, "config.json", "model.safetensors", "metrics.json", "README.md"}
    for name in ("config.json", "model.safetensors", "metrics.json"):
        assert (exported / name).read_bytes() == (tiny_run / name).read_bytes()


def test_eval_on_the_export_gives_the_runs_metrics(
    tiny_run: Path, exported: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(exported), "--data", str(tiny_h5), "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)["metrics"]
    expected = ckpt.read_metrics(tiny_run)["test_clean"]
    shared = [m for m in expected if m != "loss"]
    assert shared and all(m in scores for m in shared)
    assert {m: scores[m] for m in shared} == {m: expected[m] for m in shared}


def test_predict_is_identical(tiny_run: Path, exported: Path, tiny_h5: Path) -> None:
    a = qa.predict(qa.load_run(tiny_run), tiny_h5)
    b = qa.predict(qa.load_run(exported), tiny_h5)
    assert a.shape == (32,) and np.array_equal(a, b)


def test_card_front_matter_data_hash_scores_and_commands(
    tiny_run: Path, exported: Path, tiny_h5: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    card = (exported / "README.md").read_text(encoding="utf-8")
    config = json.loads((tiny_run / "config.json").read_text(encoding="utf-8"))
    front = card.split("---\n")[1]
    assert card.startswith("---\n") and "library_name: qamoe\n" in front and "tags:\n" in front
    assert "license" not in front  # none given
    assert config["dataset"]["sha256"] in card and config["dataset"]["name"] in card
    test_mae = ckpt.read_metrics(tiny_run)["test_clean"]["MAE"]
    assert "| MAE | " in card and f"{test_mae:.4f} |" in card
    assert "reliability" not in card.lower()
    assert 'qa.load_run("qa-export")' in card
    # The card's own command, run where it says: beside the folder, with the data file.
    (line,) = [ln for ln in card.splitlines() if ln.startswith("qamoe eval ")]
    shutil.copy(tiny_h5, exported.parent / tiny_h5.name)
    monkeypatch.chdir(exported.parent)
    assert main([*shlex.split(line)[1:], "--json", "--device", "cpu"]) == 0
    scores = json.loads(capsys.readouterr().out)["metrics"]
    assert scores["MAE"] == test_mae


def test_sweep_draws_the_reliability_figure_and_license(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "sweep.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5"]
    assert main([*args, "--axis", "mixed", "--corruption-seeds", "1", "--out", str(table),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "hub"
    cmd = ["export", str(tiny_run), "--out", str(out), "--sweep", str(table), "--license", "mit"]
    assert main([*cmd, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reliability"] is True and "reliability.png" in result["files"]
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "\nlicense: mit\n" in card.split("---\n")[1]
    assert "](reliability.png)" in card and "Has0_acc_2" in card
    # Exported again without the table: --force replaces the export, keeps the user's files,
    # and the old figure (the export's own) goes with it.
    (out / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert main(["export", str(tiny_run), "--out", str(out), "--force"]) == 0
    assert (out / ".gitattributes").read_text() == "*.safetensors filter=lfs\n"
    assert not (out / "reliability.png").exists()
    assert "license" not in (out / "README.md").read_text(encoding="utf-8").split("---\n")[1]


def test_an_older_runs_model_pt_is_converted(tiny_run: Path, tmp_path: Path, tiny_h5: Path) -> None:
    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old)
    weights = safetensors.torch.load_file(old / "model.safetensors")
    torch.save(weights, old / "model.pt")
    (old / "model.safetensors").unlink()
    out = tmp_path / "hub"
    assert export_run(old, out)["files"][1] == "model.safetensors"
    assert not (out / "model.pt").exists()
    converted = safetensors.torch.load_file(out / "model.safetensors")
    assert converted.keys() == weights.keys()
    assert all(torch.equal(converted[k], weights[k]) for k in weights)
    a = qa.predict(qa.load_run(tiny_run), tiny_h5)
    assert np.array_equal(a, qa.predict(qa.load_run(out), tiny_h5))


def test_refusals(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in tiny_run.iterdir())
    assert main(["export", str(tiny_run), "--out", str(tiny_run)]) == 2  # usage: exit 2
    assert "is the run folder itself" in _errors(capsys.readouterr().err)[0]
    assert main(["export", str(tiny_run), "--out", str(tiny_run), "--force"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for extra in ([], ["--force"]):
        assert main(["export", str(tiny_run), "--out", str(mine), *extra]) == 1
        assert "is not a qamoe export" in _errors(capsys.readouterr().err)[0]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    other_run = tmp_path / "other-run"
    shutil.copytree(tiny_run, other_run)
    assert main(["export", str(tiny_run), "--out", str(other_run), "--force"]) == 1
    assert "holds a training run" in _errors(capsys.readouterr().err)[0]
    assert not (other_run / MARKER).exists()
    out = tmp_path / "hub"
    assert main(["export", str(tiny_run), "--out", str(out), "--license", "mit\nx: y"]) == 2
    assert "not a license identifier" in _errors(capsys.readouterr().err)[0]
    assert not out.exists()
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert main(["export", str(tiny_run), "--out", str(out)]) == 1  # exists, no --force
    assert "--force" in _errors(capsys.readouterr().err)[1]


def test_unfinished_run_is_refused(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    (partial / "metrics.json").unlink()
    assert main(["export", str(partial), "--out", str(tmp_path / "hub")]) == 1
    assert "metrics.json" in _errors(capsys.readouterr().err)[0]
    assert not (tmp_path / "hub").exists()
