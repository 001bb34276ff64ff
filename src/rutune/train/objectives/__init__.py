"""Preference objectives: one module per objective in this package, each declaring `OBJECTIVE = Objective(...)`.

An objective declares its name (the `loss.name` of a preference stage), its config model (`name: Literal[...]`
plus its own parameters with the reference implementation's defaults), whether it needs reference log-probs,
whether the step must also score the prompt tokens (`needs_prompt`, ORPO), and `loss(pairs, cfg)`: per-pair
sequence log-probs in, the batch loss and per-pair rewards out. The maths is a pure function in
`rutune.train.losses` / `pref_losses`; the entry only maps config keys onto it. Adding an objective = its loss +
one module here + tests. Reference sums come from the one no-grad pass before training (`rutune.train.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from rutune.registry import Registry


class PairLogps(NamedTuple):
    """Per-pair inputs of every objective (tensors of shape (pairs,)): summed completion log-probs and completion
    token counts under the policy, the reference's sums when the objective needs them, and the prompt tokens' sums
    and counts (every prompt token but the first) when it declares `needs_prompt`."""

    chosen_sum: Any
    chosen_count: Any
    rejected_sum: Any
    rejected_count: Any
    ref_chosen_sum: Any = None
    ref_rejected_sum: Any = None
    prompt_sum: Any = None
    prompt_count: Any = None


@dataclass(frozen=True)
class Objective:
    name: str
    config: type
    loss: Callable[[PairLogps, Any], Any]  # → a NamedTuple with at least loss, rewards_chosen, rewards_rejected
    title: str
    needs_reference: bool = False  # the step needs per-pair reference sums (computed once, cached on disk)
    needs_prompt: bool = False  # the step must also score the prompt tokens (ORPO's NLL covers them)
    order: int = 100


def reference_args(pairs: PairLogps, name: str) -> tuple:
    """The six tensors of a reference objective in `pref_losses` order; a clear error when the reference is
    missing (a wiring bug: the stage computes it before training for every `needs_reference` objective)."""
    if pairs.ref_chosen_sum is None or pairs.ref_rejected_sum is None:
        raise ValueError(f"{name}: needs reference log-probs, but the batch has none")
    return (pairs.chosen_sum, pairs.chosen_count, pairs.rejected_sum, pairs.rejected_count, pairs.ref_chosen_sum,
            pairs.ref_rejected_sum)


OBJECTIVES: Registry[Objective] = Registry("preference objective", __name__, "OBJECTIVE")

__all__ = ["OBJECTIVES", "Objective", "PairLogps", "reference_args"]
