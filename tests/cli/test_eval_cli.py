"""`qamoe eval`: a run directory and a data file in, a table / JSON / results CSV out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qamoe_cli.main import main
from qamoe_core.data.store import SplitArrays, write_features
from qamoe_core.evaluation.results import load


def test_clean_eval_json(tiny_run: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tiny_run), "--data", str(tiny_h5), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run"] == "qa-tiny" and result["model"] == "qamoe"
    assert result["points"] == 1 and result["first_axis"] == "clean"
    assert 0.0 <= result["metrics"]["Has0_acc_2"] <= 1.0
    assert result["summary"] == [] and result["out"] is None


def test_sweep_writes_results(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5"]
    args += ["--axis", "mixed,noise", "--corruption-seeds", "2", "--drop-sets", "--name", "qa"]
    args += ["--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "seeds averaged per level" in printed and f"results: {out}" in printed
    assert "Pass --out" not in printed  # the hint is for sweeps that keep no table
    table = load(out)
    assert set(table["run"]) == {"qa"}
    assert set(table["axis"]) == {"clean", "mixed", "noise", "drop"}
    model_rows = table[table["variant"] != "constant"]  # the best-constant reference rows aside
    assert set(model_rows["seed"]) == {0, 1}
    assert set(table["variant"]) == {"normal", "quality_shuffle", "constant"}
    assert (table["metric"] == "quality_text").any()
    # The results feed straight into a report.
    report = ["report", str(out), "--out", str(tmp_path / "rep"), "--figures", "png", "--json"]
    assert main(report) == 0  # PNG only: the vector copies are tested in tests/report
    rep = json.loads(capsys.readouterr().out)
    assert "reliability_Has0_acc_2" in rep["images"]
    # An existing output is refused before any work, and --force replaces it.
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--quiet"]) == 0


def test_per_sample_output_agrees_with_the_table(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    from qamoe_core.metrics import compute

    out, per = tmp_path / "r.csv", tmp_path / "s.csv.gz"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5,1",
            "--axis", "missing", "--modalities", "audio", "--corruption-seeds", "1",
            "--out", str(out), "--per-sample", str(per), "--json", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["per_sample"] == str(per)
    samples = pd.read_csv(per)  # gzip, inferred from the name
    table = load(out)
    n = 32  # the tiny preset's test split
    # clean + 3 levels, each with the normal and the quality-shuffled variant
    assert len(samples) == n * 4 * 2 and samples["id"].nunique() == n
    for (axis, level, variant), grp in samples.groupby(["axis", "level", "variant"]):
        want = table[(table["axis"] == axis) & (table["level"] == level)
                     & (table["variant"] == variant)].set_index("metric")["value"]  # fmt: skip
        got = compute(grp["prediction"].to_numpy(), grp["label"].to_numpy(), "mosi")
        assert got["MAE"] == pytest.approx(want["MAE"], abs=1e-5)
        assert grp["quality_audio"].mean() == pytest.approx(want["quality_audio"], abs=1e-5)
    normal = samples[(samples["variant"] == "normal") & (samples["axis"] == "missing")]
    # only audio was corrupted: text and vision keep each sample's r exactly, audio's moves
    for m in ("text", "vision"):
        per_id = normal.pivot_table(index="id", columns="level", values=f"quality_{m}")
        assert (per_id.max(axis=1) - per_id.min(axis=1)).max() == 0.0
    audio = normal.pivot_table(index="id", columns="level", values="quality_audio")
    assert (audio[0.0] - audio[1.0]).abs().max() > 0
    assert normal.loc[normal["level"] == 1.0, "quality_audio"].std() < 1e-6  # all gone alike
    assert main(args) == 1  # outputs exist: refused without --force
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        # Every value eval checks is a usage error (exit 2): EvalConfig's field specs and
        # parse_levels raise UsageError.
        (["--sweep", "--levels", "0:1.5:0.5"], "a list of numbers in [0, 1]", 2),
        (["--sweep", "--levels", "0.9:0.1:0.1"], "empty grid", 2),
        (["--sweep", "--levels", "0,x"], "non-number", 2),
        (["--sweep", "--axis", "sideways"], "among mixed, missing, noise", 2),
        (["--split", "nope"], "one of train, valid, test", 2),
        (["--sweep", "--pattern", "bursty"], "'pattern' parameter must be one of", 2),
        (["--sweep", "--burst-mean", "3"], "applies to the burst pattern only", 2),
        (["--sweep", "--pattern", "burst", "--burst-mean", "0.5"], "'burst_mean'", 2),
        (["--pattern", "correlated"], "sets the pattern of a sweep", 2),
    ],
)
def test_bad_options(
    tiny_run: Path,
    tiny_h5: Path,
    extra: list[str],
    message: str,
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["eval", str(tiny_run), "--data", str(tiny_h5), *extra]) == code
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_run_without_checkpoint(
    tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "run"
    empty.mkdir()
    assert main(["eval", str(empty), "--data", str(tiny_h5)]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "model.safetensors" in err


def test_dims_mismatch(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _small_other(tmp_path)
    assert main(["eval", str(tiny_run), "--data", str(other)]) == 1
    assert "feature dims but the checkpoint expects" in capsys.readouterr().err


def _small_other(tmp_path: Path) -> Path:
    """A tiny file whose text features have another width than the run's."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 8), ("valid", 4), ("test", 4)):
        splits[split] = SplitArrays(
            ids=[f"{split}{i}" for i in range(n)],
            label=rng.uniform(-3, 3, n).astype(np.float32),
            features={
                "text": rng.standard_normal((n, 4, 7)).astype(np.float32),
                "audio": rng.standard_normal((n, 4, 5)).astype(np.float32),
                "vision": rng.standard_normal((n, 4, 8)).astype(np.float32),
            },
            lengths={m: np.full(n, 4) for m in ("text", "audio", "vision")},
        )
    path = tmp_path / "other.h5"
    write_features(path, splits, dataset="other", task="regression", scheme="mosi",
                   label_range=(-3.0, 3.0), extractor={"name": "test"})  # fmt: skip
    return path


