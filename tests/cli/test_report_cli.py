"""`qamoe report`: files in, report folder out, JSON on request, errors through the funnel."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from qamoe_cli.main import main
from qamoe_core.results import make_table, save
from tests.core.test_report import sweep_rows


@pytest.fixture(scope="module")
def csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("results")
    qa = save(make_table(sweep_rows("qamoe", "qamoe", -0.1, diagnostics=True)), d / "qa.csv")
    late = make_table(sweep_rows("late", "late-fusion", -0.4, diagnostics=False, seed=1))
    return [qa, save(late, d / "late.csv")]


def test_report_json(tmp_path: Path, csvs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert main(["report", *map(str, csvs), "--out", str(out), "--metric", "MAE", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["qamoe", "late"] and result["metrics"] == ["MAE"]
    assert Path(result["html"]).is_file() and Path(result["images"]["reliability_MAE"]).is_file()
    summary = pd.read_csv(result["tables"]["summary"])
    assert set(summary["run"]) == {"qamoe", "late"}


def test_report_table_and_force(
    tmp_path: Path, csvs: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(csvs[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reliability_Has0_acc_2.png" in printed and f"open {out / 'report.html'}" in printed
    assert main(["report", str(csvs[1]), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(csvs[1]), "--out", str(out), "--force"]) == 0


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
    assert main(["report", *map(str, files), "--pool-seeds", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == ["qa"]
    summary = pd.read_csv(result["tables"]["summary"])
    assert set(summary["run"]) == {"qa"} and (summary["n_seeds"] > 1).all()
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
    }[case]()
    if "-o" not in args:
        args += ["-o", str(tmp_path / "rep")]
    assert main(["report", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and message in lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1]
    assert not (tmp_path / "rep").exists() and (tmp_path / "rfile.txt").read_text() == "keep"
