"""`qamoe study` through the CLI: the tiny study end to end (locally with --jobs 2 and on a
real one-node SLURM), killed at a random point of its last model seed's cells and rerun, a
rerun with nothing to do, status, and the refusals. Each study runs every cell as a
`qamoe train`/`qamoe eval` child process: well under a minute each on an idle 2-core machine."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from qamoe_cli.main import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "studies" / "tiny.toml"
TABLES = ("table.md", "table.tex", "table.csv")
# Local cells divide the study's threads with --jobs 2 (runtime.job_env): main() runs in this
# process, where torch is already loaded, so the study keeps torch's count here (conftest's).
# SLURM cells get --cpus: the same count, so that both make the same numbers (training is
# deterministic at one thread count).
THREADS = max(1, torch.get_num_threads() // 2)


def run_cli(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    """main(args) with --json: (exit status, the JSON printed, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"])
    text = out.getvalue()
    return code, (json.loads(text) if code == 0 and text.strip() else None), err.getvalue()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("study") / "tiny"
    code, summary, err = run_cli("study", str(TINY), "--out", str(out), "--jobs", "2")
    assert code == 0, err
    assert summary is not None
    return out, summary


@pytest.mark.slow
def test_the_tiny_study_end_to_end(local_study: tuple[Path, dict[str, Any]]) -> None:
    out, summary = local_study
    assert summary["launched"] == 12 and summary["failed"] == []
    assert (summary["trainings"], summary["sweeps"]) == (6, 6)
    assert summary["executor"] == f"local: 2 job(s) x {THREADS} thread(s)"
    md = (out / "table.md").read_text()
    assert "| arm | clean | spectrum/missing | spectrum/noise | valid (selected) |" in md
    # the score each training selected its epoch on, from its run's metrics.json
    selected = {r["arm"]: r for r in summary["outputs"]["selection"]}
    scores = [
        json.loads((out / "runs" / f"qamoe-s{s}" / "metrics.json").read_text())["val_score"]
        for s in range(3)
    ]
    assert selected["qamoe"]["metric"] == "MAE" and selected["qamoe"]["n_seeds"] == 3
    assert abs(selected["qamoe"]["mean"] - sum(scores) / 3) < 1e-12
    assert "| early-fusion (reference) |" in md and "| qamoe | clean |" in md
    assert "\\toprule" in (out / "table.tex").read_text()
    head = (out / "table.csv").read_text().splitlines()[0]
    assert head.startswith("dataset,column,metric,arm,n_seeds,mean,sd,reference,difference")
    labels = sorted(p.name for p in (out / "sweeps").iterdir())
    assert labels == sorted(
        f"{a}-s{s}.spectrum.csv" for a in ("qamoe", "early-fusion") for s in range(3)
    )
    first = (out / "sweeps" / "qamoe-s1.spectrum.csv").read_text().splitlines()[1]
    assert ",qamoe-s1,qamoe," in first
    for run in (out / "runs").iterdir():
        assert run.is_symlink() and (run / "config.json").is_file()
        assert (run / "model.safetensors").is_file()
    assert (out / "report" / "report.html").is_file()
    assert json.loads((out / "study.json").read_text())["study"]["compare"]["reference"] == (
        "early-fusion"
    )


@pytest.mark.slow
def test_a_second_run_with_nothing_to_do_starts_no_cell(
    local_study: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = local_study
    before = {
        p: p.stat().st_mtime_ns
        for p in [*(out / t for t in TABLES), *(out / "cells").glob("*/done.json")]
    }
    t0 = time.monotonic()
    code, summary, err = run_cli("study", str(TINY), "--out", str(out), "--jobs", "2")
    assert code == 0, err
    assert summary is not None and summary["launched"] == 0 and summary["to_run"] == 0
    assert time.monotonic() - t0 < 30  # seconds (about 3 on an idle machine), not minutes
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing rewritten
    code, summary, err = run_cli("study", str(TINY), "--out", str(out), "--dry-run")
    assert code == 0 and summary is not None and summary["dry_run"] and summary["to_run"] == 0


@pytest.mark.slow
def test_status_lists_every_cell(
    local_study: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = local_study
    code, status, err = run_cli("study", "status", str(out))
    assert code == 0, err
    assert status is not None and status["counts"] == {
        "done": 12,
        "running": 0,
        "failed": 0,
        "pending": 0,
    }
    assert {c["label"] for c in status["cells"]} == {
        f"{a}-s{s}" for a in ("qamoe", "early-fusion") for s in range(3)
    }
    assert main(["study", "status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 cells: 12 done, 0 running, 0 failed, 0 pending" in printed


def _children_of(out: Path) -> list[int]:
    """Processes whose command line names the study folder (cells of a killed study)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(out) in cmd or (proc / "cwd").resolve() == out.resolve():
                found.append(int(proc.name))
    return found


# What only the end of a study writes (outputs.collect): a killed study has none of it.
OUTPUTS = ("runs", "sweeps", "report", "outputs.json", *TABLES)


def _stopped_copy(reference: Path, out: Path, rerun_seed: int) -> set[str]:
    """``out``: the finished ``reference`` as a kill leaves a study that had finished the cells
    of every model seed but ``rerun_seed`` and started none of that seed's: its study file,
    data and those cells, none of the outputs. Returns the keys of the cells it lacks."""
    shutil.copytree(reference, out, symlinks=True)
    listed = json.loads((out / "study.json").read_text())["cells"]
    missing = {c["key"] for c in listed if c["seed"] == rerun_seed}
    for key in missing:
        shutil.rmtree(out / "cells" / key)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for log in out.glob("report-*.log"):
        log.unlink()
    return missing


@pytest.mark.slow
def test_a_killed_study_reruns_to_the_same_table(
    local_study: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The study is killed at a random point of its last model seed's cells (two trainings,
    two sweeps, then the outputs): the other seeds' cells are the reference's own, as an
    earlier run killed between cells would have left them. Killing a fresh study ran every
    cell twice (the reference's and this one's) for the same kill points."""
    reference, _ = local_study
    out = tmp_path / "killed"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    rerun_seed = rng.choice([0, 1, 2])
    # two rounds of two children (about 5 s of CPU each), then the outputs
    delay = rng.uniform(0.0, 10.0)
    missing = _stopped_copy(reference, out, rerun_seed)
    assert len(missing) == 4, missing  # a training and a sweep per arm
    kept = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/done.json")}
    assert len(kept) == 8
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    argv = [
        sys.executable,
        "-m",
        "qamoe_cli.main",
        "--threads",  # this process's count, which the in-process reference and rerun keep
        str(torch.get_num_threads()),
        "study",
        str(TINY),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while not any((out / "cells" / k / "log.txt").exists() for k in missing):
            if time.monotonic() > end:
                break
            time.sleep(0.1)  # the first of the missing cells has started
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while _children_of(out) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_of(out) == [], (
        f"cells outlived the killed study (seed {seed}, delay {delay:.1f} s)"
    )
    code, _, err = run_cli("study", str(TINY), "--out", str(out), "--jobs", "2")
    assert code == 0, f"seed {seed}: {err}"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the other seeds' cells: not rerun
    for name in TABLES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), (
            seed,
            rerun_seed,
            delay,
            name,
        )


@pytest.mark.slow
def test_a_changed_study_file_is_refused(
    local_study: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = local_study
    changed = tmp_path / "tiny.toml"
    changed.write_text(TINY.read_text().replace("epochs = 2", "epochs = 3"))
    code, _, err = run_cli("study", str(changed), "--out", str(out))
    assert code == 1
    assert "train.epochs: 2 -> 3" in err and "invalidates 12 of its 12 cells" in err
    assert "--force" in err and "new --out" in err


def test_bad_study_files_exit_2_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("seeds = [0, 1, 2]", "seeds = [0, 1, 1]"))
    code, _, err = run_cli("study", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "'seeds' repeats 1" in err and "Traceback" not in err
    assert [ln.split(":")[0] for ln in err.strip().splitlines()] == ["error", "hint"]
    assert not (tmp_path / "o").exists()  # refused before anything was made


def test_a_missing_dataset_exits_1(tmp_path: Path) -> None:
    study = tmp_path / "s.toml"
    study.write_text(
        TINY.read_text().replace(
            'extract = "synthetic --preset tiny --seed 0"', 'path = "nowhere.h5"'
        )
    )
    code, _, err = run_cli("study", str(study), "--out", str(tmp_path / "o"))
    assert code == 1 and "[datasets.tiny]" in err and "nowhere.h5' does not exist" in err


def test_the_slurm_executor_without_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = run_cli("study", str(TINY), "--out", str(tmp_path / "o"), "--executor", "slurm")
    assert code == 1 and "sbatch" in err and "--executor local" in err
    assert not (tmp_path / "o").exists()


def test_usage(tmp_path: Path) -> None:
    assert run_cli("study", str(TINY))[0] == 2  # no --out
    assert run_cli("study", "status")[0] == 2  # no folder
    assert run_cli("study", "status", str(tmp_path))[0] == 1  # not a study folder
    code, _, err = run_cli("study", str(TINY), "--out", str(tmp_path / "o"), "--executor", "slorm")
    assert code == 2 and "Did you mean 'slurm'" in err and not (tmp_path / "o").exists()


# --- a real one-node SLURM (scripts/start_slurm.sh) ----------------------------------------------


def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        res = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM that accepts jobs: the one here, or one started by scripts/start_slurm.sh
    (as root); skips with the reason otherwise."""
    pytest.importorskip("submitit", reason="submitit is not installed (the 'slurm' extra)")
    if not _sinfo_answers():
        if os.geteuid() != 0:
            pytest.skip("no SLURM answers here and starting one needs root")
        res = subprocess.run(
            ["bash", str(REPO / "scripts" / "start_slurm.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if res.returncode != 0:
            pytest.skip(f"SLURM could not start: {res.stderr.strip()[-300:]}")
    if shutil.which("sbatch") is None or not _sinfo_answers():
        pytest.skip("SLURM's sbatch/sinfo are not usable here")


def _requeue_one_training(out: Path, stop: threading.Event, found: dict[str, str]) -> None:
    """Requeue the job of the first training that has a checkpoint, as a preemption would,
    and let it start again at once (a requeued job otherwise waits about two minutes)."""
    while not stop.is_set():
        for folder in sorted(out.glob("cells/*")):
            record, log = folder / "slurm.json", folder / "log.txt"
            if not (record.is_file() and log.is_file() and (folder / "train-config.json").exists()):
                continue
            if not (folder / "run" / "train_state.pt").is_file():
                continue
            job = json.loads(record.read_text())["job_id"]
            res = subprocess.run(["scontrol", "requeue", job], capture_output=True, check=False)
            if res.returncode == 0:
                found.update(key=folder.name, job=job)
                for _ in range(300):  # until it runs again
                    state = subprocess.run(
                        ["squeue", "-h", "-j", job, "-o", "%T"],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if state.stdout.strip() in ("RUNNING", "COMPLETED", ""):
                        return
                    if "PENDING" in state.stdout:
                        subprocess.run(
                            ["scontrol", "update", f"jobid={job}", "starttime=now"],
                            capture_output=True,
                            check=False,
                        )
                    time.sleep(0.2)
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_the_tiny_study_on_slurm(
    slurm: None, local_study: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    reference, _ = local_study
    out = tmp_path / "slurm"
    args = [
        "study",
        str(TINY),
        "--out",
        str(out),
        "--executor",
        "slurm",
        "--time",
        "10",
        "--cpus",
        str(THREADS),
    ]
    stop, requeued = threading.Event(), {}
    watcher = threading.Thread(target=_requeue_one_training, args=(out, stop, requeued))
    watcher.start()
    try:
        code, summary, err = run_cli(*args)
    finally:
        stop.set()
        watcher.join()
    assert code == 0, err
    assert summary is not None and summary["executor"].startswith("slurm")
    logs = {p.parent.name: p.read_text() for p in out.glob("cells/*/log.txt")}
    assert len(logs) == 12 and all("(SLURM job " in text for text in logs.values())
    # the requeued training ran twice under its one job id, the second time as a resume
    assert requeued, "no training could be requeued"
    attempts = logs[requeued["key"]].count(f"(SLURM job {requeued['job']})")
    assert attempts == 2, logs[requeued["key"]]
    assert "--resume" in logs[requeued["key"]].split("===")[-1].splitlines()[0]
    for name in TABLES:  # the same numbers as on this machine
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
