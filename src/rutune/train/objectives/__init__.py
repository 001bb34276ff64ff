"""Preference objectives: one module per objective in this package, each declaring `OBJECTIVE = Objective(...)`.

An objective declares its name (the `loss.name` of a preference stage), its config model (`name: Literal[...]`
plus its own parameters with the reference implementation's defaults), whether it needs reference log-probs,
and `loss(pairs, cfg)`: per-pair sequence log-probs in, the batch loss and per-pair rewards out. The maths is a
pure function in `rutune.train.losses`; the entry only maps config keys onto it. Adding an objective = its loss
in `losses.py` + one module here + tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from rutune.registry import Registry


class PairLogps(NamedTuple):
    """Per-pair inputs of every objective (tensors of shape (pairs,)): summed completion log-probs and completion
    token counts under the policy, and under the reference when the objective needs one."""

    chosen_sum: Any
    chosen_count: Any
    rejected_sum: Any
    rejected_count: Any
    ref_chosen_sum: Any = None
    ref_rejected_sum: Any = None


@dataclass(frozen=True)
class Objective:
    name: str
    config: type
    loss: Callable[[PairLogps, Any], Any]  # → a NamedTuple with at least loss, rewards_chosen, rewards_rejected
    title: str
    needs_reference: bool = False
    order: int = 100


OBJECTIVES: Registry[Objective] = Registry("preference objective", __name__, "OBJECTIVE")

__all__ = ["OBJECTIVES", "Objective", "PairLogps"]
