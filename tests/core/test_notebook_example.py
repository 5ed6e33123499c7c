"""examples/notebook.ipynb runs from top to bottom in a fresh kernel and leaves its curve, its
table and the report behind; the committed file carries no outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "examples" / "notebook.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_committed_notebook_has_no_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["id"]


def _kernel_or_skip() -> None:
    pytest.importorskip("nbclient", reason="nbclient is in the dev extra (setup.sh --dev)")
    pytest.importorskip("ipykernel", reason="ipykernel is in the dev extra (setup.sh --dev)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3 (ipykernel provides it)")


@pytest.mark.slow
def test_the_notebook_runs_to_a_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel_or_skip()
    import nbformat
    from nbclient import NotebookClient

    # the kernel is a child process: it imports this checkout, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # python3 is the kernel ipykernel installs; jupyter_client starts it with this interpreter
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    work = tmp_path / "qamoe-notebook"
    png = work / "reliability.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert height > 100 and width > 100

    import pandas as pd

    curve = pd.read_csv(work / "curve.csv")
    levels = [0.0, 0.2, 0.4, 0.6, 0.8]
    assert sorted(set(curve["run"])) == ["early-fusion", "qamoe"]
    for run, part in curve.groupby("run"):
        assert part["level"].round(6).tolist() == levels, run
    assert curve["mean"].notna().all()
    assert (work / "report" / "report.html").is_file()
    # the table cell shows the same numbers as the file: one row per level, a column per run
    table = next(c for c in nb.cells if "curve.pivot" in c.source)
    shown = table.outputs[0]["data"]["text/plain"]
    assert "early-fusion" in shown and "qamoe" in shown
    rows = [ln.split()[0] for ln in shown.splitlines()[1:] if ln.strip()[:1].isdigit()]
    assert rows == ["0.0", "0.2", "0.4", "0.6", "0.8"], shown
