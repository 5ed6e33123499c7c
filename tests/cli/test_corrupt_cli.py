"""`qamoe corrupt`: JSON and table output, the recorded chain, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qamoe_cli.main import app, main
from qamoe_core.data.store import FeatureFile

runner = CliRunner()


def test_json_summary_and_file(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    args = ["corrupt", str(tiny_h5), "--level", "0.4", "--modalities", "audio,vision"]
    result = runner.invoke(app, [*args, "--seed", "7", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["modalities"]) == {"audio", "vision"}
    for s in summary["modalities"].values():
        assert 0.25 < s["missing_rate"] < 0.55 and 0.3 < s["noise_std"] < 0.5
    with FeatureFile(out) as f, FeatureFile(tiny_h5) as src:
        rec = f.corruption[0]
        assert (rec["level"], rec["axis"], rec["seed"]) == (0.4, "mixed", 7)
        assert rec["modalities"] == ["audio", "vision"]
        assert np.array_equal(
            f.read("test", slice(None))["text"], src.read("test", slice(None))["text"]
        )


def test_table_drop_splits_and_chain(tiny_h5: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    args = ["corrupt", str(tiny_h5), "-l", "0.3", "--axis", "missing", "--drop", "text"]
    result = runner.invoke(app, [*args, "--splits", "test", "-o", str(first), "-q"])
    assert result.exit_code == 0, result.output
    for text in ("missing_rate", "text (dropped)", "audio", "level 0.3", "splits test"):
        assert text in result.stdout
    result = runner.invoke(
        app, ["corrupt", str(first), "--level", "0.2", "--axis", "noise", "--out", str(second)]
    )
    assert result.exit_code == 0, result.output
    assert "chain length 2" in result.stdout
    with FeatureFile(second) as f:
        assert [r["axis"] for r in f.corruption] == ["missing", "noise"]
        assert f.corruption[0]["drop"] == ["text"]


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        (
            ["--level", "abc"],
            "The 'level' parameter must be a float in [0, 1]. Got 'abc' instead.",
            2,
        ),
        (
            ["--level", "1.4"],
            "The 'level' parameter must be a float in [0, 1]. Got '1.4' instead.",
            2,
        ),
        (["--level", "0.2", "--axis", "blur"], "The 'axis' parameter must be one of", 2),
        (["--level", "0.2", "--modalities", "smell"], "'modalities' parameter", 2),
        (["--level", "0.2", "--drop", "text,audio,vision"], "cannot remove every modality", 2),
        (["--level", "0.2", "--splits", "tset"], "'splits' parameter", 2),
        (["--level", "0.2", "--pattern", "gusty"], "The 'pattern' parameter must be one of", 2),
        (
            ["--level", "0.2", "--pattern", "burst", "--burst-mean", "0.5"],
            "The 'burst_mean' parameter must be a float in [1, 1e+06]. Got 0.5",
            2,
        ),
        (
            ["--level", "0.2", "--pattern", "correlated", "--noise-rho", "1"],
            "The 'noise_rho' parameter must be a float in [0, 1). Got 1.0",
            2,
        ),
        (["--level", "0.2", "--noise-rho", "0.5"], "'noise_rho' parameter applies to the corr", 2),
        (
            ["--level", "0.2", "--axis", "noise", "--pattern", "burst"],
            "'missing_pattern' parameter applies to the missing and mixed axes only",
            2,
        ),
    ],
)
def test_bad_input_is_one_line_error(
    tiny_h5: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
    code: int,
) -> None:
    out = tmp_path / "c.h5"
    # 2: a usage error (qamoe_core.base.errors.UsageError); the 1s are usage errors that
    # spectrum.py still raises as plain InputError (tests/cli/test_main.py lists them)
    assert main(["corrupt", str(tiny_h5), *extra, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in " ".join(err.split())
    assert "Traceback" not in err
    assert not out.exists()


def test_output_rules(tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.h5"
    base = ["corrupt", str(tiny_h5), "--level", "0.1", "-q"]
    assert main([*base, "--out", str(out)]) == 0
    assert main([*base, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert main([*base, "--out", str(out), "--force"]) == 0
    assert main(["corrupt", str(out), "--level", "0.1", "--out", str(out), "--force"]) == 1
    assert "is an input of this command" in capsys.readouterr().err
    assert main(["corrupt", str(tmp_path / "nope.h5"), "--level", "0.1", "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_patterns_are_recorded_and_shown(tiny_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    args = ["corrupt", str(tiny_h5), "-l", "0.5", "--pattern", "burst,correlated"]
    result = runner.invoke(app, [*args, "--burst-mean", "3", "--noise-rho", "0.6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "pattern burst+correlated" in result.stdout
    with FeatureFile(out) as f:
        rec = f.corruption[0]
    assert (rec["missing_pattern"], rec["burst_mean"]) == ("burst", 3.0)
    assert (rec["noise_pattern"], rec["noise_rho"]) == ("correlated", 0.6)
