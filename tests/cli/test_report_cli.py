"""`qamoe report`: files in, report folder out, JSON on request, errors through the funnel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qamoe_cli.main import main
from qamoe_core.evaluation.results import make_table, save
from qamoe_core.report.compare import JSON_FIELDS
from tests.report.test_build import pred_rows, small_rows, sweep_rows, table_from_samples


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("results")
    qa = save(make_table(sweep_rows("qamoe", "qamoe", -0.1, diagnostics=True)), d / "qa.csv")
    late = make_table(sweep_rows("late", "late-fusion", -0.4, diagnostics=False, seed=1))
    return [qa, save(late, d / "late.csv")]


def test_report_json(tmp_path: Path, csvs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    args = ["report", *map(str, csvs), "--out", str(out), "--metric", "MAE", "--json"]
    assert main([*args, "--figures", "png,pdf"]) == 0  # SVG costs more; core tests check it
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["qamoe", "late"] and result["metrics"] == ["MAE"]
    assert Path(result["html"]).is_file() and Path(result["images"]["reliability_MAE"]).is_file()
    assert [Path(p).suffix for p in result["vectors"]["reliability_MAE"]] == [".pdf"]
    assert result["warnings"] == []
    summary = pd.read_csv(result["tables"]["summary"])
    assert set(summary["run"]) == {"qamoe", "late"}


def test_report_table_and_force(
    tmp_path: Path, csvs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(csvs[1]), "--out", str(out), "--figures", "png"]) == 0
    printed = capsys.readouterr().out
    assert "reliability_Has0_acc_2.png" in printed and f"open {out / 'report.html'}" in printed
    assert main(["report", str(csvs[1]), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(csvs[1]), "--out", str(out), "--force", "--figures", "png"]) == 0


def test_report_refuses_a_foreign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "other.csv"
    bad.write_text("run,score\nx,1\n")
    assert main(["report", str(bad), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "missing column(s) schema" in err and "hint:" in err
    assert not (tmp_path / "rep").exists()


def test_report_pools_model_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "res"
    d.mkdir()
    files = [
        save(make_table(sweep_rows(f"qa-s{s}", "qamoe", -0.1 - 0.05 * s, diagnostics=False)),
             d / f"qa-s{s}.csv")
        for s in (0, 1)
    ]  # fmt: skip
    out = tmp_path / "rep"
    args = ["report", *map(str, files), "--pool-seeds", "--out", str(out), "--json"]
    assert main([*args, "--figures", "png"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["qa"]
    summary = pd.read_csv(result["tables"]["summary"])
    assert set(summary["run"]) == {"qa"} and (summary["n_seeds"] > 1).all()
    # against a named reference: Welch over the 2 + 3 model seeds, printed beside the files
    files += [
        save(make_table(sweep_rows(f"lf-s{s}", "late-fusion", -0.1 - 0.02 * s, diagnostics=False,
                                   seed=s)), d / f"lf-s{s}.csv")
        for s in (0, 1, 2)
    ]  # fmt: skip
    args = ["report", *map(str, files), "--pool-seeds", "--reference", "lf", "--figures", "png"]
    assert main([*args, "--out", str(tmp_path / "vs"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["comparisons"]
    assert {r["run"] for r in rows} == {"qa"} and len(rows) == 3  # mixed, missing, noise
    assert all((r["n_seeds"], r["n_seeds_reference"]) == (2, 3) for r in rows)
    assert all(r["mde"] > 0 and r["p_holm"] is not None for r in rows)
    assert all(r["method"].startswith("Welch t over model seeds") for r in rows)
    assert main([*args, "--out", str(tmp_path / "vs2")]) == 0
    shown = capsys.readouterr().out
    assert "run − lf" in shown and "MDE" in shown and "2 vs 3" in shown
    # without a seed suffix there is nothing to pool: one clear line, exit 1
    plain = save(make_table(sweep_rows("plain", "qamoe", -0.1, diagnostics=False)), d / "p.csv")
    assert main(["report", str(plain), "--pool-seeds", "--out", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "nothing to pool" in err and "Traceback" not in err


def _small_csv(path: Path, *, every_row: bool = False, **overrides: object) -> Path:
    """A two-row results file (seeds 0 and 1 at one level); ``overrides`` edit the 2nd row
    (every row with ``every_row``)."""
    base = {"run": "r", "model": "qamoe", "dataset": "d", "split": "test", "axis": "mixed"}
    base |= {"level": 0.5, "modalities": "text", "variant": "normal", "metric": "Acc_2"}
    df = make_table([base | {"seed": 0, "value": 0.8}, base | {"seed": 1, "value": 0.7}])
    df = df.astype(object)
    for column, value in overrides.items():
        df.loc[slice(None) if every_row else 1, column] = value
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("case", "message", "hint"),
    [
        ("seed_fraction", "column 'seed' must hold whole numbers >= 0; found '1.5'", "seed"),
        ("seed_near_zero", "found '0.4' in data row 2", "seed"),
        ("seed_inf", "found 'inf' in data row 2", "seed"),
        ("out_below_file", "rfile.txt' is not a folder", "--out"),
        ("dir_arg", "is a directory", "*.csv"),
        ("bad_metric", "must be one of Acc_2. Got 'Foo'", "are Acc_2"),
        ("diagnostics_only", "diagnostics only", "--metric quality_text"),
        ("unknown_metric_in_file", "unknown metric name 'Acc_9' in data row 2", "qamoe eval"),
        ("unknown_reference", "reference run 'nope' is not in the results", "runs: r"),
        ("bad_figures", "Unknown figure format(s) gif", "png, pdf, svg"),
        ("bad_group_regex", "group regex 'abc' has no capture group", "first (...) group"),
    ],
)
def test_report_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str, hint: str
) -> None:
    good = _small_csv(tmp_path / "good.csv")
    (tmp_path / "rfile.txt").write_text("keep")
    (tmp_path / "res").mkdir()
    bad = tmp_path / "bad.csv"
    args = {
        "seed_fraction": lambda: [str(_small_csv(bad, seed="1.5"))],
        "seed_near_zero": lambda: [str(_small_csv(bad, seed="0.4"))],
        "seed_inf": lambda: [str(_small_csv(bad, seed="inf"))],
        "out_below_file": lambda: [str(good), "-o", str(tmp_path / "rfile.txt" / "sub")],
        "dir_arg": lambda: [str(tmp_path / "res")],
        "bad_metric": lambda: [str(good), "--metric", "Foo"],
        "diagnostics_only": lambda: [str(_small_csv(bad, every_row=True, metric="quality_text"))],
        "unknown_metric_in_file": lambda: [str(_small_csv(bad, metric="Acc_9"))],
        "unknown_reference": lambda: [str(good), "--reference", "nope"],
        "bad_figures": lambda: [str(good), "--figures", "png,gif"],
        "bad_group_regex": lambda: [str(good), "--reference", "r", "--group-regex", "abc"],
    }[case]()
    if "-o" not in args:
        args += ["-o", str(tmp_path / "rep")]
    assert main(["report", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert not (tmp_path / "rep").exists() and (tmp_path / "rfile.txt").read_text() == "keep"


def test_report_reference_with_samples_and_dataset_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(80) > 0.4).astype(float)
    hits = {"a": rng.random(80) < 0.8, "b": rng.random(80) < 0.6}
    samples = pd.concat([pred_rows(r, labels, h) for r, h in hits.items()])
    sfile = tmp_path / "samples.csv.gz"
    samples.to_csv(sfile, index=False)
    table = table_from_samples(samples)
    other = make_table(small_rows("c", 0.0, dataset="mosi"))
    other = other.assign(metric="Has0_acc_2")  # another dataset, another metric
    files = [save(table, tmp_path / "ab.csv"), save(other, tmp_path / "c.csv")]
    out = tmp_path / "rep"
    args = ["report", *map(str, files), "--reference", "b", "--samples", str(sfile)]
    assert main([*args, "--out", str(out), "--figures", "png", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "warning: c (mosi) has no Acc_2" in captured.err
    comp = pd.read_csv(result["tables"]["comparison"])
    assert comp["run"].tolist() == ["a"] and comp["n_samples"].tolist() == [80]
    expect = hits["a"].mean() - hits["b"].mean()
    assert comp["difference"].iloc[0] == pytest.approx(expect)
    assert comp["ci_low"].iloc[0] < expect < comp["ci_high"].iloc[0]
    md = (out / "report.md").read_text()
    assert "two-level percentile bootstrap (1000 draws, generator seed 0)" in md
    # --json: each comparison with the documented fields, the same numbers as the CSV
    (row,) = result["comparisons"]
    assert list(row)[: len(JSON_FIELDS)] == list(JSON_FIELDS)
    assert row["difference"] == pytest.approx(expect) and row["n_clusters"] == 80
    assert row["ci_low"] == pytest.approx(comp["ci_low"].iloc[0])
    assert row["n_seeds"] == 1 and row["mde"] is None and row["protocol"].startswith("d/test/")
