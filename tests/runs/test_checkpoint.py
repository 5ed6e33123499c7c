"""Run directories: round trip, the file checker, damaged and mismatched files."""

from __future__ import annotations

import json
import pickle
import resource
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from qamoe_core.base.errors import CheckpointError, InputError
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.models.registry import build_model, resolve
from qamoe_core.runs import checkpoint as ckpt
from qamoe_core.training.loop import train

DIMS = {"text": 12, "audio": 5, "vision": 7}
CFG = ModelConfig(d_model=16, n_heads=2, segments=4, num_experts=4, top_k=2)


def write_run(run: Path, name: str = "qamoe", task: str = "regression") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, CFG, DIMS, task)
    with torch.no_grad():  # non-default buffers and weights must survive the trip
        model.set_feature_stats(
            {m: torch.randn(d) for m, d in DIMS.items()},
            {m: torch.rand(d) + 0.5 for m, d in DIMS.items()},
        )
    run.mkdir(parents=True, exist_ok=True)
    config = ckpt.run_config(resolve(name), CFG, TrainConfig(epochs=2), dims=DIMS, task=task,
                             scheme="mosi", dataset={"name": "unit"})  # fmt: skip
    ckpt.write_config(run, config)
    ckpt.save_weights(run, model.state_dict())
    ckpt.write_metrics(run, {"val_score": 1.0})
    ckpt.write_history(run, [{"epoch": 1}])
    return model.eval()


# A run trained for real (tiny preset, one epoch, CFG): what damaged-file tests start from.
TINY_DIMS = {"text": 32, "audio": 5, "vision": 8}


@pytest.fixture(scope="module")
def trained_run(tiny_h5: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_h5, run, "qamoe", CFG, TrainConfig(epochs=1, batch_size=16), device="cpu")
    return run


def as_legacy(run: Path) -> Path:
    """``run`` as qamoe wrote it before model.safetensors: the weights in model.pt."""
    torch.save(ckpt.read_weights(run), run / ckpt.LEGACY_WEIGHTS)
    (run / ckpt.WEIGHTS).unlink()
    return run / ckpt.LEGACY_WEIGHTS


def copy_run(run: Path, tmp_path: Path) -> Path:
    """A copy to damage (the trained run is shared by the module's tests)."""
    return Path(shutil.copytree(run, tmp_path / "run"))


