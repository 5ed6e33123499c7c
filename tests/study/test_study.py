"""`qamoe study` in the library: the study file's checks, cell keys, change detection, the
scheduler (with a fake executor), status and the paper table. No cell runs here; the whole
study through the CLI is tests/cli/test_study_cli.py."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from qamoe_core.base import rundir
from qamoe_core.base.errors import ConfigError, InputError, UsageError
from qamoe_core.study import cells, plan, runner, spec, table
from qamoe_core.study.spec import StudyFileError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "studies" / "tiny.toml"


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
seeds = [0, 1]
[datasets.d]
path = "d.h5"
[arms.a]
model = "qamoe"
[arms.b]
model = "early-fusion"
[protocols.p]
axes = ["missing"]
levels = [0.0, 0.5]
[compare]
reference = "b"
"""


def fails(tmp_path: Path, text: str, error: type = StudyFileError) -> Any:
    with pytest.raises(error) as info:
        spec.load_study(write(tmp_path, text))
    assert "\n" not in info.value.message
    return info.value


# --- the study file ------------------------------------------------------------------------------


def test_the_example_study_parses() -> None:
    study = spec.load_study(TINY)
    assert [a.name for a in study.arms] == ["qamoe", "early-fusion"]
    assert study.seeds == (0, 1, 2)
    (proto,) = study.protocols
    assert proto.axes == ("missing", "noise") and proto.levels == (0.0, 0.3, 0.6, 0.9)
    assert proto.corruption_seeds == 2 and not proto.shuffle
    assert study.compare.reference == "early-fusion"
    assert study.datasets[0].path is None and study.datasets[0].extract[0] == "synthetic"
    args = proto.eval_args()
    assert args[args.index("--axis") + 1] == "missing,noise" and "--no-shuffle" in args


def test_seeds_as_a_count(tmp_path: Path) -> None:
    study = spec.load_study(write(tmp_path, BASE.replace("seeds = [0, 1]", "seeds = 4")))
    assert study.seeds == (0, 1, 2, 3)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("seeds = [0, 1]", "sedds = [0, 1]"), ["unknown key 'sedds'", "Did you mean 'seeds'"]),
        (
            ('model = "qamoe"', 'modle = "qamoe"'),
            ["[arms.a]", "unknown field 'modle'", "Did you mean 'model'"],
        ),
        (
            ('model = "qamoe"', 'model = "qamoe"\nconfig = { model = { d_modle = 8 } }'),
            ["[arms.a.config.model]", "'d_modle'", "Did you mean 'd_model'"],
        ),
        (
            ('model = "qamoe"', 'model = "qamoe"\nconfig = { model = { d_model = 3 } }'),
            ["[arms.a] config.model", "'d_model'", "Got 3"],
        ),
        (("seeds = [0, 1]", "seeds = [0, 1, 1]"), ["repeats 1"]),
        (
            ('reference = "b"', 'reference = "bb"'),
            ["reference arm 'bb' is not in the study", "Did you mean 'b'"],
        ),
        (('axes = ["missing"]', 'axes = ["mising"]'), ["[protocols.p]", "Did you mean 'missing'"]),
        (("levels = [0.0, 0.5]", "levels = [0.0, 1.5]"), ["[protocols.p]", "levels"]),
        (('reference = "b"', 'reference = "b"\nmetrics = ["MAEE"]'), ["Did you mean 'MAE'"]),
        (('path = "d.h5"', 'path = "d.h5"\nextract = "synthtic"'), ["Did you mean 'synthetic'"]),
        (('path = "d.h5"', 'path = "d.h5"\nextract = "synthetic --out x.h5"'), ["--out"]),
        (("[compare]", "[train]\nseed = 3\n[compare]"), ["[train]", "'seed'"]),
    ],
)
def test_bad_study_files_are_refused_in_one_line(
    tmp_path: Path, change: tuple[str, str], words: list[str]
) -> None:
    text = BASE.replace(*change)
    assert text != BASE
    err = fails(tmp_path, text)
    for word in words:
        assert word in err.message + " " + (err.hint or ""), (word, err.message, err.hint)
    assert isinstance(err, UsageError)  # the CLI exits 2


def test_a_file_that_is_not_toml_or_is_missing(tmp_path: Path) -> None:
    err = fails(tmp_path, "seeds = [0, 1\n", ConfigError)
    assert "not valid TOML" in err.message and not isinstance(err, UsageError)
    with pytest.raises(InputError, match="does not exist"):
        spec.load_study(tmp_path / "none.toml")


