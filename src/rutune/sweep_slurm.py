"""`rutune sweep GRID --launcher slurm`: every stage of every experiment of a grid as one graph of Slurm jobs.

Each stage is a job running `<python> -m rutune.cli run <the experiment's config> --only <stage key>`; the
configs are written to `<state dir>/configs/<experiment>.yaml` (sweep variants exist only in memory). A job waits
(`afterok`) on the jobs of its `Stage.after`; one last job builds the sweep's combined report
(`rutune sweep GRID --only-report`). As in the local sweep, experiments write no report of their own.

**Shared stages run once.** A stage's identity (`Stage.identity()`) cannot be computed before its upstream stages
have run: a training stage's identity holds the content hash of the data prepare writes, an eval's the identity
of the checkpoint it scores. So the graph groups stages by a *recipe* computed without running anything:

    recipe(stage) = hash(kind, blank identity, recipes of the upstream stages its identity reads)

The blank identity is the stage's identity in a run dir where nothing has run (`BLANK_ROOT`): its config slice,
the content of every file outside the run dir it reads, the code version, and fixed "missing" markers for the
upstream outputs — which the upstream recipes then stand for. An eval's identity reads the manifest of the stage
that trained its model, not prepare's (prepare is in its `after` for the files it reads, and those carry the
experiment's own path, so they already keep such evals per experiment): the base model's evals of every variant
get one recipe. Stages with the same kind and recipe are one Slurm job (`share_key` = `<stage key>@<recipe>`)
that runs the stage for each experiment in turn: the first computes it, the others link the finished folder
through the pipeline's `StageIndex`. If two stages of one recipe still came out different, the second would
simply compute its own — the grouping only saves work, `rutune run` decides what is done.

The recipe is the job's `what` (part of its fingerprint), so a changed config or data file resubmits the job even
though its key is the same and an earlier run succeeded; the keys (`<experiment>/<stage key>`) stay the same
while a sweep runs, so a rerun leaves queued and running jobs alone. A stage is `done` (not submitted) when it
and every stage it needs are finished with their current identity.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from rutune.launch_slurm import Job, JobStatus, SubmitResult, status, submit, wait
from rutune.rundir import stable_hash, stage_done, write_text_atomic
from rutune.sweep import SlurmBlock, expand, slurm_settings, sweep_report_dir

BLANK_ROOT = "/nonexistent/rutune-blank-run"  # a run dir where nothing has run: the blank identities' world


@dataclass
class Plan:
    """The job graph of a sweep, and what the tests and the CLI print about it."""

    jobs: list[Job]
    configs: dict[str, Path]  # experiment name → the config file its jobs read
    shared: dict[str, list[str]] = field(default_factory=dict)  # share key → the job keys it stands for


def default_state_dir(name: str, configs: list) -> Path:
    """`<output_root>/<sweep name>/slurm`, beside the sweep's report."""
    return Path(configs[0].output_root) / name / "slurm"


def identity_after(stage) -> tuple[str, ...]:
    """The upstream stages whose outputs the stage's identity reads (see the module docstring)."""
    return tuple(k for k in stage.after if not (stage.kind == "eval" and k == "prepare"))


def write_configs(configs: list, state_dir: Path) -> dict[str, Path]:
    """Each experiment's validated config as YAML under `<state_dir>/configs/`, for its jobs to read."""
    paths = {}
    for cfg in configs:
        path = state_dir / "configs" / f"{cfg.name}.yaml"
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_text_atomic(path, text)
        paths[cfg.name] = path.absolute()
    return paths


def _recipes_and_done(cfg) -> tuple[list, dict[str, str], dict[str, bool]]:
    """The experiment's stages, each stage's recipe and whether it is finished (it and all it needs)."""
    from rutune.pipeline import experiment_stages

    stages = experiment_stages(cfg, report=False, show_progress=False)
    blank = {s.key: s for s in experiment_stages(cfg.model_copy(update={"output_root": BLANK_ROOT}),
                                                 report=False, show_progress=False)}
    recipes: dict[str, str] = {}
    done: dict[str, bool] = {}
    for stage in stages:  # upstream stages come first
        recipes[stage.key] = stable_hash({"kind": stage.kind, "blank": blank[stage.key].identity(),
                                          "upstream": [recipes[k] for k in identity_after(stage)]})
        done[stage.key] = all(done[k] for k in stage.after) and stage_done(stage.folder, stage.identity())
    return stages, recipes, done


