"""APO-zero (anchored, reference-based): `pref_losses.apo_zero_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class ApoZeroLoss(Strict):
    """Default β 0.1 (TRL `DPOConfig`; the paper's setting, with lr 2e-7)."""

    name: Literal["apo_zero"]
    beta: Number = Field(default=0.1, gt=0)


def loss(pairs, cfg: ApoZeroLoss):
    from rutune.train.pref_losses import apo_zero_loss

    return apo_zero_loss(*reference_args(pairs, "apo_zero"),
                         beta=cfg.beta)


OBJECTIVE = Objective("apo_zero", ApoZeroLoss, loss,
                      title="APO-zero (anchored, reference-based)", needs_reference=True, order=28)
