"""Length-normalised DPO (reference-based): `pref_losses.dpo_sigmoid_norm_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class SigmoidNormLoss(Strict):
    """Default β 0.1 (TRL `DPOConfig`); per-token log-ratios, so a useful β is far larger than plain DPO's."""

    name: Literal["sigmoid_norm"]
    beta: Number = Field(default=0.1, gt=0)


def loss(pairs, cfg: SigmoidNormLoss):
    from rutune.train.pref_losses import dpo_sigmoid_norm_loss

    return dpo_sigmoid_norm_loss(*reference_args(pairs, "sigmoid_norm"),
                                 beta=cfg.beta)


OBJECTIVE = Objective("sigmoid_norm", SigmoidNormLoss, loss,
                      title="length-normalised DPO (reference-based)", needs_reference=True, order=29)
