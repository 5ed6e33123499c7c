"""Anchors: two simple predictors per dataset that put the arms' numbers on a scale
(``[compare] anchors``; issue 31, gap 4).

- ``constant``: for each metric, the constant prediction that scores best on the TRAIN labels
  (``metrics.best_constant``: the median for MAE, the majority side for an accuracy), then
  scored on the evaluation split. ``Corr`` of a constant is undefined (n/a).
- ``ridge``: a linear model on each modality's mean over its valid steps, the modalities
  concatenated (the pooled features of ``qamoe audit``'s probe), standardised on train. Scores
  (regression): ``RidgeCV``, its strength chosen by efficient leave-one-out on train among
  ``audit.ALPHAS``. Binary labels: ``LogisticRegression``, its C chosen among
  ``1 / audit.ALPHAS`` by the held-out log loss of 5 stratified folds of train.

Both are fitted on the train split only and scored once on the split of the study's first
protocol (the clean column's), clean: nothing is chosen on the split they are scored on. One
value per anchor (no model seeds; sklearn's fits are deterministic), compared with nothing.
The values are kept in the study folder (``anchors.json``) under a key of what makes them,
so a rerun of a finished study does not fit them again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.study import cells, spec
from qamoe_core.study.plan import Plan, digest
from qamoe_core.study.table import ANCHOR, COLUMNS, NOT_COMPARED
from qamoe_core.version import __version__

ANCHORS = spec.ANCHORS
FILE = "anchors.json"
CV_FOLDS = 5  # of train, for the logistic regression's strength


def _constant(y_train: np.ndarray, y: np.ndarray, scheme: str) -> dict[str, Any]:
    from qamoe_core.metrics import best_constant, compute

    scores: dict[str, float] = {}
    fitted: dict[str, float | None] = {}
    for metric, (c, _) in best_constant(y_train, scheme).items():
        fitted[metric] = None if math.isnan(c) else c
        scores[metric] = (
            math.nan if math.isnan(c) else compute(np.full(y.shape, c), y, scheme)[metric]
        )
    return {"scores": scores, "fitted": {"constant": fitted}}


def _logistic(x_train: np.ndarray, cls: np.ndarray) -> tuple[Any, float]:
    """A logistic regression on standardised features, its C chosen among 1 / ALPHAS by the
    mean held-out log loss over CV_FOLDS stratified folds of train (in the file's row order,
    so neighbouring rows, often one video's, stay together); ties go to the smaller C."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from qamoe_core.data.audit import ALPHAS

    def model(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    folds = list(
        StratifiedKFold(min(CV_FOLDS, int(cls.sum()), int((~cls).sum()))).split(x_train, cls)
    )
    best, best_loss = math.nan, math.inf
    with warnings.catch_warnings():  # an anchor: a few more lbfgs steps change nothing shown
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(1 / ALPHAS):
            loss = np.mean([
                log_loss(cls[te], model(c).fit(x_train[tr], cls[tr]).predict_proba(x_train[te]),
                         labels=[False, True])
                for tr, te in folds
            ])  # fmt: skip
            if loss < best_loss:
                best, best_loss = float(c), float(loss)
        return model(best).fit(x_train, cls), best


def _ridge(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    binary: bool,
    scheme: str,
) -> dict[str, Any]:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from qamoe_core.data.audit import ALPHAS
    from qamoe_core.metrics import compute

    if binary:
        cls = y_train > 0.5
        if cls.sum() < 2 or (~cls).sum() < 2:  # too few of a class to choose C: that constant
            pred = np.full(len(y), 1.0 if cls.mean() >= 0.5 else -1.0)
            return {"scores": compute(pred, y, scheme), "fitted": {"C": None}}
        model, c = _logistic(x_train, cls)
        pred = np.asarray(model.decision_function(x), dtype=np.float64)  # logits: > 0 positive
        return {"scores": compute(pred, y, scheme), "fitted": {"C": c}}
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x_train, y_train)
    pred = np.asarray(model.predict(x), dtype=np.float64)
    return {"scores": compute(pred, y, scheme), "fitted": {"alpha": float(model[-1].alpha_)}}


def fit(path: Path, split: str, anchors: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each anchor's scores (every metric of the data's scheme) on ``split`` of the feature
    file ``path``, fitted on its train split, and what it fitted."""
    from qamoe_core.data.audit import pooled_features
    from qamoe_core.data.store import FeatureFile

    with FeatureFile(path) as f:
        mods, scheme, binary = tuple(f.modalities), f.scheme, f.task == "binary"
        y_train, pooled_train = pooled_features(f, "train", mods)
        y, pooled = pooled_features(f, split, mods)
    found = {}
    for anchor in anchors:
        if anchor == "constant":
            found[anchor] = _constant(y_train, y, scheme)
        else:
            x_train = np.concatenate([pooled_train[m] for m in mods], axis=1)  # (N, sum D_m)
            x = np.concatenate([pooled[m] for m in mods], axis=1)
            found[anchor] = _ridge(x_train, y_train, x, y, binary, scheme)
        found[anchor]["n_train"], found[anchor]["n"] = len(y_train), len(y)
    return found


def compute_all(plan: Plan, out: Path) -> list[dict[str, Any]]:
    """The anchors of every dataset of ``plan`` (none unless the study asks), one record per
    (dataset, anchor, metric of the table); read back from ``anchors.json`` when it holds
    the same key, else fitted and written there."""
    from sklearn import __version__ as sklearn_version

    study = plan.study
    if not study.compare.anchors:
        (out / FILE).unlink(missing_ok=True)  # from an earlier version of the study file
        return []
    split = study.protocols[0].split
    kept = cells.read_json(out / FILE) or {}
    records, changed = [], False
    for ds, info in plan.data.items():
        what = [info.sha256, split, list(study.compare.anchors), __version__, sklearn_version]
        key = digest([], what)
        entry = kept.get(ds)
        if not (isinstance(entry, dict) and entry.get("key") == key):
            found = fit(info.path, split, study.compare.anchors)
            entry = _plain({"key": key, "split": split, "anchors": found})
            kept[ds], changed = entry, True
        for anchor in study.compare.anchors:
            got = entry["anchors"][anchor]
            for metric in spec.table_metrics(study, info.scheme):
                value = got["scores"].get(metric)
                fitted = got["fitted"]
                if anchor == "constant":  # each metric's own constant
                    fitted = {"constant": fitted["constant"].get(metric)}
                records.append(
                    {
                        "dataset": ds,
                        "anchor": anchor,
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "fitted": fitted,
                        "n_train": got["n_train"],
                        "n": got["n"],
                    }
                )
    if changed:
        cells.write_json(out / FILE, {k: v for k, v in kept.items() if k in plan.data})
    return records


def _plain(value: Any) -> Any:
    """JSON-able: NaN (an undefined score) as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rows(
    records: Sequence[dict[str, Any]], reference: str | None, pools: Sequence[Any] = ()
) -> pd.DataFrame:
    """Rows of the tidy table (table.COLUMNS): arm ``anchor:NAME`` in the column ``clean``;
    a pool's (the folds of one cross-validation, pools.py) is the mean over its folds."""
    of = {ds: pool for pool in pools for ds in pool.datasets}
    merged: dict[tuple[str, str, str], list[float | None]] = {}
    for r in records:
        where = of[r["dataset"]].name if r["dataset"] in of else r["dataset"]
        merged.setdefault((where, r["anchor"], r["metric"]), []).append(r["value"])
    out = []
    for (ds, anchor, metric), values in merged.items():
        value = None if None in values else float(np.mean([v for v in values if v is not None]))
        out.append(
            {
                "dataset": ds,
                "column": "clean",
                "metric": metric,
                "arm": f"{ANCHOR}{anchor}",
                "n_seeds": 1,
                "mean": math.nan if value is None else float(value),
                "sd": math.nan,
                "reference": reference or "",
                **NOT_COMPARED,
            }
        )
    return pd.DataFrame(out, columns=list(COLUMNS))


def note(records: Sequence[dict[str, Any]]) -> str:
    """The sentence under the table that says what the anchors are."""
    if not records:
        return ""
    names = list(dict.fromkeys(r["anchor"] for r in records))
    split = records[0]["split"]
    what = {
        "constant": "the best constant prediction on train",
        "ridge": "a ridge (binary labels: logistic) regression on the modalities' means over "
        "their valid steps, its strength chosen by cross-validation on train",
    }
    listed = "; ".join(f"{n}: {what[n]}" for n in names)
    return (
        f"Anchors (in italics; {listed}): fitted on the train split only and scored on the "
        f"{split} split, clean, in the column clean; one value each, compared with no arm."
    )
