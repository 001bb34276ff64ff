"""SMPO (Vikhr's Simple Margin PO): `pref_losses.smpo_loss`, reference-free, length-normalised margin plus a
ρ-weighted SFT term on the chosen and (1 − ρ) on the rejected completions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective


class SmpoLoss(Strict):
    """Defaults are Vikhr's `SimpleMarginPOConfig` at c48ca29: β 1.2, target_margin 0.35, chosen_sft_ratio ρ 0.8,
    variant smooth_lower_bound (`sigmoid` = SimPO with γ = β·m; `hinge`; `ipo` = symmetric squared margin)."""

    name: Literal["smpo"]
    beta: Number = Field(default=1.2, gt=0)
    target_margin: Number = Field(default=0.35, ge=0)
    chosen_sft_ratio: Number = Field(default=0.8, ge=0, le=1)
    variant: Literal["sigmoid", "hinge", "ipo", "smooth_lower_bound"] = "smooth_lower_bound"


def loss(pairs, cfg: SmpoLoss):
    from rutune.train.pref_losses import smpo_loss

    return smpo_loss(pairs.chosen_sum, pairs.chosen_count, pairs.rejected_sum, pairs.rejected_count, beta=cfg.beta,
                     target_margin=cfg.target_margin, chosen_sft_ratio=cfg.chosen_sft_ratio, variant=cfg.variant)


OBJECTIVE = Objective("smpo", SmpoLoss, loss, title="SMPO (Vikhr: margin + chosen/rejected SFT, reference-free)",
                      order=30)
