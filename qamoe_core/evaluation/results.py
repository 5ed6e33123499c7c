"""The tidy results table that ``qamoe eval`` writes and ``qamoe report`` reads.

One row per measured number (a "long" table, so several runs, axes and metrics stack by
concatenation and any tool can pivot it):

=============  ==========================================================================
column         meaning
=============  ==========================================================================
schema         ``qamoe-results/2`` (``/1`` files are still read, see below)
run            the run's label (checkpoint folder name unless given)
model          the model kind: qamoe, late-fusion, early-fusion, dense-moe, ...
dataset        the dataset name stored in the HDF5 file
split          the split evaluated (test unless asked otherwise)
axis           clean | mixed | missing | noise | drop
level          the spectrum level in [0, 1]; 0 for clean, 1 for drop (the dropped
               modalities are entirely gone)
modalities     "+"-joined, canonical order: the CORRUPTED modalities, on every axis: those
               that received the level, for drop those DROPPED; "" for constant rows
seed           the corruption seed (0 where nothing random happened: clean, drop)
pattern        the temporal pattern of the damage (spectrum.pattern_label): random|burst on
               missing, white|correlated on noise, both "+"-joined on mixed, "" on clean and
               drop. Optional on reading: files written before patterns existed get the
               default of their axis (DEFAULT_PATTERN), which is what those versions drew
variant        normal | quality_shuffle (QA-MoE's quality scores permuted within the
               batch: the shuffle control) | constant (the best-constant reference) |
               constant_r, oracle_r (r set to its clean mean, or from each sample's true
               corruption: evaluation/controls.py; only when asked for)
metric         an MMSA metric name (Has0_acc_2, MAE, ...) or a diagnostic:
               ``quality_<modality>`` (mean r_m), ``expert_usage_<e>`` (routing share),
               ``n_samples`` (constant rows: the number of samples scored), and with
               ``--residuals`` ``residual_<modality>`` / ``sigma2_<modality>`` (QA-MoE's
               mean squared residual of μ_m against the clean target, and the mean σ² its
               head predicts; normal variant)
value          the number (NaN where undefined, e.g. Corr of a constant prediction)
=============  ==========================================================================

Constant rows (:func:`constant_rows`, axis clean, variant constant) hold, per metric, the
score of the best constant prediction on the split's labels (the majority class for
accuracies, the median for MAE): the floor a model must beat, drawn on every plot.

The pattern column was added within schema 2: it is optional with a default, so files
without it stay valid and need no new version.

Schema 1 differed in one point: drop rows listed the modalities KEPT. Reading a ``/1`` file
converts them (dropped = the run's modalities, seen on its other rows, minus the kept ones).

The statistics over the table (summaries, curves, seed pooling) are in ``summary.py``;
per-sample tables in ``samples.py``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qamoe_core.base.atomic import atomic_path
from qamoe_core.base.errors import DataFormatError, InputError
from qamoe_core.base.names import (
    DEFAULT_PATTERN,
    MISSING_PATTERNS,
    MODALITIES,
    NOISE_PATTERNS,
    RESULT_AXES,
)
from qamoe_core.metrics import METRIC_NAMES, best_constant

log = logging.getLogger(__name__)

SCHEMA = "qamoe-results/2"
SCHEMA_V1 = "qamoe-results/1"  # drop rows listed the kept modalities
COLUMNS: tuple[str, ...] = (
    "schema",
    "run",
    "model",
    "dataset",
    "split",
    "axis",
    "level",
    "modalities",
    "seed",
    "pattern",
    "variant",
    "metric",
    "value",
)
AXES = RESULT_AXES
SPECTRUM_AXES: tuple[str, ...] = ("mixed", "missing", "noise")
SHUFFLED = "quality_shuffle"  # the shuffle control's one name (tables, legends, CLI)
CONSTANT = "constant"  # the best-constant reference rows
# The r-controls (evaluation/controls.py): r fixed to its clean mean, r from the true corruption.
R_VARIANTS: tuple[str, ...] = ("constant_r", "oracle_r")
VARIANTS: tuple[str, ...] = ("normal", SHUFFLED, CONSTANT, *R_VARIANTS)
VARIANT_ALIASES = {"shuffled": SHUFFLED}  # read, never written
QUALITY_PREFIX = "quality_"
# QA-MoE's quality-head diagnostic (EvalConfig.residuals, issue 32): the mean squared residual
# of μ_m against the clean target, and the mean σ² the head predicts for it.
RESIDUAL_PREFIX, SIGMA2_PREFIX = "residual_", "sigma2_"
USAGE_PREFIX = "expert_usage_"
N_SAMPLES = "n_samples"
_METRICS = frozenset(m for names in METRIC_NAMES.values() for m in names)
_DIAGNOSTIC = re.compile(
    rf"^(?:(?:{QUALITY_PREFIX}|{RESIDUAL_PREFIX}|{SIGMA2_PREFIX})(?:{'|'.join(MODALITIES)})"
    rf"|{USAGE_PREFIX}\d+|{N_SAMPLES})$"
)
# The columns that identify a number; two rows with the same key are the same measurement.
KEY: tuple[str, ...] = tuple(c for c in COLUMNS if c not in ("schema", "value"))
_STR_COLUMNS = (
    *("schema", "run", "model", "dataset", "split", "axis", "modalities", "pattern"),
    "variant",
)
_PATTERNS = {
    "clean": {""}, "drop": {""}, "missing": set(MISSING_PATTERNS), "noise": set(NOISE_PATTERNS),
    "mixed": {f"{m}+{n}" for m in MISSING_PATTERNS for n in NOISE_PATTERNS},
}  # fmt: skip


def join_modalities(modalities: Iterable[str]) -> str:
    """('vision', 'text') -> 'text+vision' (canonical order)."""
    names = set(modalities)
    return "+".join(m for m in MODALITIES if m in names)


def is_diagnostic(metric: str) -> bool:
    prefixes = (QUALITY_PREFIX, USAGE_PREFIX, RESIDUAL_PREFIX, SIGMA2_PREFIX)
    return metric.startswith(prefixes) or metric == N_SAMPLES


def table_error(source: str, message: str, hint: str | None = None) -> DataFormatError:
    return DataFormatError(
        f"{source}: {message}",
        hint=hint or "Results files are written by `qamoe eval --out results.csv`.",
    )


def first_bad(column: pd.Series, bad: pd.Series) -> str:
    """The first flagged value and where it is: "'x' in data row 3" (1-based, header not
    counted, so a CSV's line 4)."""
    pos = int(np.flatnonzero(bad.to_numpy())[0])
    value = column.iloc[pos]
    shown = repr(value) if isinstance(value, str) else str(value)
    return f"{shown} in data row {pos + 1}"


def validate(df: pd.DataFrame, source: str = "results") -> pd.DataFrame:
    """Check a results table against the schema and return it with normalised dtypes.

    Raises :class:`DataFormatError` naming ``source`` for missing columns, another schema
    version, unknown axes, variants or metric names, levels outside [0, 1], seeds or sample
    counts that are not whole numbers >= 0, non-numeric values, or duplicated measurements
    (naming the first bad value and its data row). Extra columns are kept. Schema-1 rows
    come back as schema 2. A table without the optional ``pattern`` column gets each axis's
    default (DEFAULT_PATTERN).
    """
    if "pattern" not in df.columns and "axis" in df.columns:
        df = df.assign(pattern=df["axis"].astype(str).map(DEFAULT_PATTERN).fillna(""))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise table_error(
            source,
            f"missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)}).",
            "It was not written by this version of `qamoe eval`; re-run the evaluation.",
        )
    if df.empty:
        raise table_error(source, "the table has no rows.")
    versions = sorted(set(df["schema"].astype(str)) - {SCHEMA, SCHEMA_V1})
    if versions:
        raise table_error(
            source,
            f"written with results schema {', '.join(versions)}; this qamoe reads "
            f"{SCHEMA} and {SCHEMA_V1}.",
            "Re-run `qamoe eval` with this version of qamoe.",
        )
    out = df.copy()
    for col in _STR_COLUMNS:
        out[col] = out[col].astype(str)
    out["variant"] = out["variant"].replace(VARIANT_ALIASES)
    _check_names(out, df, source)
    _check_numbers(out, df, source)
    out = _upgrade_v1(out)
    dup = out.duplicated(list(KEY), keep=False)
    if dup.any():
        row = out[dup].iloc[0]
        raise table_error(
            source,
            f"{int(dup.sum())} rows repeat a measurement, e.g. "
            f"({', '.join(f'{k}={row[k]}' for k in KEY)}).",
            "Give each evaluated run its own name (qamoe eval --name) before combining files.",
        )
    return out


def _check_names(out: pd.DataFrame, raw: pd.DataFrame, source: str) -> None:
    for col, allowed in (("axis", AXES), ("variant", VARIANTS)):
        bad = sorted(set(out[col]) - set(allowed))
        if bad:
            raise table_error(
                source, f"unknown {col} value(s) {bad}; allowed: {', '.join(allowed)}."
            )
    bad_pattern = ~pd.Series(
        [p in _PATTERNS[a] for a, p in zip(out["axis"], out["pattern"], strict=True)],
        index=out.index,
    )
    if bad_pattern.any():
        raise table_error(
            source,
            f"pattern {first_bad(raw['pattern'], bad_pattern)} does not fit its axis "
            "(missing: random|burst, noise: white|correlated, mixed: both '+'-joined, "
            "clean and drop: empty).",
        )
    names = out["metric"]
    bad_metric = ~(names.isin(_METRICS) | names.str.fullmatch(_DIAGNOSTIC))
    if bad_metric.any():
        raise table_error(
            source,
            f"unknown metric name {first_bad(raw['metric'], bad_metric)}; known: the MMSA "
            f"metrics ({', '.join(sorted(_METRICS))}), quality_<modality>, "
            f"expert_usage_<n> and {N_SAMPLES}.",
        )


def _check_numbers(out: pd.DataFrame, raw: pd.DataFrame, source: str) -> None:
    """Coerce level, value and seed in place, refusing what is not a number of their kind."""
    for col in ("level", "value", "seed"):
        numeric = pd.to_numeric(out[col], errors="coerce")
        bad_rows = numeric.isna()
        if col == "value":  # NaN is a legal value (an undefined metric), text is not
            nan_like = out[col].map(lambda v: str(v).strip().lower() in ("nan", "", "none"))
            bad_rows &= ~nan_like
        if bad_rows.any():
            raise table_error(
                source,
                f"column '{col}' holds non-numeric values, e.g. {first_bad(out[col], bad_rows)}.",
            )
        out[col] = numeric
    bad_level = ~out["level"].between(0.0, 1.0)  # also catches inf
    if bad_level.any():
        raise table_error(
            source,
            f"column 'level' must lie in [0, 1]; found {first_bad(raw['level'], bad_level)}.",
        )
    seed = out["seed"].astype(np.float64)  # whole, finite and within int64, or refused
    bad_seed = ~(np.isfinite(seed) & (seed >= 0) & (seed < 2.0**63) & (seed == np.floor(seed)))
    if bad_seed.any():
        raise table_error(
            source,
            f"column 'seed' must hold whole numbers >= 0; found "
            f"{first_bad(raw['seed'], bad_seed)}.",
            "The seed is the corruption seed (0, 1, 2, ...; 0 where nothing random happened); "
            "fix that row or re-run `qamoe eval`.",
        )
    out["seed"] = out["seed"].astype(np.int64)
    out["level"] = out["level"].astype(np.float64).round(10)  # 0.30000000000000004 -> 0.3
    out["value"] = value = out["value"].astype(np.float64)
    counts = (out["metric"] == N_SAMPLES).to_numpy()
    whole = np.isfinite(value) & (value >= 0) & (value == np.floor(value))
    if (counts & ~whole).any():  # a count of samples: NaN or 0.5 is no count
        raise table_error(
            source,
            f"'{N_SAMPLES}' rows must hold whole numbers >= 0 (the samples scored); found "
            f"{first_bad(raw['value'], pd.Series(counts & ~whole))}.",
        )


RUN_COLUMNS: tuple[str, ...] = ("run", "model", "dataset", "split")


def run_modalities(df: pd.DataFrame) -> set[str]:
    """The modalities one run's rows show it has: on its corrupted (non-drop) rows, in its
    quality_<m> diagnostics, and in the subsets its drop rows name."""
    mods: set[str] = set()
    for text in df["modalities"]:
        mods.update(m for m in str(text).split("+") if m in MODALITIES)
    mods.update(m[len(QUALITY_PREFIX) :] for m in df["metric"] if m.startswith(QUALITY_PREFIX))
    return mods & set(MODALITIES)


def _upgrade_v1(out: pd.DataFrame) -> pd.DataFrame:
    """Schema 1 drop rows named the KEPT modalities; schema 2 names the DROPPED ones."""
    old = out["schema"] == SCHEMA_V1
    if not old.any():
        return out
    for _, grp in out[old].groupby(list(RUN_COLUMNS), sort=False):
        drop = grp.index[grp["axis"] == "drop"]
        if len(drop):
            have = run_modalities(grp)
            out.loc[drop, "modalities"] = [
                join_modalities(have - set(kept.split("+"))) for kept in grp.loc[drop, "modalities"]
            ]
    out["schema"] = SCHEMA
    return out


# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): a leading = + - @,
# tab or carriage return. A leading apostrophe makes them text in Excel and LibreOffice.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells cannot run as spreadsheet formulas once saved.

    Text that starts like a formula gets a leading ``'``; numbers (also negative ones, which
    live in numeric columns) are left alone. Used on every CSV qamoe writes from labels a
    user or a file chose (run, dataset, ids).
    """
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    return out


def constant_rows(
    labels: Any, scheme: str, *, run: str, model: str, dataset: str, split: str
) -> list[dict[str, Any]]:
    """The best-constant reference rows for a run's results table (give them to make_table).

    One row per metric of ``scheme`` holding the score of the best constant prediction on
    ``labels`` (:func:`qamoe_core.metrics.best_constant`; NaN for Corr), and one
    ``n_samples`` row: axis clean, level 0, modalities "", seed 0, variant constant.
    """
    base: dict[str, Any] = {"run": run, "model": model, "dataset": dataset, "split": split}
    base |= {"axis": "clean", "level": 0.0, "modalities": "", "seed": 0, "pattern": ""}
    base["variant"] = CONSTANT
    best = best_constant(labels, scheme)
    rows = [base | {"metric": m, "value": score} for m, (_, score) in best.items()]
    return [*rows, base | {"metric": N_SAMPLES, "value": float(np.asarray(labels).size)}]


def measured(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a model produced (the constant reference rows left out)."""
    return df[df["variant"] != CONSTANT]


