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


def test_core_never_imports_typer_or_rich() -> None:
    code = (
        "import sys, pkgutil, importlib, qamoe_core\n"
        "for m in pkgutil.walk_packages(qamoe_core.__path__, 'qamoe_core.'):\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ModuleNotFoundError as e:\n"  # optional extras (media) may be absent
        "        if e.name.split('.')[0] in ('typer', 'rich'): raise\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('typer', 'rich')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


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

    import qamoe_core.synthetic as synthetic
    from qamoe_core.atomic import atomic_path

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

    from qamoe_cli.main import _quiet_excepthook, _quiet_unraisable, app

    before = sys.excepthook, sys.unraisablehook
    CliRunner().invoke(app, ["extract", "synthetic", "--preset", "tiny", "-o",
                             str(tmp_path / "a.h5"), "-q"])  # fmt: skip
    assert sys.excepthook is not _quiet_excepthook  # an embedding of the app keeps its hooks
    assert (
        main(["extract", "synthetic", "--preset", "tiny", "-o", str(tmp_path / "b.h5"), "-q"]) == 0
    )
    assert (sys.excepthook, sys.unraisablehook) == before
    assert sys.unraisablehook is not _quiet_unraisable