def plan_sweep(grid_path: str | Path, state_dir: str | Path, *, expanded=None, python: str = sys.executable,
               workdir: str | Path | None = None, slurm: SlurmBlock | None = None) -> Plan:
    """The sweep's job graph; writes the experiments' configs under `state_dir` (nothing is submitted)."""
    from rutune.pipeline import report_stage
    from rutune.rundir import RunDir

    grid_path = Path(grid_path).absolute()
    name, configs = expanded or expand(grid_path)
    slurm = slurm or slurm_settings(grid_path)
    state_dir = Path(state_dir).absolute()
    workdir = Path(workdir or os.getcwd()).absolute()
    paths = write_configs(configs, state_dir)

    def command(exp: str, key: str) -> list[str]:
        return [python, "-m", "rutune.cli", "run", str(paths[exp]), "--only", key]

    groups: dict[tuple[str, str], list[tuple[str, object]]] = {}  # (kind, recipe) → [(experiment, stage)]
    recipe_of: dict[tuple[str, str], str] = {}
    done_of: dict[tuple[str, str], bool] = {}
    for cfg in configs:
        stages, recipes, done = _recipes_and_done(cfg)
        for stage in stages:
            groups.setdefault((stage.kind, recipes[stage.key]), []).append((cfg.name, stage))
            recipe_of[cfg.name, stage.key] = recipes[stage.key]
            done_of[cfg.name, stage.key] = done[stage.key]

    jobs, shared = [], {}
    for (kind, recipe), members in groups.items():
        keys = [f"{exp}/{stage.key}" for exp, stage in members]
        deps = list(dict.fromkeys(f"{exp}/{k}" for exp, stage in members for k in stage.after))
        commands = [command(exp, stage.key) for exp, stage in members]
        argv = commands[0] if len(commands) == 1 else ["bash", "-c", " && ".join(shlex.join(c) for c in commands)]
        share_key = f"{members[0][1].key}@{recipe[:10]}" if len(members) > 1 else None
        if share_key:
            shared[share_key] = keys
        all_done = all(done_of[exp, stage.key] for exp, stage in members)
        jobs += [Job(key, argv, deps=deps, resources=slurm.resources(kind), workdir=workdir, done=all_done,
                     share_key=share_key, what=recipe) for key in keys]

    run_dirs = [RunDir.for_experiment(cfg.output_root, cfg.name).root for cfg in configs]
    report = report_stage(run_dirs, sweep_report_dir(name, configs), configs[0])
    report_done = all(done_of.values()) and stage_done(report.folder, report.identity())
    report_what = stable_hash({"report": configs[0].report.model_dump(mode="json"),
                               "rounds": configs[0].eval.bootstrap_rounds, "stages": sorted(recipe_of.values())})
    jobs.append(Job(f"{name}/report", [python, "-m", "rutune.cli", "sweep", str(grid_path), "--only-report"],
                    deps=[job.key for job in jobs], resources=slurm.resources("report"), workdir=workdir,
                    done=report_done, what=report_what))
    return Plan(jobs, paths, shared)


def submit_sweep(grid_path: str | Path, state_dir: str | Path | None = None, *, expanded=None,
                 echo: Callable[[str], None] = print) -> tuple[Plan, SubmitResult]:
    """Plan and submit the sweep; a rerun submits only the stages that are neither done nor queued/running."""
    name, configs = expanded or expand(grid_path)
    state_dir = Path(state_dir or default_state_dir(name, configs))
    plan = plan_sweep(grid_path, state_dir, expanded=(name, configs))
    result = submit(plan.jobs, state_dir)
    echo(f"slurm: {len(result.submitted)} submitted, {len(result.queued)} already queued, {len(result.done)} done"
         + (f", {len(result.cancelled)} stale replaced" if result.cancelled else "") + f" — state: {state_dir}")
    return plan, result


def sweep_status(name: str, configs: list, state_dir: str | Path | None = None) -> dict[str, JobStatus]:
    """Print each job's state (and the stderr log of failed ones) from `<state dir>/jobs.json`."""
    return status(Path(state_dir or default_state_dir(name, configs)), out=sys.stdout)  # today's stdout


def wait_sweep(name: str, configs: list, state_dir: str | Path | None = None,
               timeout_s: float = 7 * 24 * 3600) -> dict[str, JobStatus]:
    """Wait until no job is pending or running; returns the final status rows."""
    return wait(Path(state_dir or default_state_dir(name, configs)), timeout_s=timeout_s)