def test_slurm_table_and_time_limits(tmp_path: Path) -> None:
    study = spec.load_study(
        write(tmp_path, BASE + '[slurm]\npartition = "gpu"\ntime = "1:30:00"\n')
    )
    assert study.slurm.partition == "gpu" and study.slurm.time_min == 90
    assert [spec.parse_time(t) for t in (5, "10", "2:30", "1-0:00:00")] == [5, 10, 3, 1440]
    with pytest.raises(UsageError):
        spec.parse_time("soon")
    flags = spec.parse_slurm({"time": 10}, cpus=4, gpus=None)
    assert flags.cpus == 4 and flags.time_min == 10 and flags.gpus == 0
    fails(tmp_path, BASE + "[slurm]\nqueue = 'x'\n")


def info(modalities: tuple[str, ...] = ("text", "audio", "vision"), scheme: str = "mosi") -> Any:
    return spec.DataInfo(Path("d.h5"), "0" * 64, modalities, scheme, ("train", "valid", "test"))


def test_a_model_that_does_not_fit_the_data(tmp_path: Path) -> None:
    study = spec.load_study(write(tmp_path, BASE.replace('model = "qamoe"', 'model = "almt"')))
    spec.check_against_data(study, {"d": info()})
    with pytest.raises(StudyFileError, match=r"\[arms.a\]: does not fit dataset 'd'.*needs"):
        spec.check_against_data(study, {"d": info(("audio", "vision"))})
    other = spec.load_study(write(tmp_path, BASE.replace('model = "qamoe"', 'model = "qamo"')))
    with pytest.raises(UsageError, match="'model' parameter must be one of") as err:
        spec.check_against_data(other, {"d": info()})
    assert "Did you mean 'qamoe'" in (err.value.hint or "")
    binary = spec.load_study(write(tmp_path, BASE + 'metrics = ["MAE"]\n'))
    with pytest.raises(StudyFileError, match="not one of dataset 'd' \\(scheme binary\\)"):
        spec.check_against_data(binary, {"d": info(scheme="binary")})


def test_a_dataset_that_does_not_exist(tmp_path: Path) -> None:
    study = spec.load_study(write(tmp_path, BASE))
    with pytest.raises(InputError, match=r"\[datasets.d\]: the feature file .*d.h5' does not"):
        runner.prepare_data(study, tmp_path / "out", lambda *a: None)


# --- cells and their keys ------------------------------------------------------------------------


def train_key(**change: Any) -> str:
    args: dict[str, Any] = {
        "dataset": "d",
        "sha256": "a" * 64,
        "arm": "x",
        "model": "qamoe",
        "seed": 0,
        "model_config": {"d_model": 8},
        "train_config": {"epochs": 2, "seed": 0},
    }
    args.update(change)
    return cells.train_cell(**args).key


def test_keys_follow_the_content_only(monkeypatch: pytest.MonkeyPatch) -> None:
    base = train_key()
    assert train_key() == base and len(base) == cells.KEY_CHARS
    assert train_key(dataset="renamed") == base  # names and paths are not content
    for change in (
        {"sha256": "b" * 64},
        {"model": "tfn"},
        {"model_config": {"d_model": 16}},
        {"train_config": {"epochs": 2, "seed": 1}},
    ):
        assert train_key(**change) != base, change
    monkeypatch.setattr(cells, "__version__", "99.0")
    assert train_key() != base
    t = cells.train_cell("d", "a" * 64, "x", "qamoe", 0, {}, {})
    s1 = cells.sweep_cell(t, "p", {"axes": ["missing"]})
    assert s1.needs == t.key and s1.label == "x-s0"
    assert cells.sweep_cell(t, "renamed", {"axes": ["missing"]}).key == s1.key
    assert cells.sweep_cell(t, "p", {"axes": ["noise"]}).key != s1.key


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory: pytest.TempPathFactory) -> plan.Plan:
    study = spec.load_study(TINY)
    data = {
        "tiny": spec.DataInfo(
            Path("data/tiny.h5"),
            "c" * 64,
            ("text", "audio", "vision"),
            "mosi",
            ("train", "valid", "test"),
        )
    }
    return plan.make_plan(study, data)


