"""Tracking backends for real (training/tracking.py): MLflow with its local file store and W&B in
offline mode, each read back after `qamoe train`; the environment record of every run; the
flags' usage errors; a backend that breaks mid-run is dropped, not the training."""

from __future__ import annotations

import json
import platform
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from qamoe_cli.main import main
from qamoe_core import __version__
from qamoe_core.runs import environment as env_mod
from qamoe_core.training import tracking

CFG = {"model": {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2},
       "train": {"epochs": 2, "batch_size": 16}}  # fmt: skip
REPO = Path(__file__).resolve().parents[2]


def _train(tiny_h5: Path, tmp_path: Path, *extra: str, out: str = "run") -> int:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    args = ["train", str(tiny_h5), "--out", str(tmp_path / out), "--config", str(cfg)]
    return main([*args, "--device", "cpu", "-q", *extra])


def _history(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


# --- MLflow -------------------------------------------------------------------------------------


def test_mlflow_local_file_store_by_default(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow", reason="the 'mlflow' extra is not installed")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    assert _train(tiny_h5, tmp_path, "--track", "mlflow") == 0
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read MLflow 3's file store back
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("qamoe")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["qamoe.run_dir"] == str(run_dir.resolve())
    p = run.data.params
    assert p["model_name"] == "qamoe" and p["model.d_model"] == "16" and p["train.epochs"] == "2"
    assert p["environment.torch"] == torch.__version__ and p["dataset.sha256"]
    history = _history(run_dir)
    losses = client.get_metric_history(run.info.run_id, "train/train_loss")
    assert [(m.step, m.value) for m in losses] == [(h["epoch"], h["train_loss"]) for h in history]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/0.5/MAE")] == [1, 2]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["final/val_clean/MAE"] == pytest.approx(metrics["val_clean"]["MAE"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"config.json", "metrics.json", "history.jsonl"}
    got = Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path / "dl")))
    assert got.read_bytes() == (run_dir / "config.json").read_bytes()


