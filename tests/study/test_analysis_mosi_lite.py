"""studies/analyses/mosi_lite.py on a tiny study folder written here: two model seeds, a
QA-MoE, a baseline, an ablation and a specialist, with sweeps whose numbers are known lines,
so every table value it reports can be checked by hand."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from qamoe_core.evaluation import results as R
from tests.conftest import REPO, load_script

SCRIPT = REPO / "studies" / "analyses" / "mosi_lite.py"
LEVELS = [round(0.1 * i, 1) for i in range(10)]
MODS = ("text", "audio", "vision")
# arm -> (model, clean Acc_2 of seed 0); seed 1 is 0.02 higher; accuracy falls 0.3 per level
ARMS = {
    "qamoe": ("qamoe", 0.74),
    "early-fusion": ("early-fusion", 0.70),
    "qamoe-no-gate": ("qamoe", 0.72),
    "specialist-0.3": ("qamoe", 0.80),
}
STUDY_TOML = """name = "tiny-lite"
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[arms.qamoe]
model = "qamoe"
[arms.early-fusion]
model = "early-fusion"
[arms.qamoe-no-gate]
model = "qamoe"
[arms."specialist-0.3"]
model = "qamoe"
[protocols.sweep]
axes = ["mixed", "missing", "noise"]
drop_sets = true
[protocols.only-text]
axes = ["mixed"]
modalities = ["text"]
per_sample = true
arms = ["qamoe"]
[compare]
reference = "qamoe"
"""


def load_module() -> ModuleType:
    return load_script("mosi_lite_analysis", SCRIPT)


def row(run: str, model: str, axis: str, level: float, mods: str, seed: int, metric: str,
        value: float, variant: str = "normal") -> dict[str, object]:  # fmt: skip
    return {"run": run, "model": model, "dataset": "d", "split": "test", "axis": axis,
            "level": level, "modalities": mods, "seed": seed, "variant": variant,
            "metric": metric, "value": value}  # fmt: skip


def sweep_rows(run: str, model: str, clean: float) -> list[dict[str, object]]:
    """Acc_2 = clean - 0.3 level on every axis (both corruption seeds), F1 0.05 below it; a
    QA-MoE's r falls 0.5 per level, and shuffling its r costs 0.02 everywhere."""
    everything = (run, model, "clean", 0, "text+audio+vision", 0)
    rows = [row(*everything, "Acc_2", clean), row(*everything, "F1_score", clean - 0.05)]
    variants = ["normal", "quality_shuffle"] if model == "qamoe" else ["normal"]
    for axis in R.SPECTRUM_AXES:
        for lv in LEVELS:
            for seed in (0, 1):
                for variant in variants:
                    acc = clean - 0.3 * lv - (0.02 if variant == "quality_shuffle" else 0.0)
                    args = (run, model, axis, lv, "text+audio+vision", seed)
                    rows += [row(*args, "Acc_2", acc, variant),
                             row(*args, "F1_score", acc - 0.05, variant)]  # fmt: skip
                    if model == "qamoe" and variant == "normal":
                        rows += [row(*args, f"quality_{m}", 0.9 - 0.5 * lv) for m in MODS]
    # fixed missing: every proper subset DROPPED; accuracy = 0.5 + 0.1 x modalities kept
    for dropped in ("text", "audio", "vision", "text+audio", "text+vision", "audio+vision"):
        kept = 3 - len(dropped.split("+"))
        rows.append(row(run, model, "drop", 1, dropped, 0, "Acc_2", 0.5 + 0.1 * kept))
    return rows


def only_text_rows(run: str) -> list[dict[str, object]]:
    """Only text corrupted: r_text falls with the level, the others stay at 0.9."""
    rows = [row(run, "qamoe", "clean", 0, "text+audio+vision", 0, "Acc_2", 0.74)]
    for lv in LEVELS:
        for m in MODS:
            r = 0.9 - 0.5 * lv if m == "text" else 0.9
            rows.append(row(run, "qamoe", "mixed", lv, "text", 0, f"quality_{m}", r))
    return rows


