"""``DIR/report.md`` of a tuning, with ``history.png`` and ``importance.png``.

The figures are drawn on ``matplotlib.figure.Figure`` objects (never pyplot, so no global
state changes) and encoded as the report's figures are (``report_plots.encode``: no
timestamps). The importances are Optuna's own (``optuna.importance.get_param_importances``
with the fANOVA evaluator seeded by the tuning's seed), over the finished trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qamoe_core.base.atomic import atomic_path
from qamoe_core.tuning.outputs import (
    BEST,
    HISTORY_PNG,
    IMPORTANCE_PNG,
    REPORT,
    TRIALS,
    Best,
    Row,
)
from qamoe_core.tuning.plan import Plan


def importances(study: Any, seed: int) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances, or ({}, why not)."""
    import optuna

    from qamoe_core.tuning.runner import quiet_optuna

    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(finished) < 2:
        return {}, "fewer than two finished trials"
    try:
        with quiet_optuna():
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. every finished trial drew the same values
        return {}, " ".join(str(exc).split())[:200]
    return {k: float(v) for k, v in found.items()}, ""


def _save(fig: Any, path: Path) -> None:
    from qamoe_core.report.plots import encode

    data = encode(fig, ())["png"]
    with atomic_path(path, force=True) as tmp:
        tmp.write_bytes(data)


def history_figure(table: Sequence[Row], plan: Plan, path: Path) -> None:
    """Each trial's CV score (finished: dots; pruned: grey, the folds it ran) and the best."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    better = min if plan.objective.direction == "minimize" else max
    best, xs, ys = math.nan, [], []
    for r in table:
        mean = r.mean_se[0]
        if r.state == "complete":
            ax.plot(r.number, mean, "o", color="C0", ms=4)
            best = mean if math.isnan(best) else better(best, mean)
            xs.append(r.number)
            ys.append(best)
        elif r.state == "pruned" and not math.isnan(mean):
            ax.plot(r.number, mean, "x", color="0.6", ms=4)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"CV {plan.objective.metric}")
    ax.set_title(f"{plan.settings.model}: optimisation history (x: pruned)", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def importance_figure(found: dict[str, float], plan: Plan, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(found)[::-1]
    fig = Figure(figsize=(6.4, 0.5 + 0.45 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [found[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, Optuna)")
    ax.set_title(f"{plan.settings.model}: parameter importances", fontsize=10)
    _save(fig, path)


def _setup_lines(plan: Plan, table: Sequence[Row]) -> list[str]:
    s = plan.settings
    states = {st: sum(1 for r in table if r.state == st) for st in ("complete", "pruned", "fail")}
    return [
        f"- data: `{s.data}` (train and valid only; the test split is never read)",
        f"- selection: {plan.folds.describe()}; objective: {plan.objective.describe()} "
        f"({plan.objective.direction}), mean over folds ± standard error",
        f"- budget: {s.trials} trials ({states['complete']} finished, {states['pruned']} "
        f"pruned, {states['fail']} failed); sampler {s.sampler} (seed {s.seed}), "
        f"pruner {s.pruner}",
        f"- space: {plan.space.source}",
    ]


def _space_table(plan: Plan, chosen: dict[str, Any]) -> list[str]:
    lines = ["| field | range | chosen | source |", "|---|---|---|---|"]
    for p in plan.space.params:
        value = chosen.get(p.path)
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(
            f"| `{p.path}` | {p.describe()} | {shown} | {plan.space.notes.get(p.path, '')} |"
        )
    return lines


def write_report(out: Path, plan: Plan, study: Any, table: Sequence[Row], best: Best) -> Path:
    history_figure(table, plan, out / HISTORY_PNG)
    found, why = importances(study, plan.settings.seed)
    (out / IMPORTANCE_PNG).unlink(missing_ok=True)
    if found:
        importance_figure(found, plan, out / IMPORTANCE_PNG)
    folds = ", ".join(f"{v:.4g}" for v in best.row.scores)
    lines = [
        f"# Tuning `{plan.settings.model}`",
        "",
        *_setup_lines(plan, table),
        "",
        "## Chosen setting",
        "",
        best.line(plan),
        "",
        f"Fold scores: {folds}.",
        "",
        *_space_table(plan, best.row.params),
        "",
        f"Train it: `qamoe train DATA --model {plan.settings.model} --config {BEST}` "
        f"(every trial: `{TRIALS}`).",
        "",
        "## Optimisation history",
        "",
        f"![history]({HISTORY_PNG})",
        "",
        "## Parameter importances",
        "",
    ]
    if found:
        lines += ["| field | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in found.items()]
        lines += ["", f"![importances]({IMPORTANCE_PNG})"]
    else:
        lines.append(f"Not computed: {why}.")
    with atomic_path(out / REPORT, force=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / REPORT
