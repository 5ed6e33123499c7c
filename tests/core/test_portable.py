"""qamoe imports and starts where Unix-only modules do not exist (Windows): every module of
qamoe_core and qamoe_cli is imported with ``fcntl``, ``resource``, ``termios`` and the other
Unix-only modules made unimportable, then ``qamoe --version`` runs. The same child checks that
no module of qamoe_core imports the CLI's typer or rich (one interpreter importing everything
serves both checks). The POSIX-only code paths
(the atomic exchange, a pid's liveness, non-blocking opens) have their fallbacks tested in
tests/base/test_rundir.py and below."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qamoe_core import __version__
from qamoe_core.base import inputs

REPO = Path(__file__).resolve().parents[2]
# Modules that exist only on Unix (none of them has a Windows counterpart of the same name).
UNIX_ONLY = ("fcntl", "resource", "termios", "tty", "pty", "grp", "pwd")

_IMPORT_ALL = """
import importlib, pkgutil, sys, warnings
for name in {blocked!r}:
    sys.modules[name] = None  # `import fcntl` now raises ImportError, as on Windows
# filelock, finding no fcntl on a non-Windows system, says it falls back to its soft lock
warnings.filterwarnings("ignore", message="only soft file lock is available")
failed, count = [], 0
for name in ("qamoe_core", "qamoe_cli"):  # the library alone first
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        count += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{{info.name}}: {{exc!r}}")
    if name == "qamoe_core":
        ui = sorted(n for n in sys.modules if n.split(".")[0] in ("typer", "rich"))
print(count, "modules", file=sys.stderr)
print("typer/rich after qamoe_core:", ui, file=sys.stderr)
if failed:
    sys.exit("\\n".join(failed))
from qamoe_cli.main import run
sys.argv = ["qamoe", "--version"]
run()
"""


def test_every_module_imports_and_the_cli_starts_without_unix_only_modules(
    tmp_path: Path,
) -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    code = _IMPORT_ALL.format(blocked=UNIX_ONLY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert __version__ in proc.stdout
    assert int(proc.stderr.split(" modules")[0].split()[-1]) > 50  # it did walk the packages
    # the library has no UI: every qamoe_core module imported, and still no typer or rich
    assert "typer/rich after qamoe_core: []" in proc.stderr, proc.stderr[-3000:]


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported by the module's own statements (not inside functions)."""
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_module_imports_a_unix_only_module_at_its_top() -> None:
    """The same rule read from the source, so that a new module cannot slip by unimported."""
    offenders = {
        str(path.relative_to(REPO)): sorted(_module_level_imports(path) & set(UNIX_ONLY))
        for package in ("qamoe_core", "qamoe_cli")
        for path in sorted((REPO / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_open_regular_without_o_nonblock_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no O_NONBLOCK (and no FIFOs at file paths): the open is a plain one."""
    monkeypatch.setattr(inputs, "_NONBLOCK", 0)
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc\r\n")
    with inputs.open_regular(path) as fh:
        assert fh.read() == b"abc\r\n"
