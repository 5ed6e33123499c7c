"""Metrics: hand-worked edges, and agreement with an independent re-statement of MMSA's rules.

The reference functions below (``ref_*``) restate MMSA's ``MetricsTop`` rules from its
documentation in plain Python loops over floats, without numpy or our code, so that a
shared mistake is unlikely. Python's ``round`` is round-half-to-even, like numpy's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from qamoe_core.base.errors import InputError
from qamoe_core.metrics import METRIC_NAMES, PRIMARY, compute, higher_is_better, pearson

# ------------------------------------------------------------------------------------------
# The independent reference
# ------------------------------------------------------------------------------------------


def ref_weighted_f1(truth: list, pred: list) -> float:
    """Weighted F1 via per-class precision and recall (F1 = 2PR / (P + R), 0 when P + R = 0)."""
    n = len(truth)
    if n == 0:
        return math.nan
    total = 0.0
    for c in sorted(set(truth)):
        tp = fp = fn = support = 0
        for t, p in zip(truth, pred, strict=True):
            if t == c:
                support += 1
                if p == c:
                    tp += 1
                else:
                    fn += 1
            elif p == c:
                fp += 1
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += support / n * f1
    return total


def ref_acc(a: list, b: list) -> float:
    if not a:
        return math.nan
    return sum(1 for x, y in zip(a, b, strict=True) if x == y) / len(a)


def ref_corr(x: list, y: list) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def clip(v: float, bound: float) -> float:
    return min(max(v, -bound), bound)


def ref_mosi(pred: list, truth: list) -> dict[str, float]:
    has_t = [t >= 0 for t in truth]
    has_p = [p >= 0 for p in pred]
    non_t = [t > 0 for t in truth if t != 0]
    non_p = [p > 0 for p, t in zip(pred, truth, strict=True) if t != 0]
    n = len(pred)
    return {
        "Has0_acc_2": ref_acc(has_p, has_t),
        "Has0_F1_score": ref_weighted_f1(has_t, has_p),
        "Non0_acc_2": ref_acc(non_p, non_t),
        "Non0_F1_score": ref_weighted_f1(non_t, non_p),
        "Mult_acc_5": ref_acc(
            [round(clip(p, 2)) for p in pred], [round(clip(t, 2)) for t in truth]
        ),
        "Mult_acc_7": ref_acc(
            [round(clip(p, 3)) for p in pred], [round(clip(t, 3)) for t in truth]
        ),
        "MAE": sum(abs(p - t) for p, t in zip(pred, truth, strict=True)) / n,
        "Corr": ref_corr(pred, truth),
    }


def ref_bin(v: float, edges: list[float]) -> int:
    """Index i with edges[i] < v <= edges[i + 1] (left-open, right-closed)."""
    for i in range(len(edges) - 1):
        if edges[i] < v <= edges[i + 1]:
            return i
    raise AssertionError(f"{v} outside {edges}")


def ref_sims(pred: list, truth: list) -> dict[str, float]:
    p = [clip(v, 1.0) for v in pred]
    t = [clip(v, 1.0) for v in truth]
    e2 = [-1.01, 0.0, 1.01]
    e3 = [-1.01, -0.1, 0.1, 1.01]
    e5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = [ref_bin(v, e2) for v in p], [ref_bin(v, e2) for v in t]
    return {
        "Mult_acc_2": ref_acc(p2, t2),
        "Mult_acc_3": ref_acc([ref_bin(v, e3) for v in p], [ref_bin(v, e3) for v in t]),
        "Mult_acc_5": ref_acc([ref_bin(v, e5) for v in p], [ref_bin(v, e5) for v in t]),
        "F1_score": ref_weighted_f1(t2, p2),
        "MAE": sum(abs(a - b) for a, b in zip(p, t, strict=True)) / len(p),
        "Corr": ref_corr(p, t),
    }


def ref_binary(pred: list, truth: list) -> dict[str, float]:
    t = [v == 1.0 for v in truth]
    p = [v > 0 for v in pred]
    return {"Acc_2": ref_acc(p, t), "F1_score": ref_weighted_f1(t, p)}


def assert_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert list(ours) == list(ref)
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert round(ours[key], 4) == round(value, 4), (key, ours[key], value)
            assert ours[key] == pytest.approx(value, abs=1e-9), key


# ------------------------------------------------------------------------------------------
# Randomised agreement
# ------------------------------------------------------------------------------------------


def random_mosi(seed: int, n: int = 400) -> tuple[list[float], list[float]]:
    """MOSI-like labels (annotator means, many exact zeros and .5 ties) and predictions that
    include exact zeros, exact .5 ties and values beyond the clip bounds."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(-9, 10, n) / rng.choice([1.0, 2.0, 3.0], n)  # k, k/2, k/3
    truth = np.clip(truth, -3, 3)
    pred = truth + rng.normal(0, 1.0, n)
    ties = rng.random(n) < 0.3
    pred[ties] = rng.integers(-8, 9, ties.sum()) / 2.0  # ..., -0.5, 0.0, 0.5, 1.5, 2.5, ...
    pred[rng.random(n) < 0.05] = 0.0
    pred[rng.random(n) < 0.03] = rng.choice([-4.5, 3.7, -2.5, 2.5])
    return pred.tolist(), truth.tolist()


