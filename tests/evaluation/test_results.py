"""The results table (evaluation/results.py): schema checks, round trip, best-constant rows,
schema-1 files; the statistics over it are in test_summary.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qamoe_core.base.errors import DataFormatError, InputError, OutputExistsError
from qamoe_core.evaluation.results import (
    COLUMNS,
    DEFAULT_PATTERN,
    SCHEMA,
    constant_rows,
    csv_safe,
    join_modalities,
    load,
    make_table,
    measured,
    save,
)
from qamoe_core.evaluation.summary import constants, fixed_missing, summarize
from qamoe_core.metrics import best_constant, compute, sample_terms


def row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "run": "qa",
        "model": "qamoe",
        "dataset": "synthetic",
        "split": "test",
        "axis": "mixed",
        "level": 0.0,
        "modalities": "text+audio+vision",
        "seed": 0,
        "variant": "normal",
        "metric": "Has0_acc_2",
        "value": 0.8,
    }
    base.update(kw)
    return base


def linear_sweep(run: str = "qa", slope: float = -0.3, clean: float = 0.8) -> list[dict]:
    """A curve value = clean + slope·level on 0, 0.5, 1 with seeds ±0.01 around it."""
    rows = [row(run=run, axis="clean", value=clean)]
    for level in (0.0, 0.5, 1.0):
        for seed, delta in ((0, -0.01), (1, 0.01)):
            rows.append(row(run=run, level=level, seed=seed, value=clean + slope * level + delta))
    return rows


def test_round_trip_and_dtypes(tmp_path: Path) -> None:
    df = make_table([*linear_sweep(), row(axis="clean", metric="Corr", value=math.nan)])
    assert list(df.columns) == list(COLUMNS) and (df["schema"] == SCHEMA).all()
    path = save(df, tmp_path / "r.csv")
    back = load(path)
    pd.testing.assert_frame_equal(back, df)
    assert math.isnan(back.loc[back["metric"] == "Corr", "value"].iloc[0])
    with pytest.raises(OutputExistsError):
        save(df, path)
    save(df, path, force=True)


def test_string_columns_stay_strings(tmp_path: Path) -> None:
    df = make_table([row(run="NA", axis="clean"), row(run="1", axis="clean")])
    back = load(save(df, tmp_path / "r.csv"))
    assert sorted(back["run"]) == ["1", "NA"]


def test_join_modalities_is_canonical() -> None:
    assert join_modalities(["vision", "text"]) == "text+vision"


# -- bad files ------------------------------------------------------------------------------


def write(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


def good() -> pd.DataFrame:
    return make_table(linear_sweep())


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"missing column\(s\) variant, metric"):
        load(write(tmp_path, good().drop(columns=["variant", "metric"])))


def test_other_version_refused(tmp_path: Path) -> None:
    df = good()
    df["schema"] = "qamoe-results/0"
    with pytest.raises(DataFormatError, match="qamoe-results/0; this qamoe reads"):
        load(write(tmp_path, df))


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("axis", "sideways", "unknown axis"),
        ("variant", "weird", "unknown variant"),
        ("level", 1.5, r"\[0, 1\]"),
        ("level", "inf", r"\[0, 1\]; found 'inf' in data row 2"),
        ("level", -0.1, r"\[0, 1\]"),
        ("level", "nan", "non-numeric"),
        ("level", "high", "non-numeric"),
        ("value", "abc", "non-numeric"),
    ],
)
def test_bad_values(tmp_path: Path, column: str, value: object, match: str) -> None:
    df = good().astype({column: object})
    df.loc[1, column] = value
    with pytest.raises(DataFormatError, match=match):
        load(write(tmp_path, df))


@pytest.mark.parametrize("seed", [1.5, "inf", -1, "-inf", 1e30, "nan", "two"])
def test_bad_seeds_refused(tmp_path: Path, seed: object) -> None:
    df = good().astype({"seed": object})
    df.loc[2, "seed"] = seed
    with pytest.raises(DataFormatError, match=r"bad\.csv'.*column 'seed'") as info:
        load(write(tmp_path, df))
    assert "data row 3" in info.value.message and info.value.hint


@pytest.mark.parametrize("count", ["nan", "inf", -1, 0.5])
def test_sample_counts_must_be_whole_numbers(
    tmp_path: Path, count: object, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by the fuzz harness: `qamoe report` ended in "unexpected ValueError: cannot
    # convert float NaN to integer" on an n_samples row holding NaN.
    df = make_table([*linear_sweep(), row(axis="clean", variant="constant", modalities="",
                                          metric="n_samples", value=32)])  # fmt: skip
    load(write(tmp_path, df))
    df = df.astype({"value": object})
    df.loc[len(df) - 1, "value"] = count
    with pytest.raises(DataFormatError, match=r"'n_samples' rows must hold whole numbers"):
        load(write(tmp_path, df))
    from qamoe_cli.main import main

    assert main(["report", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "unexpected" not in err and not (tmp_path / "rep").exists()


def test_fractional_seed_is_not_a_false_duplicate(tmp_path: Path) -> None:
    # 0.4 next to a seed-0 row of the same measurement used to be truncated to 0.
    df = make_table([row(seed=0)]).astype({"seed": object})
    df = pd.concat([df, df.assign(seed=0.4)], ignore_index=True)
    with pytest.raises(DataFormatError, match=r"whole numbers >= 0; found '0\.4' in data row 2"):
        load(write(tmp_path, df))
    with pytest.raises(DataFormatError, match=r"found 0\.4 in data row 2"):  # in memory too
        make_table([row(seed=0), row(seed=0.4)])


def test_duplicates_across_files_refused(tmp_path: Path) -> None:
    a = save(good(), tmp_path / "a.csv")
    b = save(good(), tmp_path / "b.csv")
    with pytest.raises(DataFormatError, match="rows repeat a measurement") as info:
        load([a, b])
    assert "--name" in (info.value.hint or "")


def test_not_a_csv_and_absent(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load(tmp_path / "none.csv")
    with pytest.raises(InputError, match="is a directory") as info:
        load(tmp_path)
    assert f"{tmp_path}/*.csv" in (info.value.hint or "")
    if Path("/dev/null").exists():
        with pytest.raises(InputError, match="is not a regular file"):
            load("/dev/null")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="not a readable CSV"):
        load(empty)


def v1_rows() -> list[dict]:
    """A schema-1 run: drop rows name the modalities KEPT."""
    rows = [row(axis="clean", value=0.8), row(level=0.5, value=0.7)]
    rows += [row(axis="drop", level=1.0, modalities="text", value=0.75)]
    rows += [row(axis="drop", level=1.0, modalities="audio+vision", value=0.55)]
    return [{"schema": "qamoe-results/1"} | r for r in rows]


def test_v1_files_load_with_drop_rows_converted(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    pd.DataFrame(v1_rows()).to_csv(path, index=False)
    df = load(path)
    assert (df["schema"] == SCHEMA).all() and SCHEMA == "qamoe-results/2"
    drop = df[df["axis"] == "drop"].set_index("modalities")["value"]
    assert drop.to_dict() == {"audio+vision": 0.75, "text": 0.55}  # kept text = dropped a+v
    assert set(df.loc[df["axis"] != "drop", "modalities"]) == {"text+audio+vision"}


def test_committed_v1_results_still_load() -> None:
    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "mosi-lite" / "pooled"
    df = load(root / "qamoe.csv")
    fm = fixed_missing(df, "Acc_2").set_index("variant")
    # MOSI-lite's text carries the signal: dropping audio+vision costs little, dropping
    # text leaves about chance (checked against the v1 file's "text" kept column).
    assert fm.loc["normal", "audio+vision"] > 0.7 > 0.55 > fm.loc["normal", "text"]
    # Written before patterns: every row gets its axis's default pattern.
    labels = dict(df.groupby("axis")["pattern"].unique().map(tuple))
    assert labels == {"clean": ("",), "drop": ("",), "mixed": ("random+white",),
                      "missing": ("random",), "noise": ("white",)}  # fmt: skip


def test_unknown_metric_and_variant_alias() -> None:
    with pytest.raises(DataFormatError, match=r"unknown metric name 'Acc_9' in data row 1"):
        make_table([row(metric="Acc_9")])
    for name in ("quality_smell", "expert_usage_x"):
        with pytest.raises(DataFormatError, match="unknown metric name"):
            make_table([row(metric=name)])
    df = make_table([row(variant="shuffled"), row(metric="expert_usage_3")])
    assert set(df["variant"]) == {"normal", "quality_shuffle"}


def test_csv_safe_and_save_defuse_formulas(tmp_path: Path) -> None:
    df = pd.DataFrame({"run": ["=cmd|' /C calc'!A0", "+1", "ok", "-x", "@s"], "v": [-1.0] * 5})
    safe = csv_safe(df)
    assert safe["run"].tolist() == ["'=cmd|' /C calc'!A0", "'+1", "ok", "'-x", "'@s"]
    assert (safe["v"] == -1.0).all() and df["run"].iloc[0].startswith("=")  # input untouched
    path = save(make_table([row(run="=HYPERLINK(1)", dataset="@evil")]), tmp_path / "r.csv")
    text = path.read_text()
    assert ",'=HYPERLINK(1)," in text and ",'@evil," in text and ",=" not in text


def test_constant_rows_are_the_best_constant() -> None:
    labels = np.array([1.0, 1, 1, 0, 0, 1, 1, 1])  # 6 of 8 positive
    rows = constant_rows(labels, "binary", run="r", model="m", dataset="d", split="test")
    df = make_table(rows)
    got = df.set_index("metric")["value"]
    assert got["Acc_2"] == pytest.approx(0.75) and got["n_samples"] == 8
    assert (df["variant"] == "constant").all() and (df["modalities"] == "").all()
    # MOSI: "always positive" for Has0 (3 of 5 >= 0), the median for MAE
    truth = np.array([-2.0, -1.0, 0.0, 0.5, 2.5])
    best = best_constant(truth, "mosi")
    assert best["Has0_acc_2"] == (0.0, pytest.approx(0.6))
    assert best["MAE"][0] == 0.0 and best["MAE"][1] == pytest.approx(6.0 / 5)
    assert math.isnan(best["Corr"][1])
    assert constants(df, "Acc_2")["value"].tolist() == [0.75]
    assert measured(df).empty


@pytest.mark.parametrize("metric", ["Acc_2", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7", "MAE"])
def test_sample_terms_match_compute(metric: str) -> None:
    rng = np.random.default_rng(0)
    truth = np.round(rng.normal(0, 1.5, 200) * 2) / 2
    pred = rng.normal(0, 1.5, 200)
    scheme = "binary" if metric == "Acc_2" else "mosi"
    if scheme == "binary":
        truth = (truth > 0).astype(float)
    num, den = sample_terms(pred, truth, scheme, metric)
    assert num.sum() / den.sum() == pytest.approx(compute(pred, truth, scheme)[metric])


def test_pattern_column_defaults_round_trips_and_keys_rows(tmp_path: Path) -> None:
    from qamoe_core.base.names import AXES
    from qamoe_core.spectrum.engine import pattern_label

    # The defaults are the spectrum's own labels (results.py cannot import it: torch).
    assert {a: pattern_label(a) for a in (*AXES, "clean", "drop")} == DEFAULT_PATTERN
    old = tmp_path / "old.csv"
    table = make_table([row(axis="missing", level=0.5)])
    table.drop(columns="pattern").to_csv(old, index=False)
    assert "pattern" not in pd.read_csv(old).columns
    assert load(old)["pattern"].tolist() == ["random"]
    # The same point under two patterns is two measurements, kept apart by the summary.
    rows = [row(axis="missing", level=lv, pattern=p, value=v)
            for p, v in (("random", 0.8), ("burst", 0.6)) for lv in (0.0, 0.5)]  # fmt: skip
    both = load(save(make_table(rows), tmp_path / "new.csv"))
    assert sorted(set(both["pattern"])) == ["burst", "random"]
    summary = summarize(both, [both["metric"].iloc[0]]).set_index("pattern")
    assert summary.loc["burst", "mean"] == pytest.approx(0.6)
    assert summary.loc["random", "mean"] == pytest.approx(0.8)
    with pytest.raises(DataFormatError, match="pattern 'burst' in data row 1 does not fit"):
        make_table([row(axis="noise", level=0.5, pattern="burst")])


def test_sweeps_of_one_run_under_two_patterns_combine(tmp_path: Path) -> None:
    clean = row(axis="clean", pattern="")
    a = save(make_table([clean, row(axis="missing", level=0.5)]), tmp_path / "a.csv")
    burst = row(axis="missing", level=0.5, pattern="burst", value=0.5)
    b = save(make_table([clean, burst]), tmp_path / "b.csv")
    both = load([a, b])  # the clean point measured twice, the same number: kept once
    assert len(both) == 3 and (both["axis"] == "clean").sum() == 1
    c = save(make_table([row(axis="clean", pattern="", value=0.7)]), tmp_path / "c.csv")
    with pytest.raises(DataFormatError, match="rows repeat a measurement"):
        load([a, c])  # another clean number under the same run name: two runs, one label
