"""studies/analyses/mechanism.py on a tiny study folder written here: three model seeds of
QA-MoE, its no-gate ablation and early fusion on text + audio, with sweeps whose numbers are
planted lines (results.py's own writer; the table by study/table.py's own builder), so every
verdict the analysis gives has a known answer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from qamoe_core.evaluation import results as R
from qamoe_core.study import table as T
from tests.conftest import REPO, load_script

SCRIPT = REPO / "studies" / "analyses" / "mechanism.py"
LEVELS = [0.0, 0.3, 0.6, 0.9]
SEEDS = [0, 1, 2]
MODS = "text+audio"
ARMS = {"qamoe": "qamoe", "qamoe-no-gate": "qamoe", "early-fusion": "early-fusion"}
SWEEP = {
    "axes": ["missing", "noise", "mixed"],
    "drop_sets": True,
    "shuffle": True,
    "controls": [],
    "modalities": [],
    "arms": [],
}
CONTROLS = {
    "axes": ["missing", "noise", "mixed"],
    "drop_sets": False,
    "shuffle": False,
    "controls": ["constant_r", "oracle_r"],
    "residuals": True,
    "modalities": [],
    "arms": ["qamoe"],
}
# MAE rises per unit level on each axis; the no-gate arm and early fusion add to QA-MoE's MAE
SLOPE = {"missing": 0.2, "noise": 0.1, "mixed": 0.3}
ADDED = {
    "qamoe": {"clean": 0.0, "missing": 0.0, "noise": 0.0, "mixed": 0.0},
    "qamoe-no-gate": {"clean": 0.0, "missing": 0.1, "noise": 0.002, "mixed": 0.002},
    "early-fusion": {"clean": 0.0, "missing": 0.05, "noise": 0.0, "mixed": 0.0},
}
# the r-controls and the shuffle: added to the normal pass's MAE, per axis
VARIANT_ADDED = {
    "quality_shuffle": {"missing": 0.1, "noise": 0.0, "mixed": 0.0},
    "constant_r": {"missing": 0.05, "noise": 0.05, "mixed": 0.05},
    "oracle_r": {"missing": -0.003, "noise": -0.003, "mixed": -0.003},
}


def load_module() -> ModuleType:
    return load_script("mechanism_analysis", SCRIPT)


def quality(axis: str, level: float, m: str, k: int) -> float:
    """r falls with the level on missing and mixed; under noise only text's r moves."""
    base = {"text": 0.95, "audio": 0.9}[m]
    if axis == "noise" and m == "audio":
        return base
    return base * (1 - level) + 0.001 * k


def rows(arm: str, k: int, protocol: dict[str, Any], variants: list[str]) -> list[dict]:
    """One model seed's sweep: clean, the axes (two corruption seeds that average to the
    planted line), the drop sets, with the given variants beside normal."""
    run = {"run": f"{arm}-s{k}", "model": ARMS[arm], "dataset": "d", "split": "test"}
    mae0 = 0.80 + 0.01 * k
    out = []

    def add(axis: str, level: float, mods: str, seed: int, variant: str, metric: str, value):
        out.append(
            run
            | {
                "axis": axis,
                "level": level,
                "modalities": mods,
                "seed": seed,
                "variant": variant,
                "metric": metric,
                "value": value,
            }
        )

    clean = {"MAE": mae0, "Corr": 0.76 + 0.005 * k, "Non0_acc_2": 0.82 + 0.005 * k}
    for metric, value in clean.items():
        add("clean", 0.0, "", 0, "normal", metric, value)
    for axis in protocol["axes"]:
        for level in LEVELS:
            for seed, jitter in ((0, 0.001), (1, -0.001)):
                mae = mae0 + SLOPE[axis] * level + ADDED[arm][axis] + jitter
                for variant in ("normal", *variants):
                    extra = VARIANT_ADDED[variant][axis] if variant != "normal" else 0.0
                    add(axis, level, MODS, seed, variant, "MAE", mae + extra)
                for m in ("text", "audio"):
                    add(
                        axis,
                        level,
                        MODS,
                        seed,
                        "normal",
                        f"quality_{m}",
                        quality(axis, level, m, k),
                    )
                    if protocol.get("residuals"):  # the residual grows, σ² stays put
                        add(axis, level, MODS, seed, "normal", f"residual_{m}", 0.2 + level)
                        add(axis, level, MODS, seed, "normal", f"sigma2_{m}", 0.5)
    if protocol["drop_sets"]:
        add("drop", 1.0, "text", 0, "normal", "MAE", 1.40 + 0.01 * k)  # text-dropped
        add("drop", 1.0, "text", 0, "normal", "quality_text", 0.05 + 0.001 * k)
        add("drop", 1.0, "text", 0, "normal", "quality_audio", 0.9)
        add("drop", 1.0, "audio", 0, "normal", "MAE", mae0 + 0.05)  # text alone: worse
        add("drop", 1.0, "audio", 0, "normal", "quality_audio", 0.2 + 0.001 * k)
        add("drop", 1.0, "audio", 0, "normal", "quality_text", 0.95)
    return out