def samples(run: str) -> pd.DataFrame:
    """Four samples; r_text at 0.9 is below its clean value for three of them."""
    frames = []
    for lv in LEVELS:
        text = [0.9 - 0.5 * lv, 0.8 - 0.4 * lv, 0.7 - 0.2 * lv, 0.6]
        frames.append(pd.DataFrame({
            "run": run, "split": "test", "axis": "mixed", "level": lv, "modalities": "text",
            "seed": 0, "pattern": "random+white", "variant": "normal", "id": ["a", "b", "c", "d"],
            "label": 1.0, "prediction": 1.0, "quality_text": text, "quality_audio": 0.9,
            "quality_vision": 0.9,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    sweeps = folder / "sweeps"
    sweeps.mkdir(parents=True)
    (folder / "study.toml").write_text(STUDY_TOML)
    arms = {a: {"model": m, "config": {}} for a, (m, _) in sorted(ARMS.items())}
    plan = {"seeds": [0, 1], "compare": {"reference": "qamoe"}, "arms": arms}
    (folder / "study.json").write_text(json.dumps({"study": plan}, sort_keys=True))
    for arm, (model, clean) in ARMS.items():
        for seed in (0, 1):
            run = f"{arm}-s{seed}"
            table = R.make_table(sweep_rows(run, model, clean + 0.02 * seed))
            R.save(table, sweeps / f"{run}.sweep.csv")
    for seed in (0, 1):
        run = f"qamoe-s{seed}"
        R.save(R.make_table(only_text_rows(run)), sweeps / f"{run}.only-text.csv")
        with gzip.open(sweeps / f"{run}.only-text.samples.csv.gz", "wt") as f:
            samples(run).to_csv(f, index=False)
    return folder


def test_the_tables_of_a_study_folder(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = load_module().analyse(study, out)
    g = summary["general"]
    # file order, specialists apart
    assert list(g) == ["qamoe", "early-fusion", "qamoe-no-gate"]
    q = g["qamoe"]
    assert q["clean"]["per_seed"] == pytest.approx([0.74, 0.76])
    assert q["clean"]["std"] == pytest.approx(0.02 / np.sqrt(2))
    # mean over levels 0..0.9 of clean - 0.3 level: clean - 0.135; up to 0.5: clean - 0.075
    assert q["mixed_mean"]["mean"] == pytest.approx(0.75 - 0.135)
    assert q["noise_mean"]["mean"] == pytest.approx(0.75 - 0.135)
    assert q["mixed_mean_upto_0.5"]["mean"] == pytest.approx(0.75 - 0.075)
    assert q["mixed_mean_f1"]["mean"] == pytest.approx(0.75 - 0.135 - 0.05)
    assert q["mixed_curve"]["0.9"]["mean"] == pytest.approx(0.75 - 0.27)
    assert q["shuffle_effect_mixed"]["mean"] == pytest.approx(-0.02)
    assert "shuffle_effect_mixed" not in g["early-fusion"]
    # drop rows name the DROPPED modalities; the table names the KEPT ones
    assert q["fixed_missing"]["text"]["mean"] == pytest.approx(0.6)
    assert q["fixed_missing"]["text+audio"]["mean"] == pytest.approx(0.7)
    # the specialist at its own level (0.3) against QA-MoE there: 0.81 - 0.09 vs 0.75 - 0.09
    spec = summary["specialists"]["0.3"]
    assert spec["gap"] == pytest.approx(-0.06) and spec["within_1pt"] is False
    only = summary["quality"]["only_one_corrupted"]["text"]
    assert only["spearman_own"]["mean"] == pytest.approx(-1.0)
    assert only["max_shift_others"]["mean"] == pytest.approx(0.0)
    per = only["per_sample"]
    assert per["share_lower_at_0.9"]["mean"] == pytest.approx(0.75)  # sample d stays
    assert -1.0 < per["spearman_own"]["mean"] < -0.5
    assert summary["quality"]["all_corrupted"]["mixed"]["audio"]["r_change_0_to_0.9"][
        "mean"
    ] == pytest.approx(-0.45)
    # the only baseline (a model other than the reference's) is early fusion: +4.0 points
    target = summary["targets"]["mixed-grid mean >= best baseline + 1 point"]
    assert "vs early-fusion" in target and "+4.0 points -> met" in target
    assert (
        "0.3: -6.0 -> missed"
        in summary["targets"]["one checkpoint within 1 point of every specialist"]
    )
    tables = (out / "tables.md").read_text()
    assert "| qamoe | 75.0 ± 1.4 | 61.5 ± 1.4 |" in tables
    assert "| 0.3 | 72.0 ± 1.4 | 66.0 ± 1.4 | -6.0 | no |" in tables
    pooled = R.load(out / "pooled" / "qamoe.csv")
    assert set(pooled["run"]) == {"qamoe"} and {1000, 1001} <= set(pooled["seed"])
    assert json.loads((out / "summary.json").read_text())["general"]["qamoe"]["clean"] == q["clean"]


def test_not_a_study_folder_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path} is not a study folder (study.json or study.toml missing).",
        "hint: pass the --out folder of `qamoe study studies/mosi-lite.toml`",
    ]
    assert not (tmp_path / "out").exists()


def test_an_unknown_protocol_names_the_ones_there(study: Path, tmp_path: Path) -> None:
    module = load_module()
    with pytest.raises(module.StudyError, match=r"no protocol 'sweeps'.*sweep, only-text"):
        module.analyse(study, tmp_path / "out", protocol="sweeps")
