"""Hinge / SLiC (reference-based): `pref_losses.dpo_hinge_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class HingeLoss(Strict):
    """Default β 0.1 (TRL `DPOConfig`); ℓ = max(0, 1 − βΔ)."""

    name: Literal["hinge"]
    beta: Number = Field(default=0.1, gt=0)


def loss(pairs, cfg: HingeLoss):
    from rutune.train.pref_losses import dpo_hinge_loss

    return dpo_hinge_loss(*reference_args(pairs, "hinge"),
                          beta=cfg.beta)


OBJECTIVE = Objective("hinge", HingeLoss, loss,
                      title="Hinge / SLiC (reference-based)", needs_reference=True, order=26)