def make_study(
    folder: Path, *, arms: dict[str, str] | None = None, controls: bool = True, anchors: bool = True
) -> Path:
    """The study folder: marker, study.json/.toml, the sweeps, table.csv (study/table.py)."""
    arms = ARMS if arms is None else arms
    protocols = {"sweep": SWEEP} | ({"controls": CONTROLS} if controls else {})
    arm_docs: dict[str, Any] = {
        a: {"model": m, "config": {"model": {}, "train": {}}} for a, m in arms.items()
    }
    if "qamoe-no-gate" in arm_docs:
        arm_docs["qamoe-no-gate"] |= {
            "settings_from": "qamoe",
            "config": {"model": {"options": {"quality_gate": False}}, "train": {}},
        }
    study = {
        "name": "tiny-mechanism",
        "seeds": SEEDS,
        "datasets": {"d": {"extract": []}},
        "arms": arm_docs,
        "protocols": protocols,
        "compare": {"reference": "qamoe"},
    }
    folder.mkdir(parents=True)
    (folder / ".qamoe-study").write_text('{"format": "qamoe-study"}\n')
    doc = {"format": "qamoe-study", "format_version": 1, "study": study, "cells": []}
    (folder / "study.json").write_text(json.dumps(doc, sort_keys=True))
    toml = 'name = "tiny-mechanism"\n' + "".join(f"[protocols.{p}]\n" for p in protocols)
    (folder / "study.toml").write_text(toml)
    sweeps = []
    for name, proto in protocols.items():
        for arm in arms:
            if proto["arms"] and arm not in proto["arms"]:
                continue
            variants = (["quality_shuffle"] if proto["shuffle"] else []) + proto["controls"]
            for k in SEEDS:
                path = folder / "sweeps" / f"{arm}-s{k}.{name}.csv"
                path.parent.mkdir(exist_ok=True)
                R.save(R.make_table(rows(arm, k, proto, variants)), path)
                cell = SimpleNamespace(dataset="d", arm=arm, seed=k)
                sweeps.append((cell, name, path))
    axes = {p: (*d["axes"], *(("drop",) if d["drop_sets"] else ())) for p, d in protocols.items()}
    tidy = T.build(sweeps, axes, {"d": ["MAE"]}, "qamoe")
    (folder / "table.csv").write_text(T.csv_text(tidy))
    if anchors:
        scores = {"constant": {"scores": {"MAE": 1.456}, "fitted": {"constant": {"MAE": 0.0}}}}
        (folder / "anchors.json").write_text(json.dumps({"d": {"key": "k", "anchors": scores}}))
    return folder


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mech")
    folder = make_study(root / "study")
    summary = load_module().analyse(folder, root / "out")
    assert json.loads((root / "out" / "summary.json").read_text()) == summary
    summary["tables"] = (root / "out" / "tables.md").read_text()
    return summary


def test_absent_modality_r(result: dict[str, Any]) -> None:
    absent = result["mechanism"]["absent_r"]
    text = absent["drop"]["text (dropped: text)"]
    assert text["mean"] == pytest.approx(0.051) and text["status"] == "met"
    assert absent["drop"]["audio (dropped: audio)"]["status"] == "not met"  # r 0.2
    top = absent["missing_top"]["text"]
    assert top["level"] == 0.9 and top["mean"] == pytest.approx(0.095 + 0.001)
    assert top["status"] == "met"


