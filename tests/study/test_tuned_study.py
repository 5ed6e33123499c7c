"""A study with a tuned arm through the CLI (studies/tiny-tuned.toml with one model seed): the
tuning runs first, the tuned arm's runs train at its best.json, the table states the budget,
the test split is not read while tuning, a rerun does nothing, and a changed budget
invalidates the tuned arm's cells only. With --jobs 1 the tuning's trainings run in the
study's process (where the guard on test reads is), the cells as children."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import pytest

import qamoe_core.tuning.api as tune_api
from qamoe_cli.main import main
from tests.cli.test_study_cli import slurm  # noqa: F401  (the fixture: a one-node SLURM)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "studies" / "tiny-tuned.toml"


def run_cli(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    """main(args) with --json: (exit status, the JSON printed, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"])
    text = out.getvalue()
    return code, (json.loads(text) if code == 0 and text.strip() else None), err.getvalue()


@contextlib.contextmanager
def guard_test_reads() -> Iterator[list[str]]:
    """Every read of a dataset under /test/ made (in this process) while a tuning runs is
    listed, and fails."""
    reads: list[str] = []
    tuning = {"on": False}
    read, run_tuning = h5py.Dataset.__getitem__, tune_api.run_tuning

    def guarded(self: h5py.Dataset, key: object) -> object:
        if tuning["on"] and str(self.name).startswith("/test/"):
            reads.append(str(self.name))
            raise AssertionError(f"the test split was read while tuning: {self.name}")
        return read(self, key)

    def watched(*args: Any, **kwargs: Any) -> Any:
        tuning["on"] = True
        try:
            return run_tuning(*args, **kwargs)
        finally:
            tuning["on"] = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h5py.Dataset, "__getitem__", guarded)
        mp.setattr(tune_api, "run_tuning", watched)
        yield reads


def study_file(folder: Path, data: Path, trials: int = 3) -> Path:
    text = EXAMPLE.read_text().replace("seeds = [0, 1]", "seeds = [0]")
    text = text.replace('extract = "synthetic --preset tiny --seed 0"', f'path = "{data}"')
    text = text.replace("trials = 3", f"trials = {trials}")
    if not (folder / "spaces").is_dir():
        shutil.copytree(EXAMPLE.parent / "spaces", folder / "spaces")
    path = folder / f"tiny-tuned-{trials}.toml"
    path.write_text(text)
    return path


