"""Kill each command right after each file operation it makes; after each kill, the old or
the new output is complete under the final name and nothing foreign is lost; a rerun (or
``--resume``) then succeeds and gives the uninterrupted result (docs/results/faults.md).

One test case per command and kill point, each in a forked child (faultwrap.py):
``test_kill_point[train_force-11]`` kills ``train --force`` right after its 11th file
operation (the exchange of its first save), ``[demo-last-2]`` kills the demo at its third
operation from the end. ``-k`` selects them: ``-k report_force``, ``-k "demo-last"``,
``-k "train_force-11"``.

Which points are tried (SCENARIOS): per command every `stride`-th one from the first, the
last `tail` ones, and `always` those where a name changes what it holds (every rename,
exchange and removal: test_the_bound_covers_every_point checks that none is left out). The
defaults try each short command at every point and the suite's whole run of this file takes
about a minute on 2 cores. ``QAMOE_FAULTS_STRIDE=N`` tries every N-th point of every command
(1: all of them, as docs/results/faults.md records); ``QAMOE_FAULTS_DEMO_STRIDE=N`` sets the
demos' stride alone.

A command's number of file operations is known only once it has run, so the cases are listed
up to a fixed `bound` per command: a case past the real count is skipped and says so, and
test_the_bound_covers_every_point fails, naming the command, when it makes more operations
than its bound. Run with ``-s`` to see the counts. The uninterrupted run of each command is
made once and shared by its cases (the `reference` fixture).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qamoe_core.base.errors import QamoeError
from qamoe_core.demo import DemoConfig, run_demo
from qamoe_core.runs import checkpoint as ckpt
from tests.faults import faultwrap

pytestmark = pytest.mark.slow

CFG = {"model": {"d_model": 16, "n_heads": 2, "segments": 4, "num_experts": 4, "top_k": 2},
       "train": {"epochs": 2, "batch_size": 32, "patience": 10}}  # fmt: skip
FOREIGN = "notes.txt"  # a user's file inside an output that --force replaces
MOVES = ("os.rename", "renameat2", "shutil.rmtree")  # where a name changes what it holds
TINY_DEMO = DemoConfig(preset="tiny", epochs=1, levels=(0.0, 0.5), corruption_seeds=(0,),
                       axes=("mixed",))  # fmt: skip


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


@dataclass(frozen=True)
class Scenario:
    name: str  # the command, as typed
    output: str  # relative to the work folder's out/
    bound: int  # at least the file operations the command makes (a test checks it)
    stride: int  # by default every stride-th kill point from the first ...
    tail: int  # ... the last `tail` ones ...
    always: tuple[int, ...] = ()  # ... and these, whatever the stride
    argv: Callable[[Path], list[str]] | None = None  # CLI arguments, given the work folder
    old: Callable[[Path], None] | None = None  # makes the output that --force replaces

    @property
    def key(self) -> str:
        """The name in test ids: "train --force" -> "train_force"."""
        return self.name.replace(" --", "_").replace(" ", "_")

    def command(self, w: Path, extra: tuple[str, ...] = ()) -> Callable[[], int]:
        if self.argv is None:  # a demo, forced when it replaces an earlier one
            return _demo(w / "out" / self.output, self.force or "--force" in extra)
        argv = [a for a in self.argv(w) if not (a == "--force" and "--resume" in extra)]
        return _cli([*argv, *extra])

    @property
    def force(self) -> bool:
        return self.old is not None

    def stride_now(self) -> int:
        """The stride in effect: the environment's, else the default."""
        demo = os.environ.get("QAMOE_FAULTS_DEMO_STRIDE") if self.argv is None else None
        value = demo or os.environ.get("QAMOE_FAULTS_STRIDE") or self.stride
        return max(1, int(value))

    def counted(self) -> set[int]:
        """The kill points tried counted from the first (those from the end come on top)."""
        return {*range(1, self.bound + 1, self.stride_now()), *self.always}


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


