"""IPO (per-token log-ratios, TRL's form): `pref_losses.ipo_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class IpoLoss(Strict):
    """Default β (= IPO's τ) 0.1 (TRL `DPOConfig`): per-token target 1/(2β) = 5."""

    name: Literal["ipo"]
    beta: Number = Field(default=0.1, gt=0)


def loss(pairs, cfg: IpoLoss):
    from rutune.train.pref_losses import ipo_loss

    return ipo_loss(*reference_args(pairs, "ipo"),
                    beta=cfg.beta)


OBJECTIVE = Objective("ipo", IpoLoss, loss,
                      title="IPO (per-token log-ratios, TRL's form)", needs_reference=True, order=22)
