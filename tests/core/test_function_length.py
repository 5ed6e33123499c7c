"""No function in qamoe_core longer than LIMIT lines unless a comment says why.

A function's length counts from its ``def`` (decorators excluded) to its last line, docstring
included. A function may go over only with a comment line directly above its ``def`` (or its
first decorator) that starts with ``# long:`` and gives the reason; even then it stays under
HARD_LIMIT. Run this file as a script to list every function over a length:

    python tests/core/test_function_length.py [N]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qamoe_core"
LIMIT = 60
HARD_LIMIT = 80


def functions(limit: int, package: Path = PACKAGE) -> list[tuple[int, str, bool]]:
    """(length, 'path:line name', justified) for every function longer than ``limit``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length <= limit:
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            where = f"{path.relative_to(package.parent)}:{node.lineno} {node.name}"
            found.append((length, where, above.startswith("# long:")))
    return sorted(found, reverse=True)


def test_no_long_function_without_a_reason() -> None:
    bad = [f"{n} lines  {w}" for n, w, why in functions(LIMIT) if not why or n > HARD_LIMIT]
    assert not bad, f"functions over {LIMIT} lines (split them, or say why with '# long:'):\n" + (
        "\n".join(bad)
    )


def test_the_scanner_counts_and_reads_the_reason(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))  # def + LIMIT lines
    (pkg / "m.py").write_text(
        f"def short():\n    pass\n\n\ndef long():\n{body}\n\n\n"
        f"# long: one table, read top to bottom\n@staticmethod\ndef why():\n{body}\n"
    )
    found = functions(LIMIT, pkg)
    assert [(n, w.split()[-1], y) for n, w, y in found] == [
        (LIMIT + 1, "why", True),
        (LIMIT + 1, "long", False),
    ]
    assert found[1][1].startswith("pkg/m.py:5 ")


if __name__ == "__main__":
    for n, where, why in functions(int(sys.argv[1]) if len(sys.argv) > 1 else LIMIT):
        print(f"{n:4d}  {where}{'  (# long: ...)' if why else ''}")