def make_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a validated table from row dicts holding every column but ``schema`` (rows
    without ``pattern`` get their axis's default)."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        raise InputError("No result to write: the evaluation produced no rows.")
    df.insert(0, "schema", SCHEMA)
    if "pattern" in df.columns:
        df["pattern"] = df["pattern"].fillna(df["axis"].map(DEFAULT_PATTERN))
    else:
        df["pattern"] = df["axis"].map(DEFAULT_PATTERN)
    return validate(df[list(COLUMNS)], "results")


def save(df: pd.DataFrame, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write ``df`` as CSV atomically (temporary sibling, then rename); refuse to overwrite."""
    df = csv_safe(validate(df, "results"))
    with atomic_path(path, force=force) as tmp:
        df.to_csv(tmp, index=False, na_rep="nan", float_format="%.10g")
    log.info("wrote %d result rows to %s", len(df), path)
    return Path(path)


def load(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read one or several results CSVs into one validated table (rows concatenated)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise InputError("No results file given.", hint="Pass one or more results.csv files.")
    frames = []
    for p in map(Path, paths):
        if p.is_dir():
            raise InputError(
                f"The results file '{p}' is a directory.",
                hint=f"Pass the results CSV files inside it instead, e.g. {p / '*.csv'}",
            )
        if not p.is_file():
            raise InputError(
                f"The results file '{p}' "
                + ("is not a regular file." if p.exists() else "does not exist."),
                hint="Write one with `qamoe eval RUN --data DATA.h5 --sweep --out results.csv`.",
            )
        try:
            # Only 'value' may be NaN; a run called "NA" must stay a string.
            df = pd.read_csv(
                p, dtype=str, keep_default_na=False, na_values={"value": ["nan", "NaN", ""]}
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise table_error(f"'{p}'", f"not a readable CSV ({type(exc).__name__}).") from None
        except OSError as exc:  # permission denied, I/O error
            raise InputError(
                f"Cannot read the results file '{p}': {exc.strerror or exc}.",
                hint="Check the file's permissions.",
            ) from None
        frames.append(validate(df, f"'{p}'"))
    combined = pd.concat(frames, ignore_index=True)
    if len(frames) > 1:
        combined = validate(_shared_points_once(combined), " + ".join(f"'{p}'" for p in paths))
    return combined


def _shared_points_once(df: pd.DataFrame) -> pd.DataFrame:
    """One copy of the pattern-free rows (clean, drop, constant) that several files of one
    run repeat with the SAME value: each sweep of a checkpoint under another pattern
    (`qamoe eval --sweep --pattern ...`) measures its clean point again. A repeated row with
    another value is still refused by validate (two runs under one name)."""
    shared = df["pattern"] == ""
    again = df[shared].duplicated([*KEY, "value"])
    return df.drop(index=again[again].index)
