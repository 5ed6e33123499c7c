"""`qamoe train`: JSON output, flags over config files, resume, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qamoe_cli.main import main
from qamoe_core.config import TrainConfig

MODEL = {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2}


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": MODEL, "train": {"epochs": 5, "batch_size": 16}}))
    return path


def test_train_json_and_flags_override_config(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--epochs", "2"]
    assert main([*args, "--seed", "3", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs_run"] == 2 and result["run_dir"] == str(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["seed"] == 3  # flags win
    assert saved["train"]["batch_size"] == 16 and saved["model"]["d_model"] == 16  # file
    assert saved["train"]["lr"] == TrainConfig().lr  # default

    assert main([*args, "--quiet"]) == 1  # the run exists
    err = capsys.readouterr().err
    assert "error: The output folder" in err and "--resume" in err and "Traceback" not in err


def test_table_output_and_model_choice(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--epochs", "1"]
    assert main([*args, "--model", "late-fusion", "-q"]) == 0
    shown = capsys.readouterr().out
    assert "valid @ level 0.5" in shown and "test clean (not used to select)" in shown
    assert json.loads((out / "config.json").read_text())["model_name"] == "late-fusion"
    assert main([*args, "--model", "lstm"]) == 2  # a usage error
    assert "'--model' parameter must be one of qamoe, late-fusion" in capsys.readouterr().err


def test_the_model_name_is_resolved_once(
    tiny_h5: Path, tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qamoe_core.models import registry

    asked: list[str] = []
    lookup = registry.get

    def counted(name: str, param: str = "model") -> type:
        asked.append(name)
        return lookup(name, param)

    monkeypatch.setattr(registry, "get", counted)
    out = tmp_path / "run"
    args = ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--epochs", "1", "-q"]
    assert main([*args, "--model", "late-fusion", "--device", "cpu"]) == 0
    assert asked == ["late-fusion"]  # the flag's check; the class is passed on from there
    asked.clear()
    assert main([*args, "--force", "--device", "cpu"]) == 0
    assert asked == ["qamoe"]  # the default model, once too
    for given in ([], ["--model", "qamoe"]):  # the run's model, or the one named
        asked.clear()
        assert main([*args, "--resume", *given]) == 0
        assert asked == ["qamoe"]


def test_resume_continues_an_interrupted_run(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "-q"]) == 0
    capsys.readouterr()
    full = json.loads((out / "metrics.json").read_text())
    # Simulate a crash after epoch 2: keep a train_state from a 2-epoch-long partial run.
    part = tmp_path / "part"
    from qamoe_core.training.loop import TrainEvent, train

    def stop(event: TrainEvent) -> None:
        if event.kind == "epoch" and event.epoch == 2:
            raise KeyboardInterrupt

    from qamoe_core.config import resolve

    model_cfg, train_cfg = resolve(cfg)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_h5, part, "qamoe", model_cfg, train_cfg, device="cpu", progress=stop)
    assert main(["train", str(tiny_h5), "--out", str(part), "--resume", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["val_score"] == full["val_score"] and resumed["best_epoch"] == full["best_epoch"]
    # changing the config while resuming is refused
    assert main(["train", str(tiny_h5), "--out", str(part), "--resume", "--lr", "0.5"]) == 1
    assert "differs from the run being resumed in: lr" in capsys.readouterr().err


def test_config_errors_are_one_line(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"top_kk": 2}}))
    assert (
        main(["train", str(tiny_h5), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    )  # unknown field: usage
    err = capsys.readouterr().err
    assert "error: Unknown config key(s) in section 'model': top_kk." in err and "hint:" in err
    # a value out of range is a usage error: exit 2
    assert main(["train", str(tiny_h5), "--out", str(tmp_path / "r"), "--epochs", "0"]) == 2
    assert "The 'epochs' parameter must be an integer in [1, 100000]. Got 0" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()
    assert main(["train", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _train_args(tiny_h5: Path, out: Path, cfg: Path, *more: str) -> list[str]:
    return ["train", str(tiny_h5), "--out", str(out), "--config", str(cfg), "--device", "cpu",
            *more]  # fmt: skip


def test_epoch_lines_when_stderr_is_not_a_terminal_and_resume_messages(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Regressions: a log got nothing until the end; Ctrl-C did not name --resume; --resume
    did not say where it continues, and refused unless --model was repeated."""
    from qamoe_core.training import loop as train_mod

    out = tmp_path / "run"
    original = train_mod._Loop.epoch

    def interrupted(self: train_mod._Loop, epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(train_mod._Loop, "epoch", interrupted)
    assert main(_train_args(tiny_h5, out, cfg, "--epochs", "2", "--model", "late-fusion")) == 130
    err = capsys.readouterr().err
    assert "epoch 1/2  loss " in err and "  val_MAE " in err and err.count("epoch 1/2") == 1
    assert f"--out {out} --resume" in err  # the hint says how to continue
    assert err.count("hint:") == 1 and err.index("error: interrupted.") < err.index("hint:")
    monkeypatch.setattr(train_mod._Loop, "epoch", original)
    # no --model: the run's (late-fusion) is used, not the default
    assert main(["train", str(tiny_h5), "--out", str(out), "--resume", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"resuming '{out}' after epoch 1 of 2" in err and "epoch 2/2  loss " in err
    assert json.loads((out / "metrics.json").read_text())["model_name"] == "late-fusion"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", str(tiny_h5), "--out", str(out), "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["already_finished"] is True
    assert "finished already" in captured.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing changed
    assert main(["train", str(tiny_h5), "--out", str(out), "--resume", "--model", "qamoe"]) == 1
    assert "trains 'late-fusion', not 'qamoe'" in capsys.readouterr().err


def test_tensorboard_log_of_a_run(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tensorboard: scalars per epoch, the final metrics and the config as text."""
    pytest.importorskip("tensorboard", reason="the 'tensorboard' extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board, out = tmp_path / "tb", tmp_path / "run"
    assert main(_train_args(tiny_h5, out, cfg, "--epochs", "2", "-q", "--tensorboard",
                            str(board))) == 0  # fmt: skip
    assert not any(out.rglob("events.out.tfevents*"))  # the run folder stays as it was
    acc = EventAccumulator(str(board), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("train/train_loss")] == [1, 2]
    assert "val/0.5/MAE" in tags["scalars"] and "final/val_clean/MAE" in tags["scalars"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert acc.Scalars("train/val_score")[1].value == pytest.approx(history[1]["val_score"])
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"model_name": "qamoe"' in text


def test_tensorboard_without_the_package_is_one_error_before_training(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] == "tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    assert main(_train_args(tiny_h5, out, cfg, "--tensorboard", str(tmp_path / "tb"))) == 1
    err = capsys.readouterr().err
    assert "needs the 'tensorboard' package" in err and "qamoe[tensorboard]" in err
    assert not out.exists() and not (tmp_path / "tb").exists()


def test_a_corrupted_file_is_not_called_clean(
    tiny_h5: Path, tmp_path: Path, cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: training on a corrupted copy labelled its scores "valid clean" / "test clean".
    from qamoe_core.spectrum.engine import CorruptionSpec
    from qamoe_core.spectrum.files import corrupt_file

    noisy = tmp_path / "noisy.h5"
    corrupt_file(tiny_h5, noisy, CorruptionSpec(level=0.5, seed=0))
    args = ["train", str(noisy), "--config", str(cfg), "--epochs", "1", "-q", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    shown = capsys.readouterr().out
    assert "valid as in the file" in shown and "valid clean" not in shown
    assert "test as in the file" in shown and "corrupted already" in shown
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["data_corrupted"] is True
    assert main(["train", str(tiny_h5), "--config", str(cfg), "--epochs", "1", "-q",
                 "--device", "cpu", "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    assert "test clean (not used to select)" in capsys.readouterr().out
    assert "data_corrupted" not in json.loads((tmp_path / "c" / "metrics.json").read_text())