def batch_of(b: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    out: dict[str, torch.Tensor] = {}
    for m, d in DIMS.items():
        out[m] = torch.randn(b, 9, d, generator=g)
        out[f"{m}_len"] = torch.full((b,), 9)
    return out


@pytest.mark.parametrize("name", ["qamoe", "late-fusion", "early-fusion", "dense-moe"])
def test_round_trip_gives_identical_predictions(tmp_path: Path, name: str) -> None:
    model = write_run(tmp_path / "run", name)
    loaded, cfg, meta = ckpt.load_run(tmp_path / "run")
    assert cfg == CFG and meta["model_name"] == name and meta["dims"] == DIMS
    assert meta["train_config"] == TrainConfig(epochs=2) and meta["metrics"] == {"val_score": 1.0}
    assert not loaded.training
    batch = batch_of()
    assert torch.equal(model(batch).prediction, loaded(batch).prediction)
    # a safetensors file, readable by any safetensors reader (no qamoe, no pickle)
    assert not (tmp_path / "run" / "model.pt").exists()
    sd = safetensors.torch.load_file(tmp_path / "run" / "model.safetensors")
    assert set(sd) == set(model.state_dict())


def test_checker_names_the_missing_file(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing 'metrics.json'"):
        ckpt.check_run(tmp_path / "run")
    ckpt.load_run(tmp_path / "run")  # evaluation only needs config.json and the weights
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing 'model.safetensors'"):
        ckpt.load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_run(tmp_path / "nope")


def one_line(exc: pytest.ExceptionInfo[CheckpointError]) -> str:
    """The error's message, checked to be one line with a one-line hint (the CLI's contract)."""
    message, hint = exc.value.message, exc.value.hint
    assert "\n" not in message and hint and "\n" not in hint
    return message


def test_damaged_legacy_weights(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    as_legacy(tmp_path / "run")
    (tmp_path / "run" / "model.pt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match=r"model.pt' is not a weights-only") as exc:
        ckpt.load_run(tmp_path / "run")
    assert exc.value.hint and "--force" in exc.value.hint
    one_line(exc)
    (tmp_path / "run" / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model.pt' is damaged \(empty") as exc:
        ckpt.load_run(tmp_path / "run")
    one_line(exc)


class _Code:
    """Unpickling this would call print: what a malicious checkpoint does."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickled code ran",))


@pytest.mark.parametrize("name", ["model.pt", "train_state.pt"])
def test_pickled_code_is_refused_without_suggesting_unsafe_load(
    trained_run: Path, tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(trained_run, tmp_path)
    if name == "model.pt":
        as_legacy(run)
    torch.save({"x": Path("a"), "code": _Code()}, run / name)  # not tensors only
    load = ckpt.load_run if name == "model.pt" else ckpt.load_state
    with pytest.raises(CheckpointError, match=r"is not a weights-only tensor file") as exc:
        load(run)
    message = one_line(exc)
    assert f"'{run / name}'" in message and "could run code): refused." in message
    text = f"{message} {exc.value.hint}"
    assert "weights_only" not in text and "False" not in text and "torch.load" not in text
    assert "--force" in (exc.value.hint or "")
    assert "pickled code ran" not in capsys.readouterr().out


def test_old_pickle_format_gives_one_line_and_no_warning(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    write_run(tmp_path / "run")
    as_legacy(tmp_path / "run")
    with open(tmp_path / "run" / "model.pt", "wb") as f:  # plain pickle, not torch's zip format
        pickle.dump({"x": 1}, f, protocol=4)
    with pytest.raises(CheckpointError, match=r"model.pt' is not a weights-only") as exc:
        ckpt.load_run(tmp_path / "run")
    one_line(exc)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_weights_that_are_not_a_state_dict(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    as_legacy(tmp_path / "run")
    torch.save([torch.zeros(2)], tmp_path / "run" / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt' are a list, not a state dict") as exc:
        ckpt.load_run(tmp_path / "run")
    one_line(exc)
    torch.save({"x": [1, 2]}, tmp_path / "run" / "model.pt")
    with pytest.raises(CheckpointError, match=r"are a dict, not a state dict") as exc:
        ckpt.load_run(tmp_path / "run")
    one_line(exc)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    other = build_model("qamoe", CFG.override(d_model=32), DIMS, "regression")
    ckpt.save_weights(tmp_path / "run", other.state_dict())
    with pytest.raises(CheckpointError, match="do not fit the model") as exc:
        ckpt.load_run(tmp_path / "run")
    message = one_line(exc)
    mine = build_model("qamoe", CFG, DIMS, "regression").state_dict()
    n = sum(v.shape != mine[k].shape for k, v in other.state_dict().items())
    assert f"{n} keys of another shape ('encoders.text.proj.weight' [32, 12] (model [16, 12])" in (
        message
    )
    assert "missing" not in message and "unexpected" not in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused(tmp_path: Path, value: float) -> None:
    # Found by the fuzz harness: such a run loaded, and predict / eval scored NaN everywhere.
    model = write_run(tmp_path / "run")
    sd = model.state_dict()
    sd["encoders.text.proj.weight"] = torch.full_like(sd["encoders.text.proj.weight"], value)
    ckpt.save_weights(tmp_path / "run", sd)
    with pytest.raises(CheckpointError, match="hold NaN or infinite values") as exc:
        ckpt.load_run(tmp_path / "run")
    assert "1 key: 'encoders.text.proj.weight'" in one_line(exc)


def test_wrong_keys_are_counted_not_listed(
    trained_run: Path, tiny_h5: Path, tmp_path: Path
) -> None:
    run = copy_run(trained_run, tmp_path)
    expected = build_model("qamoe", CFG, TINY_DIMS, "regression").state_dict()
    foreign = build_model("late-fusion", CFG, TINY_DIMS, "regression").state_dict()
    missing = [k for k in expected if k not in foreign]
    unexpected = [k for k in foreign if k not in expected]
    ckpt.save_weights(run, foreign)
    with pytest.raises(CheckpointError, match=rf"{len(missing)} keys missing \('") as exc:
        ckpt.load_run(run)
    message = one_line(exc)
    assert f"{len(unexpected)} keys unexpected ({min(unexpected)!r}, " in message
    assert missing[:3] == [k for k in missing if repr(k) in message]  # the first 3, no more
    assert len(message) < 600 and f"'{run / 'model.safetensors'}'" in message
    # the same check guards train_state.pt's weights, which --resume loads
    ckpt.save_state(run, {**ckpt.load_state(run), "model": foreign, "epoch": 0})
    (run / "metrics.json").unlink()  # unfinished: a finished run is left alone by --resume
    with pytest.raises(CheckpointError, match=rf"{len(missing)} keys missing") as exc:
        train(tiny_h5, run, "qamoe", None, None, resume=True, device="cpu")
    assert len(one_line(exc)) < 600


def test_an_old_model_pt_run_loads_and_predicts_the_same(tmp_path: Path) -> None:
    model = write_run(tmp_path / "run")
    as_legacy(tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()
    loaded, _, _ = ckpt.load_run(tmp_path / "run")
    batch = batch_of()
    assert torch.equal(model(batch).prediction, loaded(batch).prediction)
    # saving again (a resumed old run) writes model.safetensors and retires model.pt
    ckpt.save_weights(tmp_path / "run", model.state_dict())
    assert not (tmp_path / "run" / "model.pt").exists()
    again, _, _ = ckpt.load_run(tmp_path / "run")
    assert torch.equal(model(batch).prediction, again(batch).prediction)


def _tamper_header(data: bytes) -> bytes:
    """The first tensor's byte range pointed past the end of the file (same header length)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10**9]
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) - 7],  # truncated
        lambda d: d[:8] + b"{not json" + d[17:],  # a header that is not JSON
        _tamper_header,  # offsets outside the file
        lambda d: b"",  # empty
    ],
    ids=["truncated", "not-json", "offsets", "empty"],
)
def test_damaged_safetensors_is_one_line(tmp_path: Path, damage: Any) -> None:
    write_run(tmp_path / "run")
    path = tmp_path / "run" / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=r"safetensors' is damaged or not a safe") as exc:
        ckpt.load_run(tmp_path / "run")
    assert len(one_line(exc)) < 400 and "--force" in (exc.value.hint or "")


