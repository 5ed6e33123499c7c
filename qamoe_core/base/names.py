"""The names every layer shares, defined once: modalities, splits, axes, tasks, metric schemes,
the default model.

This module imports nothing, so any module may import it without creating a cycle.
"""

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")
SPLITS: tuple[str, str, str] = ("train", "valid", "test")
# The corruption axes of the spectrum (docs/design.md §2), in the order flags and errors list them.
AXES: tuple[str, str, str] = ("missing", "noise", "mixed")
# What a results row's `axis` column may hold: the clean point, the spectrum axes and the
# fixed whole-modality drop protocol.
RESULT_AXES: tuple[str, ...] = ("clean", "mixed", "missing", "noise", "drop")
TASKS: tuple[str, str] = ("regression", "binary")
# The evaluation controls a model may offer (MultimodalModel.controls), each a variant of the
# results table: "quality_shuffle" permutes the quality scores r across the batch;
# "constant_r" fixes r to its mean on the clean split and "oracle_r" sets it from each sample's
# true corruption (evaluation/controls.py). The last two run only when asked for (--control).
CONTROLS: tuple[str, ...] = ("quality_shuffle", "constant_r", "oracle_r")
# The model `qamoe train` trains when --model is not given (models/registry.py resolves it).
DEFAULT_MODEL = "qamoe"
# Metric schemes (metrics.compute): MMSA's MOSI/MOSEI and SIMS rules, and class decisions.
SCHEMES: tuple[str, str, str] = ("mosi", "sims", "binary")
# How a spectrum point spreads its damage over time (spectrum.py): the missing axis drops steps
# independently (random) or in runs (burst); the noise axis adds white or AR(1)-correlated noise.
MISSING_PATTERNS: tuple[str, str] = ("random", "burst")
NOISE_PATTERNS: tuple[str, str] = ("white", "correlated")
# The label a results row gives the default patterns of each axis (what files written before
# patterns existed measured): the first pattern of each axis, joined by "+" on mixed.
DEFAULT_PATTERN: dict[str, str] = {
    "clean": "",
    "drop": "",
    "missing": MISSING_PATTERNS[0],
    "noise": NOISE_PATTERNS[0],
    "mixed": f"{MISSING_PATTERNS[0]}+{NOISE_PATTERNS[0]}",
}
