"""The CLI shell: version, help, the error funnel, and core's independence from the UI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qamoe_cli.main import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("qamoe ")


# That no qamoe_core module imports typer or rich is checked in the child of
# tests/core/test_portable.py, which imports every module of qamoe_core anyway.


def test_error_funnel_prints_error_and_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.h5"
    args = ["extract", "synthetic", "--preset", "tiny", "--out", str(out), "-q"]
    assert main(args) == 0
    assert main(args) == 1  # exists, no --force
    err = capsys.readouterr().err
    assert "error: The output" in err and "hint:" in err and "--force" in err
    assert "Traceback" not in err


def test_usage_errors_are_one_line_with_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", "synthetic", "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--preset" in err and "hint: See" in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    out.write_text("x")
    cmd = [
        sys.executable,
        "-m",
        "qamoe_cli.main",
        "--debug",
        "extract",
        "synthetic",
        "--preset",
        "tiny",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "OutputExistsError" in res.stderr
    res = subprocess.run(cmd[:3] + cmd[4:], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    # --debug after the command name (where one adds it after a failure) works too.
    res = subprocess.run([*cmd[:3], *cmd[4:], "--debug"], capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr and "OutputExistsError" in res.stderr


def test_debug_first_moves_only_the_flag() -> None:
    from qamoe_cli.main import _debug_first

    assert _debug_first(["eval", "run", "--debug", "-d", "x"]) == [
        "--debug",
        "eval",
        "run",
        "-d",
        "x",
    ]
    assert _debug_first(["eval", "run"]) == ["eval", "run"]
    assert _debug_first(["x", "--", "--debug"]) == ["x", "--", "--debug"]  # after --: an argument
    # the other root options, with their values, in either spelling
    got = _debug_first(["train", "d.h5", "--threads", "1", "--wait-policy=passive", "-q"])
    assert got == ["--threads", "1", "--wait-policy=passive", "train", "d.h5", "-q"]


def test_json_output_is_parseable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert (
        main(
            ["extract", "synthetic", "--preset", "tiny", "--out", str(tmp_path / "d.h5"), "--json"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["splits"] == {"train": 64, "valid": 24, "test": 32}


def test_extract_synthetic_offset_is_recorded_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import h5py

    out = tmp_path / "d.h5"
    base = ["extract", "synthetic", "--preset", "tiny", "--out", str(out), "-q"]
    assert main([*base, "--offset", "mosi-lite"]) == 0
    with h5py.File(out) as f:
        assert json.loads(f.attrs["extractor"])["offset"] == {
            "text": 0.26,
            "audio": 3.73,
            "vision": 0.61,
        }
    assert main([*base, "--force", "--offset", "1.5"]) == 0
    with h5py.File(out) as f:
        assert set(json.loads(f.attrs["extractor"])["offset"].values()) == {1.5}
    capsys.readouterr()
    for bad in ("1,2", "-1", "lots", "nan", "1e300"):
        assert main([*base, "--force", "--offset", bad]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "--offset" in err and "Traceback" not in err


@pytest.mark.parametrize(("how", "code", "word"), [("ctrl-c", 130, "interrupted"),
                                                    ("sigterm", 143, "terminated")])  # fmt: skip
def test_interruptions_exit_nonzero_and_leave_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    code: int,
    word: str,
) -> None:
    import os
    import signal

    import qamoe_core.data.synthetic as synthetic
    from qamoe_core.base.atomic import atomic_path

    def stopped_midway(path: Path, **kwargs: object) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # the handler main() installs raises here
            raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(synthetic, "write_synthetic", stopped_midway)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "d.h5"
    assert main(["extract", "synthetic", "--preset", "tiny", "--out", str(out), "-q"]) == code
    err = capsys.readouterr().err
    assert f"error: {word}." in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output and no temporary
    assert signal.getsignal(signal.SIGTERM) is before  # main() restores the handler


def test_quiet_hooks_stay_inside_main(tmp_path: Path) -> None:
    import sys

    from typer.testing import CliRunner

    from qamoe_cli.main import app
    from qamoe_cli.process import quiet_excepthook, quiet_unraisable

    before = sys.excepthook, sys.unraisablehook
    CliRunner().invoke(app, ["extract", "synthetic", "--preset", "tiny", "-o",
                             str(tmp_path / "a.h5"), "-q"])  # fmt: skip
    assert sys.excepthook is not quiet_excepthook  # an embedding of the app keeps its hooks
    assert (
        main(["extract", "synthetic", "--preset", "tiny", "-o", str(tmp_path / "b.h5"), "-q"]) == 0
    )
    assert (sys.excepthook, sys.unraisablehook) == before
    assert sys.unraisablehook is not quiet_unraisable


# -- help and the exit-status rule (README: 2 an invalid request, 1 a failure) ---------------


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main([*args, "--help"]) == 0
    # the help is a Rich table: drop its borders so that wrapped cells read as one text
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_flags_show_no_value_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "eval")
    for name in ("--sweep", "--drop-sets", "--no-shuffle", "--force", "--quiet", "--json"):
        after = text.split(name, 1)[1][:12]
        assert "<bool>" not in after and "BOOLEAN" not in after, (name, after)
    # value options keep their type (typer >= 0.2x writes "<int range>", older "INTEGER RANGE")
    assert "int" in text.split("--batch-size", 1)[1][:30].lower()


def test_flag_given_a_value_gets_a_hint(tiny_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["corrupt", str(tiny_h5), "--level", "0.1", "--out", "x.h5", "--force", "true"])
    err = capsys.readouterr().err
    assert code == 2 and "unexpected extra argument" in err
    assert "take no value" in err


def test_train_help_shows_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from qamoe_core.config import TrainConfig

    text = _help(capsys, "train")
    d = TrainConfig()
    for name, value in (("epochs", d.epochs), ("seed", d.seed), ("batch_size", d.batch_size)):
        assert f"Default: {value} (or train.{name} in --config)" in text
    assert f"Default: {d.lr:g} (or train.lr in --config)" in text


def test_extract_lists_its_subcommands_with_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "extract")
    listed = text.split("Commands", 1)[1]
    names = ["synthetic", "mmsa", "mosi-lite", "mosi", "media"]
    assert [listed.index(f" {n} ") for n in names] == sorted(listed.index(f" {n} ") for n in names)
    assert "Write the built-in synthetic dataset" in listed and "from raw media" in listed


def test_root_help_states_the_exit_rule(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert "Exit status: 0 done; 2 the command line is not valid" in text
    assert "1 a valid request failed" in text


@pytest.mark.parametrize(
    ("value", "guess"),
    [
        ("late_fusion", "late-fusion"),
        ("Late-Fusion", "late-fusion"),
        ("erly-fusion", "early-fusion"),
    ],
)
def test_check_choice_suggests_the_nearest(value: str, guess: str) -> None:
    from qamoe_core.base.errors import UsageError, check_choice

    choices = ("qamoe", "late-fusion", "early-fusion", "dense-moe")
    with pytest.raises(UsageError) as info:
        check_choice(value, choices, "model")
    assert info.value.hint == f"Did you mean '{guess}'?"
    assert check_choice("dense-moe", choices, "model") == "dense-moe"


def test_check_choice_without_a_near_value() -> None:
    from qamoe_core.base.errors import UsageError, check_choice

    with pytest.raises(UsageError) as info:
        check_choice("zzz", ("missing", "noise", "mixed"), "axis")
    assert "Did you mean" not in (info.value.hint or "") and "--help" in (info.value.hint or "")


def test_exit_2_for_usage_1_for_data(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "c.h5")
    # usage: an unknown choice (with its suggestion), a value out of range, an unknown flag
    assert main(["corrupt", str(tiny_h5), "--level", "0.2", "--axis", "Mixed", "--out", out]) == 2
    assert "Did you mean 'mixed'?" in capsys.readouterr().err
    assert main(["corrupt", str(tiny_h5), "--level", "1.5", "--out", out]) == 2
    assert main(["corrupt", str(tiny_h5), "--levle", "0.2", "--out", out]) == 2
    # data: a missing input file, an output that exists
    assert main(["corrupt", str(tmp_path / "none.h5"), "--level", "0.2", "--out", out]) == 1
    assert main(["corrupt", str(tiny_h5), "--level", "0.2", "--out", out, "-q"]) == 0
    assert main(["corrupt", str(tiny_h5), "--level", "0.2", "--out", out, "-q"]) == 1
    capsys.readouterr()


def test_eval_on_the_model_file_points_to_the_folder(
    tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "qa"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"not read")
    assert main(["eval", str(run / "model.pt"), "--data", str(tiny_h5)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "is a file, not a run directory" in err and "hint: Pass the run folder" in err
    assert f"'{run}'" in err


# Usage errors still raised as plain InputError in files other helpers own: each should exit 2
# once it raises qamoe_core.base.errors.UsageError (or goes through check_choice). strict: when one
# is fixed, its case passes and must move out of this list.
def test_click_exception_classes_are_the_ones_typer_raises() -> None:
    # typer < 0.26 raises click's exceptions, later ones those of its vendored copy; the
    # funnel must catch whichever it is (else a typo in a flag would be "unexpected")
    from qamoe_cli.common import ClickException, ClickUsageError
    from qamoe_cli.main import app

    with pytest.raises(ClickUsageError) as info:
        app(args=["corrupt", "--no-such-flag"], standalone_mode=False)
    assert isinstance(info.value, ClickException)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["train", "{data}", "--out", "{tmp}/r", "--model", "late_fusion"], id="train-model"
        ),
        pytest.param(
            ["train", "{data}", "--out", "{tmp}/r", "--resume", "--force"], id="resume+force"
        ),
        pytest.param(
            ["eval", "{tmp}", "--data", "{data}", "--sweep", "--axis", "sideways"], id="eval-axis"
        ),
        pytest.param(
            ["corrupt", "{data}", "--level", "0.2", "--modalities", "smell", "--out", "{tmp}/c"],
            id="corrupt-modalities",
        ),
    ],
)
def test_usage_errors_in_every_command_exit_2(
    argv: list[str], tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(data=tiny_h5, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint: " in err
    if "late_fusion" in argv:
        assert "Did you mean 'late-fusion'?" in err