def test_sizes_in_config_json_are_checked_against_the_weights_before_building(
    tmp_path: Path,
) -> None:
    """A config.json whose dims say {"text": 10**9} is refused in one line before the model is
    built: building it first allocated 4 GB and ended in the catch-all 'unexpected
    RuntimeError: can't allocate memory' under a memory limit (found by tests/fuzz)."""
    write_run(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "dims": {**data["dims"], "text": 10**9}}))
    before = _resident()
    with pytest.raises(CheckpointError, match=r"do not fit the model in its config\.json") as exc:
        ckpt.load_run(tmp_path / "run")
    assert "[1000000000" in one_line(exc) or "1000000000]" in one_line(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak - before < 500 * 2**20, f"peak RSS rose by {(peak - before) / 2**20:.0f} MiB"


def _resident() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def test_config_problems(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    path = tmp_path / "run" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99") as exc:
        ckpt.load_run(tmp_path / "run")
    assert "Upgrade qamoe" in (exc.value.hint or "")
    path.write_text(json.dumps({**data, "format_version": "1"}))  # found by tests/fuzz
    with pytest.raises(CheckpointError) as exc:
        ckpt.load_run(tmp_path / "run")
    assert exc.value.message.startswith("The 'format_version' of the run '")
    data["model"]["top_k"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="top_k"):
        ckpt.load_run(tmp_path / "run")
    path.write_text("{")
    with pytest.raises(CheckpointError, match=r"'config.json' .* damaged"):
        ckpt.load_run(tmp_path / "run")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("dims", "abc", r"'dims' must be an object of modality \(text, audio, vision\)"),
        ("dims", {"text": 32, "smell": 3}, r"'dims' names the unknown modality 'smell'"),
        ("dims", {"text": 0}, r"'dims' gives 'text' the size 0"),
        ("dims", {"text": 1.5}, r"'dims' gives 'text' the size 1.5"),
        ("task", "classify", r"'task' must be one of regression, binary. Got 'classify'"),
        ("model_name", "bogus", r"'model_name' must be one of qamoe, .*Got 'bogus' instead"),
        ("scheme", "imdb", r"'scheme' must be one of mosi, sims, binary"),
    ],
)
def test_run_config_values_are_checked(
    trained_run: Path, tmp_path: Path, key: str, value: object, expected: str
) -> None:
    run = copy_run(trained_run, tmp_path)
    path = run / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with warnings.catch_warnings():  # no torch warnings (before) either: a warning fails
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=expected) as exc:
            ckpt.load_run(run)
    message = one_line(exc)
    assert message.startswith(f"'config.json' in '{run}': ")
    with pytest.raises(CheckpointError, match=expected):  # --resume reads it the same way
        ckpt.read_config(run)


@pytest.mark.parametrize("key", ["optimizer", "model", "epoch", "world_size"])
def test_train_state_missing_a_key(
    trained_run: Path, tiny_h5: Path, tmp_path: Path, key: str
) -> None:
    run = copy_run(trained_run, tmp_path)
    state = ckpt.load_state(run)
    del state[key]
    ckpt.save_state(run, state)
    with pytest.raises(
        CheckpointError, match=rf"train_state.pt' lacks the key\(s\) '{key}'\."
    ) as exc:
        ckpt.load_state(run)
    one_line(exc)
    if key == "optimizer":  # what `qamoe train --resume` ran into (a KeyError before)
        with pytest.raises(CheckpointError, match=r"lacks the key\(s\) 'optimizer'"):
            train(tiny_h5, run, "qamoe", None, None, resume=True, device="cpu")


def test_train_state_values_of_the_wrong_kind(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    state = ckpt.load_state(run)
    ckpt.save_state(run, {**state, "best_model": [1], "step": "7"})
    with pytest.raises(
        CheckpointError, match=r"wrong kind under the key\(s\) 'step', 'best_model'"
    ) as exc:
        ckpt.load_state(run)
    one_line(exc)
    torch.save([state["epoch"]], run / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not the dict of a training state"):
        ckpt.load_state(run)


def test_device_resolution() -> None:
    assert ckpt.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="auto, cpu, cuda"):
        ckpt.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            ckpt.resolve_device("cuda")
