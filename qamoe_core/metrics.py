"""Sentiment metrics, equal to MMSA's ``MetricsTop`` (thuiar/MMSA, ``utils/metricsTop.py``).

One public function, :func:`compute`, with three schemes (docs/design.md §5):

``mosi`` (also MOSEI; regression on [-3, 3])
    ``Has0_acc_2`` / ``Has0_F1_score``: truth >= 0 against pred >= 0 (zero counts as positive).
    ``Non0_acc_2`` / ``Non0_F1_score``: samples whose truth is exactly 0 are dropped, then
    truth > 0 against pred > 0. ``Mult_acc_5`` / ``Mult_acc_7``: both sides clipped to [-2, 2]
    (resp. [-3, 3]) and rounded half-to-even (numpy's ``round``: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2).
    ``MAE`` and ``Corr`` (Pearson) on the unclipped values.
``sims`` (CH-SIMS; regression on [-1, 1])
    Both sides clipped to [-1, 1] first, then binned into left-open, right-closed intervals
    starting at -1.01: 2 classes split at 0 (0 is negative), 3 classes at -0.1 and 0.1,
    5 classes at -0.7, -0.1, 0.1, 0.7. ``Mult_acc_2/3/5`` are bin accuracies, ``F1_score`` is
    the weighted F1 of the 2-class bins, ``MAE`` and ``Corr`` use the CLIPPED values.
``binary`` (e.g. MOSI-lite; labels 0/1)
    ``pred`` is the model's score on the logit scale: ``pred > 0`` (probability > 0.5) is the
    positive class and an exact 0 is negative. ``Acc_2`` and weighted ``F1_score``.

"F1 weighted" is scikit-learn's ``f1_score(truth, pred, average="weighted")``: each class's
F1 = 2·TP / (2·TP + FP + FN), weighted by how often the class occurs in the truth.

Where our numbers may differ from MMSA's, and why:

- MMSA rounds its MOSI/MOSEI results to 4 decimals; we return full precision (they agree to 4).
- ``Corr`` of a constant prediction (or constant truth) is undefined; MMSA's ``np.corrcoef``
  returns NaN with a warning, we return NaN without one. NaN is not replaced by 0 because a
  model that outputs a constant has no correlation to report, not a zero one.
- When every truth is exactly 0, MMSA's Non0 metrics crash (an empty index); ours are NaN.
- Thresholds and bins are compared in the input's own float type, as MMSA does with float32
  tensors (numpy casts the Python threshold to float32). This matters only on the SIMS bin
  edges: a float32 prediction of 0.1 falls in the (-0.1, 0.1] bin in both, but would land
  in the next bin if it were first widened to float64 (0.1f is slightly above 0.1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError, check_choice
from qamoe_core.base.names import SCHEMES

# The keys of compute()'s result, in MMSA's order.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "mosi": (
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "Mult_acc_5",
        "Mult_acc_7",
        "MAE",
        "Corr",
    ),
    "sims": ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"),
    "binary": ("Acc_2", "F1_score"),
}

# The metric a report plots when none is asked for: the binary accuracy every MSA paper
# leads with (Has0 for MOSI/MOSEI, as LNLN's robustness tables report it).
PRIMARY: dict[str, str] = {"mosi": "Has0_acc_2", "sims": "Mult_acc_2", "binary": "Acc_2"}

LOWER_IS_BETTER: frozenset[str] = frozenset({"MAE"})

# SIMS inner bin edges (MMSA: ms_2, ms_3, ms_5 without the outer -1.01 and 1.01).
_SIMS_EDGES: dict[int, tuple[float, ...]] = {
    2: (0.0,),
    3: (-0.1, 0.1),
    5: (-0.7, -0.1, 0.1, 0.7),
}


def higher_is_better(metric: str) -> bool:
    """True for accuracies, F1 and Corr; False for MAE."""
    return metric not in LOWER_IS_BETTER


def _as_1d(values: Any, name: str) -> np.ndarray:
    """Flatten ``values`` (numpy, torch or a list) to 1-D, keeping float32 as float32."""
    if hasattr(values, "detach"):  # a torch tensor; no torch import needed for this
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind != "f":
        raise InputError(f"The '{name}' values must be numbers; got dtype {arr.dtype}.")
    arr = arr.reshape(-1)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError(
            f"The '{name}' values hold {int(bad.sum())} non-finite numbers (NaN or inf).",
            hint=(
                "A model that outputs NaN has diverged; check its training history."
                if name == "pred"
                else "Labels must be finite numbers; check the data file."
            ),
        )
    return arr


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's weighted F1 for label arrays of any hashable class values.

    Classes that occur only in ``pred`` get weight 0, so they only enter as false positives.
    """
    if truth.size == 0:
        return math.nan
    total = 0.0
    for c in np.unique(truth):
        is_t = truth == c
        is_p = pred == c
        tp = float(np.sum(is_t & is_p))
        fp = float(np.sum(~is_t & is_p))
        fn = float(np.sum(is_t & ~is_p))
        total += float(is_t.sum()) * (2.0 * tp / (2.0 * tp + fp + fn))
    return total / truth.size


def pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation in float64; NaN when either side is constant (undefined)."""
    p = pred.astype(np.float64) - pred.mean(dtype=np.float64)
    t = truth.astype(np.float64) - truth.mean(dtype=np.float64)
    denom = math.sqrt(float(p @ p) * float(t @ t))
    if denom == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(p @ t) / denom))


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b)) if a.size else math.nan


def _mosi(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    has0_t, has0_p = truth >= 0, pred >= 0
    nz = truth != 0
    non0_t, non0_p = truth[nz] > 0, pred[nz] > 0
    return {
        "Has0_acc_2": _accuracy(has0_p, has0_t),
        "Has0_F1_score": weighted_f1(has0_t, has0_p),
        "Non0_acc_2": _accuracy(non0_p, non0_t),
        "Non0_F1_score": weighted_f1(non0_t, non0_p),
        # np.round is round-half-to-even, as in MMSA.
        "Mult_acc_5": _accuracy(np.round(np.clip(pred, -2, 2)), np.round(np.clip(truth, -2, 2))),
        "Mult_acc_7": _accuracy(np.round(np.clip(pred, -3, 3)), np.round(np.clip(truth, -3, 3))),
        "MAE": float(np.mean(np.abs(pred.astype(np.float64) - truth.astype(np.float64)))),
        "Corr": pearson(pred, truth),
    }


def sims_bins(values: np.ndarray, n_classes: int) -> np.ndarray:
    """Class index of each (already clipped) value in MMSA's left-open, right-closed SIMS bins.

    The index is the number of inner edges strictly below the value; the edges are cast to the
    values' dtype so that float32 inputs are compared exactly as MMSA compares them.
    """
    edges = np.asarray(_SIMS_EDGES[n_classes], dtype=values.dtype)
    return np.searchsorted(edges, values, side="left")


def _sims(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    p, t = np.clip(pred, -1, 1), np.clip(truth, -1, 1)
    bins = {k: (sims_bins(p, k), sims_bins(t, k)) for k in (2, 3, 5)}
    return {
        "Mult_acc_2": _accuracy(*bins[2]),
        "Mult_acc_3": _accuracy(*bins[3]),
        "Mult_acc_5": _accuracy(*bins[5]),
        "F1_score": weighted_f1(bins[2][1], bins[2][0]),
        "MAE": float(np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64)))),
        "Corr": pearson(p, t),
    }


def _binary(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    labels = np.unique(truth)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError(
            "The 'truth' values of a binary task must be 0 or 1; "
            f"got {labels[~np.isin(labels, (0.0, 1.0))][:5].tolist()}.",
            hint="Use scheme 'mosi' or 'sims' for regression scores.",
        )
    t, p = truth > 0.5, pred > 0
    return {"Acc_2": _accuracy(p, t), "F1_score": weighted_f1(t, p)}


def compute(pred: Any, truth: Any, scheme: str) -> dict[str, float]:
    """All metrics of ``scheme`` for predictions ``pred`` (N,) against labels ``truth`` (N,).

    ``pred`` and ``truth`` may be numpy arrays, torch tensors or lists; any shape with N
    elements is flattened (MMSA's ``view(-1)``). Returns floats keyed by MMSA's names in
    MMSA's order (:data:`METRIC_NAMES`); a metric that is undefined for this data is NaN.
    Raises :class:`InputError` on an unknown scheme, mismatched or empty inputs, non-finite
    values, or binary labels other than 0/1.
    """
    scheme = check_choice(scheme, SCHEMES, "scheme")
    p = _as_1d(pred, "pred")
    t = _as_1d(truth, "truth")
    if p.shape != t.shape:
        raise InputError(
            f"'pred' has {p.size} values but 'truth' has {t.size}.",
            hint="Pass one prediction per label.",
        )
    if p.size == 0:
        raise InputError("Cannot compute metrics on zero samples.", hint="Check the split.")
    if scheme == "mosi":
        return _mosi(p, t)
    if scheme == "sims":
        return _sims(p, t)
    return _binary(p, t)


# Constant predictions worth trying per scheme: one per class of every decision rule (the
# rounded classes for MOSI, a point inside each SIMS bin, both sides of the binary logit).
# The label median joins them for MAE, whose best constant it is.
_CONSTANT_CANDIDATES: dict[str, tuple[float, ...]] = {
    "mosi": (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
    "sims": (-1.0, -0.4, 0.0, 0.4, 1.0),
    "binary": (-1.0, 1.0),
}


def best_constant(truth: Any, scheme: str) -> dict[str, tuple[float, float]]:
    """For each metric of ``scheme``: (the constant prediction that scores best, its score).

    This is the majority-class / best-constant reference a report draws under its curves:
    a model below it has learnt less than always giving the same answer. Each metric picks
    its own constant (always "positive" for accuracy, the median for MAE). ``Corr`` of a
    constant is undefined, so its entry is (nan, nan).
    """
    t = _as_1d(truth, "truth")
    if t.size == 0:
        raise InputError("Cannot compute metrics on zero samples.", hint="Check the split.")
    scheme = check_choice(scheme, SCHEMES, "scheme")
    candidates = list(_CONSTANT_CANDIDATES[scheme])
    if scheme != "binary":
        candidates.append(float(np.median(t)))
    best: dict[str, tuple[float, float]] = {m: (math.nan, math.nan) for m in METRIC_NAMES[scheme]}
    for c in candidates:
        scores = compute(np.full(t.shape, c, dtype=t.dtype), t, scheme)
        for metric, score in scores.items():
            old = best[metric][1]
            better = score > old if higher_is_better(metric) else score < old
            if math.isfinite(score) and (math.isnan(old) or better):
                best[metric] = (c, score)
    return best


def sample_terms(pred: Any, truth: Any, scheme: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (numerator, denominator) with ``metric = sum(num) / sum(den)``.

    Defined for the accuracies and MAE, whose value is a mean over (a subset of) samples;
    a bootstrap then reweights samples without recomputing the metric. Raises InputError for
    F1 and Corr, which do not decompose so.
    """
    p, t = _as_1d(pred, "pred"), _as_1d(truth, "truth")
    one = np.ones(t.shape, dtype=np.float64)
    if metric == "MAE":
        if scheme == "sims":
            p, t = np.clip(p, -1, 1), np.clip(t, -1, 1)
        return np.abs(p.astype(np.float64) - t.astype(np.float64)), one
    hit: np.ndarray | None = None
    if scheme == "binary" and metric == "Acc_2":
        hit = (p > 0) == (t > 0.5)
    elif scheme == "mosi" and metric == "Has0_acc_2":
        hit = (p >= 0) == (t >= 0)
    elif scheme == "mosi" and metric == "Non0_acc_2":
        nz = (t != 0).astype(np.float64)
        return (((p > 0) == (t > 0)) & (t != 0)).astype(np.float64), nz
    elif scheme == "mosi" and metric in ("Mult_acc_5", "Mult_acc_7"):
        k = 2 if metric == "Mult_acc_5" else 3
        hit = np.round(np.clip(p, -k, k)) == np.round(np.clip(t, -k, k))
    elif scheme == "sims" and metric in ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5"):
        k = int(metric[-1])
        hit = sims_bins(np.clip(p, -1, 1), k) == sims_bins(np.clip(t, -1, 1), k)
    if hit is None:
        raise InputError(f"The metric {metric!r} of scheme {scheme!r} is not a per-sample mean.")
    return hit.astype(np.float64), one
