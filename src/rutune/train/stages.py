"""`rutune train`: run the experiment's training stages in order, each skipped when already done.

A stage is done when `train/<stage>/manifest.json` records the identity computed now (`stage_identity`): the
stage's config slice (its own block, the base model when it starts from base, the data policy, the seed) + the
content hash prepare recorded for the stage's own data block (so changing the other block's data does not rerun
it) + the previous stage's identity + the rutune version. A changed identity (or `--force`) also discards the
stage's intermediate Trainer checkpoints, which belong to the old inputs; an unchanged identity with no manifest
(a killed run) resumes from them. The recipe checks its inputs before the stage folder is created, so a stage
that cannot start leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rutune.rundir import RunDir, mark_started, read_manifest, stage_done, stage_identity, started_for, write_manifest
from rutune.train.errors import TrainError
from rutune.train.recipes import RECIPES


def stage_input_hash(cfg, stage, run: RunDir) -> str:
    """The identity of a training stage's inputs (see the module docstring)."""
    from rutune.train.stage_io import data_hash

    recipe = RECIPES.get(stage.recipe)
    data_block = getattr(cfg.data, recipe.data_block) if recipe.data_block else None
    config_slice = {
        "stage": stage.model_dump(mode="json"),
        "data_policy": data_block.model_dump(mode="json", include={"max_tokens", "overlength"}) if data_block else None,
        "seed": cfg.seed,
        "base_model": cfg.base_model.model_dump(mode="json") if stage.init_from == "base" else None,
    }
    upstream = [f"data:{data_hash(run, recipe.data_block) or 'missing'}"] if recipe.data_block else []
    if stage.init_from != "base":
        prev = read_manifest(run.train(stage.init_from)) or {}
        upstream.append(f"stage:{stage.init_from}:{prev.get('input_hash', 'missing')}")
    return stage_identity(config_slice, upstream=upstream + list(recipe.inputs(cfg, stage)))


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
        out.append(run_stage(cfg, stage, run, force=force, show_progress=show_progress))
    return out


def run_stage(cfg, stage, run: RunDir, *, force: bool = False, show_progress: bool = True) -> Path:
    """One training stage: skipped when done, else checked, started (inputs marker), trained, recorded."""
    recipe = RECIPES.get(stage.recipe)
    stage_dir = run.train(stage.name)
    expected = stage_input_hash(cfg, stage, run)
    if not force and stage_done(stage_dir, expected) and (run.checkpoint(stage.name) / "config.json").exists():
        return run.checkpoint(stage.name)
    recipe.check(cfg, stage, run)  # bad inputs fail here, before the folder exists
    from rutune.train.stage_io import init_source

    init_source(cfg, stage, run)
    if _is_main_process():
        stage_dir.mkdir(parents=True, exist_ok=True)
        _reset_if_stale(stage_dir, expected, force)
    checkpoint = recipe.run(cfg, stage, run, show_progress=show_progress)
    if _is_main_process():
        write_manifest(stage_dir, {**recipe.manifest(cfg, stage, checkpoint),
                                   "input_hash": expected, "stage": stage.name, "recipe": stage.recipe,
                                   "data_block": recipe.data_block, "init_from": stage.init_from,
                                   "checkpoint": str(checkpoint)})
        shutil.rmtree(stage_dir / "trainer", ignore_errors=True)  # resume state, useless once the stage is done
    return checkpoint


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


__all__ = ["run_stage", "run_training", "stage_input_hash"]
