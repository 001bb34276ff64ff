"""`rutune sweep GRID.yaml`: many experiments from one base config, one report over all of them.

A grid file names a base experiment and the variants, each a list of dotted overrides, written out or
as a cartesian `grid`:

    base: ../experiments/demo.yaml        # relative to the grid file
    name: demo-sweep                      # the report goes to <output_root>/<name>/report
    variants:
      gm60: [data.sft.sources.0.percent=60]
      gm100: [data.sft.sources.0.percent=100]
    grid:                                 # optional; crossed with nothing else, names come from the values
      data.sft.sources.1.percent: [20, 40]    # → variants saiga_scored20, saiga_scored40 (the source's name)
    slurm:                                # optional; what each stage's job asks for under `--launcher slurm`
      partition: gpu
      default: {cpus: 8, time_min: 60}
      train: {gpus: 1, time_min: 600}

Experiments are named `<sweep name>-<variant>`. Stages that come out identical (the base model's evals, an
SFT that only differs downstream) are computed once and linked, through the pipeline's stage index.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from pydantic import Field, field_validator

from rutune.config import ConfigError, apply_overrides, parse_config
from rutune.schema import NonNegativeInt, Number, PositiveInt, Strict, load_yaml, validate

ALLOWED = {"base", "name", "variants", "grid", "slurm"}
STAGE_KINDS = ("prepare", "train", "eval", "report")


class SlurmResources(Strict):
    """What one kind of stage asks Slurm for (`rutune.launch_slurm.Resources`); unset keys fall back to `default`."""

    gpus: NonNegativeInt | None = None
    cpus: PositiveInt | None = None
    mem_gb: Number | None = Field(default=None, gt=0)
    time_min: PositiveInt | None = None
    partition: str | None = None
    extra_sbatch: list[str] | None = None  # passed to sbatch as is, e.g. [--qos=high]

    @field_validator("extra_sbatch")
    @classmethod
    def _flags(cls, value):
        bad = [f for f in value or [] if not f.startswith("-")]
        if bad:
            raise ValueError(f"sbatch flags start with '-': {bad}")
        return value


class SlurmBlock(Strict):
    """The grid's `slurm:` block: a partition for every job, defaults, and per stage kind overrides (the sweep's
    combined report uses `report`)."""

    partition: str | None = None
    default: SlurmResources = SlurmResources()
    prepare: SlurmResources = SlurmResources()
    train: SlurmResources = SlurmResources()
    eval: SlurmResources = SlurmResources()
    report: SlurmResources = SlurmResources()

    def resources(self, kind: str) -> dict:
        """`Resources` fields for one stage kind: the kind's own values over `default`, over `partition`."""
        merged = {"partition": self.partition}
        for block in (self.default, getattr(self, kind)):
            merged.update({k: v for k, v in block.model_dump().items() if v is not None})
        merged["extra_sbatch"] = tuple(merged.get("extra_sbatch") or ())
        return merged


class _GridSlurm(Strict):
    slurm: SlurmBlock = SlurmBlock()


def _slurm_block(tree: dict, grid_path: Path, lines) -> tuple[SlurmBlock, list[str]]:
    """The validated `slurm:` block (defaults when absent) and its problems, `file:line: slurm.x: message`."""
    try:
        return validate(_GridSlurm, {"slurm": tree.get("slurm") or {}}, src=str(grid_path), lines=lines).slurm, []
    except ConfigError as e:
        return SlurmBlock(), e.problems


def slurm_settings(grid_path: str | Path) -> SlurmBlock:
    """The grid's `slurm:` block, validated (unknown keys are errors with "did you mean")."""
    tree, lines, problems = load_yaml(Path(grid_path))
    block, slurm_problems = _slurm_block(tree if isinstance(tree, dict) else {}, Path(grid_path), lines)
    if problems or slurm_problems:
        raise ConfigError(problems + slurm_problems)
    return block


def _grid_label(key: str, value, base_tree: dict) -> str:
    """A grid value's part of a variant name: `saiga_scored20` for `data.sft.sources.1.percent: 20` (the source
    at that index in the base config), else the key's last part and the value (`learning_rate0.001`)."""
    parts = key.split(".")
    if parts[-1] in ("percent", "count") and len(parts) >= 2 and parts[-2].isdigit():
        try:
            node = base_tree
            for p in parts[:-1]:
                node = node[int(p)] if p.isdigit() else node[p]
            name = str(node["name"])
        except (KeyError, IndexError, TypeError):
            name = f"source{parts[-2]}-"
        return f"{name}{value}"
    return f"{parts[-1]}{value}"


