"""The public library API (qamoe_core/api.py, re-exported by qamoe_core)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

import qamoe_core as qa
from qamoe_core.base.errors import UsageError
from qamoe_core.data.store import FeatureFile
from qamoe_core.metrics import compute
from qamoe_core.spectrum.engine import CorruptionSpec
from qamoe_core.spectrum.engine import corrupt_batch as training_corrupt_batch
from qamoe_core.spectrum.files import corrupt_file

REPO = Path(__file__).resolve().parents[2]


def test_predict_matches_the_trainers_test_metrics(tiny_run: Path, tiny_h5: Path) -> None:
    run = qa.load_run(tiny_run)
    assert (run.task, run.scheme, run.modalities) == ("regression", "mosi", qa.MODALITIES)
    pred = qa.predict(run, tiny_h5, split="test")
    batch = qa.read_batch(tiny_h5, split="test")
    assert pred.shape == batch["label"].shape and pred.dtype == np.float64
    got = qa.compute_metrics(pred, batch["label"], run.scheme)
    want = run.meta["metrics"]["test_clean"]  # computed by the trainer with the same weights
    for name, value in got.items():
        assert value == pytest.approx(want[name], abs=1e-6), name
    # a batch (numpy or torch), a path instead of a Run, and any batch size: same predictions
    torch_batch = {k: torch.as_tensor(v) for k, v in batch.items() if v.dtype.kind in "biuf"}
    np.testing.assert_allclose(qa.predict(run, torch_batch, batch_size=5), pred, atol=1e-6)
    np.testing.assert_allclose(qa.predict(tiny_run, batch), pred, atol=1e-6)


def test_binary_runs_give_probabilities(tiny_run: Path, tiny_h5: Path) -> None:
    run = qa.load_run(tiny_run)
    scores = qa.predict(run, tiny_h5)
    # the same network read as a binary model: the output is then its logit
    as_binary = qa.Run(run.model, {**run.meta, "task": "binary", "scheme": "binary"})
    prob = qa.predict(as_binary, qa.read_batch(tiny_h5))
    assert ((prob > 0) & (prob < 1)).all()
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-scores)), rtol=1e-12)
    truth = (np.arange(prob.size) % 2).astype(np.float32)
    assert qa.compute_metrics(prob, truth, "binary") == compute(scores, truth, "binary")
    with pytest.raises(UsageError, match="look like logits"):
        qa.compute_metrics(scores * 10, truth, "binary")


@pytest.mark.parametrize("rows", [slice(None), slice(5, 17)])
def test_corrupt_batch_gives_what_qamoe_corrupt_writes(
    tiny_h5: Path, tmp_path: Path, rows: slice
) -> None:
    spec = CorruptionSpec(level=0.4, axis="mixed", modalities=("audio", "vision"), seed=3)
    first, second = tmp_path / "c1.h5", tmp_path / "c2.h5"
    corrupt_file(tiny_h5, first, spec)
    corrupt_file(first, second, spec)  # a chain: the second corruption draws afresh
    for source, written in ((tiny_h5, first), (first, second)):
        batch = qa.read_batch(source, split="test", rows=rows)
        ours = qa.corrupt_batch(
            batch, level=0.4, split="test", modalities=["audio", "vision"], seed=3, source=source
        )
        with FeatureFile(written) as f:
            want = f.read("test", rows)
        for key, value in want.items():
            if value.dtype.kind in "biuf":
                assert ours[key].tobytes() == value.tobytes(), (source.name, key)


def test_training_corruption_is_another_thing(tiny_h5: Path) -> None:
    """Why the old route differed: training draws fresh torch randomness per batch, not the
    per-row keyed draws of files and sweeps."""
    batch = qa.read_batch(tiny_h5, split="test")
    keyed = qa.corrupt_batch(batch, level=0.4, split="test", seed=0, source=tiny_h5)
    tb = {k: torch.as_tensor(v) for k, v in batch.items() if v.dtype.kind in "biuf"}
    with FeatureFile(tiny_h5) as f:
        std = {m: f.train_std(m) for m in f.modalities}
    fresh = training_corrupt_batch(
        tb, dict.fromkeys(qa.MODALITIES, 0.4), train_std=std, generator=torch.manual_seed(0)
    )
    assert not np.array_equal(fresh["audio"].numpy(), keyed["audio"])


def test_corrupt_batch_refuses_what_it_cannot_reproduce(tiny_h5: Path) -> None:
    batch = qa.read_batch(tiny_h5, split="test")
    with pytest.raises(UsageError, match="'index'"):
        qa.corrupt_batch({k: v for k, v in batch.items() if k != "index"}, level=0.2, split="test")
    with pytest.raises(UsageError, match="train split's std"):
        qa.corrupt_batch(batch, level=0.2, split="test")  # noise needs the train std
    missing_only = qa.corrupt_batch(batch, level=0.2, axis="missing", split="test")
    assert missing_only["audio_keep"].sum() < (batch["audio_len"]).sum()
    with pytest.raises(UsageError) as info:
        qa.corrupt_batch(batch, level=0.2, axis="Mixed", split="test", source=tiny_h5)
    assert info.value.hint == "Did you mean 'mixed'?"


@pytest.mark.slow
def test_library_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `python examples/library_example.py` runs it, in this process (the library's import
    # in a fresh interpreter is tests/cli/test_startup.py's subject)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(REPO / "examples" / "library_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "corrupt_batch == qamoe corrupt: True" in out
    assert "MAE clean" in out
    assert list(tmp_path.iterdir()) == []  # nothing written where it runs
