"""Robust DPO (rDPO, unbiased under label noise ε): `pref_losses.robust_dpo_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class RobustLoss(Strict):
    """Defaults are TRL `DPOConfig`'s (β 0.1, label_smoothing 0); the rDPO paper suggests ε 0.1. ε = 0.5 divides
    by zero, so ε ∈ [0, 0.5)."""

    name: Literal["robust"]
    beta: Number = Field(default=0.1, gt=0)
    label_smoothing: Number = Field(default=0.0, ge=0, lt=0.5)


def loss(pairs, cfg: RobustLoss):
    from rutune.train.pref_losses import robust_dpo_loss

    return robust_dpo_loss(*reference_args(pairs, "robust"),
                           beta=cfg.beta, label_smoothing=cfg.label_smoothing)


OBJECTIVE = Objective("robust", RobustLoss, loss,
                      title="Robust DPO (rDPO, unbiased under label noise ε)", needs_reference=True, order=24)
