"""Training recipes: one module per recipe in this package, each declaring `RECIPE = Recipe(...)`.

A recipe declares, once: its name (the `recipe:` tag of a `train.stages` entry), its stage config model (an
`OptimConfig` subclass whose `recipe` field is `Literal[<name>]`), the prepared data block it trains on
(`sft`, `preference`, or None for a recipe that brings its own data), its run function
`run(cfg, stage, run_dir, *, show_progress) -> checkpoint folder`, a `check(cfg, stage, run_dir)` that
rejects missing inputs before the stage's folder is created, and `inputs(cfg, stage)`: what else the stage reads
(a named reference model's weights) beyond the common identity parts, and `manifest(cfg, stage, checkpoint)`:
extra keys for the finished stage's `manifest.json` (e.g. the text sources and licences a recipe brought itself;
the common keys win on a clash). The config union, `init_from`/data-link checks,
stage dispatch, `--force` help and the train manifest (which the report reads for its labels) derive from
`RECIPES`; the loss maths stays pure in `rutune.train.losses`.

Recipe modules must stay cheap to import (torch is imported inside the run functions): the config is validated
without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rutune.registry import Registry


@dataclass(frozen=True)
class Recipe:
    name: str
    config: type
    data_block: str | None
    run: Callable[..., Path]
    title: str
    check: Callable[[Any, Any, Any], None] = lambda cfg, stage, run_dir: None
    inputs: Callable[[Any, Any], list[str]] = lambda cfg, stage: []  # identity parts beyond the common ones
    order: int = 100
    manifest: Callable[[Any, Any, Path], dict] = lambda cfg, stage, checkpoint: {}  # extra manifest.json keys


RECIPES: Registry[Recipe] = Registry("recipe", __name__, "RECIPE")

__all__ = ["RECIPES", "Recipe"]
