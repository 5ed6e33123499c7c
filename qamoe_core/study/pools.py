"""Datasets pooled as the folds of one cross-validation (``[pools.NAME]``, docs/study.md).

::

    [pools.cv]                      # the five fold files are one cross-validation
    datasets = ["fold1", "fold2", "fold3", "fold4", "fold5"]

The cells are those of the datasets as they are (a pool trains and sweeps nothing); the paper
table gives the pool in place of its datasets. One model seed's value in a pooled column is
the mean, over the pool's datasets, of its value on each (itself the mean over the column's
levels of the mean over its corruption seeds): the folds are averaged within a model seed, so
a seed trained on five folds is one replicate, not five. The table's mean ± sd and the
comparison with the reference then run over those per-seed values, as for one dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from qamoe_core.base.errors import nearest_choice

POOL_KEYS = ("datasets",)


@dataclass(frozen=True)
class Pool:
    name: str
    datasets: tuple[str, ...]


def parse_pools(data: Any, datasets: Sequence[str], w: Any) -> tuple[Pool, ...]:
    """The ``[pools]`` table: each pool's datasets are two or more of the study's, each in
    at most one pool; a pool's name is not a dataset's (the table names both alike)."""
    if not isinstance(data, Mapping):
        raise w.fail("pools", "must be a table, e.g. [pools.cv] with datasets = [...].")
    pools: list[Pool] = []
    owner: dict[str, str] = {}
    for name, table in data.items():
        where = f"pools.{w.name(name, f'pools.{name}')}"
        table = w.keys(table, POOL_KEYS, where, "key")
        members = table.get("datasets")
        if not (isinstance(members, list) and all(isinstance(d, str) for d in members)):
            raise w.fail(where, f"'datasets' must be a list of dataset names, got {members!r}.")
        if len(set(members)) < 2 or len(set(members)) != len(members):
            raise w.fail(
                where,
                f"'datasets' must name two or more datasets, each once, got {members}.",
                hint="A pool averages a model seed's values over the folds it lists.",
            )
        if name in datasets:
            raise w.fail(
                where,
                f"the pool's name '{name}' is a dataset's: the table would name both alike.",
                hint="Give the pool another name, e.g. cv.",
            )
        for ds in members:
            if ds not in datasets:
                near = nearest_choice(ds, list(datasets))
                raise w.fail(
                    where,
                    f"'datasets' names {ds!r}, which is not a dataset of the study.",
                    hint=f"Did you mean '{near}'?"
                    if near
                    else f"Its datasets: {', '.join(datasets)}.",
                )
            if ds in owner:
                raise w.fail(
                    where, f"the dataset '{ds}' is in pool '{owner[ds]}' already.",
                    hint="A dataset is a fold of at most one cross-validation.",
                )  # fmt: skip
            owner[ds] = name
        pools.append(Pool(name, tuple(members)))
    return tuple(pools)


def check_schemes(pools: Sequence[Pool], schemes: Mapping[str, str], w: Any) -> None:
    """The datasets of a pool share a label scheme (their metrics are the same)."""
    for pool in pools:
        found = {ds: schemes[ds] for ds in pool.datasets}
        if len(set(found.values())) > 1:
            listed = ", ".join(f"{ds}: {s}" for ds, s in found.items())
            raise w.fail(
                f"pools.{pool.name}",
                f"its datasets have different label schemes ({listed}); folds of one "
                "cross-validation share one.",
            )


def pooled(values: pd.DataFrame, pools: Sequence[Pool]) -> pd.DataFrame:
    """``values`` (one row per dataset, arm, seed, column, metric) with the rows of each
    pool's datasets replaced by one row per (arm, seed, column, metric): their mean, NaN
    unless the seed has a value on every dataset of the pool. The pool takes the place of its
    first dataset in the table's order."""
    if not pools or values.empty:
        return values
    keys = ["arm", "seed", "column", "metric"]
    parts: list[pd.DataFrame] = []
    done: set[str] = set()
    of = {ds: p for p in pools for ds in p.datasets}
    for ds in dict.fromkeys(values["dataset"]):
        pool = of.get(ds)
        if pool is None:
            parts.append(values[values["dataset"] == ds])
            continue
        if pool.name in done:
            continue
        done.add(pool.name)
        rows = values[values["dataset"].isin(pool.datasets)]
        grouped = rows.groupby(keys, sort=False)["value"]
        mean = grouped.agg(_mean_of_all, n=len(pool.datasets)).reset_index()
        parts.append(mean.assign(dataset=pool.name)[list(values.columns)])
    return pd.concat(parts, ignore_index=True)


def _mean_of_all(values: pd.Series, n: int) -> float:
    """The mean of ``n`` values, or NaN when one is missing (a seed without every fold)."""
    if len(values) != n or values.isna().any():
        return math.nan
    return float(values.mean())


def note(pools: Sequence[Pool]) -> str:
    """The table's sentence on its pools ('' without any)."""
    if not pools:
        return ""
    each = "; ".join(f"{p.name} pools {', '.join(p.datasets)}" for p in pools)
    return (
        f"Datasets pooled as the folds of one cross-validation ({each}): a model seed's value "
        "is first averaged over the pool's datasets, so each model seed is one replicate."
    )
