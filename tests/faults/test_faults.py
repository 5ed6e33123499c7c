"""Kill each command right after every file operation it makes; after each kill, the old or
the new output is complete under the final name and nothing foreign is lost; a rerun (or
``--resume``) then succeeds and gives the uninterrupted result (docs/results/faults.md).

Slow: one forked child per kill point. The counts are printed (run with -s to see them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from qamoe_core.base.errors import QamoeError
from qamoe_core.demo import DemoConfig, run_demo
from qamoe_core.runs import checkpoint as ckpt
from tests.faults import faultwrap

pytestmark = pytest.mark.slow

CFG = {"model": {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2},
       "train": {"epochs": 2, "batch_size": 32, "patience": 10}}  # fmt: skip
FOREIGN = "notes.txt"  # a user's file inside an output that --force replaces
TINY_DEMO = DemoConfig(preset="tiny", epochs=1, levels=(0.0, 0.5), corruption_seeds=(0,),
                       axes=("mixed",))  # fmt: skip
# Demos make ~10x the file operations of the other commands: every STRIDE-th point is tried
# (plus the last ones, around the final commit), to keep the harness to a few minutes;
# QAMOE_FAULTS_DEMO_STRIDE=1 tries every one.
DEMO_STRIDE = int(os.environ.get("QAMOE_FAULTS_DEMO_STRIDE", "12"))


def _cli(argv: list[str]) -> Callable[[], int]:
    def go() -> int:
        from qamoe_cli.main import main

        return main(argv)

    return go


def _demo(out: Path, force: bool) -> Callable[[], int]:
    def go() -> int:
        try:
            run_demo(out, TINY_DEMO, force=force, device="cpu")
        except QamoeError:
            return 1
        return 0

    return go


@dataclass
class Scenario:
    name: str
    output: str  # relative to the work folder's out/
    argv: Callable[[Path], list[str]] | None = None  # CLI arguments, given the work folder
    demo_force: bool | None = None  # a demo instead of a CLI command
    old: Callable[[Path], None] | None = None  # makes the output that --force replaces
    stride: int = 1
    counts: dict[str, int] = field(default_factory=dict)

    def command(self, w: Path, extra: tuple[str, ...] = ()) -> Callable[[], int]:
        if self.demo_force is not None:
            return _demo(w / "out" / self.output, self.demo_force or "--force" in extra)
        assert self.argv is not None
        argv = [a for a in self.argv(w) if not (a == "--force" and "--resume" in extra)]
        return _cli([*argv, *extra])

    @property
    def force(self) -> bool:
        return self.old is not None


def _digest(path: Path) -> str:
    """What must equal the uninterrupted result (times and absolute paths left out)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_dir():
        return "absent"
    if (path / ckpt.CONFIG).is_file() and not (path / ".qamoe-demo").exists():  # a run
        if not (path / ckpt.METRICS).is_file():
            return "unfinished run"
        weights = ckpt.read_weights(path)
        parts = [f"{k}:{v.numpy().tobytes().hex()}" for k, v in sorted(weights.items())]
        parts += [json.dumps(h["val"], sort_keys=True) for h in ckpt.read_history(path)]
        return hashlib.sha256("".join(parts).encode()).hexdigest()
    # the user's file is checked on its own: right after the exchange it is still in the
    # old folder, on its way into the new one
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                   if p.is_file() and p.name != FOREIGN)  # fmt: skip
    pick = [n for n in names if n.endswith(".csv") and "runs/" not in n]
    parts = names + [hashlib.sha256((path / n).read_bytes()).hexdigest() for n in pick]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _resumable(path: Path) -> bool:
    try:
        ckpt.load_state(path)
        ckpt.read_config(path)
    except QamoeError:
        return False
    return True


def _foreign_somewhere(out_dir: Path) -> bool:
    return any(p.name == FOREIGN for p in out_dir.rglob(FOREIGN))


