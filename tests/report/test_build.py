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
from scipy import stats as scipy_stats

from qamoe_core.base.errors import InputError, OutputExistsError
from qamoe_core.evaluation.results import constant_rows, load, make_table, measured, save
from qamoe_core.evaluation.summary import pool_model_seeds
from qamoe_core.metrics import compute
from qamoe_core.report.build import MARKER, build_report, markdown_table
from qamoe_core.report.compare import BELOW_MDE, NO_MDE, compare
from qamoe_core.report.plots import Palette, plot_expert_usage, plot_reliability, usage_differences

MOSI = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score"]
MOSI += ["Mult_acc_5", "Mult_acc_7", "MAE", "Corr"]
LEVELS = [round(0.1 * i, 1) for i in range(10)]
PNG = ("png",)  # vectors cost seconds per report; one test checks them


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
        for dropped, acc in (("audio+vision", 0.78), ("text+vision", 0.6), ("audio", 0.8)):
            add("drop", 1.0, dropped, 0, variant, metrics(acc - drop))
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
    rep = build_report(results, tmp_path / "rep", sources=["a.csv"], formats=PNG)
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
    rep = build_report(load([a, b]), tmp_path / "rep", metrics=["MAE", "Non0_acc_2"], formats=PNG)
    assert {"reliability_MAE", "reliability_Non0_acc_2"} <= set(rep.images)
    assert rep.runs == ["qamoe", "late"]
    assert "MAE (lower is better)" not in rep.html.read_text()  # text lives in the PNG only
    fm = pd.read_csv(rep.tables["fixed_missing"])
    head = ["run", "dataset", "split", "variant"]
    assert list(fm.columns) == [*head, "none", "audio", "text+vision", "audio+vision"]


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
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | 0.123 |"]


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


def small_rows(run: str, offset: float, *, dataset: str = "d", seeds: int = 3) -> list[dict]:
    """A binary run on one axis, levels 0-0.5, value falling with the level; seed jitter is
    the same for every run (so paired differences are exact)."""
    base = {"run": run, "model": "qamoe", "dataset": dataset, "split": "test"}
    clean = {"axis": "clean", "level": 0.0, "modalities": "text+audio+vision", "seed": 0}
    rows = [base | clean | {"variant": "normal", "metric": "Acc_2", "value": 0.8 + offset}]
    for level in (0.0, 0.25, 0.5):
        for s in range(seeds):
            value = 0.8 + offset - 0.4 * level + 0.01 * (s - 1)
            rows.append(
                base | {"axis": "mixed", "level": level, "modalities": "text+audio+vision"}
                | {"seed": s, "variant": "normal", "metric": "Acc_2", "value": value}
            )  # fmt: skip
    return rows


def with_constant(rows: list[dict], run: str, labels: np.ndarray, dataset: str = "d") -> list:
    return rows + constant_rows(labels, "binary", run=run, model="qamoe", dataset=dataset,
                                split="test")  # fmt: skip


LABELS = np.array([1.0] * 62 + [0.0] * 38)  # always "positive" scores 0.62


def test_constant_line_band_legend_and_x_axis() -> None:
    df = make_table(with_constant(small_rows("a", 0.0), "a", LABELS))
    fig = plot_reliability(df, "Acc_2", Palette(measured(df)))
    assert fig is not None
    ax = fig.axes[0]
    flat = [ln for ln in ax.lines if len(set(ln.get_ydata())) == 1]
    assert [ln.get_label() for ln in flat] == ["best constant: 0.620"]
    assert flat[0].get_ydata()[0] == pytest.approx(0.62)
    assert ax.get_xlim()[1] < 0.55  # ends at the last level evaluated (0.5), not at 1
    texts = [t.get_text().replace("\n", " ") for t in fig.legends[0].get_texts()]
    assert "band: ±1 std over 3 corruption seeds (0–2)" in texts
    pooled = pool_model_seeds(make_table(small_rows("a-s0", 0) + small_rows("a-s1", 0.1)))
    fig = plot_reliability(pooled, "Acc_2", Palette(pooled), pooled=True)
    assert fig is not None
    texts = [t.get_text().replace("\n", " ") for t in fig.legends[0].get_texts()]
    assert "band: ±1 std over 2 model seeds (0, 1) × 3 corruption seeds (0–2)" in texts
    assert "should" not in fig.get_suptitle()


