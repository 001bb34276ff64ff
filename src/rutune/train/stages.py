"""`rutune train`: run the experiment's training stages in order, each skipped when already done.

A stage is done when `train/<stage>/manifest.json` records the input hash computed now: the stage's config slice
(its own block, the base model when it starts from base, the data policy, the seed) + upstream hashes (the content
hash prepare recorded for the stage's own data block, `sft` or `preference`, so changing the other block's data does
not rerun it; the previous stage's manifest) + the rutune version. A changed hash (or `--force`) also discards the
stage's intermediate Trainer checkpoints, which belong to the old inputs; an unchanged hash with no manifest (a
killed run) resumes from them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rutune.rundir import RunDir, input_hash, mark_started, read_manifest, stage_done, started_for, write_manifest
from rutune.train.errors import TrainError

RECIPE_MODULES = {"sft": "rutune.train.sft", "simpo": "rutune.train.simpo"}
DATA_FILES = {"sft": "sft.parquet", "simpo": "preference.parquet"}
DATA_BLOCKS = {"sft": "sft", "simpo": "preference"}  # the `data:` block (and prepare manifest key) a recipe trains on


def stage_input_hash(cfg, stage, run: RunDir) -> str:
    """Identity of a stage's inputs (see the module docstring)."""
    from rutune.train.runtime import data_hash  # lazy: runtime imports transformers

    if stage.recipe not in DATA_BLOCKS:
        raise TrainError(f"unknown recipe {stage.recipe!r}; expected one of {', '.join(DATA_BLOCKS)}")
    block = DATA_BLOCKS[stage.recipe]
    data_block = getattr(cfg.data, block)
    config_slice = {
        "stage": stage.model_dump(mode="json"),
        "data_policy": data_block.model_dump(mode="json", include={"max_tokens", "overlength"}) if data_block else None,
        "seed": cfg.seed,
        "base_model": cfg.base_model.model_dump(mode="json") if stage.init_from == "base" else None,
    }
    upstream = [f"data:{data_hash(run, block) or 'missing'}"]  # this block's prepared data only
    if stage.init_from != "base":
        prev = read_manifest(run.train(stage.init_from)) or {}
        upstream.append(f"stage:{stage.init_from}:{prev.get('input_hash', 'missing')}")
    return input_hash(config_slice, upstream)


def _reset_if_stale(stage_dir: Path, expected_hash: str, force: bool) -> None:
    """Keep intermediate checkpoints only when they were made for the same inputs (so a resume is exact)."""
    if force or started_for(stage_dir) != expected_hash:
        for sub in ("trainer", "metrics.jsonl", "manifest.json"):
            target = stage_dir / sub
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
    mark_started(stage_dir, expected_hash)


def _recipe(name: str):
    import importlib

    if name not in RECIPE_MODULES:
        raise TrainError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPE_MODULES)}")
    return importlib.import_module(RECIPE_MODULES[name])


def run_training(cfg, *, force: bool = False, only: list[str] | None = None, show_progress: bool = True) -> list[Path]:
    """Run `cfg.train.stages` in order (or only the named ones); returns each stage's checkpoint folder."""
    stages = list(cfg.train.stages)
    if not stages:
        raise TrainError("config has no train.stages; add e.g. `train: {stages: [{recipe: sft}]}`")
    names = [s.name for s in stages]
    for name in only or []:
        if name not in names:
            raise TrainError(f"--stage {name}: no such stage; the config has: {', '.join(names)}")
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    out = []
    for stage in stages:
        if only and stage.name not in only:
            continue
        stage_dir = run.train(stage.name)
        expected = stage_input_hash(cfg, stage, run)
        if not force and stage_done(stage_dir, expected) and (run.checkpoint(stage.name) / "config.json").exists():
            out.append(run.checkpoint(stage.name))
            continue
        stage_dir.mkdir(parents=True, exist_ok=True)
        if _is_main_process():
            _reset_if_stale(stage_dir, expected, force)
        checkpoint = _recipe(stage.recipe).run_stage(cfg, stage, run, show_progress=show_progress)
        if _is_main_process():
            write_manifest(stage_dir, {"input_hash": expected, "stage": stage.name, "recipe": stage.recipe,
                                       "init_from": stage.init_from, "checkpoint": str(checkpoint)})
            shutil.rmtree(stage_dir / "trainer", ignore_errors=True)  # resume state, useless once the stage is done
        out.append(checkpoint)
    return out


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


__all__ = ["run_training", "stage_input_hash"]
