"""`qamoe audit`: table, --json, --strict exit status, one-line errors, and the real data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from qamoe_cli import audit as cli_audit
from qamoe_cli.main import main
from qamoe_core.data import audit as core_audit
from tests.cli.test_startup import _heavy_loaded_after
from tests.conftest import mosi_lite_dir
from tests.data.test_audit import make_file
from tests.data.test_import_mosilite import make_mosilite


@pytest.fixture(scope="module")
def leaked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_file(tmp_path_factory.mktemp("audit") / "leaked.h5", leak=True)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_file(tmp_path_factory.mktemp("audit") / "honest.h5")


def test_option_defaults_are_the_core_defaults() -> None:
    for name in ("DEFAULT_GROUP_REGEX", "DEFAULT_FOLDS", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_GAP"):
        assert getattr(cli_audit, name) == getattr(core_audit, name), name
    assert cli_audit.DEFAULT_Z == core_audit.DEFAULT_Z


def test_help_loads_no_heavy_package() -> None:
    code = (
        "import contextlib, io\n"
        "from qamoe_cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "    rc = main(['audit', '--help'])\n"
        "assert rc == 0 and '--strict' in buf.getvalue(), rc\n"
    )
    assert _heavy_loaded_after(code) == []


def test_table_flags_the_leak(leaked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(leaked), "-q"]) == 0  # flags alone do not fail the command
    out = capsys.readouterr().out
    assert "FLAG text: Has0_acc_2" in out and "label-fitted features?" in out
    assert "linear probe" in out and "best constant" in out
    assert "FLAG audio" not in out


def test_strict_exit_status(leaked: Path, honest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(leaked), "-q", "--strict"]) == cli_audit.FLAGGED_EXIT == 3
    assert main(["audit", str(honest), "-q", "--strict"]) == 0
    assert "nothing flagged" in capsys.readouterr().out


def test_json_is_the_report(leaked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(leaked), "--json", "--modalities", "text"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["flagged"] is True and list(report["modalities"]) == ["text"]
    assert report["modalities"]["text"]["flagged_on"] == ["valid", "test"]
    assert report["config"]["max_gap"] == 10.0 and report["grouping"]["grouped"] is True
    assert {f["kind"] for f in report["findings"] if f["level"] == "flag"} == {"label_fitted"}


def test_grouping_options(leaked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(leaked), "--json", "--no-groups"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["grouping"]["grouped"] is False and report["config"]["group_regex"] is None
    assert main(["audit", str(leaked), "--json", "--group-regex", r"^(\w+?v\d\d)"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["grouping"]["groups"]["train"] == 4  # trainv00 .. trainv03: videos by tens


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "hint:" in err and "Traceback" not in err, err
    return err


def test_one_line_errors(tmp_path: Path, honest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_train = tmp_path / "no_train.h5"
    no_train.write_bytes(honest.read_bytes())
    with h5py.File(no_train, "a") as h5:
        del h5["train"]
    assert "has no train split" in _error(capsys, ["audit", str(no_train)])
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["x"] = [1.0]
    assert "not a qamoe feature file" in _error(capsys, ["audit", str(plain)])
    assert "no capture group" in _error(capsys, ["audit", str(honest), "--group-regex", "^.+$"])
    assert "no modality vision" in _error(capsys, ["audit", str(honest), "--modalities", "vision"])


def test_extract_mosi_lite_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_mosilite(tmp_path / "ml")
    argv = ["extract", "mosi-lite", str(tmp_path / "ml"), "--out", str(tmp_path / "m.h5"), "-q"]
    assert main(argv) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("warning:")
    assert "fitted on the bc-LSTM train videos' labels" in err
    assert "qamoe extract mosi" in err and "qamoe audit" in err


# -- real data and the synthetic presets ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(mosi_lite_dir() is None, reason="needs ../shared/data/mosi-lite")
def test_real_mosi_lite_text_and_vision_are_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mosi-lite.h5"
    assert main(["extract", "mosi-lite", str(mosi_lite_dir()), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["audit", str(out), "--json", "--strict"]) == 3
    report = json.loads(capsys.readouterr().out)
    verdicts = {m: r["verdict"] for m, r in report["modalities"].items()}
    assert verdicts == {
        "text": "label-fitted?",
        "audio": "no held-out signal",
        "vision": "label-fitted?",
    }
    text, vision = report["modalities"]["text"], report["modalities"]["vision"]
    # the measured figures of ../shared/data/cmu-mosi-labels/README.md: 98 / 91 % vs 75 / 52 %
    assert text["cv"]["Acc_2"] > 0.95 and text["heldout"]["test"]["Acc_2"] < 0.8
    assert vision["cv"]["Acc_2"] > 0.85 and vision["heldout"]["test"]["Acc_2"] < 0.6
    assert text["flagged_on"] == vision["flagged_on"] == ["test"]  # valid is carved from train
    assert {f["kind"] for f in report["findings"] if f["level"] == "flag"} == {"label_fitted"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_synthetic_presets_pass(
    tmp_path: Path, preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{preset}.h5"
    assert main(["extract", "synthetic", "--preset", preset, "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["audit", str(out), "--json", "--strict"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["flagged"] is False and report["grouping"]["grouped"] is True
