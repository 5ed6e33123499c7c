"""Compare two qamoe output folders file by file (the renovation's "same outputs" check).

    .venv/bin/python scripts/compare_outputs.py OLD NEW

Each file of OLD is compared with the same path under NEW: byte-identical; else identical once
the two folder paths are made equal and wall-clock timings (JSON keys ending in "seconds" and
demo.json's "timings") and a run's "environment" (config.json and metrics.json: versions,
platform, git commit, threads and wait policy; present or not) are set aside; else, for
``.pt``/``.pth`` files, every tensor equal
(``torch.load(weights_only=True)``) once paths and timings are set aside in what is not a
tensor. Prints one line per file that is not byte-identical, and a JSON count; exits 1 on
any real difference.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

TIMING = re.compile(r'"(\w*seconds|timings)": (\{[^}]*\}|[0-9.eE+-]+)')
ENVIRONMENT = re.compile(r',\s*"environment": \{[^}]*\}')  # flat (runs/environment.py)


def _text(path: Path, root: Path) -> str:
    text = ENVIRONMENT.sub("", path.read_text(errors="replace").replace(str(root), "ROOT"))
    return TIMING.sub(r'"\1": T', text)


def _scrub(obj: Any, root: str) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: None if str(k).endswith("seconds") else _scrub(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_scrub(v, root) for v in obj]
    return obj.replace(root, "ROOT") if isinstance(obj, str) else obj


def _same_tensors(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare(old: Path, new: Path) -> dict[str, int]:
    import torch

    counts = {
        "byte-identical": 0,
        "same up to paths/timings": 0,
        "same tensors": 0,
        "different": 0,
        "missing": 0,
    }
    for a in sorted(p for p in old.rglob("*") if p.is_file()):
        rel = a.relative_to(old)
        b = new / rel
        if not b.is_file():
            kind = "missing"
        elif a.read_bytes() == b.read_bytes():
            kind = "byte-identical"
        elif a.suffix in (".pt", ".pth"):
            ta, tb = (
                _scrub(torch.load(p, weights_only=True), str(r)) for p, r in ((a, old), (b, new))
            )
            kind = "same tensors" if _same_tensors(ta, tb) else "different"
        elif a.suffix in (".h5", ".png", ".pdf"):
            kind = "different"
        else:
            kind = "same up to paths/timings" if _text(a, old) == _text(b, new) else "different"
        counts[kind] += 1
        if kind != "byte-identical":
            print(f"{kind:26s} {rel}")
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare_outputs.py OLD NEW")
    result = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result))
    sys.exit(1 if result["different"] or result["missing"] else 0)