def test_mlflow_at_a_given_uri_and_the_experiment_from_the_environment(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow", reason="the 'mlflow' extra is not installed")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "elsewhere").as_uri()
    assert _train(tiny_h5, tmp_path, "--track", "mlflow", "--track-uri", uri) == 0
    assert not (tmp_path / "mlruns").exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mine")
    assert experiment is not None and len(client.search_runs([experiment.experiment_id])) == 1


def test_mlflow_that_cannot_start_is_one_error_before_training(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlflow", reason="the 'mlflow' extra is not installed")
    code = _train(tiny_h5, tmp_path, "--track", "mlflow", "--track-uri", "nosuchscheme://x")
    err = capsys.readouterr().err
    assert code == 1 and "mlflow tracking could not start at 'nosuchscheme://x'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# --- Weights & Biases, offline ------------------------------------------------------------------


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file: W&B's LevelDB-style log (a 7-byte file header,
    32 KiB blocks of records, each with a 7-byte header: crc32, length, type full/first/
    middle/last), each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, parts, found = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # the rest of a block too small for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            found.append(record)
    return found


def _finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """The records once the run's exit record is written: W&B's service process writes the
    file on its own time (run.finish() may return first; at exit the process waits for it)."""
    end = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if any(r.HasField("exit") for r in records) or time.monotonic() > end:
            return records
        time.sleep(0.1)


def test_wandb_offline_run_files_hold_what_was_logged(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="the 'wandb' extra is not installed")
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name.lower()))  # nothing in ~
    track = tmp_path / "tracked"
    assert _train(tiny_h5, tmp_path, "--track", "wandb", "--track-dir", str(track)) == 0
    (runfile,) = (track / "wandb").glob("offline-run-*/run-*.wandb")
    records = _finished_records(runfile)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.HasField("run")]
    assert run.project == "qamoe" and run.display_name == "run"
    config = {u.key: json.loads(u.value_json) for r in records if r.HasField("config")
              for u in r.config.update}  # fmt: skip
    assert config["model"]["d_model"] == 16 and config["environment"]["qamoe"] == __version__
    steps = {}
    for r in (r for r in records if r.HasField("history")):
        item = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        steps[item["_step"]] = item
    history = _history(tmp_path / "run")
    assert sorted(steps) == [1, 2]
    assert [steps[h["epoch"]]["train/train_loss"] for h in history] == pytest.approx(
        [h["train_loss"] for h in history]
    )
    summary = {"/".join(u.nested_key) or u.key: json.loads(u.value_json)
               for r in records if r.HasField("summary") for u in r.summary.update}  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["final/val_clean/MAE"] == pytest.approx(metrics["val_clean"]["MAE"])
    (artefact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert {c.path for c in artefact.manifest.contents} == set(tracking.ARTEFACTS)
    assert "exit" in kinds and [r.exit.exit_code for r in records if r.HasField("exit")] == [0]


# --- what every run records -----------------------------------------------------------------


def test_every_run_records_its_environment(tiny_h5: Path, tmp_path: Path) -> None:
    assert _train(tiny_h5, tmp_path) == 0
    for name in ("config.json", "metrics.json"):
        env = json.loads((tmp_path / "run" / name).read_text())["environment"]
        assert env["qamoe"] == __version__ and env["torch"] == torch.__version__
        assert env["python"] == platform.python_version() and env["device"] == "cpu"
        assert env["platform"] and all(not isinstance(v, dict | list) for v in env.values())
    commit, _ = env_mod.git_state()
    if (REPO / ".git").exists() and commit is not None:  # run from a checkout with git
        git = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
        head = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
        assert env["git_commit"] == head


def test_no_git_commit_without_git_or_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_mod.git_state.cache_clear()
    try:
        assert env_mod.git_state(tmp_path) == (None, None)  # not a checkout: git not even asked
        (tmp_path / ".git").mkdir()  # looks like one, but git says no
        assert env_mod.git_state(tmp_path) == (None, None)
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git program at all
        env_mod.git_state.cache_clear()
        assert env_mod.git_state(REPO) == (None, None)
        assert env_mod.environment("cpu")["git_commit"] is None
    finally:
        env_mod.git_state.cache_clear()


# --- flags and failures -------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "words"), [
    (["--track", "comet"], "must be one of tensorboard, mlflow, wandb"),
    (["--track-uri", "file:///x"], "it needs --track mlflow"),
    (["--track", "tensorboard", "--tensorboard", "tb"], "asked for twice"),
    (["--tensorboard", "tb", "--track-dir", "x"], "it needs --track BACKEND"),
])  # fmt: skip
def test_tracking_flags_usage_errors(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
    words: str,
) -> None:  # fmt: skip
    assert _train(tiny_h5, tmp_path, *extra) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_missing_backend_package_is_one_error_before_training(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import builtins

    real_import = builtins.__import__

    def no_wandb(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    assert _train(tiny_h5, tmp_path, "--track", "wandb") == 1
    err = capsys.readouterr().err
    assert "--track wandb needs the 'wandb' package" in err and "qamoe[wandb]" in err
    assert not (tmp_path / "run").exists()


class _Breaks(tracking._Backend):
    name = "Broken"

    def __init__(self) -> None:
        self.closed: list[bool] = []

    def epoch(self, step: int, values: Any) -> None:
        raise ConnectionError("the tracking server went away")

    def close(self, failed: bool) -> None:
        self.closed.append(failed)


def test_a_backend_that_fails_mid_run_is_dropped_and_training_finishes(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    broken = _Breaks()
    monkeypatch.setattr(tracking, "_open", lambda t, run_dir: broken)
    monkeypatch.setattr(tracking, "check", lambda asked: None)
    assert _train(tiny_h5, tmp_path, "--track", "mlflow") == 0
    assert len(_history(tmp_path / "run")) == 2
    assert "Broken tracking failed and is off for the rest of this run" in caplog.text
    assert broken.closed == []  # dropped at its failure: never called again
