"""Config models every training recipe shares: the optimiser/schedule/checkpoint knobs and LoRA.

A recipe's stage model subclasses `OptimConfig` and adds its own keys (`packing` for SFT, `loss` and `batching`
for preference training), so a stage's keys are exactly what its recipe reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rutune.schema import Number, PositiveInt, Strict


class LoraConfig(Strict):
    r: PositiveInt = 16
    alpha: Number = Field(default=32, gt=0)
    dropout: Number = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    merge_on_save: bool = True


class OptimConfig(Strict):
    """Knobs shared by every recipe. Batch sizes are in sequences (SFT) or pairs (preference) per device.

    `warmup_ratio` is a fraction of the total steps (transformers 5 reads a float `warmup_steps` < 1 as exactly
    that ratio, the replacement of the removed `warmup_ratio` argument).
    """

    learning_rate: Number = Field(default=2e-5, gt=0)
    epochs: Number = Field(default=1, gt=0)
    max_steps: int = Field(default=-1, strict=True)
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

    @model_validator(mode="after")
    def _something_to_train(self):
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps: give a positive number of steps, or -1 to train for `epochs`")
        return self