def test_spearman_follows_planted_curves(result: dict[str, Any]) -> None:
    t = result["mechanism"]["tracking"]
    assert t["missing"]["text"]["spearman"]["mean"] == pytest.approx(-1.0)
    assert t["missing"]["text"]["status"] == "met"
    assert t["noise"]["audio"]["spearman"]["mean"] == 0.0  # flat r under noise
    assert t["noise"]["audio"]["status"] == "not met"
    slope = t["noise"]["text"]["mae_slope"]
    assert slope["mean"] == pytest.approx(SLOPE["noise"]) and t["noise"]["text"]["hurts"] == "yes"
    assert "together" in t["noise"]["text"]["mae_slope_from"]


def test_controls_and_no_gate(result: dict[str, Any]) -> None:
    e = result["mechanism"]["effects"]
    assert e["shuffle"]["missing"]["difference"] == pytest.approx(0.1)
    assert e["shuffle"]["missing"]["verdict"].startswith("costs more")
    assert e["shuffle"]["noise"]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert e["constant_r"]["noise"]["ci_low"] > 0
    assert e["constant_r"]["noise"]["within_model"]["mean"] == pytest.approx(0.05)
    oracle = e["oracle_r"]["mixed"]
    assert oracle["difference"] == pytest.approx(-0.003)
    # The same models, shifted by the same -0.003 in every seed: the paired interval sees it
    # (sd 0), Welch's, which ignores the pairing, is lost in the between-seed spread.
    assert oracle["method"].startswith("paired") and oracle["verdict"].startswith("helps beyond")
    assert oracle["welch"]["ci_low"] < 0 < oracle["welch"]["ci_high"]
    assert e["no_gate"]["missing"]["method"].startswith("Welch")
    assert e["no_gate"]["missing"]["verdict"].startswith("costs more")
    assert e["no_gate"]["noise"]["ci_low"] < 0 < e["no_gate"]["noise"]["ci_high"]
    assert e["no_gate"]["clean"]["difference"] == pytest.approx(0.0, abs=1e-12)


def test_targets(result: dict[str, Any]) -> None:
    t = result["targets"]
    assert t["clean MAE <= 0.85"]["mean"] == pytest.approx(0.81)
    assert t["clean MAE <= 0.85"]["status"] == "met"
    assert t["clean Corr >= 0.73"]["status"] == "met"
    assert t["clean Non0_acc_2 >= 0.83"]["status"] == "not established"  # 0.825 ± 0.005
    full = next(v for k, v in t.items() if k.startswith("full model"))
    assert full["difference"] == pytest.approx(-0.05) and full["status"] == "met"
    const = t["text-dropped MAE <= the best constant"]
    assert const["constant"] == 1.456 and const["status"] == "met"
    ahead = t["ahead of every other arm on the missing axis"]
    assert set(ahead["arms"]) == {"qamoe-no-gate", "early-fusion"}
    assert ahead["arms"]["early-fusion"]["difference"] == pytest.approx(0.05)
    assert ahead["status"] == "met"
    assert "| ahead of every other arm on the missing axis |" in result["tables"]


def test_an_arm_ahead_of_qamoe_fails_the_target(tmp_path: Path) -> None:
    ADDED["early-fusion"]["missing"] = -0.05
    try:
        folder = make_study(tmp_path / "study", anchors=False)
    finally:
        ADDED["early-fusion"]["missing"] = 0.05
    t = load_module().analyse(folder, tmp_path / "out")["targets"]
    assert t["ahead of every other arm on the missing axis"]["status"] == "not met"
    assert t["text-dropped MAE <= the best constant"]["status"].startswith("not established")


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_not_a_study_folder(tmp_path: Path) -> None:
    got = run_cli(tmp_path, "--out", tmp_path / "out")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert got.stderr.startswith(f"error: {tmp_path} is not a study folder")
    assert "\nhint: " in got.stderr


def test_missing_arms_and_protocols_are_named(tmp_path: Path) -> None:
    arms = {"qamoe": "qamoe", "early-fusion": "early-fusion"}
    folder = make_study(tmp_path / "study", arms=arms, controls=False)
    got = run_cli(folder, "--out", tmp_path / "out")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    line = got.stderr.splitlines()[0]
    assert "the no-gate arm" in line
    assert "the constant_r control on the missing axis" in line
    assert "the oracle_r control on the noise axis" in line
    assert "drop_sets" not in line and "quality-shuffle" not in line  # those it has


