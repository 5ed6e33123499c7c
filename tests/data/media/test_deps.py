"""Without the media extra, the command names the extra to install (simulated ImportError).

These run without the extra, except the openSMILE case, which skips with a reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from qamoe_cli.main import main
from qamoe_core.base.errors import InputError
from qamoe_core.data.media.config import MediaConfig
from qamoe_core.data.media.deps import require
from qamoe_core.data.media.pipeline import check_dependencies


def test_require_names_package_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(InputError) as info:
        require("cv2", "Vision extraction")
    assert "opencv-python-headless" in info.value.message
    assert info.value.hint == 'Install the optional extra: pip install "qamoe[media]"'


def test_opensmile_has_its_own_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # The audio check asks for the base media packages before openSMILE; without them it
    # (rightly) names qamoe[media] first, so this case needs them installed.
    for module in ("soundfile", "librosa", "av"):
        pytest.importorskip(module, reason=f"needs the media extra ({module}) to reach openSMILE")
    monkeypatch.setitem(sys.modules, "opensmile", None)
    with pytest.raises(InputError) as info:
        check_dependencies(MediaConfig(audio="opensmile"), ("audio",))
    assert info.value.hint is not None and "qamoe[media-opensmile]" in info.value.hint


def test_cli_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("transformers", "librosa", "cv2"):
        monkeypatch.setitem(sys.modules, name, None)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,split,label,text,audio\na,train,1,hi,a.wav\n")
    code = main(["extract", "media", str(manifest), "--out", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err
    assert code == 1
    assert "error:" in err and "could not be imported" in err
    assert 'pip install "qamoe[media]"' in err
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.work").exists()