def random_sims(seed: int, n: int = 400) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    grid = np.array([-1.0, -0.8, -0.7, -0.6, -0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4, 0.6, 0.7, 1.0])
    truth = rng.choice(grid, n)
    pred = truth + rng.normal(0, 0.4, n)
    on_edge = rng.random(n) < 0.3
    pred[on_edge] = rng.choice([-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, -1.3, 1.2], on_edge.sum())
    return pred.tolist(), truth.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_mosi_matches_reference(seed: int) -> None:
    pred, truth = random_mosi(seed)
    assert 0.0 in truth and 0.0 in pred and 0.5 in pred and 2.5 in pred  # the edges are exercised
    assert_close(compute(pred, truth, "mosi"), ref_mosi(pred, truth))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_sims_matches_reference(seed: int) -> None:
    pred, truth = random_sims(seed)
    assert {-0.1, 0.1, 0.7, -0.7, 0.0} <= set(pred)
    assert_close(compute(pred, truth, "sims"), ref_sims(pred, truth))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 300).astype(float)
    pred = rng.normal(0, 1, 300) + (truth - 0.5)
    pred[:20] = 0.0  # exact zeros are negative
    assert_close(compute(pred, truth, "binary"), ref_binary(pred.tolist(), truth.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_and_corr_match_the_libraries_mmsa_calls(seed: int) -> None:
    pred, truth = (np.asarray(v) for v in random_mosi(seed))
    ours = compute(pred, truth, "mosi")
    assert ours["Has0_F1_score"] == pytest.approx(
        f1_score(truth >= 0, pred >= 0, average="weighted"), abs=1e-12
    )
    nz = truth != 0
    assert ours["Non0_F1_score"] == pytest.approx(
        f1_score(truth[nz] > 0, pred[nz] > 0, average="weighted"), abs=1e-12
    )
    assert ours["Corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1], abs=1e-12)


# ------------------------------------------------------------------------------------------
# Hand-worked edges
# ------------------------------------------------------------------------------------------


def test_mosi_hand_worked_zeros_and_ties() -> None:
    truth = [0.0, 0.0, 1.5, -0.5, 2.5, -3.0]
    pred = [0.0, -0.1, 2.5, 0.5, 3.4, -2.6]
    m = compute(pred, truth, "mosi")
    # Has0: truth >= 0 -> T T T F T F; pred >= 0 -> T F T T T F; agree on 4 of 6.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # Non0 keeps the last four: truth > 0 -> T F T F; pred > 0 -> T T T F; agree on 3 of 4.
    assert m["Non0_acc_2"] == pytest.approx(3 / 4)
    # Weighted F1 on the Non0 subset: positives (2): tp 2, fp 1, fn 0 -> 4/5;
    # negatives (2): tp 1, fp 0, fn 1 -> 2/3; weighted (2*4/5 + 2*2/3)/4.
    assert m["Non0_F1_score"] == pytest.approx((2 * 0.8 + 2 * 2 / 3) / 4)
    # Mult_acc_7, half to even: truth 0,0,2,-0,2,-3; pred 0,-0,2,0,3,-3 -> 5 of 6
    # (2.5 -> 2 for truth but 3.4 -> 3 for pred).
    assert m["Mult_acc_7"] == pytest.approx(5 / 6)
    # Mult_acc_5 clips to 2 first: truth 0,0,2,-0,2,-2; pred 0,-0,2,0,2,-2 -> all 6.
    assert m["Mult_acc_5"] == pytest.approx(1.0)
    assert m["MAE"] == pytest.approx((0 + 0.1 + 1.0 + 1.0 + 0.9 + 0.4) / 6)


def test_half_to_even_rounding() -> None:
    # 0.5 -> 0 and 1.5 -> 2: a truth of 0.5 matches a prediction of 0.4 but not one of 0.6.
    assert compute([0.4], [0.5], "mosi")["Mult_acc_7"] == 1.0
    assert compute([0.6], [0.5], "mosi")["Mult_acc_7"] == 0.0
    assert compute([1.6], [1.5], "mosi")["Mult_acc_7"] == 1.0
    assert compute([-2.6], [-2.5], "mosi")["Mult_acc_7"] == 0.0  # -2.5 -> -2, -2.6 -> -3


def test_constant_prediction_gives_nan_corr_but_other_metrics() -> None:
    m = compute([0.3] * 4, [1.0, -1.0, 2.0, 0.0], "mosi")
    assert math.isnan(m["Corr"])
    assert m["Has0_acc_2"] == pytest.approx(3 / 4)
    assert m["MAE"] == pytest.approx((0.7 + 1.3 + 1.7 + 0.3) / 4)
    with np.errstate(all="raise"):  # no warning either
        assert math.isnan(pearson(np.ones(3), np.arange(3.0)))


def test_all_zero_truth_makes_non0_nan() -> None:
    m = compute([0.5, -0.5, 0.0], [0.0, 0.0, 0.0], "mosi")
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)


def test_sims_bins_hand_worked() -> None:
    truth = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0]
    # Each prediction sits just across an edge from its truth, or clipped onto it.
    pred = [-5.0, -0.69, -0.1, 0.01, 0.1, 0.71, 3.0]
    m = compute(pred, truth, "sims")
    # 2 classes (0 is negative): truth N N N N P P P; pred N N N P P P P -> 6/7.
    assert m["Mult_acc_2"] == pytest.approx(6 / 7)
    # 3 classes (edges -0.1, 0.1): truth 0 0 0 1 1 2 2; pred 0 0 0 1 1 2 2 -> 7/7.
    assert m["Mult_acc_3"] == 1.0
    # 5 classes: truth 0 0 1 2 2 3 4; pred 0 1 1 2 2 4 4 -> 5/7.
    assert m["Mult_acc_5"] == pytest.approx(5 / 7)
    # MAE on clipped values: -5 -> -1 and 3 -> 1 cost nothing.
    assert m["MAE"] == pytest.approx((0.01 + 0.01 + 0.01) / 7)


def test_sims_float32_edge_compares_like_mmsa() -> None:
    # float32 0.1 is 0.10000000149; MMSA compares it against float32(0.1) -> in (-0.1, 0.1].
    m32 = compute(np.float32([0.1]), np.float32([0.05]), "sims")
    assert m32["Mult_acc_3"] == 1.0
    m64 = compute(np.float64([0.1]), np.float64([0.05]), "sims")
    assert m64["Mult_acc_3"] == 1.0  # 0.1 in float64 is exactly the edge: also closed
    widened = compute(np.float32([0.1]).astype(np.float64), np.float64([0.05]), "sims")
    assert widened["Mult_acc_3"] == 0.0  # why we keep the input's dtype


def test_binary_zero_logit_is_negative() -> None:
    m = compute([0.0, 0.0, 2.0, -1.0], [0, 1, 1, 0], "binary")
    assert m["Acc_2"] == pytest.approx(3 / 4)
    # positives (2): tp 1, fp 0, fn 1 -> 2/3; negatives (2): tp 2, fp 1, fn 0 -> 4/5.
    assert m["F1_score"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_torch_and_shapes() -> None:
    pred = torch.tensor([[0.5], [-1.0], [2.0]], requires_grad=True)
    m = compute(pred, torch.tensor([1.0, -1.0, 2.0]), "mosi")
    assert list(m) == list(METRIC_NAMES["mosi"])
    assert m["Has0_acc_2"] == 1.0


@pytest.mark.parametrize(
    ("pred", "truth", "scheme", "match"),
    [
        ([1.0], [1.0], "mose", "scheme"),
        ([1.0, 2.0], [1.0], "mosi", "2 values"),
        ([], [], "mosi", "zero samples"),
        ([float("nan")], [1.0], "mosi", "non-finite"),
        ([1.0], [0.5], "binary", "0 or 1"),
        (["a"], [1.0], "mosi", "numbers"),
    ],
)
def test_bad_input(pred: list, truth: list, scheme: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        compute(pred, truth, scheme)


def test_primary_and_direction() -> None:
    for scheme, name in PRIMARY.items():
        assert name in METRIC_NAMES[scheme]
    assert not higher_is_better("MAE") and higher_is_better("Corr")