def test_unfinished_study(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "study")
    (folder / "sweeps" / "qamoe-no-gate-s2.sweep.csv").unlink()
    got = run_cli(folder, "--out", tmp_path / "out")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert "the study is unfinished: 1 of " in got.stderr
    assert "qamoe-no-gate-s2.sweep.csv" in got.stderr
    assert not (tmp_path / "out").exists()


def test_judge_reads_the_interval_of_the_mean() -> None:
    mod = load_module()
    three = mod.summary([0.80, 0.81, 0.82])  # 95 % CI [0.785, 0.835]
    assert three["ci_low"] == pytest.approx(0.81 - 4.302653 * 0.01 / 3**0.5)
    assert [mod.judge(three, "max", t) for t in (0.85, 0.81, 0.70)] == [
        "met", "not established", "not met"
    ]  # fmt: skip
    assert [mod.judge(three, "min", t) for t in (0.75, 0.83, 0.90)] == [
        "met", "not established", "not met"
    ]  # fmt: skip
    assert mod.judge(mod.summary([0.05, 0.06]), "below", 0.1) == "not established"  # 2 seeds
    assert mod.judge(mod.summary([0.05]), "below", 0.1) == "not established"  # no interval
    same = mod.summary([0.25, 0.25, 0.25])  # every seed on the threshold: "<" fails, "<=" holds
    assert mod.judge(same, "below", 0.25) == "not met" and mod.judge(same, "max", 0.25) == "met"


def test_residual_diagnostic(result: dict[str, Any]) -> None:
    res = result["mechanism"]["residuals"]
    assert res["protocol"] == "controls"
    text = res["noise"]["text"]
    assert text["residual_low"]["mean"] == pytest.approx(0.2)
    assert text["residual_top"]["mean"] == pytest.approx(1.1)
    assert text["residual_spearman"]["mean"] == pytest.approx(1.0)
    assert text["sigma2_spearman"]["mean"] == 0.0  # σ² flat: it does not see the damage
    assert "## Quality head" in result["tables"]


def test_a_damaged_plan_is_one_line(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "study")
    (folder / "study.json").write_text('{"format": "qamoe-study", "study": {"arms": {}}}')
    got = run_cli(folder, "--out", tmp_path / "out")
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert "is not as `qamoe study` writes it (KeyError" in got.stderr


def test_outputs_are_replaced_only_with_force(tmp_path: Path) -> None:
    folder = make_study(tmp_path / "study")
    out = tmp_path / "out"
    assert run_cli(folder, "--out", out).returncode == 0
    before = (out / "summary.json").read_text()
    got = run_cli(folder, "--out", out)
    assert got.returncode == 1 and "Traceback" not in got.stderr
    assert got.stderr.startswith("error: ") and "--force" in got.stderr
    again = run_cli(folder, "--out", out, "--force")
    assert again.returncode == 0 and (out / "summary.json").read_text() == before
    assert json.loads(again.stdout)["clean MAE <= 0.85"] == "met"


def test_paired_mde_has_the_power_it_claims() -> None:
    from scipy import stats as st

    mod = load_module()
    sd, n = 0.02, 10
    d = mod.paired_mde(sd, n)
    crit = st.t.ppf(0.975, n - 1)
    ncp = d / (sd / n**0.5)
    power = st.nct.sf(crit, n - 1, ncp) + st.nct.cdf(-crit, n - 1, ncp)
    assert power == pytest.approx(0.8, abs=1e-9)
    # about (t_0.975 + t_0.8) sd / sqrt(n) for 9 df: 0.0204
    assert 0.019 < d < 0.022
    assert math.isnan(mod.paired_mde(sd, 1)) and math.isnan(mod.paired_mde(0.0, 10))


def test_paired_p_is_the_one_sample_t_test_of_the_differences() -> None:
    from scipy import stats as st

    a, b = [1.0, 2.0, 3.5, 2.2], [0.5, 1.2, 3.0, 2.1]
    got = load_module().compare(a, b, same_models=True)
    want = st.ttest_1samp([x - y for x, y in zip(a, b, strict=True)], 0.0)
    assert got["p"] == pytest.approx(float(want.pvalue), rel=1e-9)
    assert got["method"].startswith("paired")