def _in(w: Path, name: str) -> str:
    return str(w / "in" / name)


def _train(w: Path) -> list[str]:
    return ["train", _in(w, "tiny.h5"), "--out", str(w / "out" / "run"),
            "--config", _in(w, "cfg.json"), "--device", "cpu", "-q"]  # fmt: skip


def _train_force(w: Path) -> list[str]:
    return [*_train(w), "--force"]


def _corrupt(w: Path) -> list[str]:
    return ["corrupt", _in(w, "tiny.h5"), "--level", "0.5", "--out", str(w / "out" / "c.h5"), "-q"]


def _evaluate(w: Path) -> list[str]:
    grid = ["--sweep", "--levels", "0,0.5", "--corruption-seeds", "1", "--axis", "mixed"]
    return ["eval", _in(w, "run"), "--data", _in(w, "tiny.h5"), *grid,
            "--out", str(w / "out" / "res.csv"), "--device", "cpu", "-q"]  # fmt: skip


def _extract(w: Path) -> list[str]:
    return ["extract", "synthetic", "--preset", "tiny", "--out", str(w / "out" / "s.h5"), "-q"]


def _report(w: Path) -> list[str]:
    return ["report", _in(w, "results.csv"), "--out", str(w / "out" / "rep")]


def _report_force(w: Path) -> list[str]:
    return [*_report(w), "--force"]


def _old_run(out: Path) -> None:
    shutil.copytree(out.parent / "in" / "run", out / "run")
    (out / "run" / FOREIGN).write_text("mine")


def _old_report(out: Path) -> None:
    from qamoe_core.evaluation.results import load
    from qamoe_core.report.build import build_report

    build_report(load([out.parent / "in" / "results.csv"]), out / "rep", title="old")
    (out / "rep" / FOREIGN).write_text("mine")


def _old_demo(out: Path) -> None:
    (out / "demo").mkdir()
    (out / "demo" / ".qamoe-demo").write_text("an earlier demo\n")
    (out / "demo" / FOREIGN).write_text("mine")


# A rename, an exchange or a removal is where an output (or its temporary) changes under its
# name: every such point is tried by default (`always`; test_the_bound_covers_every_point
# checks it), with the operation just before and after the commit of train's first save.
# Otherwise the short commands are tried at every point, the others at every few and at
# their last ones. File operations at commit 4f0e4c0 (docs/results/faults.md): train 25,
# train --force 32, corrupt 5, eval 5, report 3, report --force 14, extract 3, demo 65,
# demo --force 68; the bounds leave room for more. A demo's points before its own commit are
# kills inside its temporary folder, alike from outside (its inner commits are tried).
SCENARIOS = [  # name, output, bound, stride, tail, always
    Scenario("train", "run", 40, 8, 2, (10, 11, 12), argv=_train),
    Scenario("train --force", "run", 48, 8, 2, (10, 11, 12, 18), argv=_train_force, old=_old_run),
    Scenario("corrupt", "c.h5", 8, 1, 0, argv=_corrupt),
    Scenario("eval --out", "res.csv", 8, 1, 0, argv=_evaluate),
    Scenario("report", "rep", 6, 1, 0, argv=_report),
    Scenario("report --force", "rep", 24, 4, 2, (2, 3), argv=_report_force, old=_old_report),
    Scenario("extract synthetic", "s.h5", 6, 1, 0, argv=_extract),
    Scenario("demo", "demo", 100, 64, 3, (13, 31, 61, 64)),  # no argv: run_demo
    Scenario("demo --force", "demo", 100, 64, 4, (13, 31, 61, 64, 65, 67), old=_old_demo),
]