def test_page_states_data_constant_and_vectors(tmp_path: Path) -> None:
    rows = with_constant(small_rows("a", 0.0), "a", LABELS)
    rep = build_report(make_table(rows), tmp_path / "rep")
    for stem, paths in rep.vectors.items():
        assert [p.suffix for p in paths] == [".pdf", ".svg"], stem
        assert paths[0].read_bytes()[:5] == b"%PDF-" and b"<svg" in paths[1].read_bytes()[:500]
    md = rep.markdown.read_text()
    assert "Dataset d; split test; 100 samples; seeds: 3 corruption seeds (0–2)." in md
    assert "Dotted grey: the best constant prediction" in md
    summary_line = next(line for line in md.splitlines() if line.startswith("| a | mixed"))
    assert "| 0.620 |" in summary_line  # the constant beside the scores
    # without constant rows the page says so instead of drawing nothing silently
    only = make_table(with_constant([], "a", LABELS))
    with pytest.raises(InputError, match="only best-constant reference rows"):
        build_report(only, tmp_path / "r3")
    rep = build_report(make_table(small_rows("a", 0.0)), tmp_path / "r2", formats=PNG)
    assert "No best-constant reference" in rep.markdown.read_text()
    assert "not recorded" in rep.markdown.read_text()


def test_expert_usage_is_shown_as_differences(results: pd.DataFrame) -> None:
    sub = results[(results["run"] == "qamoe") & results["metric"].str.startswith("expert_usage_")]
    sub = sub.assign(expert=sub["metric"].str.slice(len("expert_usage_")).astype(int))
    clean, diffs = usage_differences(sub)
    assert set(diffs) == {
        (a, k) for a in ("mixed", "missing", "noise") for k in ("level", "shuffle")
    }
    normal = sub[(sub["axis"] == "noise") & (sub["variant"] == "normal") & (sub["level"] == 0.5)]
    expect = normal[normal["expert"] == 2]["value"].mean() - clean[2]
    assert diffs[("noise", "level")].loc[0.5, 2] == pytest.approx(expect)
    assert np.allclose(diffs[("mixed", "shuffle")].to_numpy(), 0.0)  # same usage both ways
    fig = plot_expert_usage(results, "qamoe", "synthetic")
    assert fig is not None
    titles = {ax.get_title() for ax in fig.axes}
    assert {"clean share", "mixed: level − clean", "noise: quality_shuffle − normal"} <= titles


def test_two_datasets_warn_and_keep_clean_scores_apart(tmp_path: Path) -> None:
    mosi = [r | {"metric": "Has0_acc_2"} for r in small_rows("qamoe", 0.0, dataset="mosi")]
    binary = small_rows("qamoe", 0.05, dataset="lite")  # same label, another dataset
    rep = build_report(make_table(mosi + binary), tmp_path / "rep", formats=PNG)
    assert rep.metrics == ["Has0_acc_2", "Acc_2"]  # each dataset's own metric
    assert rep.warnings == [
        "qamoe (lite) has no Has0_acc_2: not in the Has0_acc_2 figure and summary rows.",
        "qamoe (mosi) has no Acc_2: not in the Acc_2 figure and summary rows.",
    ]
    assert "Left out:" in rep.html.read_text()
    summary = pd.read_csv(rep.tables["summary"]).set_index("dataset")
    assert summary.loc["mosi", "clean"] == pytest.approx(0.8)
    assert summary.loc["lite", "clean"] == pytest.approx(0.85)


def test_names_are_escaped_in_markdown_and_csv(tmp_path: Path) -> None:
    rows = [r | {"dataset": "<img src=x onerror=alert(1)>"} for r in small_rows("=cmd|x", 0)]
    rep = build_report(make_table(rows), tmp_path / "rep", title="<b>T</b>", formats=PNG)
    md, page = rep.markdown.read_text(), rep.html.read_text()
    assert "<img src=x" not in md and "<b>" not in md and "&lt;b&gt;T&lt;/b&gt;" in md
    assert "<img src=x" not in page and "<b>T" not in page
    assert "\n'=cmd|x," in rep.tables["summary"].read_text()