def test_the_plan_of_the_example(tiny_plan: plan.Plan) -> None:
    kinds = [c.kind for c in tiny_plan.cells]
    assert kinds.count("train") == 6 and kinds.count("sweep") == 6
    assert len({c.key for c in tiny_plan.cells}) == 12
    train = tiny_plan.cells[0]
    # the resolved config: defaults and the model's own options filled in, the seed set
    assert train.content["model_config"]["d_model"] == 16
    assert train.content["model_config"]["n_layers"] == 1  # a default, filled in
    assert "options" in train.content["model_config"]
    assert train.content["train_config"]["seed"] == 0
    doc = plan.cell_doc(tiny_plan, tiny_plan.cells[1], Path("out"))
    assert doc["fresh"][:2] == ["eval", f"cells/{train.key}/run"] and "--name" in doc["fresh"]
    assert doc["fresh"][doc["fresh"].index("--name") + 1] == "qamoe-s0"


def test_a_changed_study_is_refused_then_forced(tmp_path: Path, tiny_plan: plan.Plan) -> None:
    out = tmp_path / "study"
    out.mkdir()
    cells.write_json(out / plan.STUDY_JSON, tiny_plan.doc())
    assert plan.check_unchanged(out, tiny_plan, force=False) == []
    study = spec.load_study(TINY)
    changed = spec.Study(**{**study.__dict__, "train": {**study.train, "epochs": 3}})
    new = plan.make_plan(changed, tiny_plan.data)
    with pytest.raises(plan.StudyChangedError) as info_:
        plan.check_unchanged(out, new, force=False)
    err = info_.value
    assert "train.epochs: 2 -> 3" in err.message and "invalidates 12 of its 12 cells" in err.message
    assert "--force" in (err.hint or "") and "\n" not in err.message
    for c in tiny_plan.cells[:2]:
        cells.write_json(cells.cell_dir(out, c.key) / cells.CELL_FILE, {"key": c.key})
    gone = plan.check_unchanged(out, new, force=True)
    assert sorted(gone) == sorted(c.key for c in tiny_plan.cells)
    plan.prune(out, gone)
    assert not any((out / "cells").iterdir())


def test_changes_name_what_differs() -> None:
    old = {"qamoe": "1", "study": {"seeds": [0, 1], "arms": {"a": {"model": "qamoe"}}}}
    new = {
        "qamoe": "1",
        "study": {"seeds": [0, 1, 2], "arms": {"a": {"model": "tfn"}, "b": {"model": "lmf"}}},
    }
    found = plan.changes(old, new)
    assert 'arms.a.model: "qamoe" -> "tfn"' in found
    assert "seeds: [0, 1] -> [0, 1, 2]" in found
    assert 'arms.b.model added ("lmf")' in found
    assert plan.changes(old, old) == []


# --- the study folder, status --------------------------------------------------------------------


def test_a_second_study_on_one_folder_fails_at_once(tmp_path: Path) -> None:
    out = tmp_path / "s"
    with runner.study_folder(out):
        assert (out / plan.MARKER).is_file()
        with pytest.raises(rundir.OutputBusyError), runner.study_folder(out):
            pass
    with runner.study_folder(out):  # released
        pass


def test_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with (
        pytest.raises(InputError, match="not made by `qamoe study`"),
        runner.study_folder(tmp_path / "mine"),
    ):
        pass
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_status_reads_each_cells_state(tmp_path: Path, tiny_plan: plan.Plan) -> None:
    out = tmp_path / "s"
    with runner.study_folder(out):
        cells.write_json(out / plan.STUDY_JSON, tiny_plan.doc())
    done, failed, interrupted, running = tiny_plan.cells[:4]  # train, sweep, train, sweep
    d = cells.cell_dir(out, done.key)
    (d / "run").mkdir(parents=True)
    (d / "run" / "metrics.json").write_text("{}")
    cells.write_json(d / cells.DONE, {"key": done.key, "seconds": 1.5})
    cells.write_json(
        cells.cell_dir(out, failed.key) / cells.FAILED,
        {"key": failed.key, "returncode": 1, "error": "error: boom"},
    )
    (cells.cell_dir(out, interrupted.key) / "run").mkdir(parents=True)
    (cells.cell_dir(out, interrupted.key) / "run" / "train_state.pt").write_bytes(b"x")
    queued = tiny_plan.cells[4]
    cells.write_json(cells.cell_dir(out, queued.key) / "slurm.json", {"job_id": "7_1"})
    r = cells.cell_dir(out, running.key)
    r.mkdir(parents=True)
    with rundir.locked(r / "cell"):
        status = runner.study_status(out)
    states = {c["key"]: (c["state"], c["detail"]) for c in status["cells"]}
    assert states[done.key] == ("done", "1.5 s")
    assert states[failed.key] == ("failed", "error: boom")
    assert states[running.key][0] == "running"
    assert states[interrupted.key] == ("pending", "interrupted: resumes from its last epoch")
    assert states[queued.key] == ("pending", "submitted as SLURM job 7_1")
    assert status["counts"] == {"done": 1, "running": 1, "failed": 1, "pending": 9}
    assert runner.study_status(out)["counts"]["running"] == 0  # the lock is gone
    with pytest.raises(InputError, match="holds no study"):
        runner.study_status(tmp_path)


