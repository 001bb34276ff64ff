"""ORPO: `pref_losses.orpo_loss`, reference-free odds ratio + NLL over prompt and chosen completion (TRL's form).

The NLL includes the prompt tokens, so the step also scores the prompt positions (`needs_prompt`): the collated
batch gains prompt targets as segments 2n … 3n−1 (`rutune.train.pref_batch.add_prompt_targets`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective


class OrpoLoss(Strict):
    """`beta` is ORPO's λ; default 0.1 (TRL `ORPOConfig`, also the paper's setting, with lr 5e-6)."""

    name: Literal["orpo"]
    beta: Number = Field(default=0.1, gt=0)


def loss(pairs, cfg: OrpoLoss):
    from rutune.train.pref_losses import orpo_loss

    if pairs.prompt_sum is None:
        raise ValueError("orpo: the step gave no prompt log-probs (the objective declares needs_prompt)")
    return orpo_loss(pairs.chosen_sum, pairs.chosen_count, pairs.rejected_sum, pairs.rejected_count,
                     pairs.prompt_sum, pairs.prompt_count, beta=cfg.beta)


OBJECTIVE = Objective("orpo", OrpoLoss, loss, title="ORPO (odds ratio + NLL incl. the prompt, reference-free)",
                      needs_prompt=True, order=40)