@pytest.fixture(scope="module", autouse=True)
def _figures_as_fixed_bytes() -> Iterator[None]:
    """A report's figures are rendered in memory (``report/plots.encode``: no file operation)
    and tested in tests/report/test_build.py; here each is a fixed string of bytes, which
    spares most of a report's and a demo's time at every kill point. What is written, and
    how, is unchanged."""
    import qamoe_core.report.build as report

    def encode(fig: Any, formats: Sequence[str] = ("png",), style: Any = None) -> dict[str, bytes]:
        return {fmt: f"figure as {fmt}".encode() for fmt in dict.fromkeys(["png", *formats])}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "encode", encode)
        yield


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


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run of a command: what a kill must leave or a rerun must give."""

    old: str  # the digest of the output before the command
    new: str  # ... and after it
    clean: list[str]  # what out/ holds afterwards
    counts: dict[str, int]  # file operations by kind
    sequence: list[str]  # ... and in order

    @property
    def total(self) -> int:
        return len(self.sequence)


@pytest.fixture(scope="module")
def reference(
    inputs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Scenario], Reference]:
    """Each command run once without a kill (on first use), shared by all its cases."""
    base = tmp_path_factory.mktemp("faults-ref")
    done: dict[str, Reference] = {}

    def get(sc: Scenario) -> Reference:
        if sc.key not in done:
            ref = _fresh(base, sc.key, inputs, sc)
            old = _digest(ref / "out" / sc.output)
            status = faultwrap.run(sc.command(ref), 0, ref / "counts.json")
            assert status == "ok", f"{sc.name}: the uninterrupted run {status}"
            done[sc.key] = Reference(
                old=old,
                new=_digest(ref / "out" / sc.output),
                clean=sorted(p.name for p in (ref / "out").iterdir()),
                **json.loads((ref / "counts.json").read_text()),
            )
        return done[sc.key]

    return get


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda sc: sc.key)
def test_the_bound_covers_every_point(
    sc: Scenario, reference: Callable[[Scenario], Reference]
) -> None:
    ref = reference(sc)
    print(f"{sc.name}: {ref.total} file operations {ref.counts}")
    assert 0 < ref.total <= sc.bound, (
        f"{sc.name} makes {ref.total} file operations, more than the {sc.bound} its kill-point "
        "cases are listed for: raise its bound in SCENARIOS"
    )
    moves = {n for n, op in enumerate(ref.sequence, 1) if op in MOVES}
    assert moves <= sc.counted(), (
        f"{sc.name}: the renames, exchanges or removals at {sorted(moves - sc.counted())} are "
        f"not tried (those at {sorted(moves)} must be): set its `always` in SCENARIOS"
    )


def _cases() -> Iterator[Any]:
    """(scenario, point): point n > 0 is the n-th file operation, -k the k-th from the end."""
    for sc in SCENARIOS:
        stride, width = sc.stride_now(), len(str(sc.bound))
        for n in sorted(sc.counted()):
            yield pytest.param(sc, n, id=f"{sc.key}-{n:0{width}d}")
        for k in range(sc.tail if stride > 1 else 0):
            yield pytest.param(sc, -1 - k, id=f"{sc.key}-last" + (f"-{k}" if k else ""))


@pytest.mark.parametrize(("sc", "point"), list(_cases()))
def test_kill_point(
    sc: Scenario, point: int, reference: Callable[[Scenario], Reference], inputs: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    ref = reference(sc)
    n = point if point > 0 else ref.total + 1 + point
    if not 1 <= n <= ref.total:
        pytest.skip(f"past the last kill point: {sc.name} makes {ref.total} file operations")
    if point < 0 and n in sc.counted():
        pytest.skip(f"{sc.name}: a case counted from the first point kills here too")
    w = _fresh(tmp_path, "w", inputs, sc)
    status = faultwrap.run(sc.command(w), n, w / "counts.json")
    assert status == "killed", f"{sc.name}: kill point {n} of {ref.total} not reached ({status})"
    _check_after_kill(sc, w, ref.old, ref.new, n)
    _rerun(sc, w, ref.new, n)
    left = sorted(p.name for p in (w / "out").iterdir())
    assert left == ref.clean, f"{sc.name} @ {n}: leftovers after the rerun"
    shutil.rmtree(w)  # passed: a demo's copy is a few MB