def trials_table(out: Path) -> list[dict[str, str]]:
    with open(out / "tune" / "tiny" / "tuned" / "trials.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]


def done_times(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/done.json")}


@pytest.fixture(scope="module")
def tuned_study(
    tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path
) -> tuple[Path, Path, dict[str, Any], list[str]]:
    folder = tmp_path_factory.mktemp("tuned")
    out = folder / "out"
    with guard_test_reads() as reads:
        code, summary, err = run_cli(
            "study", str(study_file(folder, tiny_h5)), "--out", str(out), "--jobs", "1"
        )
    assert code == 0, err
    assert summary is not None
    return folder, out, summary, reads


@pytest.mark.slow
def test_the_tuning_runs_first_and_the_tuned_runs_train_at_its_best(
    tuned_study: tuple[Path, Path, dict[str, Any], list[str]],
) -> None:
    _, out, summary, reads = tuned_study
    assert reads == []
    assert summary["tuned_now"] == 1 and summary["launched"] == 4 and summary["failed"] == []
    (tuning,) = summary["tunings"]
    assert (tuning["dataset"], tuning["arm"], tuning["trials"], tuning["folds"]) == (
        "tiny",
        "tuned",
        3,
        2,
    )
    table = trials_table(out)
    assert len(table) == 3 and {r["state"] for r in table} == {"complete"}
    best = json.loads((out / "tune" / "tiny" / "tuned" / "best.json").read_text())
    assert best["model"]["dropout"] == tuning["params"]["model.dropout"]
    run = json.loads((out / "runs" / "tuned-s0" / "config.json").read_text())
    for section in ("model", "train"):
        got = {k: v for k, v in run[section].items() if k != "seed"}
        assert got == {k: v for k, v in best[section].items() if k != "seed"}, section
    assert run["train"]["select_metric"] == "MAE" and run["train"]["val_levels"] == [0.0, 0.5]
    default = json.loads((out / "runs" / "default-s0" / "config.json").read_text())
    assert default["model"]["dropout"] != best["model"]["dropout"]
    assert default["train"]["lr"] != best["train"]["lr"]
    for fold in (out / "tune" / "tiny" / "tuned" / "folds").glob("*.h5"):
        with h5py.File(fold, "r") as h5:
            assert sorted(h5) == ["train", "valid"], fold
    md = (out / "table.md").read_text()
    assert "Tuned before training (tuned): 3 trials (tpe sampler, median pruner, seed 0)" in md
    assert "2 grouped folds over train+valid by MAE at validation levels clean, 0.5." in md
    assert "| tuned |" in md and "| default (reference) |" in md
    # each arm's validation score at its own selection levels, and the note says which
    assert "| valid (selected) |" in md and "default level 0.5; tuned levels 0, 0.5" in md
    assert "Tuned before training (tuned): 3 trials" in (out / "table.tex").read_text()


@pytest.mark.slow
def test_a_rerun_does_nothing_and_status_shows_the_tuning(
    tuned_study: tuple[Path, Path, dict[str, Any], list[str]], tiny_h5: Path
) -> None:
    folder, out, _, _ = tuned_study
    tune_dir = out / "tune" / "tiny" / "tuned"
    before = {p: p.stat().st_mtime_ns for p in (tune_dir / "trials.csv", tune_dir / "best.json")}
    cells_before = done_times(out)
    t0 = time.monotonic()
    code, summary, err = run_cli(
        "study", str(study_file(folder, tiny_h5)), "--out", str(out), "--jobs", "1"
    )
    assert code == 0, err
    assert summary is not None and summary["launched"] == 0 and summary["tuned_now"] == 0
    assert time.monotonic() - t0 < 30
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert done_times(out) == cells_before
    code, status, err = run_cli("study", "status", str(out))
    assert code == 0 and status is not None, err
    (t,) = status["tunings"]
    assert t["state"] == "done" and t["recorded"] == 3 and "CV MAE" in t["detail"]


@pytest.mark.slow
def test_a_changed_budget_invalidates_the_tuned_arms_cells_only(
    tuned_study: tuple[Path, Path, dict[str, Any], list[str]], tiny_h5: Path
) -> None:
    folder, out, _, _ = tuned_study
    changed = study_file(folder, tiny_h5, trials=4)
    code, _, err = run_cli("study", str(changed), "--out", str(out), "--jobs", "1")
    assert code == 1
    assert "arms.tuned.tune.trials: 3 -> 4" in err and "invalidates 2 of its 4 cells" in err
    assert "1 tuning(s) run first" in err and "--force" in err
    old_table, cells_before = trials_table(out), done_times(out)
    arm_of = {
        k: json.loads((out / "cells" / k / "cell.json").read_text())["arm"] for k in cells_before
    }
    code, summary, err = run_cli("study", str(changed), "--out", str(out), "--jobs", "1", "--force")
    assert code == 0, err
    assert summary is not None and summary["tuned_now"] == 1 and summary["launched"] == 2
    after = done_times(out)
    kept = {k: t for k, t in cells_before.items() if arm_of[k] == "default"}
    assert kept and {k: after.get(k) for k in kept} == kept  # untouched
    gone = [k for k in cells_before if arm_of[k] == "tuned"]
    assert gone and not any((out / "cells" / k).exists() for k in gone)
    table = trials_table(out)
    assert len(table) == 4 and table[:3] == old_table  # extended, not tuned again
    assert summary["tunings"][0]["trials"] == 4
    assert "4 trials (tpe sampler" in (out / "table.md").read_text()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
def test_a_tuned_study_on_slurm_tunes_through_slurm_jobs(
    tuned_study: tuple[Path, Path, dict[str, Any], list[str]],
    tiny_h5: Path,
    tmp_path: Path,
) -> None:
    folder, local_out, _, _ = tuned_study
    out = tmp_path / "slurm"
    argv = ["--executor", "slurm", "--time", "10", "--cpus", "1", "--jobs", "2"]
    code, summary, err = run_cli(
        "study", str(study_file(folder, tiny_h5)), "--out", str(out), *argv
    )
    assert code == 0, err
    assert summary is not None and summary["tuned_now"] == 1 and summary["launched"] == 4
    logs = list((out / "tune" / "tiny" / "tuned").glob("cells/*/log.txt"))
    assert len(logs) == 6 and all("(SLURM job " in p.read_text() for p in logs)
    remote = trials_table(out)
    local = trials_table(local_out)[:3]  # (the module's study may have been extended to 4)
    assert [r["train.lr"] for r in remote] == [r["train.lr"] for r in local]
    for a, b in zip(local, remote, strict=True):
        assert b["state"] == "complete" and float(b["mean"]) == pytest.approx(
            float(a["mean"]), rel=1e-3
        )


TAKEN = """
[arms.taken]
model = "early-fusion"
settings_from = "tuned"
config = { model = { d_model = 8, n_heads = 2, segments = 0, dropout = 0.0 } }
"""


@pytest.mark.slow
def test_an_arm_added_at_the_tuned_setting_keeps_the_cells_and_the_tuning(
    tuned_study: tuple[Path, Path, dict[str, Any], list[str]], tiny_h5: Path
) -> None:
    folder, out, _, _ = tuned_study
    doc = json.loads((out / "study.json").read_text())
    trials = doc["study"]["arms"]["tuned"]["tune"]["trials"]  # 4 once the budget test ran
    path = study_file(folder, tiny_h5, trials)
    added = path.with_name("tiny-tuned-taken.toml")
    added.write_text(path.read_text() + TAKEN)
    tune_dir = out / "tune" / "tiny" / "tuned"
    before = {p: p.stat().st_mtime_ns for p in (tune_dir / "trials.csv", tune_dir / "best.json")}
    cells_before = done_times(out)
    code, _, err = run_cli("study", str(added), "--out", str(out), "--jobs", "1")
    assert code == 1 and "arms.taken.model added" in err
    assert f"invalidates 0 of its {len(cells_before)} cells and adds 2" in err
    code, summary, err = run_cli("study", str(added), "--out", str(out), "--jobs", "1", "--force")
    assert code == 0, err
    assert summary is not None and summary["tuned_now"] == 0 and summary["launched"] == 2
    assert [t["arm"] for t in summary["tunings"]] == ["tuned"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    after = done_times(out)
    assert {k: after.get(k) for k in cells_before} == cells_before
    best = json.loads((tune_dir / "best.json").read_text())
    run = json.loads((out / "runs" / "taken-s0" / "config.json").read_text())
    assert best["model"]["dropout"] != 0.0 and run["model"]["dropout"] == 0.0  # its own
    assert run["train"]["lr"] == best["train"]["lr"]  # the tuned arm's choice
    assert run["train"]["val_levels"] == best["train"]["val_levels"]
    md = (out / "table.md").read_text()
    assert "| taken |" in md and "taken took tuned's setting." in md
