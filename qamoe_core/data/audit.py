"""`qamoe audit`: the data checks a careful researcher runs before trusting any number.

What it measures, per feature file:

- **Label-fitted features.** Per modality, a linear probe on the pooled features (the mean
  over valid steps) is scored twice: by cross-validation inside train, grouped by video, and
  trained on train then scored on valid and on test. Honest features score about the same
  inside and outside train. Features produced by a network that was itself trained on the
  train videos' labels (MOSI-lite's bc-LSTM text-CNN and 3D-CNN video, see
  ``../shared/data/cmu-mosi-labels/README.md``) score far higher inside train: the flag.
- **Leaks by id.** Ids repeated across splits, and groups (videos, i.e. speakers) found in
  more than one split.
- **The floor.** Label balance per split and the best constant predictor's score per split,
  which every curve must be read against.
- **Dead dimensions.** Feature dims that are all zero, or constant, over the valid steps of a
  split.

The probe (fixed, so that scores are comparable across files): standardisation fitted on the
training rows, then for a ``binary`` task logistic regression (C = 1, scikit-learn's default)
scored by accuracy (``Acc_2``), and for a ``regression`` task ridge regression (alpha chosen
once per modality by scikit-learn's efficient leave-one-out over the train rows) scored by the
scheme's binary accuracy (``Has0_acc_2`` for MOSI/MOSEI, ``Mult_acc_2`` for SIMS; Corr and MAE are
reported too). Metrics are :func:`qamoe_core.metrics.compute`, the ones every table uses.

The flag rule (:data:`DEFAULT_MAX_GAP`, :data:`DEFAULT_Z`): a modality is flagged
"label-fitted features?" when, for valid or test, the within-train CV score exceeds the
held-out score by more than ``max_gap`` points AND by more than ``z`` standard errors of the
difference (binomial, sqrt(p(1-p)/n) per side, so that a 30-sample test split is not flagged
for noise), AND the within-train score is more than ``max_gap`` points above the train
split's best constant (two scores at chance differ by noise only). On MOSI-lite this fires for
text (CV 98 % vs test 75 %) and vision (91 % vs 52 %) and not for audio.

Grouping: a row's group is the first capture group of ``group_regex`` matched on its id; the
default strips the clip suffix of CMU-style ids (``<video>_<segment>``, YouTube ids may hold
``_``) and of MMSA ids (``<video>$_$<clip>``). Ids that do not match are their own group.
``group_regex=None`` turns grouping off (plain stratified folds).

Cost: at most ``max_rows`` rows per split are read (a seeded subsample; MOSEI-sized files stay
quick), block by block through :class:`~qamoe_core.data.store.FeatureFile`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qamoe_core.base.errors import InputError
from qamoe_core.data.store import FeatureFile
from qamoe_core.metrics import PRIMARY, compute

log = logging.getLogger(__name__)

# <video>_<digits> (CMU-MOSI/MOSEI clip ids) or <video>$_$<clip> (MMSA pickles); lazy, so the
# group keeps every "_" of a YouTube id and only the last suffix goes.
DEFAULT_GROUP_REGEX = r"^(.+?)(?:\$_\$[^$]+|_\d+)$"
DEFAULT_FOLDS = 5
DEFAULT_MAX_ROWS = 4000  # per split; ~10 s of reading for MOSEI's 50x768 text on 2 cores
DEFAULT_MAX_GAP = 10.0  # points (percent of accuracy)
# Standard errors the gap must also exceed. 4, not 2 or 3: a file makes up to 6 comparisons,
# and at 3 one honest constructed file in twelve was flagged for a 3.2-SE draw (tests/core/
# test_audit.py, seeds 0-5); real leaks sit far beyond (MOSI-lite text 14 SE, vision 19).
DEFAULT_Z = 4.0
EXAMPLES = 5  # ids, groups or dims listed per finding
_READ_ROWS = 256
# Float32 copies of a block that _read_split holds at once (the read, float64 features, the
# masked product, the valid steps): blocks shrink so that these fit the memory budget.
_READ_COPIES = 8


@dataclass(frozen=True)
class AuditConfig:
    """Settings of one audit; the defaults are the documented rule."""

    group_regex: str | None = DEFAULT_GROUP_REGEX  # None: no grouping
    folds: int = DEFAULT_FOLDS
    max_rows: int = DEFAULT_MAX_ROWS
    seed: int = 0
    max_gap: float = DEFAULT_MAX_GAP
    z: float = DEFAULT_Z
    modalities: tuple[str, ...] | None = None  # None: every modality of the file

    def check(self) -> AuditConfig:
        if self.folds < 2:
            raise InputError(f"The 'folds' parameter must be an int >= 2. Got {self.folds}.")
        if self.max_rows < 10:
            raise InputError(f"The 'max_rows' parameter must be >= 10. Got {self.max_rows}.")
        if not (math.isfinite(self.max_gap) and 0 <= self.max_gap <= 100):
            raise InputError(f"The 'max_gap' parameter must be in [0, 100]. Got {self.max_gap}.")
        if not (math.isfinite(self.z) and self.z >= 0):
            raise InputError(f"The 'z' parameter must be a float >= 0. Got {self.z}.")
        compile_group_regex(self.group_regex)
        return self


def compile_group_regex(pattern: str | None) -> re.Pattern[str] | None:
    """The compiled rule, or an InputError naming the problem (it needs one capture group)."""
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise InputError(
            f"The group regex {pattern!r} does not compile ({exc}).",
            hint="Quote it in the shell; e.g. --group-regex '^(.+)_\\d+$'.",
        ) from None
    if rx.groups < 1:
        raise InputError(
            f"The group regex {pattern!r} has no capture group.",
            hint="The first (...) group is the row's video/speaker, e.g. '^(.+)_\\d+$'.",
        )
    return rx


def group_of(ids: Sequence[str], rx: re.Pattern[str] | None) -> tuple[list[str], int]:
    """Group key per id and how many ids matched; an unmatched id is its own group."""
    if rx is None:
        return list(ids), 0
    out, matched = [], 0
    for i in ids:
        m = rx.match(i)
        if m and m.group(1):
            out.append(m.group(1))
            matched += 1
        else:
            out.append(i)
    return out, matched


# -- reading ---------------------------------------------------------------------------------
@dataclass
class _Split:
    """What the audit keeps of one split: ids and groups of all rows, pooled rows read."""

    ids: list[str]
    groups: list[str]
    rows: np.ndarray  # (n_read,) row numbers read
    label: np.ndarray  # (n_read,)
    pooled: dict[str, np.ndarray]  # m -> (n_read, D) float64
    dead: dict[str, dict[str, Any]]  # m -> all-zero / constant dims over valid steps


def _pick_rows(n: int, max_rows: int, seed: int, split: str) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def _read_split(
    f: FeatureFile, split: str, mods: Sequence[str], rows: np.ndarray, tick: Callable[[], None]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Pooled features (mean over valid steps) and per-dim min/max over valid steps."""
    labels: list[np.ndarray] = []
    pooled: dict[str, list[np.ndarray]] = {m: [] for m in mods}
    lo = {m: np.full(f.dims[m], np.inf) for m in mods}
    hi = {m: np.full(f.dims[m], -np.inf) for m in mods}
    whole = len(rows) == f.n(split)
    step = f.block_rows(split, _READ_ROWS, _READ_COPIES)
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        batch = f.read(split, slice(block[0], block[-1] + 1) if whole else block)
        labels.append(batch["label"].astype(np.float64))
        for m in mods:
            x, lens = batch[m].astype(np.float64), batch[f"{m}_len"]  # (B, T, D), (B,)
            valid = np.arange(x.shape[1])[None, :] < lens[:, None]  # (B, T)
            pooled[m].append((x * valid[..., None]).sum(1) / np.maximum(lens, 1)[:, None])
            steps = x[valid]  # (valid steps, D)
            if len(steps):
                lo[m] = np.minimum(lo[m], steps.min(0))
                hi[m] = np.maximum(hi[m], steps.max(0))
        tick()
    dead = {m: _dead_dims(lo[m], hi[m]) for m in mods}
    return np.concatenate(labels), {m: np.concatenate(v) for m, v in pooled.items()}, dead