def expand(grid_path: str | Path) -> tuple[str, list]:
    """Read a grid file; returns (sweep name, [ExperimentConfig, ...]); every problem reported at once."""
    grid_path = Path(grid_path)
    tree, lines, problems = load_yaml(grid_path)
    if not isinstance(tree, dict):
        raise ConfigError([f"{grid_path}: the top level must be a mapping (base, name, variants, grid, slurm)"])
    for key in sorted(set(tree) - ALLOWED):
        problems.append(f"{grid_path}:{lines.get((key,), ('', '?'))[1]}: {key}: unknown key; allowed: "
                        f"{', '.join(sorted(ALLOWED))}")
    problems += _slurm_block(tree, grid_path, lines)[1]
    if "base" not in tree:
        problems.append(f"{grid_path}: base: required key is missing (path of the base experiment YAML)")
    variants: dict[str, list[str]] = {}
    for name, overrides in (tree.get("variants") or {}).items():
        if not isinstance(overrides, list):
            problems.append(f"{grid_path}:{lines.get(('variants', name), ('', '?'))[1]}: variants.{name}: expected a "
                            "list of KEY=VALUE")
            continue
        variants[str(name)] = [str(o) for o in overrides]
    base_tree: dict = {}
    if "base" in tree:
        try:
            base_tree, _, base_problems = load_yaml((grid_path.parent / tree["base"]).resolve(), extends_key="extends")
        except ConfigError as e:  # a missing or unreadable base: reported with the grid's own problems
            base_tree, base_problems = {}, e.problems
        base_tree = base_tree if isinstance(base_tree, dict) else {}
        problems += base_problems
    grid = tree.get("grid") or {}
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
            label = "-".join(_grid_label(k, v, base_tree) for k, v in zip(keys, values))
            if label in variants:
                problems.append(f"{grid_path}: grid variant {label} has the name of a listed variant")
            variants[label] = [f"{k}={v}" for k, v in zip(keys, values)]
    if not variants and "base" in tree:
        problems.append(f"{grid_path}: give `variants` or `grid`: a sweep needs at least one experiment")
    if not base_tree:  # nothing to expand: report what is wrong with the grid and the base
        raise ConfigError(problems or [f"{grid_path}: base: the base experiment is empty"])
    sweep_name = str(tree.get("name") or f"{base_tree.get('name', 'exp')}-sweep")
    configs = []
    for label, overrides in variants.items():
        t = copy.deepcopy(base_tree)
        errs = apply_overrides(t, overrides)
        t["name"] = f"{sweep_name}-{label}"
        if errs:
            problems += [f"variants.{label}: {e}" for e in errs]
            continue
        try:
            configs.append(parse_config(t))
        except ConfigError as e:
            problems += [f"variants.{label}: {p.removeprefix('<config>: ')}" for p in e.problems]
    if problems:
        raise ConfigError(problems)
    return sweep_name, configs


def run_sweep(grid_path: str | Path, *, force: set[str] | None = None, echo=print, expanded=None) -> dict:
    """Run every experiment, then one report; `expanded` is `expand(grid_path)` when the caller already has it."""
    from rutune.pipeline import run_experiment

    name, configs = expanded or expand(grid_path)
    for cfg in configs:
        echo(f"== experiment {cfg.name}")
        run_experiment(cfg, force=force, report=False, echo=echo)
    return sweep_report(name, configs, force=force, echo=echo)


def sweep_report_dir(name: str, configs: list) -> Path:
    """Where the sweep's combined report goes: `<output_root>/<sweep name>/report`."""
    return Path(configs[0].output_root) / name / "report"


def sweep_report(name: str, configs: list, *, force: set[str] | None = None, echo=print) -> dict:
    """The report over every experiment's run dir (`rutune sweep GRID --only-report`; the last Slurm job)."""
    from rutune.pipeline import StageLog, run_report_stage
    from rutune.rundir import RunDir

    run_dirs = [RunDir.for_experiment(cfg.output_root, cfg.name).root for cfg in configs]
    return run_report_stage(run_dirs, sweep_report_dir(name, configs), configs[0], set(force or ()),
                            StageLog(echo=echo))
