"""qamoe as a library: train a tiny run, predict, corrupt a batch as `qamoe corrupt` does,
and score it. Needs a few seconds of CPU (6 s measured on a shared 2-core machine) and
leaves nothing behind (all in a temporary folder).

    python examples/library_example.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import qamoe_core as qa
from qamoe_core.config import ModelConfig, TrainConfig
from qamoe_core.data.store import FeatureFile
from qamoe_core.data.synthetic import write_synthetic
from qamoe_core.spectrum.engine import CorruptionSpec
from qamoe_core.spectrum.files import corrupt_file
from qamoe_core.training.loop import train


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, run_dir = Path(tmp) / "syn.h5", Path(tmp) / "runs" / "qa"
        # 1. a tiny synthetic dataset (64 / 24 / 32 samples) and a one-epoch QA-MoE run
        write_synthetic(data, preset="tiny", seed=0)
        small = ModelConfig(d_model=32, n_heads=2, segments=4, num_experts=4, top_k=2)
        train(data, run_dir, "qamoe", small, TrainConfig(epochs=1, batch_size=32), device="cpu")

        # 2. load it and predict the clean test split: (N,) scores (a regression task here;
        #    a binary run would give probabilities of the positive class)
        run = qa.load_run(run_dir)
        batch = qa.read_batch(data, split="test")
        clean = qa.compute_metrics(qa.predict(run, batch), batch["label"], run.scheme)

        # 3. the same rows with audio and vision at level 0.6 of the mixed axis, seed 0
        noisy = qa.corrupt_batch(
            batch, level=0.6, modalities=["audio", "vision"], seed=0, split="test", source=data
        )
        worse = qa.compute_metrics(qa.predict(run, noisy), batch["label"], run.scheme)
        print(f"MAE clean {clean['MAE']:.3f}, audio+vision at 0.6: {worse['MAE']:.3f}")

        # 4. it is what `qamoe corrupt syn.h5 --level 0.6 --modalities audio,vision` writes
        out = Path(tmp) / "syn-0.6.h5"
        corrupt_file(data, out, CorruptionSpec(level=0.6, modalities=("audio", "vision")))
        with FeatureFile(out) as f:
            written = f.read("test", slice(None))
        same = all(np.array_equal(noisy[m], written[m]) for m in qa.MODALITIES)
        print(f"corrupt_batch == qamoe corrupt: {same}")


if __name__ == "__main__":
    main()