def pooled_features(
    f: FeatureFile, split: str, mods: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels (N,) and each modality's mean over its valid steps (N, D_m), float64, of every
    row of ``split`` (the probe's features; also the study's ridge anchor's)."""
    label, pooled, _ = _read_split(f, split, mods, np.arange(f.n(split)), lambda: None)
    return label, pooled


def _dead_dims(lo: np.ndarray, hi: np.ndarray) -> dict[str, Any]:
    if not np.isfinite(lo).all():  # no valid step at all in the rows read
        return {"no_valid_steps": True, "zero": list(range(len(lo))), "constant": []}
    same = lo == hi
    zero = np.flatnonzero(same & (lo == 0)).tolist()
    const = np.flatnonzero(same & (lo != 0)).tolist()
    return {"no_valid_steps": False, "zero": zero, "constant": const}


# -- labels and the floor --------------------------------------------------------------------
def label_summary(label: np.ndarray, task: str, scheme: str) -> dict[str, Any]:
    """Balance of the labels and the best constant predictor's scores (fractions; MAE)."""
    y = np.asarray(label, dtype=np.float64)
    out: dict[str, Any] = {"n": len(y)}
    if task == "binary":
        pos = float(np.mean(y > 0.5))
        out["balance"] = {"positive": pos}
        out["floor"] = {"Acc_2": max(pos, 1 - pos)}
        return out
    if scheme == "sims":
        c = np.clip(y, -1, 1)
        neg = float(np.mean(c <= 0))  # SIMS 2-class bins: 0 is negative
        out["balance"] = {"positive": 1 - neg, "mean": float(y.mean()), "std": float(y.std())}
        out["floor"] = {"Mult_acc_2": max(neg, 1 - neg), "MAE": _mae_of_median(c)}
        return out
    nz = y[y != 0]
    ge0 = float(np.mean(y >= 0))
    gt0 = float(np.mean(nz > 0)) if len(nz) else math.nan
    _, counts = np.unique(np.round(np.clip(y, -3, 3)), return_counts=True)
    out["balance"] = {
        "nonnegative": ge0,
        "positive_of_nonzero": gt0,
        "zero": float(np.mean(y == 0)),
        "mean": float(y.mean()),
        "std": float(y.std()),
    }
    out["floor"] = {
        "Has0_acc_2": max(ge0, 1 - ge0),
        "Non0_acc_2": max(gt0, 1 - gt0) if len(nz) else math.nan,
        "Mult_acc_7": float(counts.max() / len(y)),
        "MAE": _mae_of_median(y),
    }
    return out


def _mae_of_median(y: np.ndarray) -> float:
    return float(np.mean(np.abs(y - np.median(y))))


# -- the probe -------------------------------------------------------------------------------
ALPHAS = np.logspace(-1, 5, 13)  # ridge strengths tried (on standardised features)


def _fit(
    task: str, x_tr: np.ndarray, y_tr: np.ndarray, alpha: float
) -> Callable[[np.ndarray], np.ndarray]:
    """The probe fitted on (x_tr, y_tr), as a function giving logits (binary) or scores."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task != "binary":
        ridge = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_tr, y_tr)
        return lambda x: np.asarray(ridge.predict(x), dtype=np.float64)
    cls = y_tr > 0.5
    if cls.all() or not cls.any():  # one class in this fold: the probe is that constant
        return lambda x: np.full(len(x), 1.0 if cls[0] else -1.0)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    with warnings.catch_warnings():  # a probe, not a model: a few more lbfgs steps change
        warnings.simplefilter("ignore", ConvergenceWarning)  # nothing we report
        probe.fit(x_tr, cls)
    return lambda x: np.asarray(probe.decision_function(x), dtype=np.float64)


def _choose_alpha(x: np.ndarray, y: np.ndarray) -> float:
    """Ridge strength by efficient leave-one-out over the train rows, chosen ONCE per
    modality: per fold it cost 7 eigendecompositions of a 768 x 768 covariance (~60 s of a
    MOSI-sized audit); one shared strength shifts a CV score far less than a label leak does."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x, y)
    return float(ridge[-1].alpha_)


def _folds(
    y: np.ndarray, groups: Sequence[str] | None, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (by class, or by sign for scores) folds, grouped when ``groups`` is given."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    strat = y > 0.5 if set(np.unique(y)) <= {0.0, 1.0} else y >= 0
    with warnings.catch_warnings():  # "the least populated class has only n members"
        warnings.simplefilter("ignore", UserWarning)
        if groups is not None:
            splitter: Any = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
            pairs = list(splitter.split(np.zeros(len(y)), strat, groups))
        else:
            splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
            pairs = list(splitter.split(np.zeros(len(y)), strat))
    return [(a, b) for a, b in pairs if len(a) and len(b)]


def _cross_val(
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    alpha: float,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Out-of-fold predictions (N,) and the fold index arrays they came from."""
    oof = np.zeros(len(y))
    for tr, te in folds:
        oof[te] = _fit(task, x[tr], y[tr], alpha)(x[te])
    return oof, [te for _, te in folds]


def _probe_modality(
    m: str, splits: dict[str, _Split], task: str, scheme: str, folds: list[Any]
) -> dict[str, Any]:
    """CV inside train and train -> held-out scores of one modality (fractions)."""
    metric = PRIMARY[scheme]
    tr = splits["train"]
    x, y = tr.pooled[m], tr.label
    alpha = _choose_alpha(x, y) if task != "binary" else math.nan
    oof, parts = _cross_val(task, x, y, folds, alpha)
    per_fold = [compute(oof[te], y[te], scheme)[metric] for te in parts]
    probe = _fit(task, x, y, alpha)
    heldout = {
        s: compute(probe(sp.pooled[m]), sp.label, scheme)
        for s, sp in splits.items()
        if s != "train"
    }
    return {
        "dim": int(x.shape[1]),
        "alpha": None if task == "binary" else alpha,
        "cv": compute(oof, y, scheme),
        "cv_folds": per_fold,
        "heldout": heldout,
    }


# -- judging ---------------------------------------------------------------------------------
WEAK_POINTS = 2.0  # a held-out score this close to the best constant shows no signal


def _se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` on ``n`` rows, in points."""
    return 100 * math.sqrt(p * (1 - p) / max(n, 1))


def _gap(a: float, n_a: int, b: float, n_b: int) -> tuple[float, float]:
    """a - b in points, and the standard error of that difference in points."""
    return 100 * (a - b), math.hypot(_se(a, n_a), _se(b, n_b))


def _judge(
    res: dict[str, Any],
    metric: str,
    summaries: dict[str, Any],
    n_read: dict[str, int],
    cfg: AuditConfig,
) -> None:
    """Add gaps, the flag and a verdict to one modality's result (in place)."""
    cv = res["cv"][metric]
    floor = {s: summaries[s]["floor"][metric] for s in summaries}
    res["gap_points"], res["se_points"], fitted_on = {}, {}, []
    above_floor = 100 * (cv - floor["train"]) > cfg.max_gap
    for s, scores in res["heldout"].items():
        gap, se = _gap(cv, n_read["train"], scores[metric], n_read[s])
        res["gap_points"][s], res["se_points"][s] = gap, se
        if above_floor and gap > cfg.max_gap and gap > cfg.z * se:
            fitted_on.append(s)
    res["flagged"] = bool(fitted_on)
    res["flagged_on"] = fitted_on
    # usable signal must show on held-out rows (with none, inside train): the accuracy above
    # the split's floor by WEAK_POINTS and 2 standard errors (80 rows of noise are not "ok"),
    # or, for scores, a correlation beyond 2/sqrt(n) (twice its standard error under r = 0)
    scored = [(s, v) for s, v in res["heldout"].items()] or [("train", res["cv"])]
    weak = not any(
        100 * (v[metric] - floor[s]) > max(WEAK_POINTS, 2 * _se(floor[s], n_read[s]))
        or v.get("Corr", 0.0) > 2 / math.sqrt(n_read[s])  # NaN compares False
        for s, v in scored
    )
    if fitted_on:
        res["verdict"] = "label-fitted?"
    elif weak:
        res["verdict"] = "no held-out signal"
    else:
        res["verdict"] = "ok"


def _shared(sets: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    names = list(sets)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sets[a] & sets[b]
            out[f"{a}/{b}"] = {"count": len(common), "examples": sorted(common)[:EXAMPLES]}
    return out


def _overlap(splits: dict[str, _Split], grouped: bool) -> dict[str, Any]:
    dup = {}
    for s, sp in splits.items():
        seen: set[str] = set()
        twice: set[str] = set()
        for i in sp.ids:
            (twice if i in seen else seen).add(i)
        dup[s] = {"count": len(twice), "examples": sorted(twice)[:EXAMPLES]}
    return {
        "ids": _shared({s: set(sp.ids) for s, sp in splits.items()}),
        "duplicate_ids": dup,
        "groups": _shared({s: set(sp.groups) for s, sp in splits.items()}) if grouped else {},
    }


def _finding(level: str, kind: str, message: str, **where: Any) -> dict[str, Any]:
    return {"level": level, "kind": kind, "message": message, **where}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flags (suspected leaks) and warnings, in the order a reader should look at them."""
    out: list[dict[str, Any]] = []
    metric = report["probe"]["metric"]
    for m, res in report["modalities"].items():
        for s in res["flagged_on"]:
            out.append(
                _finding(
                    "flag",
                    "label_fitted",
                    f"{m}: {metric} {_pct(res['cv'][metric])} by grouped CV inside train but "
                    f"{_pct(res['heldout'][s][metric])} on {s} (gap {res['gap_points'][s]:.1f} "
                    "points): label-fitted features?",
                    modality=m,
                    split=s,
                )
            )
    for what, kind in (("ids", "ids_shared"), ("groups", "groups_shared")):
        for pair, hit in report["overlap"][what].items():
            if hit["count"]:
                out.append(
                    _finding(
                        "flag",
                        kind,
                        f"{hit['count']} {what} appear in both {pair.replace('/', ' and ')} "
                        f"(e.g. {', '.join(hit['examples'][:3])}): a leak across splits",
                        splits=pair,
                    )
                )
    out += _warnings(report)
    return out


def _dead_findings(m: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """One warning per modality: all-zero / constant dims per split, and empty splits."""
    out, parts, dims = [], [], set()
    for s, d in res["dead"].items():
        if d["no_valid_steps"]:
            out.append(_finding("warn", "no_valid_steps", f"{m}: no valid step in {s}"))
        elif d["zero"] or d["constant"]:
            parts.append(f"{s} {len(d['zero'])}/{len(d['constant'])}")
            dims.update(d["zero"] + d["constant"])
    if parts:
        out.append(
            _finding(
                "warn",
                "dead_dims",
                f"{m}: all-zero/constant dims of {res['dim']}: {', '.join(parts)} "
                f"(e.g. dims {sorted(dims)[:EXAMPLES]}); they carry nothing",
                modality=m,
            )
        )
    return out


def _warnings(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    metric = report["probe"]["metric"]
    for s, hit in report["overlap"]["duplicate_ids"].items():
        if hit["count"]:
            out.append(_finding("warn", "ids_duplicated", f"{hit['count']} ids repeat in {s}"))
    g = report["grouping"]
    if not g["grouped"]:
        out.append(
            _finding(
                "warn",
                "no_grouping",
                "CV inside train is by row, not by video: "
                + g["why"]
                + "; speaker effects can then inflate the within-train score of honest features",
            )
        )
    for m, res in report["modalities"].items():
        if "valid" in res["heldout"] and "test" in res["heldout"]:
            v, t = res["heldout"]["valid"][metric], res["heldout"]["test"][metric]
            n = report["splits"]
            gap, se = _gap(v, n["valid"]["n_read"], t, n["test"]["n_read"])
            if gap > report["config"]["max_gap"] and gap > report["config"]["z"] * se:
                out.append(
                    _finding(
                        "warn",
                        "valid_unlike_test",
                        f"{m}: valid {_pct(v)} but test {_pct(t)}: selection on valid will not "
                        "rank models for test",
                        modality=m,
                    )
                )
        out += _dead_findings(m, res)
    if report["corrupted"]:
        out.append(
            _finding("warn", "corrupted", "this file is a corrupted copy; audit the clean one")
        )
    return out


# -- the audit -------------------------------------------------------------------------------
def _samples(n: int) -> str:
    return f"{n} sample" if n == 1 else f"{n} samples"


def train_label_problem(y: np.ndarray, task: str, learner: str = "a probe") -> str | None:
    """Why nothing can be learned from these train labels, or None: the rule that `qamoe
    audit` and `qamoe train` share. Binary labels need at least 2 of each class; regression
    labels at least 2 distinct values (so one sample is never enough)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return "the train split is empty; there is nothing to learn from"
    if task == "binary":
        pos = int(np.sum(y > 0.5))
        if min(pos, len(y) - pos) < 2:
            return (
                f"the train split has {len(y) - pos} negative and {pos} positive labels; "
                f"{learner} needs at least 2 of each class"
            )
    elif len(np.unique(y)) < 2:
        return f"every train label is {y[0]:g} ({_samples(len(y))}); there is nothing to predict"
    return None


def _check_train(f: FeatureFile, task: str) -> None:
    if "train" not in f.splits:
        raise InputError(
            f"'{f.path}' has no train split (it has: {', '.join(f.splits)}).",
            hint="The audit fits its probes on train; audit the file `qamoe extract` wrote.",
        )
    problem = train_label_problem(f.labels("train"), task)
    if problem is not None:
        raise InputError(
            f"'{f.path}': {problem}.",
            hint="Audit a file whose train split holds both classes (re-import it)."
            if task == "binary"
            else "Check the importer's label column.",
        )


def _pick_modalities(f: FeatureFile, asked: tuple[str, ...] | None) -> tuple[str, ...]:
    if asked is None:
        return f.modalities
    unknown = [m for m in asked if m not in f.modalities]
    if unknown:
        raise InputError(
            f"'{f.path}' has no modality {', '.join(unknown)}.",
            hint=f"It has: {', '.join(f.modalities)}.",
        )
    return tuple(m for m in f.modalities if m in asked)  # the file's order


def _load(
    f: FeatureFile, mods: tuple[str, ...], cfg: AuditConfig, tick: Callable[[], None]
) -> tuple[dict[str, _Split], dict[str, Any]]:
    """Every split's ids and groups, and the pooled features of (a subsample of) its rows."""
    rx = compile_group_regex(cfg.group_regex)
    splits, matched = {}, {}
    for s in f.splits:
        ids = f.ids(s)
        groups, matched[s] = group_of(ids, rx)
        rows = _pick_rows(len(ids), cfg.max_rows, cfg.seed, s)
        label, pooled, dead = _read_split(f, s, mods, rows, tick)
        splits[s] = _Split(ids, groups, rows, label, pooled, dead)
    train_groups = len(set(splits["train"].groups))
    if rx is None:
        why = "grouping is off (--no-groups)"
    elif matched["train"] == 0:
        example = splits["train"].ids[0]
        why = f"no train id matches the group regex {cfg.group_regex!r} (e.g. {example!r})"
    elif train_groups < 2:
        why = "every train id falls in one group"
    else:
        why = ""
    grouping = {
        "regex": cfg.group_regex,
        "grouped": not why,
        "why": why,
        "matched": matched,
        "groups": {s: len(set(sp.groups)) for s, sp in splits.items()},
    }
    return splits, grouping


def audit(
    path: str | Path, config: AuditConfig | None = None, progress: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Audit one feature file; returns the report (scores are fractions, gaps in points).

    ``progress(n=1)`` is called once per block read and once per modality probed.
    """
    cfg = (config or AuditConfig()).check()
    tick = progress or (lambda n=1: None)
    start = time.perf_counter()
    with FeatureFile(path) as f:
        _check_train(f, f.task)
        mods = _pick_modalities(f, cfg.modalities)
        splits, grouping = _load(f, mods, cfg, tick)
        labels = {s: f.labels(s).astype(np.float64) for s in f.splits}
        task, file_scheme = f.task, f.scheme
        head = {"file": str(f.path), "dataset": f.dataset, "task": task, "scheme": file_scheme}
        corrupted = bool(f.corruption)
    scheme = "binary" if task == "binary" else ("sims" if file_scheme == "sims" else "mosi")
    metric = PRIMARY[scheme]
    summaries = {s: label_summary(labels[s], task, file_scheme) for s in splits}
    n_read = {s: len(sp.rows) for s, sp in splits.items()}
    for s in summaries:
        summaries[s]["n_read"] = n_read[s]
    tr = splits["train"]
    groups = [tr.groups[i] for i in tr.rows] if grouping["grouped"] else None  # rows read
    k = min(cfg.folds, len(set(groups))) if groups else cfg.folds
    folds = _folds(tr.label, groups, k, cfg.seed)
    grouping["folds"] = len(folds)
    modalities = {}
    for m in mods:
        res = _probe_modality(m, splits, task, scheme, folds)
        res["dead"] = {s: sp.dead[m] for s, sp in splits.items()}
        _judge(res, metric, summaries, n_read, cfg)
        modalities[m] = res
        tick()
    report: dict[str, Any] = {
        **head,
        "corrupted": corrupted,
        "probe": _probe_description(task, metric),
        "config": asdict(cfg),
        "grouping": grouping,
        "splits": summaries,
        "overlap": _overlap(splits, grouping["grouped"]),
        "modalities": modalities,
    }
    report["findings"] = _findings(report)
    report["flagged"] = any(x["level"] == "flag" for x in report["findings"])
    report["seconds"] = time.perf_counter() - start
    return report


def _probe_description(task: str, metric: str) -> dict[str, str]:
    model = (
        "logistic regression (C=1)"
        if task == "binary"
        else "ridge regression (alpha by leave-one-out over train)"
    )
    return {
        "model": model,
        "features": "mean over valid steps, standardised on the training rows",
        "metric": metric,
    }
