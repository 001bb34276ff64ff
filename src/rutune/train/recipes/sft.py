"""The `sft` recipe: supervised fine-tuning on `prepare/sft.parquet` (implementation: `rutune.train.sft`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.train.options import OptimConfig
from rutune.train.recipes import Recipe


class SftStage(OptimConfig):
    recipe: Literal["sft"]
    name: str = Field(default="sft", pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "base"
    packing: bool = True


def run(cfg, stage, run_dir, *, show_progress: bool = True):
    from rutune.train.sft import run_stage

    return run_stage(cfg, stage, run_dir, show_progress=show_progress)


def check(cfg, stage, run_dir) -> None:
    from rutune.train.sft import sft_data

    sft_data(run_dir)


RECIPE = Recipe("sft", SftStage, "sft", run, title="supervised fine-tuning on the prepared mixture", check=check,
                order=10)