def _scenarios(data: Path, run: Path, results: Path) -> list[Scenario]:
    def cfg(w: Path) -> str:
        return str(w / "in" / "cfg.json")

    def train(w: Path) -> list[str]:
        return ["train", str(w / "in" / "tiny.h5"), "--out", str(w / "out" / "run"),
                "--config", cfg(w), "--device", "cpu", "-q"]  # fmt: skip

    def old_run(out: Path) -> None:
        shutil.copytree(run, out / "run")
        (out / "run" / FOREIGN).write_text("mine")

    def old_report(out: Path) -> None:
        from qamoe_core.evaluation.results import load
        from qamoe_core.report.build import build_report

        build_report(load([results]), out / "rep", title="old")
        (out / "rep" / FOREIGN).write_text("mine")

    def old_demo(out: Path) -> None:
        (out / "demo").mkdir()
        (out / "demo" / ".qamoe-demo").write_text("an earlier demo\n")
        (out / "demo" / FOREIGN).write_text("mine")

    def corrupt(w: Path) -> list[str]:
        data, out = str(w / "in" / "tiny.h5"), str(w / "out" / "c.h5")
        return ["corrupt", data, "--level", "0.5", "--out", out, "-q"]

    def evaluate(w: Path) -> list[str]:
        grid = ["--sweep", "--levels", "0,0.5", "--corruption-seeds", "1", "--axis", "mixed"]
        return ["eval", str(w / "in" / "run"), "--data", str(w / "in" / "tiny.h5"), *grid,
                "--out", str(w / "out" / "res.csv"), "--device", "cpu", "-q"]  # fmt: skip

    def extract(w: Path) -> list[str]:
        return ["extract", "synthetic", "--preset", "tiny", "--out", str(w / "out" / "s.h5"), "-q"]

    def report(w: Path) -> list[str]:
        return ["report", str(w / "in" / "results.csv"), "--out", str(w / "out" / "rep")]

    return [
        Scenario("train", "run", train),
        Scenario("train --force", "run", lambda w: [*train(w), "--force"], old=old_run),
        Scenario("corrupt", "c.h5", corrupt),
        Scenario("eval --out", "res.csv", evaluate),
        Scenario("report", "rep", report),
        Scenario("report --force", "rep", lambda w: [*report(w), "--force"], old=old_report),
        Scenario("extract synthetic", "s.h5", extract),
        Scenario("demo", "demo", demo_force=False, stride=DEMO_STRIDE),
        Scenario("demo --force", "demo", demo_force=True, old=old_demo, stride=DEMO_STRIDE),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> Path:
    """in/: the data, a config, a trained run and a results file; shared by every copy."""
    from qamoe_core.config import resolve
    from qamoe_core.evaluation.plan import EvalConfig
    from qamoe_core.evaluation.results import save
    from qamoe_core.evaluation.sweep import Evaluation
    from qamoe_core.training.loop import train

    root = tmp_path_factory.mktemp("faults") / "in"
    root.mkdir()
    shutil.copy(tiny_h5, root / "tiny.h5")
    (root / "cfg.json").write_text(json.dumps(CFG))
    model_cfg, train_cfg = resolve(root / "cfg.json")
    train(root / "tiny.h5", root / "run", "late-fusion", model_cfg, train_cfg, device="cpu")
    model, _, _ = ckpt.load_run(root / "run")
    ev = EvalConfig(sweep=True, levels=(0.0, 0.5), seeds=(0,), axes=("mixed",))
    result = Evaluation(model, root / "tiny.h5", ev, run="r", model_name="late-fusion").run()
    save(result.table, root / "results.csv")
    return root


def _fresh(base: Path, name: str, inputs: Path, sc: Scenario) -> Path:
    w = base / name
    (w / "out").mkdir(parents=True)
    (w / "in").symlink_to(inputs)  # inputs are only read
    if sc.old is not None:
        sc.old(w / "out")
    return w


def _check_after_kill(sc: Scenario, w: Path, old: str, new: str, n: int) -> None:
    final = w / "out" / sc.output
    now = _digest(final)
    if sc.name.startswith("train") and now == "unfinished run":
        assert _resumable(final), f"{sc.name} @ {n}: a run that cannot be resumed"
        return
    allowed = {new, old}
    assert now in allowed, f"{sc.name} @ {n}: neither the old nor the new output ({now})"
    if sc.force:
        assert _foreign_somewhere(w / "out"), f"{sc.name} @ {n}: the user's file is gone"


def _rerun(sc: Scenario, w: Path, new: str, n: int) -> None:
    final = w / "out" / sc.output
    extra: tuple[str, ...] = ()
    if sc.name.startswith("train") and _digest(final) == "unfinished run":
        extra = ("--resume",)
    elif _digest(final) == new and not sc.force:
        extra = ("--force",)  # complete already: the rerun replaces its own output
    status = faultwrap.run(sc.command(w, extra), 0, w / "counts.json")
    if status != "ok" and not extra:
        # Killed between a commit's two steps (the stage marker gone, the rename not done):
        # the rerun put the complete output in place, then, like any command finding its
        # output there, refused to replace it without --force (or to restart without --resume)
        if sc.name.startswith("train") and _digest(final) == "unfinished run":
            extra = ("--resume",)
        elif _digest(final) == new and not sc.force:
            extra = ("--force",)
        if extra:
            status = faultwrap.run(sc.command(w, extra), 0, w / "counts.json")
    assert status == "ok", f"{sc.name} @ {n}: the rerun {status}"
    assert _digest(final) == new, f"{sc.name} @ {n}: the rerun differs"
    if sc.force:
        assert (final / FOREIGN).read_text() == "mine", f"{sc.name} @ {n}: the user's file"


def test_every_kill_point_keeps_old_or_new_and_reruns_identically(
    inputs: Path, tmp_path: Path
) -> None:
    lines = []
    only = os.environ.get("QAMOE_FAULTS")  # e.g. "train,report --force": a subset, by name
    for i, sc in enumerate(_scenarios(inputs / "tiny.h5", inputs / "run", inputs / "results.csv")):
        if only and sc.name not in only.split(","):
            continue
        t0 = time.perf_counter()
        ref = _fresh(tmp_path, f"{i}-ref", inputs, sc)
        old = _digest(ref / "out" / sc.output)
        status = faultwrap.run(sc.command(ref), 0, ref / "counts.json")
        assert status == "ok", f"{sc.name}: the uninterrupted run {status}"
        new = _digest(ref / "out" / sc.output)
        clean = sorted(p.name for p in (ref / "out").iterdir())
        sc.counts = json.loads((ref / "counts.json").read_text())
        total = sum(sc.counts.values())
        points = sorted({*range(1, total + 1, sc.stride), *range(max(1, total - 8), total + 1)})
        killed = 0
        for n in points:
            w = _fresh(tmp_path, f"{i}-{n}", inputs, sc)
            if faultwrap.run(sc.command(w), n, w / "counts.json") != "killed":
                pytest.fail(f"{sc.name}: kill point {n} of {total} was not reached")
            killed += 1
            _check_after_kill(sc, w, old, new, n)
            _rerun(sc, w, new, n)
            assert sorted(p.name for p in (w / "out").iterdir()) == clean, (
                f"{sc.name} @ {n}: leftovers after the rerun"
            )
            shutil.rmtree(w)
        print(f"{sc.name}: {killed} kill points passed", flush=True)
        lines.append(f"{sc.name}: {total} file operations {sc.counts}; {killed} kill points, "
                     f"invariant held {killed}, reruns identical {killed} "
                     f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print("\n" + "\n".join(lines))