def pred_rows(run: str, labels: np.ndarray, correct: np.ndarray, seeds: int = 2) -> pd.DataFrame:
    """Per-sample rows: a logit of the right sign where ``correct``, else the wrong one."""
    sign = np.where(labels > 0.5, 1.0, -1.0) * np.where(correct, 1.0, -1.0)
    frames = []
    for level in (0.0, 0.5):
        for s in range(seeds):
            frames.append(pd.DataFrame({
                "run": run, "split": "test", "axis": "mixed", "level": level,
                "modalities": "text+audio+vision", "seed": s, "variant": "normal",
                "id": [f"u{i}" for i in range(labels.size)], "label": labels,
                "prediction": sign,
            }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def table_from_samples(samples: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (run, level, seed), g in samples.groupby(["run", "level", "seed"]):
        acc = float(((g["prediction"] > 0) == (g["label"] > 0.5)).mean())
        rows.append({"run": run, "model": "m", "dataset": "d", "split": "test", "axis": "mixed"}
                    | {"level": level, "modalities": "text+audio+vision", "seed": seed}
                    | {"variant": "normal", "metric": "Acc_2", "value": acc})  # fmt: skip
    return make_table(rows)


def test_comparison_counts_model_seeds_not_corruption_seeds() -> None:
    # One run = one trained model: its 3 corruption seeds are averaged, not replicates, so
    # there is no interval and no MDE (the old paired bootstrap gave a zero-width interval).
    df = make_table(small_rows("base", 0.0) + small_rows("better", 0.05))
    comp = compare(df, "base", "Acc_2")
    row = comp.table.iloc[0]
    assert row["difference"] == pytest.approx(0.05) and row["run"] == "better"
    assert row["n_seeds"] == row["n_seeds_reference"] == 1
    assert np.isnan(row["ci_low"]) and np.isnan(row["mde"]) and row["note"] == NO_MDE
    assert "Welch's 95% t-interval over model seeds" in comp.method
    # Pooled model seeds: Welch over the per-model-seed grid means, unpaired.
    offsets = {"base": [0.0, 0.03, -0.02], "better": [0.05, 0.02, 0.09, 0.06]}
    rows = [r for run, offs in offsets.items() for s, off in enumerate(offs)
            for r in small_rows(f"{run}-s{s}", off)]  # fmt: skip
    comp = compare(pool_model_seeds(make_table(rows)), "base", "Acc_2")
    row = comp.table.iloc[0]
    grid = 0.8 - 0.4 * 0.25  # mean over levels 0, 0.25, 0.5; seed jitter averages out
    a, b = (np.array(offsets[r]) + grid for r in ("better", "base"))
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (row["n_seeds"], row["n_seeds_reference"]) == (4, 3)
    assert row["difference"] == pytest.approx(a.mean() - b.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["p"] == pytest.approx(ref.pvalue) == row["p_holm"]  # one run: nothing to adjust
    assert row["mde"] > abs(row["difference"]) and row["note"] == BELOW_MDE


def test_comparison_bootstraps_samples_by_video() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(200) > 0.4).astype(float)
    hit_a = rng.random(200) < 0.8
    hit_b = hit_a & (rng.random(200) < 0.9)  # b is right only where a is, and less often
    samples = pd.concat([pred_rows("a", labels, hit_a), pred_rows("b", labels, hit_b)])
    comp = compare(table_from_samples(samples), "b", "Acc_2", samples, draws=500)
    row = comp.table.iloc[0]
    assert row["difference"] == pytest.approx(hit_a.mean() - hit_b.mean())
    assert 0 < row["ci_low"] < row["difference"] < row["ci_high"]
    assert row["n_samples"] == row["n_clusters"] == 200  # ids u0, u1, ...: each its own video
    assert "two-level percentile bootstrap" in comp.method
    # ids <video>_<clip>: 10 videos of 20 clips; the interval now spans videos
    by_video = samples.assign(id=samples["id"].map(lambda i: f"v{int(i[1:]) % 10}_{i[1:]}"))
    again = compare(table_from_samples(by_video), "b", "Acc_2", by_video, draws=500)
    assert again.table.iloc[0]["n_clusters"] == 10
    # the same generator seed gives the same numbers
    assert again.table.equals(
        compare(table_from_samples(by_video), "b", "Acc_2", by_video, draws=500).table
    )
    with pytest.raises(InputError, match="reference run 'nope'"):
        compare(samples.pipe(table_from_samples), "nope", "Acc_2")


def test_comparison_of_a_score_dataset_recomputes_corr_per_draw() -> None:
    # Corr does not decompose per sample; its scheme (mosi: scores in [-3, 3]) comes from the
    # dataset's other metrics, not from the one compared (which once made it "binary").
    rng = np.random.default_rng(2)
    labels = rng.normal(0, 1.5, 60)
    frames, rows = [], []
    for run, noise in (("a", 0.5), ("b", 1.0)):
        for level in (0.0, 0.5):
            pred = labels + rng.normal(0, noise + level, labels.size)
            frames.append(pd.DataFrame({
                "run": run, "split": "test", "axis": "mixed", "level": level,
                "modalities": "text+audio+vision", "seed": 0, "variant": "normal",
                "id": [f"v{i % 6}_{i}" for i in range(labels.size)], "label": labels,
                "prediction": pred,
            }))  # fmt: skip
            rows += [{"run": run, "model": "m", "dataset": "d", "split": "test", "axis": "mixed",
                      "level": level, "modalities": "text+audio+vision", "seed": 0,
                      "variant": "normal", "metric": k, "value": v}
                     for k, v in compute(pred, labels, "mosi").items()]  # fmt: skip
    samples = pd.concat(frames, ignore_index=True)
    comp = compare(make_table(rows), "b", "Corr", samples, draws=50)
    row = comp.table.iloc[0]
    assert row["n_clusters"] == 6 and row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert row["difference"] == pytest.approx(row["mean"] - row["reference_mean"])


@pytest.mark.slow  # about 5 s: 8,000 rows of a real sweep
def test_report_of_committed_v1_results(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "docs" / "results" / "mosi-lite" / "pooled"
    df = load([root / "qamoe.csv", root / "late-fusion.csv"])  # already pooled (seed 1000 s + c)
    rep = build_report(df, tmp_path / "rep", formats=PNG, reference="late-fusion", pooled=True)
    fm = pd.read_csv(rep.tables["fixed_missing"])
    assert {"none", "text", "audio+vision"} <= set(fm.columns)
    md = rep.markdown.read_text()
    assert "## Comparison with the reference" in md and "No best-constant reference" in md
    assert "model seeds" in md


def test_two_patterns_side_by_side(tmp_path: Path) -> None:
    one = make_table(small_rows("a", 0.0) + small_rows("b", -0.1))
    fig = plot_reliability(one, "Acc_2", Palette(measured(one)))
    assert fig is not None  # one pattern: the panels and titles of before
    assert [ax.get_title() for ax in fig.axes] == ["mixed: steps dropped + noise"]
    rows = small_rows("a", 0.0) + small_rows("b", -0.1)
    burst = [r | {"pattern": "burst+correlated", "value": r["value"] - 0.2}
             for r in rows if r["axis"] == "mixed"]  # fmt: skip
    df = make_table(rows + burst)
    fig = plot_reliability(df, "Acc_2", Palette(measured(df)))
    assert fig is not None
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"mixed: steps dropped + noise\npattern: {p}"
                      for p in ("random+white", "burst+correlated")]  # fmt: skip
    # each panel holds both runs, at that pattern's values
    tops = [sorted(ln.get_ydata()[0] for ln in ax.lines if len(set(ln.get_ydata())) > 1)
            for ax in fig.axes]  # fmt: skip
    assert tops[0] == pytest.approx([0.7, 0.8]) and tops[1] == pytest.approx([0.5, 0.6])
    rep = build_report(df, tmp_path / "rep", formats=PNG)
    summary = pd.read_csv(rep.tables["summary"], keep_default_na=False)
    keyed = summary.set_index(["run", "pattern"])["mean"]
    assert len(keyed) == 4
    assert keyed["a", "random+white"] - keyed["a", "burst+correlated"] == pytest.approx(0.2)
    md = rep.markdown.read_text()
    assert "| a | mixed | burst+correlated |" in md and "| a | mixed | random+white |" in md
    plain = build_report(one, tmp_path / "plain", formats=PNG).markdown.read_text()
    assert "random+white" not in plain  # the default alone: no pattern column shown


def test_quality_and_usage_figures_keep_patterns_apart(results: pd.DataFrame) -> None:
    from qamoe_core.report.plots import plot_quality

    mixed = results[(results["axis"] == "mixed") & (results["run"] == "qamoe")]
    burst = mixed.assign(pattern="burst+correlated", value=mixed["value"] * 0.5)
    both = make_table(pd.concat([results, burst]).drop(columns="schema").to_dict("records"))
    palette = Palette(measured(both))
    fig = plot_quality(both, palette)
    assert fig is not None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["qamoe"]
    titles = {ax.get_title() for ax in fig.axes}  # a row of panels per pattern
    assert {"text · mixed · random+white", "text · mixed · burst+correlated"} <= titles
    # Expert usage shows the default pattern only: the same figure as without the burst rows.
    a, b = (
        plot_expert_usage(results, "qamoe", "synthetic"),
        plot_expert_usage(both, "qamoe", "synthetic"),
    )
    assert a is not None and b is not None
    grids = [[im.get_array().tolist() for ax in f.axes for im in ax.images] for f in (a, b)]
    assert grids[0] == grids[1]


def test_figures_are_byte_identical_on_a_rerun() -> None:
    # SVG ids are random in matplotlib unless salted; PDF/SVG dates are left out.
    import matplotlib.pyplot as plt

    from qamoe_core.report.plots import encode

    def draw() -> dict[str, bytes]:
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="qamoe")
        ax.legend()
        try:
            return encode(fig, ("pdf", "svg"))
        finally:
            plt.close(fig)

    first, second = draw(), draw()
    assert set(first) == {"png", "pdf", "svg"}
    assert first == second
