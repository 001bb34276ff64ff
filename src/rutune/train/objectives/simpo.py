"""SimPO: −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ), reference-free (`losses.simpo_loss`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.schema import Number, Strict
from rutune.train.objectives import Objective


class SimpoLoss(Strict):
    """`gamma` is an absolute reward margin (TRL's `simpo_gamma`); SimPO's γ/β ratio = gamma / beta.

    Defaults are SimPO's published setting for an instruct model (Llama-3-8B-Instruct: β 2.5, γ/β 0.55 → γ 1.375,
    no SFT term), not TRL's CPO defaults (β 0.1, cpo_alpha 1.0). `sft_weight` is CPO's α (TRL's `cpo_alpha`).
    See docs/simpo.md for the conversions and the other published settings.
    """

    name: Literal["simpo"]
    beta: Number = Field(default=2.5, gt=0)
    gamma: Number = Field(default=1.375, ge=0)
    sft_weight: Number = Field(default=0.0, ge=0)


def loss(pairs, cfg: SimpoLoss):
    from rutune.train.losses import simpo_loss

    return simpo_loss(pairs.chosen_sum, pairs.chosen_count, pairs.rejected_sum, pairs.rejected_count, cfg.beta,
                      cfg.gamma, sft_weight=cfg.sft_weight)


OBJECTIVE = Objective("simpo", SimpoLoss, loss, title="SimPO (length-normalised, reference-free)", order=10)
