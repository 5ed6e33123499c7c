"""`qamoe tune` end to end on the synthetic tiny preset: a 6-trial tuning finishes, a copy is
killed (SIGKILL) mid-run and resumed to the same trials.csv, best.json trains, the test split
is never read, parallel children (and SLURM jobs, where a one-node SLURM runs) give the same
trials, and every bad input is one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from qamoe_cli.main import main
from qamoe_core.data.store import FeatureFile
from tests.cli.test_startup import _heavy_loaded_after
from tests.cli.test_study_cli import slurm  # noqa: F401  (the fixture: a one-node SLURM)

REPO = Path(__file__).resolve().parents[2]
SPACE = (
    "[train.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n\n[model.dropout]\nlow = 0.0\nhigh = 0.5\n"
)
BASE = {
    "model": {"d_model": 8, "n_heads": 2, "segments": 4, "n_layers": 1},
    "train": {"epochs": 2, "batch_size": 32},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tune")
    (folder / "space.toml").write_text(SPACE)
    (folder / "base.json").write_text(json.dumps(BASE))
    return {"space": folder / "space.toml", "base": folder / "base.json"}


def args(data: Path, out: Path, files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "tune",
        str(data),
        "--out",
        str(out),
        "--model",
        "early-fusion",
        "--space",
        str(files["space"]),
        "--config",
        str(files["base"]),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def table(path: Path) -> list[dict[str, str]]:
    """trials.csv without the seconds (wall time differs between runs)."""
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def done_cells(out: Path) -> int:
    return len(list(out.glob("cells/*/done.json")))


def test_help_loads_no_heavy_package() -> None:
    code = (
        "import contextlib, io\n"
        "from qamoe_cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "    rc = main(['tune', '--help'])\n"
        "assert rc == 0 and '--trials' in buf.getvalue(), rc\n"
    )
    assert _heavy_loaded_after(code) == []


# long harness: one reference tuning, a killed copy and its resumption (~20-40 s on 2 cores)
@pytest.mark.slow
def test_killed_tuning_resumes_to_the_same_trials_and_best_json_trains(
    tiny_h5: Path, tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tune = [*args(tiny_h5, tmp_path / "ref", files), "--trials", "6", "--folds", "2"]
    assert main(tune) == 0
    line = capsys.readouterr().out
    assert "early-fusion: trial" in line and "CV MAE" in line and "over 2 fold(s)" in line
    assert "other finished trials within one SE" in line
    ref = table(tmp_path / "ref" / "trials.csv")
    assert len(ref) == 6 and {r["state"] for r in ref} <= {"complete", "pruned"}
    assert list(ref[0]) == [
        "number",
        "state",
        "model.dropout",
        "train.lr",
        "fold_1",
        "fold_2",
        "mean",
        "se",
        "error",
    ]
    assert len({r["train.lr"] for r in ref}) == 6  # six different settings drawn

    killed = tmp_path / "killed"
    cmd = args(tiny_h5, killed, files, "--trials", "6", "--folds", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qamoe_cli.main", *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while done_cells(killed) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    partial = table(killed / "trials.csv") if (killed / "trials.csv").exists() else []
    assert sum(r["state"] == "complete" for r in partial) < 6  # it was stopped mid-run

    assert main(cmd) == 0
    assert table(killed / "trials.csv") == ref
    assert json.loads((killed / "best.json").read_text()) == json.loads(
        (tmp_path / "ref" / "best.json").read_text()
    )
    for name in ("report.md", "history.png", "importance.png", "tune.json"):
        assert (killed / name).is_file(), name
    assert "Parameter importances" in (killed / "report.md").read_text()

    run = tmp_path / "final"
    best = str(killed / "best.json")
    assert (
        main(
            [
                "train",
                str(tiny_h5),
                "--out",
                str(run),
                "--model",
                "early-fusion",
                "--config",
                best,
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["val"]) == {"0", "0.5"} and metrics["select_metric"] == "MAE"


class ReadOfTest(AssertionError):
    pass


@pytest.fixture
def no_test_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any read of a dataset under /test (through any API of this process) raises."""
    original = h5py.Dataset.__getitem__

    def guarded(self: h5py.Dataset, key: object) -> object:
        if str(self.name).startswith("/test/"):
            raise ReadOfTest(f"the test split was read: {self.name}")
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", guarded)
    yield


def test_the_test_split_is_never_read(
    tiny_h5: Path, tmp_path: Path, files: dict[str, Path], no_test_reads: None
) -> None:
    data = tmp_path / "poisoned.h5"
    data.write_bytes(tiny_h5.read_bytes())
    with h5py.File(data, "r+") as h5:  # even a read that got past the guard would fail
        h5["test/label"][:] = 99.0
        h5["test/text"][:] = np.nan
    with FeatureFile(data) as f, pytest.raises(ReadOfTest):  # the guard works
        f.read("test", slice(0, 2))
    out = tmp_path / "t"
    assert main([*args(data, out, files), "--trials", "1", "--folds", "2"]) == 0
    assert main([*args(data, tmp_path / "t0", files), "--trials", "1", "--folds", "0"]) == 0
    for fold in [*out.glob("folds/*.h5"), *(tmp_path / "t0").glob("folds/*.h5")]:
        with FeatureFile(fold) as f:
            assert f.splits == ("train", "valid"), fold