# --- the scheduler, with a fake executor ---------------------------------------------------------


@dataclass
class FakeExecutor:
    """Ends each started cell at the next wait(): ok, or with the error given for it."""

    out: Path
    errors: dict[str, list[str]]
    slots: int = 2
    describe: str = "fake"

    def __post_init__(self) -> None:
        self.started: list[str] = []
        self.running: list[str] = []

    def free(self) -> int:
        return self.slots - len(self.running)

    def adopt(self, keys: list[str]) -> set[str]:
        return set()

    def start(self, key: str) -> None:
        self.started.append(key)
        self.running.append(key)

    def wait(self, timeout: float) -> list[Any]:
        from qamoe_core.study.executors import Outcome

        ended, self.running = self.running, []
        out = []
        for key in ended:
            errors = self.errors.get(key, [])
            if errors:
                out.append(Outcome(key, False, errors.pop(0)))
            else:
                out.append(Outcome(key, True, "", 0.1))
        return out

    def stop(self) -> None:
        self.running.clear()


def run_fake(out: Path, p: plan.Plan, errors: dict[str, list[str]], retries: int = 1) -> Any:
    exe = FakeExecutor(out, errors)
    sched = runner.Scheduler(out, p, exe, retries, lambda *a: None)
    sched.run()
    return sched, exe


def test_trainings_run_before_their_sweeps_and_failures_retry(
    tmp_path: Path, tiny_plan: plan.Plan
) -> None:
    first = tiny_plan.cells[0]
    sched, exe = run_fake(tmp_path, tiny_plan, {first.key: ["error: flaky"]})
    assert sorted(exe.started) == sorted([first.key] + [c.key for c in tiny_plan.cells])
    for cell in tiny_plan.cells:
        if cell.kind == "sweep":
            assert exe.started.index(cell.needs) < exe.started.index(cell.key)
    assert not sched.failed and len(sched.done) == 12


def test_a_failed_training_blocks_its_sweep_and_is_reported(
    tmp_path: Path, tiny_plan: plan.Plan
) -> None:
    bad = tiny_plan.cells[0]
    sched, exe = run_fake(tmp_path, tiny_plan, {bad.key: ["error: a", "error: b"]}, retries=1)
    assert exe.started.count(bad.key) == 2 and tiny_plan.cells[1].key not in exe.started
    assert sched.failed == {bad.key: "error: b"} and len(sched.done) == 10
    with pytest.raises(runner.StudyError, match=r"1 cell\(s\) failed.*1 cell\(s\) after"):
        runner._raise_if_unfinished(sched, tmp_path)


def test_a_full_disk_stops_new_cells_and_keeps_the_finished(
    tmp_path: Path, tiny_plan: plan.Plan
) -> None:
    from qamoe_core.base.errors import NoSpaceError

    full = tiny_plan.cells[2]  # the second training (two start together)
    sched, exe = run_fake(
        tmp_path, tiny_plan, {full.key: ["error: Could not write 'x': no space left on device"]}
    )
    assert sched.no_space and full.key in sched.failed
    assert len(exe.started) == 2  # nothing started after the disk filled
    assert sched.done == {tiny_plan.cells[0].key}  # the one that finished beside it counts
    with pytest.raises(NoSpaceError, match="No space left on device at") as err:
        runner._raise_if_unfinished(sched, tmp_path)
    assert "the 1 finished cells are kept" in (err.value.hint or "")


def test_done_cells_are_skipped(tmp_path: Path, tiny_plan: plan.Plan) -> None:
    for cell in tiny_plan.cells[:3]:
        folder = cells.cell_dir(tmp_path, cell.key)
        art = folder / cells.artifact(cell.kind)
        art.parent.mkdir(parents=True, exist_ok=True)
        art.write_text("x")
        cells.write_json(folder / cells.DONE, {"key": cell.key, "seconds": 1})
    _, exe = run_fake(tmp_path, tiny_plan, {})
    assert len(exe.started) == 9 and tiny_plan.cells[0].key not in exe.started


