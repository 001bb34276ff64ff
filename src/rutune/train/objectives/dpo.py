"""DPO (sigmoid), with cDPO label smoothing and RPO's SFT term: `pref_losses.dpo_sigmoid_loss`,
on the policy's and the cached reference's sums (needs a reference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective, reference_args


class DpoLoss(Strict):
    """Defaults are TRL `DPOConfig`'s (β 0.1, label_smoothing 0 = plain DPO). `label_smoothing` ε ∈ [0, 0.5) is
    conservative DPO (cDPO); `sft_weight` is RPO's α (TRL `loss_type=["sigmoid","sft"], loss_weights=[1, α]`), 0 = off
    (the RPO paper uses 1.0)."""

    name: Literal["dpo"]
    beta: Number = Field(default=0.1, gt=0)
    label_smoothing: Number = Field(default=0.0, ge=0, lt=0.5)
    sft_weight: Number = Field(default=0.0, ge=0)


def loss(pairs, cfg: DpoLoss):
    from rutune.train.pref_losses import dpo_sigmoid_loss

    return dpo_sigmoid_loss(*reference_args(pairs, "dpo"),
                            beta=cfg.beta, label_smoothing=cfg.label_smoothing, sft_weight=cfg.sft_weight)


OBJECTIVE = Objective("dpo", DpoLoss, loss,
                      title="DPO (sigmoid), with cDPO label smoothing and RPO's SFT term",
                      needs_reference=True, order=20)