def test_out_and_per_sample_must_differ(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = tmp_path / "same.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "-o", str(same), "--per-sample"]
    assert main([*args, str(tmp_path / "." / "same.csv"), "--force"]) == 2
    assert "name the same file" in capsys.readouterr().err and not same.exists()


def test_force_never_writes_over_the_data_or_the_checkpoint(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = tmp_path / "data.h5"
    shutil.copy(tiny_h5, data)
    before = data.read_bytes(), (tiny_run / "model.safetensors").read_bytes()
    for target in (data, tiny_run / "model.pt"):
        args = ["eval", str(tiny_run), "--data", str(data), "--out", str(target), "--force"]
        assert main(args) == 1
        assert "is an input of this command" in capsys.readouterr().err
    assert (data.read_bytes(), (tiny_run / "model.safetensors").read_bytes()) == before


def test_sweep_json_holds_every_point(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: --json gave the summary only; the per-level points were in --out's CSV alone.
    out = tmp_path / "r.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0.2,0.6"]
    args += ["--axis", "noise", "--corruption-seeds", "1", "--drop-sets", "--device", "cpu"]
    assert main([*args, "--json", "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    table = load(out)
    assert len(rows) == len(table)
    key = ["axis", "level", "modalities", "seed", "variant", "metric"]
    got = {tuple(r[k] for k in key): r["value"] for r in rows}
    for r in table.itertuples():
        want = float(r.value)
        value = got[tuple(getattr(r, k) for k in key)]
        assert (value is None and np.isnan(want)) or value == pytest.approx(want, rel=1e-6)


def test_single_point_prints_only_what_is_defined(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a corrupted file's one point printed a summary with clean nan, area/clean nan
    # and an unexplained "shuffled" row.
    from qamoe_core.spectrum.engine import CorruptionSpec
    from qamoe_core.spectrum.files import corrupt_file

    given = tmp_path / "c.h5"
    corrupt_file(tiny_h5, given, CorruptionSpec(level=0.4, seed=1))
    assert main(["eval", str(tiny_run), "--data", str(given), "--device", "cpu", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed and "shuffled" not in printed
    assert "seeds averaged" not in printed  # one point: no summary over levels
    assert "quality_shuffle" in printed and "permuted across samples" in printed
    # the floor the score is read against, from the split's labels (not the corrupted input)
    from qamoe_core.data.store import FeatureFile
    from qamoe_core.metrics import best_constant

    with FeatureFile(tiny_h5) as f:
        labels = f.read("test", slice(0, f.n("test")))["label"]
        floor = best_constant(labels, f.scheme)["Has0_acc_2"][1]
    row = next(line for line in printed.splitlines() if "Has0_acc_2" in line)
    assert "best constant" in printed and f"{floor:.4f}" in row


def test_unwritable_out_folder_fails_before_evaluating(
    tiny_run: Path,
    tiny_h5: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: the folder was only tried when the results were saved, after the whole sweep.
    # /proc refuses new files even to root (chmod would not stop root).
    from qamoe_core.evaluation.sweep import Evaluation

    if not Path("/proc/self").exists():
        pytest.skip("needs /proc (Linux) as a folder that refuses new files")

    def no_work(*_: object, **__: object) -> None:
        raise AssertionError("evaluated before checking the output")

    monkeypatch.setattr(Evaluation, "run", no_work)
    for flag in ("--out", "--per-sample"):
        args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--device", "cpu"]
        assert main([*args, flag, "/proc/qamoe-results.csv"]) == 1
        err = capsys.readouterr().err
        assert "error: Cannot write into '/proc'" in err and "hint:" in err


@pytest.mark.parametrize(
    ("field", "bad"), [("level", "high"), ("seed", "x"), ("modalities", "audio"), ("axis", 3)]
)
def test_malformed_corruption_record_fails_before_evaluating(
    tiny_run: Path,
    tiny_h5: Path,
    tmp_path: Path,
    field: str,
    bad: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: some were an "unexpected" error, and a string of modalities was reported only
    # when the results table was built, after the whole evaluation.
    import shutil

    import h5py

    from qamoe_core.evaluation.sweep import Evaluation

    tampered = tmp_path / "t.h5"
    shutil.copy(tiny_h5, tampered)
    record = {"level": 0.3, "axis": "mixed", "seed": 0, "modalities": ["audio"]}
    with h5py.File(tampered, "a") as h5:
        h5.attrs["corruption"] = json.dumps([{**record, field: bad}])

    def no_work(*_: object, **__: object) -> None:
        raise AssertionError("evaluated before checking the record")

    monkeypatch.setattr(Evaluation, "run", no_work)
    assert main(["eval", str(tiny_run), "--data", str(tampered), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    # named by the record check of eval or, earlier, by the file reader (h5store)
    assert "corruption record" in err and f"'{field}'" in err and "hint:" in err


def test_sweep_under_a_pattern_labels_every_row(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "burst.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.5"]
    args += ["--pattern", "burst,correlated", "--burst-mean", "3", "--noise-rho", "0.5"]
    args += ["--corruption-seeds", "1", "--no-shuffle", "--out", str(out), "--quiet"]
    assert main([*args, "--device", "cpu"]) == 0
    table = load(out)
    got = dict(table.groupby("axis")["pattern"].unique().map(tuple))
    assert got == {"clean": ("",), "mixed": ("burst+correlated",), "missing": ("burst",),
                   "noise": ("correlated",)}  # fmt: skip
    assert "pattern" in out.read_text().splitlines()[0].split(",")


def test_r_controls_and_residuals_through_the_cli(
    tiny_run: Path, tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "controls.csv"
    args = ["eval", str(tiny_run), "--data", str(tiny_h5), "--sweep", "--levels", "0,0.6",
            "--axis", "missing,noise", "--corruption-seeds", "1", "--no-shuffle",
            "--control", "constant_r,oracle_r", "--residuals", "--out", str(out), "--json",
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["controls"] == ["constant_r", "oracle_r"]
    table = load(out)
    assert set(table["variant"]) == {"normal", "constant", "constant_r", "oracle_r"}
    normal = table[table["variant"] == "normal"]
    for m in ("text", "audio", "vision"):
        for name in (f"residual_{m}", f"sigma2_{m}"):
            values = normal.loc[normal["metric"] == name, "value"]
            assert len(values) == 5 and bool((values >= 0).all()), name  # clean + 2 x 2
    clean_resid = normal[(normal["metric"] == "residual_audio") & (normal["axis"] == "clean")]
    assert float(clean_resid["value"].iloc[0]) < float(
        normal[(normal["metric"] == "residual_audio") & (normal["level"] == 0.6)
               & (normal["axis"] == "missing")]["value"].iloc[0]
    )  # fmt: skip
    # The report draws the diagnostic in its quality section; the r-controls only as tables.
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert "quality_residuals" in rep["images"]
    md = (tmp_path / "rep" / "report.md").read_text().replace("\\", "")
    assert "## Summary: constant_r, oracle_r controls" in md
    # An unknown control is a one-line usage error naming the choices.
    assert main([*args, "--control", "oracle", "--force"]) == 2
    err = capsys.readouterr().err
    assert "'controls'" in err and "constant_r, oracle_r" in err
