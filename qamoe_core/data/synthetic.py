"""The built-in synthetic dataset: MMSA-shaped sequences with real, known structure.

Each utterance has three hidden sentiment components ``z_text``, ``z_audio``, ``z_vision``
(independent standard normals). The label mixes them with weights that make text the
strongest cue and audio/vision weaker but complementary::

    score = 1.0 * z_text + 0.6 * z_audio + 0.6 * z_vision        (then scaled to ~[-3, 3])

and is quantised like MOSI: the mean of 3 to 5 simulated annotators' integer ratings, so
values such as 0.5 or 1.333 occur. Modality ``m`` only sees its own component: a fraction of
its valid time steps ("salient" words or frames) carry ``z_m`` along a fixed direction, and
every step also carries a per-speaker offset, a per-utterance nuisance vector (which does
not average out over time, so no modality is perfectly informative) and frame noise.
Consequences, checked by ``tests/data/test_synthetic.py`` with a linear probe:
a fused model beats each single modality, and dropping any modality costs accuracy.
Padding after each sample's length is exactly zero, as in MMSA's files.

Features are centred by default. ``offset`` adds a fixed per-dimension offset to every valid
step of a modality, drawn N(0, (offset·s_m)²) per dimension with s_m the modality's per-step
std, so that ‖mean‖/‖std‖ over the dimensions is about ``offset``, as real extractor outputs
have (MOSI-lite's utterance features, train split: 0.26 text, 3.73 audio, 0.61 vision). It
matters for the ``missing`` axis: a dropped step is zeroed, which for centred features is a
step at the mean, and for offset ones a step far from every real input.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError, UsageError
from qamoe_core.base.names import MODALITIES, SPLITS
from qamoe_core.data.store import FeatureWriter, SplitArrays

# Weights of the hidden components in the label, and each modality's signal gain relative to
# its utterance-level nuisance: text is the most legible and the most weighted, as on MOSI.
MIX = {"text": 1.0, "audio": 0.6, "vision": 0.6}
GAIN = {"text": 4.0, "audio": 3.5, "vision": 3.5}
SALIENT = {"text": 0.3, "audio": 0.2, "vision": 0.2}  # fraction of steps carrying the signal
SPEAKER_STD = 0.5  # per-speaker offsets; frame noise and utterance nuisance have std 1
# ‖mean‖/‖std‖ of MOSI-lite's train features per modality (measured on the CSVs of
# ../shared/data/mosi-lite: text-CNN, openSMILE, 3D-CNN), for ``--offset mosi-lite``.
MOSI_LITE_OFFSET = {"text": 0.26, "audio": 3.73, "vision": 0.61}


def step_std(m: str) -> float:
    """The per-dimension std of a valid step of modality ``m`` (all sources of variance)."""
    return float(np.sqrt(1.0 + 1.0 + SPEAKER_STD**2 + SALIENT[m] * GAIN[m] ** 2))


# ‖mean‖/‖std‖ far beyond any real extractor's (MOSI-lite's largest is 3.7) only loses
# float32 precision, and around 1e38 the features overflow.
MAX_OFFSET = 1000.0


def check_offset(offset: float | Mapping[str, float]) -> dict[str, float]:
    """``offset`` as {modality: value >= 0}; one number means the same for every modality."""
    values = offset if isinstance(offset, Mapping) else dict.fromkeys(MODALITIES, offset)
    unknown = sorted(set(values) - set(MODALITIES))
    if unknown:
        raise InputError(
            f"The 'offset' parameter names unknown modalities: {', '.join(unknown)}.",
            hint=f"Use {', '.join(MODALITIES)}.",
        )
    out = {m: values.get(m, 0.0) for m in MODALITIES}
    for m, v in out.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_OFFSET:
            raise UsageError(
                f"The 'offset' parameter must be a number in [0, {MAX_OFFSET:g}] per modality. "
                f"Got {v!r} for {m} instead.",
                hint="0 = centred features (the default); MOSI-lite's are 0.26, 3.73, 0.61.",
            )
    return {m: float(v) for m, v in out.items()}


@dataclass(frozen=True)
class Preset:
    """Sizes of one synthetic dataset: samples per split and (T, D) per modality."""

    sizes: tuple[int, int, int]  # train, valid, test
    shapes: dict[str, tuple[int, int]]
    min_len: dict[str, int]  # shortest valid length per modality
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        (64, 24, 32),
        {"text": (8, 32), "audio": (12, 5), "vision": (10, 8)},
        {"text": 3, "audio": 4, "vision": 4},
        "a few dozen samples with short sequences: for unit tests",
    ),
    "small": Preset(
        (800, 200, 300),
        {"text": (20, 64), "audio": (40, 5), "vision": (40, 20)},
        {"text": 6, "audio": 10, "vision": 10},
        "demo size: trains in seconds on 2 cores",
    ),
    "mosi": Preset(
        (1284, 229, 686),
        {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)},
        {"text": 8, "audio": 40, "vision": 40},
        "CMU-MOSI unaligned_50 shapes (MMSA release)",
    ),
    "mosei": Preset(
        (16326, 1871, 4659),
        {"text": (50, 768), "audio": (500, 74), "vision": (500, 35)},
        {"text": 8, "audio": 40, "vision": 40},
        "CMU-MOSEI unaligned_50 shapes (MMSA release); streamed, several GB",
    ),
    "sims": Preset(
        (1368, 456, 457),
        {"text": (39, 768), "audio": (400, 33), "vision": (55, 709)},
        {"text": 6, "audio": 40, "vision": 10},
        "CH-SIMS unaligned_39 shapes (MMSA release), labels on [-1, 1]",
    ),
}
BLOCK = 256  # rows generated at a time: bounds memory for MOSEI-sized files


def _check_preset(preset: str) -> Preset:
    if preset not in PRESETS:
        raise UsageError(
            f"The 'preset' parameter must be one of {', '.join(PRESETS)}. Got {preset!r} instead."
        )
    return PRESETS[preset]


class _World:
    """The fixed parts shared by every sample of a dataset: directions and speakers."""

    def __init__(self, p: Preset, seed: int, offset: Mapping[str, float]) -> None:
        rng = np.random.default_rng([seed, 7919])
        self.direction: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            d = p.shapes[m][1]
            u = rng.standard_normal(d)
            self.direction[m] = u / np.linalg.norm(u) * np.sqrt(d)  # unit RMS per dim
        self.n_speakers = max(4, sum(p.sizes) // 25)
        self.speaker = {
            m: SPEAKER_STD * rng.standard_normal((self.n_speakers, p.shapes[m][1]))
            for m in MODALITIES
        }
        # drawn last, so that everything above is the same whatever the offset
        unit = {m: rng.standard_normal(p.shapes[m][1]) for m in MODALITIES}
        self.offset = {
            m: (offset[m] * step_std(m) * unit[m]).astype(np.float32)
            for m in MODALITIES
            if offset[m] > 0
        }


def _labels(z: dict[str, np.ndarray], rng: np.random.Generator, sims: bool) -> np.ndarray:
    score = sum(MIX[m] * z[m] for m in MODALITIES)
    score = score / np.sqrt(sum(w**2 for w in MIX.values()))  # ~N(0, 1)
    if sims:  # CH-SIMS: [-1, 1] on a 0.2 grid
        return np.clip(np.round(score * 0.5 / 0.2) * 0.2, -1.0, 1.0).astype(np.float32)
    n = len(score)
    raters = rng.integers(3, 6, size=n)  # 3..5 annotators, as in MOSI's crowd ratings
    ratings = np.clip(np.rint(1.4 * score[:, None] + 0.6 * rng.standard_normal((n, 5))), -3, 3)
    keep = np.arange(5)[None, :] < raters[:, None]
    return ((ratings * keep).sum(1) / raters).astype(np.float32)


def _block(
    p: Preset, world: _World, rng: np.random.Generator, n: int, sims: bool
) -> dict[str, np.ndarray]:
    """Generate ``n`` samples as a batch dict (float32 features, int lengths, labels)."""
    z = {m: rng.standard_normal(n) for m in MODALITIES}
    batch: dict[str, np.ndarray] = {"label": _labels(z, rng, sims)}
    speakers = rng.integers(0, world.n_speakers, size=n)
    for m in MODALITIES:
        t, d = p.shapes[m]
        lens = rng.integers(p.min_len[m], t + 1, size=n)
        steps = np.arange(t)[None, :]
        valid = steps < lens[:, None]  # (N, T)
        salient = (rng.random((n, t)) < SALIENT[m]) & valid
        salient[:, 0] |= True  # at least one informative step, even at length 1
        nuisance = rng.standard_normal((n, 1, d)).astype(np.float32)  # per-utterance, (N, 1, D)
        x = rng.standard_normal((n, t, d), dtype=np.float32)  # frame noise, (N, T, D)
        x += nuisance + world.speaker[m][speakers][:, None, :].astype(np.float32)
        if m in world.offset:
            x += world.offset[m]
        signal = GAIN[m] * z[m][:, None, None] * world.direction[m][None, None, :]  # (N, 1, D)
        x += (salient[:, :, None] * signal).astype(np.float32)
        x *= valid[:, :, None]
        batch[m] = x
        batch[f"{m}_len"] = lens.astype(np.int32)
    return batch


def _split_seed(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), 104729])


def iter_split(
    preset: str, split: str, seed: int = 0, offset: float | Mapping[str, float] = 0.0
) -> Iterator[dict[str, np.ndarray]]:
    """Yield one split of a preset in blocks of at most ``BLOCK`` rows (deterministic)."""
    p = _check_preset(preset)
    world = _World(p, seed, check_offset(offset))
    rng = _split_seed(seed, split)
    n = p.sizes[SPLITS.index(split)]
    for start in range(0, n, BLOCK):
        yield _block(p, world, rng, min(BLOCK, n - start), sims=preset == "sims")


def _ids(split: str, start: int, n: int) -> list[str]:
    # MMSA style "<video>$_$<clip>"; ~10 clips per synthetic video
    return [f"synth_{split}_{(start + i) // 10:04d}$_${(start + i) % 10}" for i in range(n)]


def generate(
    preset: str = "tiny", seed: int = 0, offset: float | Mapping[str, float] = 0.0
) -> dict[str, SplitArrays]:
    """A whole dataset in memory (tiny/small/mosi/sims; stream mosei with write_synthetic)."""
    p = _check_preset(preset)
    out: dict[str, SplitArrays] = {}
    for split in SPLITS:
        blocks = list(iter_split(preset, split, seed, offset))
        cat = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
        n = len(cat["label"])
        out[split] = SplitArrays(
            ids=_ids(split, 0, n),
            label=cat["label"],
            features={m: cat[m] for m in MODALITIES},
            lengths={m: cat[f"{m}_len"] for m in MODALITIES},
        )
    assert all(len(out[s]) == p.sizes[i] for i, s in enumerate(SPLITS))
    return out


def describe(preset: str, seed: int, offset: float | Mapping[str, float] = 0.0) -> dict[str, Any]:
    p = _check_preset(preset)
    return {
        "name": "synthetic",
        "preset": preset,
        "seed": seed,
        "description": p.description,
        "label_mix": MIX,
        "signal_gain": GAIN,
        "salient_fraction": SALIENT,
        "offset": check_offset(offset),
    }


def write_synthetic(
    path: str | os.PathLike[str],
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    progress: Any = None,
    offset: float | Mapping[str, float] = 0.0,
) -> dict[str, Any]:
    """Stream a synthetic preset into an HDF5 file (bounded memory); return a summary.

    ``progress(n)`` is called with the number of rows written after each block.
    """
    p = _check_preset(preset)
    offset = check_offset(offset)
    sims = preset == "sims"
    attrs = {
        "dataset": f"synthetic-{preset}",
        "task": "regression",
        "scheme": "sims" if sims else "mosi",
        "label_min": -1.0 if sims else -3.0,
        "label_max": 1.0 if sims else 3.0,
        "extractor": describe(preset, seed, offset),
        "modalities": list(MODALITIES),
    }
    with FeatureWriter(path, force=force, attrs=attrs) as w:
        for i, split in enumerate(SPLITS):
            w.create_split(split, p.sizes[i], p.shapes)
            start = 0
            for batch in iter_split(preset, split, seed, offset):
                n = len(batch["label"])
                w.write(split, start, batch, ids=_ids(split, start, n))
                start += n
                if progress is not None:
                    progress(n)
        w.compute_train_stats()
    return {
        "path": str(Path(path)),
        "dataset": attrs["dataset"],
        "splits": dict(zip(SPLITS, p.sizes, strict=True)),
        "shapes": {m: list(s) for m, s in p.shapes.items()},
        "bytes": Path(path).stat().st_size,
    }