@pytest.mark.slow
def test_parallel_children_give_the_same_trials(
    tiny_h5: Path, tmp_path: Path, files: dict[str, Path]
) -> None:
    same = ["--trials", "2", "--folds", "0", "--sampler", "random", "--pruner", "none"]
    assert main([*args(tiny_h5, tmp_path / "one", files), *same]) == 0
    assert main([*args(tiny_h5, tmp_path / "two", files), *same, "--jobs", "2"]) == 0
    one, two = table(tmp_path / "one" / "trials.csv"), table(tmp_path / "two" / "trials.csv")
    assert [r["train.lr"] for r in one] == [r["train.lr"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert b["state"] == "complete" and float(a["mean"]) == pytest.approx(
            float(b["mean"]), rel=1e-3
        )
    logs = list((tmp_path / "two").glob("cells/*/log.txt"))
    assert len(logs) == 2 and all("train" in p.read_text() for p in logs)  # children ran them


@pytest.mark.parametrize(
    ("extra", "space", "code", "words"),
    [
        (["--trials", "0"], SPACE, 2, ["'--trials' parameter must be an integer >= 1. Got 0"]),
        (["--folds", "1"], SPACE, 2, ["'--folds' parameter must be 0"]),
        (
            ["--folds", "20"],
            SPACE,
            1,
            [
                "has 10 video groups in train+valid; 20 folds need at least 20",
                "--folds 10 or fewer",
            ],
        ),
        (
            [],
            "[model.dropot]\nlow = 0.0\nhigh = 0.5\n",
            2,
            ["unknown field 'model.dropot'", "Did you mean 'model.dropout'?"],
        ),
        (
            [],
            "[model.dropout]\nlow = 0.0\nhigh = 1.5\n",
            2,
            ["'model.dropout' high: The 'dropout' parameter must be a float in [0, 0.9]. Got 1.5"],
        ),
        ([], "[model.n_layers]\nchoices = []\n", 2, ["'model.n_layers'", "empty choice"]),
        (
            ["--model", "tfn"],
            SPACE,
            2,
            ["'model.dropout', which the model 'tfn' does not use", "model.options."],
        ),
        (["--sampler", "grid"], SPACE, 2, ["'--sampler' parameter must be one of tpe, random"]),
        (["--levels", "clean,1.5"], SPACE, 2, ["'--levels' parameter must be a float in [0, 1]"]),
        (["--metric", "Acc"], SPACE, 2, ["'--metric' parameter must be auto or one of"]),
        (["--partition", "gpu"], SPACE, 2, ["--partition apply to --executor slurm only"]),
        (["--executor", "slorm"], SPACE, 2, ["'executor' parameter", "Did you mean 'slurm'"]),
    ],
)
def test_bad_input_is_one_line(
    tiny_h5: Path,
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    space: str,
    code: int,
    words: list[str],
) -> None:
    path = tmp_path / "space.toml"
    path.write_text(space)
    argv = [*args(tiny_h5, tmp_path / "out", {**files, "space": path}), *extra]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error:") and "Traceback" not in err, err
    text = " ".join(" ".join(lines).split())
    for word in words:
        assert word in text, (word, text)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_changed_tuning_is_refused_naming_what_changed(
    tiny_h5: Path, tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t"
    quick = ["--trials", "1", "--folds", "0"]
    assert main([*args(tiny_h5, out, files), *quick]) == 0
    assert main([*args(tiny_h5, out, files), *quick]) == 0  # the same: nothing to do
    other = tmp_path / "other.toml"
    other.write_text(
        SPACE.replace("high = 0.5", "high = 0.4") + "[train.weight_decay]\nlow = 0.0\nhigh = 0.1\n"
    )
    assert main([*args(tiny_h5, out, {**files, "space": other}), *quick]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "changed since: the search space (train.weight_decay added, model.dropout changed)" in err
    )
    data = tmp_path / "data.h5"
    data.write_bytes(tiny_h5.read_bytes())
    with h5py.File(data, "r+") as h5:
        h5["valid/label"][0] = 0.5
    assert main([*args(data, out, files), *quick, "--seed", "1"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the data (its train/valid rows)" in err and "--seed" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main([*args(tiny_h5, foreign, files), *quick]) == 1
    assert "was not made by `qamoe tune`" in capsys.readouterr().err


def test_the_slurm_executor_without_sbatch(
    tiny_h5: Path,
    tmp_path: Path,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main([*args(tiny_h5, tmp_path / "out", files), "--executor", "slurm"]) == 1
    err = capsys.readouterr().err
    assert "sbatch" in err and "--executor local" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("slurm")
def test_a_tuning_on_slurm_gives_the_trials_of_a_local_one(
    tiny_h5: Path, tmp_path: Path, files: dict[str, Path]
) -> None:
    same = ["--trials", "2", "--folds", "0", "--sampler", "random", "--pruner", "none"]
    assert main([*args(tiny_h5, tmp_path / "local", files), *same]) == 0
    on_slurm = [*same, "--executor", "slurm", "--time", "10", "--cpus", "1", "--jobs", "2"]
    assert main([*args(tiny_h5, tmp_path / "slurm", files), *on_slurm]) == 0
    local, remote = (
        table(tmp_path / "local" / "trials.csv"),
        table(tmp_path / "slurm" / "trials.csv"),
    )
    assert [r["train.lr"] for r in local] == [r["train.lr"] for r in remote]
    for a, b in zip(local, remote, strict=True):
        assert b["state"] == "complete" and float(a["mean"]) == pytest.approx(
            float(b["mean"]), rel=1e-3
        )
    logs = list((tmp_path / "slurm").glob("cells/*/log.txt"))
    assert len(logs) == 2 and all("(SLURM job " in p.read_text() for p in logs)
