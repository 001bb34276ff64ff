"""Schema of the `train:` block: an ordered list of stages, one recipe each (`sft`, `simpo`).

Each recipe has its own model (no loss variants as flags): a stage's keys are exactly what its
recipe reads, and `init_from` names `base` or an earlier stage, checked before anything loads.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Number = Annotated[float, Field(strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LoraConfig(_Strict):
    r: PositiveInt = 16
    alpha: Number = Field(default=32, gt=0)
    dropout: Number = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge_on_save: bool = True


class OptimConfig(_Strict):
    """Knobs shared by every recipe. Batch sizes are in sequences (SFT) or pairs (SimPO) per device."""

    learning_rate: Number = Field(default=2e-5, gt=0)
    epochs: Number = Field(default=1, gt=0)
    max_steps: Annotated[int, Field(strict=True)] = -1
    per_device_batch_size: PositiveInt = 8
    gradient_accumulation_steps: PositiveInt = 1
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Number = Field(default=0.03, ge=0, lt=1)
    weight_decay: Number = Field(default=0.0, ge=0)
    max_grad_norm: Number = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    lora: LoraConfig | None = None
    logging_steps: PositiveInt = 1
    save_steps: PositiveInt = 50
    save_total_limit: PositiveInt = 2
    report_to: list[str] = Field(default_factory=list)


class SftStage(OptimConfig):
    recipe: Literal["sft"]
    name: str = Field(default="sft", pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "base"
    packing: bool = True


class SimpoStage(OptimConfig):
    """SimPO. `gamma` is an absolute reward margin (TRL's `simpo_gamma`); SimPO's γ/β ratio = gamma / beta.

    Defaults are SimPO's published setting for an instruct model (Llama-3-8B-Instruct: β 2.5, γ/β 0.55 → γ 1.375,
    LR 1e-6, cosine schedule, warmup 0.1, no SFT term), not TRL's CPO defaults (β 0.1, cpo_alpha 1.0). See
    docs/simpo.md for the conversions and the other published settings.
    """

    recipe: Literal["simpo"]
    name: str = Field(default="simpo", pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "sft"
    learning_rate: Number = Field(default=1e-6, gt=0)
    warmup_ratio: Number = Field(default=0.1, ge=0, lt=1)
    beta: Number = Field(default=2.5, gt=0)
    gamma: Number = Field(default=1.375, ge=0)
    sft_weight: Number = Field(default=0.0, ge=0)
    batching: Literal["prefix_shared", "concat"] = "prefix_shared"


RECIPES = ("sft", "simpo")
STAGE_MODELS = (SftStage, SimpoStage)
Stage = Annotated[Union[SftStage, SimpoStage], Field(discriminator="recipe")]


class TrainConfig(_Strict):
    stages: list[Stage] = Field(default_factory=list)

    def check_links(self, *, has_sft_data: bool, has_pref_data: bool) -> None:
        """Stage names unique, `init_from` refers backwards, data present for each recipe."""
        seen = ["base"]
        problems = []
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                problems.append(f"train.stages.{i}.name: duplicate stage name {stage.name!r}")
            if stage.init_from not in seen:
                problems.append(
                    f"train.stages.{i}.init_from: unknown stage {stage.init_from!r}; expected one of {', '.join(seen)}"
                )
            if stage.recipe == "sft" and not has_sft_data:
                problems.append(f"train.stages.{i}: recipe sft needs data.sft")
            if stage.recipe == "simpo" and not has_pref_data:
                problems.append(f"train.stages.{i}: recipe simpo needs data.preference")
            seen.append(stage.name)
        if problems:
            raise ValueError("; ".join(problems))
