"""The `preference` recipe: preference optimisation on `prepare/preference.parquet` with the objective its `loss:`
block names (implementation: `rutune.train.preference`; objectives: `rutune.train.objectives`)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from rutune.schema import Number
from rutune.train.objectives import OBJECTIVES
from rutune.train.options import OptimConfig
from rutune.train.recipes import Recipe

# The objectives' config models, chosen by their `name` (simpo, …): a loss is a component with its own keys.
Loss = Annotated[Union[tuple(o.config for o in OBJECTIVES)], Field(discriminator="name")]


class PreferenceStage(OptimConfig):
    """Preference training. `loss`: the objective and its parameters (default SimPO with SimPO's published
    instruct setting); `batching`: `prefix_shared` (one row per pair, the prompt computed once), `concat` (TRL's
    layout) or `packed` (all pairs of a micro-batch in one unpadded row, `docs/pref-packing.md`; forces the
    `PAIR_PACKED` attention) — same loss and gradients. `reference` (objectives that need one: dpo, ipo, …): null =
    the stage's starting checkpoint (with LoRA: the adapters-disabled model), or a model path / hub id; its
    log-probs are computed once before training and cached (docs/objectives.md). `name` defaults to the
    objective's name. The learning rate and warmup defaults are SimPO's (1e-6, 0.1)."""

    recipe: Literal["preference"]
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "sft"
    learning_rate: Number = Field(default=1e-6, gt=0)
    warmup_ratio: Number = Field(default=0.1, ge=0, lt=1)
    loss: Loss = Field(default_factory=lambda: OBJECTIVES.get("simpo").config(name="simpo"))
    batching: Literal["prefix_shared", "concat", "packed"] = "prefix_shared"
    reference: str | None = None

    @model_validator(mode="after")
    def _default_name(self):
        if self.name is None:
            self.name = self.loss.name
        if self.reference is not None and not OBJECTIVES.get(self.loss.name).needs_reference:
            raise ValueError(f"reference: {self.reference!r} is set, but objective {self.loss.name!r} uses no "
                             "reference model; remove it")
        return self


def run(cfg, stage, run_dir, *, show_progress: bool = True):
    from rutune.train.preference import run_stage

    return run_stage(cfg, stage, run_dir, show_progress=show_progress)


def check(cfg, stage, run_dir) -> None:
    from rutune.train.preference import preference_data
    from rutune.train.reference import check_reference

    preference_data(run_dir)
    check_reference(cfg, stage)


def inputs(cfg, stage) -> list[str]:
    """A named reference model is read by the stage: its weights' content is part of the stage identity (the
    default reference, the init checkpoint, is already covered by the previous stage's identity)."""
    if stage.reference is None:
        return []
    from rutune.train.reference import weights_hash

    return [f"reference:{stage.reference}:{weights_hash(stage.reference)}"]


RECIPE = Recipe("preference", PreferenceStage, "preference", run, inputs=inputs,
                title="preference optimisation (SimPO, DPO, ORPO, SMPO, …) on the prepared pairs", check=check,
                order=20)
