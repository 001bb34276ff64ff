"""Confidence intervals and paired tests for per-item eval results. Pure numpy (no torch), seeded.

The report and the arena reuse these. Every function takes per-item values (0/1 or scores) and is
deterministic for a given seed, independent of input file order once items are sorted by id.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

_BLOCK = 200  # bootstrap rounds drawn at once; bounds memory at rounds × n ints per block


def _as_array(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError("expected a 1-D sequence of per-item values")
    return arr


def _bootstrap_means(values: np.ndarray, rounds: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    out = np.empty(rounds)
    for start in range(0, rounds, _BLOCK):
        stop = min(start + _BLOCK, rounds)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float], *, rounds: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (items resampled with replacement). Empty input → (nan, nan)."""
    arr = _as_array(values)
    if len(arr) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    return _percentiles(_bootstrap_means(arr, rounds, rng), level)


def stratified_bootstrap_ci(groups: Sequence[Sequence[float]], combine: Callable[[np.ndarray], float] | None = None,
                            *, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """CI of a statistic of group means, resampling items within each group.

    `combine` maps the vector of group means to one number (default: their mean, i.e. a macro average).
    An empty group contributes a fixed 0 mean (LIBRA counts a length that was not run as 0).
    """
    combine = combine or (lambda m: float(np.mean(m)))
    arrays = [_as_array(g) for g in groups]
    if not arrays:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    per_group = np.stack([_bootstrap_means(a, rounds, rng) if len(a) else np.zeros(rounds) for a in arrays], axis=1)
    stats = np.array([combine(row) for row in per_group])
    return _percentiles(stats, level)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, rounds: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean difference a − b over the same items, its CI, and a two-sided bootstrap p-value."""
    xa, xb = _as_array(a), _as_array(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired test needs the same items: {len(xa)} vs {len(xb)} values")
    if len(xa) == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": 0}
    diffs = xa - xb
    rng = np.random.default_rng(seed)
    samples = _bootstrap_means(diffs, rounds, rng)
    low, high = _percentiles(samples, level)
    p = 2.0 * min(float(np.mean(samples <= 0.0)), float(np.mean(samples >= 0.0)))
    return {"diff": float(diffs.mean()), "ci_low": low, "ci_high": high, "p_value": min(1.0, p), "n": len(xa)}


def mcnemar(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Exact McNemar test for paired 0/1 outcomes: binomial test on the discordant pairs.

    `only_a` counts items a got right and b wrong; `only_b` the reverse. Two-sided p = min(1, 2·P(X ≤ min)).
    """
    xa, xb = _as_array(a), _as_array(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired test needs the same items: {len(xa)} vs {len(xb)} values")
    if not (np.isin(xa, (0.0, 1.0)).all() and np.isin(xb, (0.0, 1.0)).all()):
        raise ValueError("McNemar needs 0/1 outcomes")
    only_a = int(np.sum((xa == 1) & (xb == 0)))
    only_b = int(np.sum((xa == 0) & (xb == 1)))
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)  # big-int division: 2.0**n overflows past n=1023
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2.0 * tail)}


def metric_entry(values: Sequence[float], *, n_total: int, item_key: str | None, rounds: int = 1000,
                 seed: int = 0, value: float | None = None,
                 ci: tuple[float, float] | None = None) -> dict[str, object]:
    """One `metrics.<name>` entry of results.json (docs/results-format.md)."""
    arr = _as_array(values)
    point = float(arr.mean()) if value is None and len(arr) else (value if value is not None else math.nan)
    low, high = ci if ci is not None else bootstrap_ci(arr, rounds=rounds, seed=seed)
    return {"value": point, "ci_low": low, "ci_high": high, "n_valid": int(len(arr)), "n_total": int(n_total),
            "item_key": item_key}
