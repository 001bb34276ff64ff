"""Mixture planning: pure functions from sizes, percents and a seed to per-source row indices.

Semantics (design.md): `percent` is a share OF EACH SOURCE after filters, never a share of the total.
`percent: 60` takes a seeded 60% sample without replacement; `percent: 250` takes every row twice plus a
seeded 50% sample; `count: N` takes N rows (whole repeats plus a seeded remainder when N exceeds the source).
The realised size of a percent is `floor(n·p/100)` whole-row passes plus `round(n·frac)` sampled rows, so
60% of 7 rows is round(4.2) = 4.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SourcePlan:
    source: str
    available: int
    requested: str  # "60%" or "count 500", as the user wrote it
    indices: tuple[int, ...]  # into the filtered source, repeats allowed

    @property
    def realised(self) -> int:
        return len(self.indices)


def target_rows(available: int, *, percent: float | None = None, count: int | None = None) -> int:
    """Rows a source contributes: `available · percent/100` (rounded) or `count`."""
    if (percent is None) == (count is None):
        raise ValueError("give exactly one of percent or count")
    if percent is not None:
        if percent < 0 or math.isnan(percent):
            raise ValueError(f"percent must be ≥ 0, got {percent}")
        whole, frac = divmod(percent, 100)
        return int(whole) * available + round(available * frac / 100)
    if count < 0:
        raise ValueError(f"count must be ≥ 0, got {count}")
    return count


def plan_source(source: str, available: int, *, seed: int, percent: float | None = None,
                count: int | None = None) -> SourcePlan:
    """Indices for one source: whole passes in order, then a seeded sample without replacement."""
    n = target_rows(available, percent=percent, count=count)
    requested = f"{percent:g}%" if percent is not None else f"count {count}"
    if available == 0:
        return SourcePlan(source, 0, requested, ())
    whole, rest = divmod(n, available)
    rng = random.Random(f"{seed}:{source}")
    indices = list(range(available)) * whole + sorted(rng.sample(range(available), rest))
    return SourcePlan(source, available, requested, tuple(indices))


def interleave(plans: list[SourcePlan], *, seed: int) -> list[tuple[int, int]]:
    """The final row order as (plan position, index) pairs, shuffled with the seed so sources interleave."""
    order = [(p, i) for p, plan in enumerate(plans) for i in plan.indices]
    random.Random(f"{seed}:interleave").shuffle(order)
    return order


def holdout_split(n: int, *, percent: float, seed: int, source: str) -> tuple[list[int], list[int]]:
    """Split range(n) into (train, holdout) with a seeded `percent` of rows held out."""
    k = round(n * percent / 100)
    held = set(random.Random(f"{seed}:{source}:holdout").sample(range(n), k)) if k else set()
    return [i for i in range(n) if i not in held], sorted(held)
