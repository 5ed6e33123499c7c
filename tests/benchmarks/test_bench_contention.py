"""benchmarks/bench_contention.py: the verdict drawn from its table (the timings themselves
are the benchmark's, run by hand: `--quick` checks the harness)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_contention.py"
spec = importlib.util.spec_from_file_location("bench_contention", SCRIPT)
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

# issue 30's demo on 2 cores: (quiet s, beside a 2-thread competitor s)
ISSUE = {"old-default": (31, 166), "2-passive": (44, 70), "1-passive": (45, 64), "auto": (31, 64)}


def _runs(times: dict[str, tuple[float, float]]) -> dict[tuple[str, str, bool], list[Any]]:
    policy = {"threads": 1, "wait_policy": "passive", "threads_from": "auto"}
    runs = {}
    for config, (quiet, busy) in times.items():
        for w in bench.WORKLOADS:
            runs[(config, w, False)] = [{"seconds": quiet, "policy": policy}]
            runs[(config, w, True)] = [{"seconds": busy, "policy": policy, "competitor_rate": 50.0}]
    return runs


def test_the_issue_table_passes_only_a_policy_fast_when_quiet_and_fair_when_busy() -> None:
    got = bench._summarize(_runs(ISSUE), list(ISSUE), solo=100.0)
    table = got["table"]
    assert table["old-default"]["fair_share"] is False  # 5.4x its quiet time
    assert table["old-default"]["quiet_within_5pct"] is True
    assert table["2-passive"]["fair_share"] and not table["2-passive"]["quiet_within_5pct"]
    assert table["1-passive"]["demo"]["quiet_over_old_default"] == round(45 / 31, 3)
    assert got["passing"] == ["auto"] and got["chosen"] == "auto"
    assert table["auto"]["demo"]["competitor_share"] == 0.5


def test_without_the_old_default_nothing_can_pass_the_quiet_criterion() -> None:
    got = bench._summarize(_runs({"auto": (31, 64)}), ["auto"], solo=100.0)
    assert got["table"]["auto"]["quiet_within_5pct"] is None and got["chosen"] is None
