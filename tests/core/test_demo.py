"""The demo chain, shrunk to the tiny preset: every step runs and the report is complete."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd
import pytest

from qamoe_core.base.errors import InputError, OutputExistsError
from qamoe_core.data.synthetic import MOSI_LITE_OFFSET
from qamoe_core.demo import DemoConfig, run_demo


def _tiny() -> DemoConfig:
    return DemoConfig(
        preset="tiny", epochs=1, levels=(0.0, 0.5, 0.9), corruption_seeds=(0,), axes=("mixed",)
    )


def test_demo_chain_writes_every_artifact(tmp_path: Path) -> None:
    stages: list[str] = []
    out = tmp_path / "demo"
    result = run_demo(out, _tiny(), device="cpu", stage=stages.append)
    assert [s.split(":")[0] for s in stages] == [
        "extract", "train", "train", "corrupt", "eval", "eval --sweep", "eval",
        "eval --sweep", "report",
    ]  # fmt: skip
    assert len(stages) == _tiny().stage_count()  # the total of `qamoe demo`'s progress
    for name in ("synthetic.h5", "synthetic-0.4.h5", "results-qamoe.csv",
                 "results-early-fusion.csv", "demo.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert result.report_html.is_file() and result.report_md.is_file()
    assert (out / "runs" / "qamoe" / "model.safetensors").is_file()
    html = result.report_html.read_text()
    assert "qamoe" in html and "early-fusion" in html and "data:image/png;base64" in html
    summary = pd.DataFrame(result.summary)
    assert set(summary["run"]) == {"qamoe", "early-fusion"}
    assert summary["clean"].between(0, 1).all()
    with h5py.File(out / "synthetic.h5") as f:  # the demo's data has MOSI-lite's offsets
        assert json.loads(f.attrs["extractor"])["offset"] == MOSI_LITE_OFFSET
    saved = json.loads((out / "demo.json").read_text())
    assert saved["report_html"] == str(result.report_html)
    assert set(result.corrupted_eval) == {"qamoe", "early-fusion"}


def test_demo_refuses_to_clobber(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(OutputExistsError):
        run_demo(other, _tiny())
    with pytest.raises(InputError, match="not made by `qamoe demo`"):
        run_demo(other, _tiny(), force=True)
    # The baselines are the registry's: fusion.py's models, nothing else.
    with pytest.raises(InputError, match="'baseline' parameter must be one of late-fusion, "
                       r"early-fusion, dense-moe\. Got 'svm'"):  # fmt: skip
        DemoConfig(baseline="svm")
    assert DemoConfig(baseline="dense-moe").baseline == "dense-moe"
    with pytest.raises(InputError, match="'level' parameter"):
        DemoConfig(level=1.5)
    with pytest.raises(InputError, match="'offset' parameter"):
        DemoConfig(offset=(("audio", -1.0),))


def test_a_demo_that_does_not_finish_leaves_the_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qamoe_core.demo as demo

    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    (out / ".qamoe-demo").write_text("an earlier demo\n")
    (out / "runs" / "kept.txt").write_text("earlier result")
    with pytest.raises(InputError, match="cuda"):  # checked before the folder is touched
        run_demo(out, _tiny(), device="cuda:99", force=True)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(out, _tiny(), device="cpu", force=True)
    assert (out / "runs" / "kept.txt").read_text() == "earlier result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # nothing set aside is left
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "fresh", _tiny(), device="cpu")
    assert not (tmp_path / "fresh").exists()


def test_force_over_a_demo_with_a_long_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qamoe_core.demo as demo

    out = tmp_path / ("x" * 250)
    out.mkdir()
    (out / ".qamoe-demo").write_text("an earlier demo\n")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):  # set aside and restored despite the long name
        run_demo(out, _tiny(), device="cpu", force=True)
    assert (out / ".qamoe-demo").read_text() == "an earlier demo\n"