def test_slurm_without_sbatch_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    study = spec.load_study(write(tmp_path, BASE))
    with pytest.raises(InputError, match="sbatch") as err:
        runner.make_executor("slurm", tmp_path / "out", study, None, {})
    assert "--executor local" in (err.value.hint or "")


def test_local_jobs_divide_the_threads_of_the_applied_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qamoe_core.base import runtime
    from qamoe_core.study import executors

    four = runtime.resolve_thread_policy(4, "passive", {}, cores=8, busy=0.0)
    monkeypatch.setitem(runtime._APPLIED, "policy", four)  # as `qamoe --threads 4 ...` applies
    exe = executors.LocalExecutor(tmp_path, jobs=2, gpus=[])
    assert exe.free() == 2 and exe.describe == "local: 2 job(s) x 2 thread(s)"
    for slot in exe.slots:  # threads and wait policy travel, in qamoe's and the pools' names
        assert slot["QAMOE_THREADS"] == slot["OMP_NUM_THREADS"] == slot["MKL_NUM_THREADS"] == "2"
        assert slot["QAMOE_WAIT_POLICY"] == "passive" and slot["OMP_WAIT_POLICY"] == "PASSIVE"
    assert executors.LocalExecutor(tmp_path, jobs=3, gpus=[]).slots[0]["QAMOE_THREADS"] == "1"
    gpu = executors.LocalExecutor(tmp_path, jobs=None, gpus=["3", "5"])
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu.slots] == ["3", "5"]
    assert {s["QAMOE_THREADS"] for s in gpu.slots} == {"2"}
    assert executors.LocalExecutor(tmp_path, jobs=1, gpus=["3", "5"]).free() == 1


def test_slurm_jobs_get_their_own_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qamoe_core.base import runtime
    from qamoe_core.study import executors

    pytest.importorskip("submitit")
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text("#!/bin/sh\nexit 1\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", str(sbatch.parent))
    # the submitting machine was busy (passive by auto): that says nothing about the job's node
    busy = runtime.resolve_thread_policy(None, None, {}, cores=2, busy=1.5)
    monkeypatch.setitem(runtime._APPLIED, "policy", busy)
    exe = executors.SlurmExecutor(tmp_path / "out", spec.Slurm(cpus=3), "qamoe-test")
    assert exe.env["QAMOE_THREADS"] == exe.env["OMP_NUM_THREADS"] == "3"
    assert exe.env["QAMOE_WAIT_POLICY"] == "auto" and "OMP_WAIT_POLICY" not in exe.env
    chosen = runtime.resolve_thread_policy(None, "active", {}, cores=2, busy=0.0)
    monkeypatch.setitem(runtime._APPLIED, "policy", chosen)  # `--wait-policy active`: kept
    exe = executors.SlurmExecutor(tmp_path / "out", spec.Slurm(cpus=1), "qamoe-test")
    assert exe.env["QAMOE_THREADS"] == "1" and exe.env["OMP_WAIT_POLICY"] == "ACTIVE"


# --- the table -----------------------------------------------------------------------------------


def test_compare_arms_is_welch_with_holm_and_the_power_mde() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0.8, 0.02, 5)
    a, b = rng.normal(0.83, 0.03, 5), rng.normal(0.79, 0.01, 4)
    found = table.compare_arms({"ref": ref.tolist(), "a": a.tolist(), "b": b.tolist()}, "ref")
    for arm, x in (("a", a), ("b", b)):
        res = st.ttest_ind(x, ref, equal_var=False)
        ci = res.confidence_interval(0.95)
        c = found[arm]
        assert math.isclose(c.difference, x.mean() - ref.mean(), rel_tol=1e-12)
        assert math.isclose(c.ci_low, ci.low) and math.isclose(c.ci_high, ci.high)
        assert math.isclose(c.p, res.pvalue)
    # Holm by hand: the smaller p times 2, the larger p times 1 (never below the first)
    small, large = sorted([found["a"].p, found["b"].p])
    holm = {small: min(1, 2 * small), large: max(min(1, 2 * small), large)}
    assert math.isclose(found["a"].p_holm, holm[found["a"].p])
    assert math.isclose(found["b"].p_holm, holm[found["b"].p])
    # the MDE is where the exact two-sample t power reaches 80 %
    sd = math.sqrt(((4 * a.var(ddof=1)) + 4 * ref.var(ddof=1)) / 8)
    ncp = found["a"].mde / (sd * math.sqrt(2 / 5))
    crit = st.t.ppf(0.975, 8)
    assert math.isclose(st.nct.sf(crit, 8, ncp) + st.nct.cdf(-crit, 8, ncp), 0.8, abs_tol=1e-6)
    one = table.compare_arms({"ref": [1.0], "a": [2.0]}, "ref")["a"]
    assert one.difference == 1.0 and math.isnan(one.ci_low) and math.isnan(one.p_holm)


