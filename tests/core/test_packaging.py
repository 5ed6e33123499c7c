"""qamoe as a normal package: the wheel that `pip install .` builds installs into a fresh
virtual environment and runs from there, with the repository nowhere on the path.

No network here: the fresh environment gets its dependencies (torch, h5py, ...) from the test
interpreter's site-packages through a ``.pth`` line, which adds that folder to sys.path without
running its own ``.pth`` files (so the editable install of the checkout stays out of it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from qamoe_core import __version__

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """The wheel of a copy of the sources (setuptools' build/ never lands in the checkout)."""
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("qamoe_core", "qamoe_cli"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "wheels")], tmp, env)  # fmt: skip
    (wheel,) = (tmp / "wheels").glob("qamoe-*.whl")
    return wheel


def _fresh_env(tmp: Path, wheel: Path, env: dict[str, str]) -> Path:
    """A new venv (no pip, nothing in it) with the wheel installed by pip, console script too."""
    root = tmp / "venv"
    venv.create(root, with_pip=False)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         tmp, env)  # fmt: skip
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                tmp, env).strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]  # torch, numpy, h5py, ... of the test interpreter
    (Path(site) / "qamoe-test-deps.pth").write_text(deps + "\n")
    return python


def test_the_wheel_installs_and_runs_without_the_repository(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_NO_INPUT"] = "1"
    wheel = _build_wheel(tmp_path, env)
    python = _fresh_env(tmp_path, wheel, env)
    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import qamoe_core, qamoe_cli; print(qamoe_core.__file__);"
                  "print(qamoe_cli.__file__)"], work, env).split()  # fmt: skip
    assert all(Path(w).is_relative_to(tmp_path / "venv") for w in where), where
    qamoe = python.parent / ("qamoe.exe" if os.name == "nt" else "qamoe")
    assert __version__ in _run([str(qamoe), "--version"], work, env)
    _run([str(qamoe), "extract", "synthetic", "--preset", "tiny", "-o", "tiny.h5", "-q"], work, env)
    _run([str(qamoe), "train", "tiny.h5", "--out", "run", "--epochs", "1", "--device", "cpu",
          "--batch-size", "16"], work, env)  # fmt: skip
    assert {"config.json", "metrics.json"} <= {p.name for p in (work / "run").iterdir()}
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1
