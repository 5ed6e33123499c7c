"""base/runtime.py's thread policy: where threads and wait come from, the cores a process may
use, what parallel jobs get, and what a run records. That the policy reaches the OpenMP
runtime of a real `qamoe` process is tests/cli/test_process.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qamoe_core.base import runtime
from qamoe_core.base.errors import UsageError

QUIET = {"cores": 2, "busy": 0.0}


def resolve(threads: int | None = None, wait: str | None = None, env: dict[str, str] | None = None,
            **kw: float) -> runtime.ThreadPolicy:  # fmt: skip
    return runtime.resolve_thread_policy(threads, wait, env or {}, **{**QUIET, **kw})  # type: ignore[arg-type]


def test_automatic_policy_keeps_the_fast_default_when_idle_and_steps_aside_when_busy() -> None:
    idle = resolve()
    assert (idle.threads, idle.wait, idle.threads_from, idle.wait_from) == (
        2,
        "unset",
        "auto",
        "auto",
    )
    beside_two = resolve(busy=2.0)  # a competing 2-thread process on our 2 cores
    assert (beside_two.threads, beside_two.wait) == (1, "passive")
    assert resolve(busy=0.3).wait == "unset" and resolve(busy=0.3).threads == 2  # noise
    assert (resolve(busy=0.8).threads, resolve(busy=0.8).wait) == (1, "passive")
    big = resolve(cores=16, busy=3.0)
    assert (big.threads, big.wait, big.cores) == (13, "passive", 16)
    assert resolve(cores=1, busy=5.0).threads == 1  # never fewer than one


def test_flag_beats_qamoe_variable_beats_openmp_variable_beats_auto() -> None:
    env = {"QAMOE_THREADS": "3", "OMP_NUM_THREADS": "5", "QAMOE_WAIT_POLICY": "active",
           "OMP_WAIT_POLICY": "PASSIVE"}  # fmt: skip
    p = resolve(4, "passive", env, busy=2.0)
    assert (p.threads, p.threads_from, p.wait, p.wait_from) == (
        4,
        "--threads",
        "passive",
        "--wait-policy",
    )
    p = resolve(None, None, env, busy=2.0)
    assert (p.threads, p.threads_from, p.wait, p.wait_from) == (
        3,
        "QAMOE_THREADS",
        "active",
        "QAMOE_WAIT_POLICY",
    )
    p = resolve(None, None, {"OMP_NUM_THREADS": "5", "OMP_WAIT_POLICY": "Passive"})
    assert (p.threads, p.threads_from, p.wait, p.wait_from) == (
        5,
        "OMP_NUM_THREADS",
        "passive",
        "OMP_WAIT_POLICY",
    )
    # 'auto' in the qamoe variables hands the choice back to qamoe, over the OpenMP ones
    p = resolve(None, None, {**env, "QAMOE_THREADS": "auto", "QAMOE_WAIT_POLICY": "auto"}, busy=2.0)
    assert (p.threads, p.threads_from, p.wait, p.wait_from) == (1, "auto", "passive", "auto")
    # an OpenMP list (nested levels) or junk is the runtime's business: qamoe chooses
    assert resolve(env={"OMP_NUM_THREADS": "4,2"}).threads_from == "auto"
    assert resolve(wait="unset", busy=2.0).wait == "unset"  # the old default, on request


@pytest.mark.parametrize(
    ("threads", "wait", "env", "named"),
    [
        (0, None, {}, "--threads"),
        (None, "spin", {}, "--wait-policy"),
        (None, None, {"QAMOE_THREADS": "two"}, "QAMOE_THREADS"),
        (None, None, {"QAMOE_THREADS": "0"}, "QAMOE_THREADS"),
        (None, None, {"QAMOE_WAIT_POLICY": "sleepy"}, "QAMOE_WAIT_POLICY"),
    ],
)
def test_bad_values_are_usage_errors_naming_their_source(
    threads: int | None, wait: str | None, env: dict[str, str], named: str
) -> None:
    with pytest.raises(UsageError, match=named):
        resolve(threads, wait, env)


def test_usable_cores_follow_the_affinity_mask() -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    mask = os.sched_getaffinity(0)
    assert runtime.usable_cores() <= len(mask)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert runtime.usable_cores() == 1
        p = runtime.resolve_thread_policy(None, None, {}, busy=0.0)
        assert (p.cores, p.threads) == (1, 1)
    finally:
        os.sched_setaffinity(0, mask)


def test_cgroup_quota_v2_and_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime._cgroup_quota(tmp_path) == 2  # 1.5 CPUs: two threads may run
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_quota(tmp_path) is None  # no quota
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime._cgroup_quota(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime._cgroup_quota(tmp_path) is None
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 1)
    assert runtime.usable_cores() == 1  # the quota caps the affinity


def test_busy_elsewhere_counts_other_runnable_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "loadavg"
    fake.write_text("0.50 0.40 0.30 4/321 12345\n")  # 4 runnable: this thread and 3 others
    monkeypatch.setattr(runtime, "LOADAVG", str(fake))
    cpus = os.cpu_count() or 1
    every = set(range(cpus))  # usable: the whole machine (else /proc/stat is read instead)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: every, raising=False)
    assert runtime.busy_elsewhere(cpus) == pytest.approx(3.0)
    assert runtime.busy_elsewhere(max(1, cpus // 2)) == pytest.approx(
        3.0 * max(1, cpus // 2) / cpus
    )
    monkeypatch.setattr(runtime, "LOADAVG", str(tmp_path / "absent"))
    assert runtime.busy_elsewhere(2) is None
    assert runtime.resolve_thread_policy(None, None, {}, cores=2).threads == 2  # unknown: idle


def test_confined_to_some_cpus_only_their_own_busy_time_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  10 0 10 100 0 0 0 0 0 0\n"
        "cpu0 1 0 1 90 5 0 0 3 0 0\n"  # idle 90 + iowait 5 of 100, steal 3 counted busy
        "cpu1 9 0 9 10 0 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )
    monkeypatch.setattr(runtime, "PROC_STAT", str(stat))
    assert runtime._cpu_times([0]) == (95.0, 100.0)
    assert runtime._cpu_times([0, 1]) == (105.0, 128.0)
    assert runtime._cpu_times([0, 7]) is None  # a CPU the file does not list
    # a process pinned to CPU 0 of 4 (taskset, a cpuset): that CPU's non-idle share, not the
    # machine's runnable count (whose tasks may all run on the other CPUs)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(runtime, "LOADAVG", str(tmp_path / "absent"))
    snapshots = iter([(100.0, 200.0), (105.0, 220.0)])  # 5 of 20 ticks idle
    monkeypatch.setattr(runtime, "_cpu_times", lambda cpus: next(snapshots))
    assert runtime.busy_elsewhere(1) == pytest.approx(0.75)


def test_parallel_jobs_divide_the_threads() -> None:
    two = resolve()  # idle, 2 cores: 2 threads, the runtime's default waits
    env = runtime.job_env(2, two)
    assert env["QAMOE_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["QAMOE_WAIT_POLICY"] == "unset" and "OMP_WAIT_POLICY" not in env
    assert runtime.job_env(1, two)["QAMOE_THREADS"] == "2"
    assert runtime.job_env(5, two)["QAMOE_THREADS"] == "1"  # at least one, never 0
    eight = resolve(8, "passive")
    env = runtime.job_env(3, eight)
    assert env["QAMOE_THREADS"] == "2" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    # a child resolves exactly that, from the variables, without measuring its siblings
    child = runtime.resolve_thread_policy(None, None, env, cores=8, busy=7.0)
    assert (child.threads, child.threads_from, child.wait) == (2, "QAMOE_THREADS", "passive")
    with pytest.raises(UsageError, match="parallel jobs"):
        runtime.job_env(0, two)


def test_a_job_on_another_machine_gets_its_cpus_and_measures_its_own_node() -> None:
    auto = resolve(busy=1.5)  # this machine busy: passive, chosen automatically
    env = runtime.remote_job_env(3, auto)
    assert env["QAMOE_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["QAMOE_WAIT_POLICY"] == "auto" and "OMP_WAIT_POLICY" not in env
    # on its node, the job chooses the wait by itself, whatever this machine's variables say
    child = resolve(None, None, {**env, "OMP_WAIT_POLICY": "PASSIVE"}, cores=3, busy=0.0)
    assert (child.threads, child.threads_from, child.wait, child.wait_from) == (
        3,
        "QAMOE_THREADS",
        "unset",
        "auto",
    )
    assert runtime.remote_job_env(1, resolve(8, "passive"))["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(UsageError, match="CPUs"):
        runtime.remote_job_env(0, auto)


def test_apply_sets_the_pools_variables_and_reset_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    try:
        runtime.apply_thread_policy(resolve(2, "passive"))
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert torch.get_num_threads() == 2  # torch was loaded: set directly
        record = runtime.thread_record()
        assert record["threads"] == 2 and record["threads_from"] == "--threads"
        assert record["wait_policy"] == "passive" and record["wait_applied"] is False
    finally:
        runtime.reset_thread_policy()
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OMP_WAIT_POLICY" not in os.environ
    assert torch.get_num_threads() == before and runtime.current_thread_policy() is None


def test_an_automatic_policy_leaves_a_caller_that_loaded_torch_alone() -> None:
    before = torch.get_num_threads()
    try:
        runtime.apply_thread_policy(resolve(busy=0.0))  # auto would say 2
        assert torch.get_num_threads() == before
        assert runtime.thread_record()["threads_from"] == "caller"
    finally:
        runtime.reset_thread_policy()
