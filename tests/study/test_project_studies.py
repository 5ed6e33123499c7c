"""Every study file in studies/ parses and plans: the checks `qamoe study` makes before any
work, against a stand-in for each dataset (its modalities, scheme and splits as the extract
command makes them; the real files are hours of extraction away, or absent here), then the
plan of every cell. Also: each project study says what it reproduces and how to run it, and
the results index points at it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from qamoe_core.study import plan, spec

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted((REPO / "studies").glob("*.toml"))
EXAMPLES = {"tiny", "tiny-tuned"}  # the format's examples, not the project's results


def stand_in(ds: spec.Dataset) -> spec.DataInfo:
    """What the dataset's extract command makes, as the study's checks see it."""
    splits = ("train", "valid", "test")
    command, args = ds.extract[0], " ".join(ds.extract[1:])
    # different commands make different files: a hash of the command stands in for the data's
    digest = hashlib.sha256(" ".join(ds.extract).encode()).hexdigest()
    if command == "synthetic":
        return spec.DataInfo(Path("s.h5"), digest, ("text", "audio", "vision"), "mosi", splits)
    if command == "mosi-lite":
        return spec.DataInfo(Path("l.h5"), digest, ("text", "audio", "vision"), "binary", splits)
    if command == "mosi":  # std folds: text + audio; bc-LSTM-CV: all three honest modalities
        three = "--protocol bclstm-cv" in args
        mods = ("text", "audio", "vision") if three else ("text", "audio")
        return spec.DataInfo(Path("m.h5"), digest, mods, "mosi", splits)
    raise AssertionError(f"no stand-in for `extract {command}` ({ds.name})")


def test_there_are_project_studies() -> None:
    names = {p.stem for p in STUDIES}
    assert names >= EXAMPLES and len(names - EXAMPLES) >= 5, names


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_each_study_file_parses_and_plans(path: Path) -> None:
    study = spec.load_study(path)
    assert all(ds.extract for ds in study.datasets), "a project study makes its own data"
    data = {ds.name: stand_in(ds) for ds in study.datasets}
    spec.check_against_data(study, data)
    made = plan.make_plan(study, data)
    # an arm at a tuned arm's setting (settings_from) waits for that tuning, as the arm does
    untuned = [a for a in study.arms if a.tune is None and not a.settings_from]
    trains = [c for c in made.cells if c.kind == "train"]
    sweeps = [c for c in made.cells if c.kind == "sweep"]
    n_seeds, n_data = len(study.seeds), len(study.datasets)
    assert len(trains) == n_data * len(untuned) * n_seeds
    per_arm = sum(p.covers(a.name) for a in untuned for p in study.protocols)
    assert len(sweeps) == n_data * n_seeds * per_arm
    n_taken = sum(bool(a.settings_from) for a in study.arms)
    assert len(made.pending) == n_data * (len(study.arms) - len(untuned) - n_taken)
    assert len(made.waiting) == n_data * n_taken
    assert len({c.key for c in made.cells}) == len(made.cells)  # no two cells alike
    for cell in sweeps[:3]:
        fresh = plan.cell_doc(made, cell, Path("out"))["fresh"]
        assert fresh[0] == "eval" and "--split" in fresh


@pytest.mark.parametrize(
    "path", [p for p in STUDIES if p.stem not in EXAMPLES], ids=lambda p: p.stem
)
def test_each_project_study_says_what_it_reproduces(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    header = text.split("\nname = ")[0]
    assert all(line.startswith("#") for line in header.splitlines() if line.strip())
    assert f"qamoe study studies/{path.name} --out " in header
    results = re.findall(r"docs/results/([\w.-]+)", header)
    assert results and all((REPO / "docs" / "results" / r).exists() for r in results), results
    assert "Time on 2 cores:" in header
    assert f"studies/{path.name}" in (REPO / "docs" / "results" / "README.md").read_text()
    assert f"studies/{path.name}" in (REPO / "docs" / "study.md").read_text()


@pytest.mark.parametrize("name", ["mosi-lite", "mosi-lite-tune"])
def test_the_mosi_lite_studies_read_the_scripts_data_folder(name: str) -> None:
    """Their extract path is relative to studies/ and lands where the scripts read by default
    (benchmarks/mosi_lite_experiment.py: the repository's ../shared/data/mosi-lite)."""
    (ds,) = spec.load_study(REPO / "studies" / f"{name}.toml").datasets
    assert ds.extract_run[0] == "mosi-lite"
    assert Path(ds.extract_run[1]).resolve() == (REPO.parent / "shared/data/mosi-lite").resolve()
