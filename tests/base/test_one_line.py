"""Error messages quote what files hold; whatever that is, an error stays one readable line
(found by the fuzz harness, tests/fuzz): a newline or a record separator from a results
table no longer splits it, an ANSI or OSC escape from a file no longer reaches the terminal,
and a 200,000-character attribute is not printed whole."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import pytest

from qamoe_cli.main import main
from qamoe_core.base.errors import MAX_LINE, DataFormatError, QamoeError, one_line
from qamoe_core.data.store import FeatureFile

HOSTILE = "x\n\x1b[2J\x1b]8;;http://evil.example\x1b\\link\x1e\u2028\u202eend\udc80"


def test_one_line_escapes_what_would_break_or_drive_the_terminal() -> None:
    text = one_line(f"schema {HOSTILE}")
    assert text.isprintable() and "\x1b" not in text and len(text.splitlines()) == 1
    assert "\\n" in text and "\\x1b[2J" in text and "\\u202e" in text and "\\udc80" in text
    assert one_line("plain 'é' [ok]") == "plain 'é' [ok]"
    long = one_line("a" * 10 * MAX_LINE + "END")
    assert len(long) <= MAX_LINE and long.endswith("END") and "characters left out" in long
    err = QamoeError(f"m {HOSTILE}", f"h {HOSTILE}")
    assert err.message.isprintable() and err.hint is not None and err.hint.isprintable()


def test_a_results_cell_cannot_split_or_color_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.csv"
    header = ["schema", "run", "model", "dataset", "split", "axis", "level", "modalities",
              "seed", "pattern", "variant", "metric", "value"]  # fmt: skip
    row = [HOSTILE.replace("\udc80", ""), "r", "qamoe", "d", "test", "clean", "0", "text",
           "0", "", "normal", "MAE", "0.5"]  # fmt: skip
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, row])
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "written with results schema" in err
    assert "\x1b]8" not in err and "\x1b[2J" not in err and "\u2028" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("hint:")


def test_a_huge_attribute_is_not_quoted_whole(tiny_h5: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    shutil.copy(tiny_h5, path)
    with h5py.File(path, "a") as h5:
        h5.attrs["modalities"] = "[" + " " * 200_000 + "1]"
    with pytest.raises(DataFormatError, match="modalities") as err:
        FeatureFile(path)
    assert len(err.value.message) <= MAX_LINE