def sweep_frame(values: dict[tuple[str, float, int], float]) -> pd.DataFrame:
    rows = [
        {
            "axis": ax,
            "level": lv,
            "seed": s,
            "variant": "normal",
            "metric": "MAE",
            "modalities": "text+audio+vision",
            "value": v,
        }
        for (ax, lv, s), v in values.items()
    ]
    return pd.DataFrame(rows)


def test_corruption_seeds_are_averaged_within_a_model_seed() -> None:
    frame = sweep_frame(
        {
            ("clean", 0.0, 0): 1.0,
            ("missing", 0.0, 0): 1.0,
            ("missing", 0.5, 0): 2.0,
            ("missing", 0.5, 1): 4.0,
        }
    )
    found = table.seed_values(frame, "p", ("missing",), ("MAE",), with_clean=True)
    assert found == [("clean", "MAE", 1.0), ("p", "MAE", 2.0)]  # (1 + (2 + 4) / 2) / 2


def test_the_table_renders_the_same_bytes_twice() -> None:
    values = pd.DataFrame(
        [
            {"dataset": "d", "arm": arm, "seed": s, "column": "p", "metric": "MAE", "value": v}
            for arm, vals in (("a", [0.9, 0.95, 0.92]), ("ref", [1.0, 1.02, 0.97]))
            for s, v in enumerate(vals)
        ]
    )
    df = table.summarize(values, "ref")
    row = df[df["arm"] == "a"].iloc[0]
    assert math.isclose(row["mean"], np.mean([0.9, 0.95, 0.92]))
    assert math.isclose(row["sd"], np.std([0.9, 0.95, 0.92], ddof=1))
    md = table.markdown(df, "T", "ref", 3)
    assert "| a | 0.923 ± 0.025 |" in md and "| ref (reference) |" in md and "95 % CI" in md
    tex = table.latex(df, "ref", 3)
    assert "\\toprule" in tex and "$\\Delta$ a" in tex and "\\bottomrule" in tex
    assert table.markdown(df, "T", "ref", 3) == md and table.csv_text(df) == table.csv_text(df)
    assert table.tex_escape("a_b&c") == "a\\_b\\&c"


def test_cell_records_are_plain_json(tmp_path: Path) -> None:
    cells.write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": 1}
    assert cells.read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("[1")
    assert cells.read_json(tmp_path / "bad.json") is None
    assert not os.path.exists(tmp_path / "none")


def test_the_readme_shows_the_example_study() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = spec.parse_study(spec.tomllib.loads(block), TINY)
    assert shown.to_doc() == spec.load_study(TINY).to_doc()


def test_a_protocol_runs_the_r_controls_and_the_diagnostic(tmp_path: Path) -> None:
    text = BASE.replace('levels = [0.0, 0.5]',
                        'levels = [0.0, 0.5]\ncontrols = ["constant_r", "oracle_r"]\n'
                        "residuals = true")  # fmt: skip
    (proto,) = spec.load_study(write(tmp_path, text)).protocols
    assert proto.controls == ("constant_r", "oracle_r") and proto.residuals
    args = proto.eval_args()
    assert args[args.index("--control") + 1] == "constant_r,oracle_r" and "--residuals" in args
    cfg = proto.eval_config()
    assert cfg["controls"] == ["constant_r", "oracle_r"] and cfg["residuals"] is True
    (plain,) = spec.load_study(write(tmp_path, BASE, "plain.toml")).protocols
    assert "--control" not in plain.eval_args() and "--residuals" not in plain.eval_args()
    err = fails(tmp_path, BASE.replace('levels = [0.0, 0.5]',
                                       'levels = [0.0, 0.5]\ncontrols = ["oracle"]'))  # fmt: skip
    assert "[protocols.p]" in err.message and "'controls'" in err.message
