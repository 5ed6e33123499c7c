"""Reports from synthetic results tables (no model needed)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qamoe_core.errors import InputError, OutputExistsError
from qamoe_core.report import MARKER, build_report, markdown_table
from qamoe_core.results import load, make_table, save

MOSI = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score"]
MOSI += ["Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
LEVELS = [round(0.1 * i, 1) for i in range(10)]


def sweep_rows(run: str, model: str, slope: float, *, diagnostics: bool, seed: int = 0) -> list:
    """A plausible sweep: accuracy falls linearly with the level, seeds jitter, QA-MoE runs
    carry quality scores, expert usage and a quality-shuffled variant that falls faster."""
    rng = np.random.default_rng(seed)
    base = {"run": run, "model": model, "dataset": "synthetic", "split": "test"}
    all_mods = "text+audio+vision"
    rows: list[dict] = []

    def add(axis: str, level: float, mods: str, s: int, variant: str, values: dict) -> None:
        for metric, value in values.items():
            rows.append(
                base
                | {"axis": axis, "level": level, "modalities": mods, "seed": s}
                | {"variant": variant, "metric": metric, "value": value}
            )

    def metrics(acc: float) -> dict[str, float]:
        out = {m: acc for m in MOSI}
        out["MAE"] = 1.6 - acc
        return out

    variants = ["normal", "quality_shuffle"] if diagnostics else ["normal"]
    for variant in variants:
        drop = 0.0 if variant == "normal" else 0.1
        add("clean", 0.0, all_mods, 0, variant, metrics(0.82))
        for axis, k in (("mixed", 1.0), ("missing", 0.8), ("noise", 0.5)):
            for level in LEVELS:
                for s in range(3):
                    acc = 0.82 + (slope - drop) * k * level + rng.normal(0, 0.01)
                    vals = metrics(acc)
                    if diagnostics:
                        for m in ("text", "audio", "vision"):
                            vals[f"quality_{m}"] = 0.9 - 0.6 * k * level
                        usage = np.abs(np.sin(np.arange(8) + 3 * level)) + 0.1
                        usage /= usage.sum()
                        vals |= {f"expert_usage_{e}": float(u) for e, u in enumerate(usage)}
                    add(axis, level, all_mods, s, variant, vals)
        for kept, acc in (("text", 0.78), ("audio", 0.6), ("text+vision", 0.8)):
            add("drop", 1.0, kept, 0, variant, metrics(acc - drop))
    return rows


class _TagChecker(HTMLParser):
    """Collects unbalanced tags (void elements such as img and meta excepted)."""

    VOID = frozenset({"img", "meta", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def assert_balanced_html(text: str) -> None:
    checker = _TagChecker()
    checker.feed(text)
    assert checker.errors == [] and checker.stack == []


@pytest.fixture
def results() -> pd.DataFrame:
    rows = sweep_rows("qamoe", "qamoe", -0.1, diagnostics=True)
    rows += sweep_rows("late", "late-fusion", -0.35, diagnostics=False, seed=1)
    return make_table(rows)


def test_report_files_and_content(tmp_path: Path, results: pd.DataFrame) -> None:
    rep = build_report(results, tmp_path / "rep", sources=["a.csv"])
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.html", "report.md", "summary.csv", "curves.csv", MARKER} <= names
    expected = {"reliability_Has0_acc_2", "quality", "expert_usage_qamoe", "fixed_missing"}
    assert set(rep.images) == expected  # the baseline has no diagnostics: no usage map
    for path in rep.images.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = rep.html.read_text()
    # Self-contained: every image inline, no external reference.
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == len(expected)
    assert base64.b64decode(imgs[0])[:4] == b"\x89PNG"
    assert "http://" not in html and "https://" not in html
    assert_balanced_html(html)
    md = rep.markdown.read_text()
    for stem in expected:
        assert f"]({stem}.png)" in md
    # The summary ranks the runs as built: QA-MoE loses less area than the baseline.
    summary = pd.read_csv(rep.tables["summary"])
    mixed = summary[(summary["axis"] == "mixed") & (summary["variant"] == "normal")]
    area = mixed.set_index("run")["area_over_clean"]
    assert area["qamoe"] > area["late"]
    assert "| qamoe | mixed |" in md


def test_report_several_metrics_and_files(tmp_path: Path, results: pd.DataFrame) -> None:
    a = save(results[results["run"] == "qamoe"], tmp_path / "a.csv")
    b = save(results[results["run"] == "late"], tmp_path / "b.csv")
    rep = build_report(load([a, b]), tmp_path / "rep", metrics=["MAE", "Non0_acc_2"])
    assert {"reliability_MAE", "reliability_Non0_acc_2"} <= set(rep.images)
    assert rep.runs == ["qamoe", "late"]
    assert "MAE (lower is better)" not in rep.html.read_text()  # text lives in the PNG only
    fm = pd.read_csv(rep.tables["fixed_missing"])
    assert list(fm.columns) == [
        "run",
        "variant",
        "text",
        "audio",
        "text+vision",
        "text+audio+vision",
    ]


def row_clean(**kw: object) -> dict[str, object]:
    """One clean-axis row; keyword arguments replace its fields."""
    base = {"run": "r", "model": "qamoe", "dataset": "d", "split": "test", "axis": "clean"}
    base |= {"level": 0.0, "modalities": "text", "seed": 0, "variant": "normal"}
    return base | {"metric": "Acc_2", "value": 0.7} | kw


def test_report_clean_only(tmp_path: Path) -> None:
    df = make_table(
        [
            {"run": "r", "model": "qamoe", "dataset": "d", "split": "test", "axis": "clean"}
            | {"level": 0.0, "modalities": "text", "seed": 0, "variant": "normal"}
            | {"metric": "Acc_2", "value": 0.7},
            {"run": "r", "model": "qamoe", "dataset": "d", "split": "test", "axis": "clean"}
            | {"level": 0.0, "modalities": "text", "seed": 0, "variant": "normal"}
            | {"metric": "F1_score", "value": 0.69},
        ]
    )
    rep = build_report(df, tmp_path / "rep")
    assert rep.images == {} and rep.metrics == ["Acc_2"]
    assert "<h1>" in rep.html.read_text()


def test_overwrite_rules(tmp_path: Path, results: pd.DataFrame) -> None:
    results = results[results["axis"] == "clean"]  # no figures: the rules, quickly
    out = tmp_path / "rep"
    build_report(results, out)
    with pytest.raises(OutputExistsError):
        build_report(results, out)
    build_report(results, out, force=True)  # a report folder may be replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not a qamoe report"):
        build_report(results, other, force=True)
    assert (other / "thesis.tex").exists()


def test_unknown_metric(tmp_path: Path, results: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="'metric' parameter must be one of Has0_acc_2") as info:
        build_report(results, tmp_path / "rep", metrics=["Acc_9"])
    assert "Has0_acc_2" in (info.value.hint or "") and "--metric" in (info.value.hint or "")
    assert not (tmp_path / "rep").exists()


def test_output_below_a_file_refused(tmp_path: Path) -> None:
    df = make_table([row_clean()])
    blocker = tmp_path / "rfile.txt"
    blocker.write_text("keep")
    for out in (blocker / "sub", blocker / "sub" / "deeper"):
        with pytest.raises(InputError, match=r"rfile\.txt' is not a folder") as info:
            build_report(df, out, force=True)
        assert info.value.hint
    assert blocker.read_text() == "keep"


def test_diagnostics_only_has_a_hint(tmp_path: Path) -> None:
    df = make_table([row_clean(metric="quality_text")])
    with pytest.raises(InputError, match="diagnostics only") as info:
        build_report(df, tmp_path / "rep")
    assert "--metric quality_text" in (info.value.hint or "")
    assert not (tmp_path / "rep").exists()


def test_markdown_table_escapes_pipes() -> None:
    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [0.123456]}))
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 0.1235 |"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (/usr/bin/chromium)"
)
def test_html_renders_in_headless_chromium(tmp_path: Path, results: pd.DataFrame) -> None:
    rep = build_report(results, tmp_path / "rep")
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        rep.html.as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page with pictures
