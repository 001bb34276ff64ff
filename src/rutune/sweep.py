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

Experiments are named `<sweep name>-<variant>`. Stages that come out identical (the base model's evals, an
SFT that only differs downstream) are computed once and linked, through the pipeline's stage index.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from rutune.config import ConfigError, apply_overrides, parse_config
from rutune.schema import load_yaml

ALLOWED = {"base", "name", "variants", "grid"}


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
        raise ConfigError([f"{grid_path}: the top level must be a mapping (base, name, variants, grid)"])
    for key in sorted(set(tree) - ALLOWED):
        problems.append(f"{grid_path}:{lines.get((key,), ('', '?'))[1]}: {key}: unknown key; allowed: "
                        f"{', '.join(sorted(ALLOWED))}")
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
    from rutune.pipeline import StageLog, run_experiment, run_report_stage
    from rutune.rundir import RunDir

    name, configs = expanded or expand(grid_path)
    run_dirs = []
    for cfg in configs:
        echo(f"== experiment {cfg.name}")
        run_experiment(cfg, force=force, report=False, echo=echo)
        run_dirs.append(RunDir.for_experiment(cfg.output_root, cfg.name).root)
    out = Path(configs[0].output_root) / name / "report"
    return run_report_stage(run_dirs, out, configs[0], set(force or ()), StageLog(echo=echo))
