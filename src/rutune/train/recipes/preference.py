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
    instruct setting); `batching`: `prefix_shared` (one row per pair, the prompt computed once) or `concat`
    (TRL's layout) — same loss and gradients. `name` defaults to the objective's name. The learning rate and
    warmup defaults are SimPO's (1e-6, 0.1)."""

    recipe: Literal["preference"]
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "sft"
    learning_rate: Number = Field(default=1e-6, gt=0)
    warmup_ratio: Number = Field(default=0.1, ge=0, lt=1)
    loss: Loss = Field(default_factory=lambda: OBJECTIVES.get("simpo").config(name="simpo"))
    batching: Literal["prefix_shared", "concat"] = "prefix_shared"

    @model_validator(mode="after")
    def _default_name(self):
        if self.name is None:
            self.name = self.loss.name
        return self


def run(cfg, stage, run_dir, *, show_progress: bool = True):
    from rutune.train.preference import run_stage

    return run_stage(cfg, stage, run_dir, show_progress=show_progress)


def check(cfg, stage, run_dir) -> None:
    from rutune.train.preference import preference_data

    preference_data(run_dir)


RECIPE = Recipe("preference", PreferenceStage, "preference", run,
                title="preference optimisation (SimPO, …) on the prepared pairs", check=check, order=20)
