"""The experiment schema, assembled from the extension registries, and loading an experiment YAML.

`data.*.sources` is the union of the source settings models (`rutune.data.sources.SOURCES`), `train.stages` the
union of the recipes' stage models (`rutune.train.recipes.RECIPES`), and `eval` has one optional block per suite
(`rutune.eval.suites.SUITES`). Nothing here names a source, recipe or suite: the schema is rebuilt when a registry
changes (a test or plugin adding an entry), so every entry is validated the same way.

Rules (see `rutune.schema`): unknown and duplicate keys are errors, every problem is listed with its YAML
path and line, in one report, before anything runs. Dotted overrides (`data.sft.sources.0.percent=80`) are
applied to the raw YAML tree before validation, so they get the same checks as the file. An experiment may
start from another with `extends: base.yaml`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, create_model

from rutune.data.sources import SOURCES
from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites import SUITES
from rutune.schema import ConfigError, Lines, Number, PositiveInt, Strict, load_yaml, validate
from rutune.train.objectives import OBJECTIVES
from rutune.train.recipes import RECIPES

__all__ = ["ConfigError", "ModelConfig", "apply_overrides", "experiment_schema", "load_config", "load_yaml",
           "parse_config"]


# ---------------------------------------------------------------- the fixed parts
class DedupConfig(Strict):
    exact: bool = True
    near: bool = True
    near_threshold: Number = Field(default=0.7, gt=0, le=1)
    shingle_chars: Annotated[int, Field(strict=True, ge=2)] = 4


class _SftData(Strict):
    max_tokens: PositiveInt = 4096
    overlength: Literal["drop", "truncate"] = "drop"
    dedup: DedupConfig = DedupConfig()
    holdout_percent: Number = Field(default=0, ge=0, lt=100)


class _PreferenceData(Strict):
    """`holdout_percent`: pairs kept out of training (`prepare/preference_holdout.parquet`), the held-out pairs the
    preference eval suite scores."""

    max_tokens: PositiveInt = 4096
    overlength: Literal["drop", "truncate_prompt"] = "truncate_prompt"
    dedup: DedupConfig = DedupConfig()
    holdout_percent: Number = Field(default=0, ge=0, lt=100)


class ContaminationConfig(Strict):
    """`eval_sets`: eval suites (e.g. `arena`, `mmlu`) whose configured items are checked for n-gram overlap
    with the training mixture — the very item set each suite is configured with in `eval:`."""

    ngram_words: Annotated[int, Field(strict=True, ge=1)] = 13
    eval_sets: list[str] = Field(default_factory=list)


class ModelConfig(Strict):
    """`path`: `tiny` (the embedded random model rutune builds), a registered name, a folder or a hub id."""

    path: str = "tiny"
    revision: str | None = None
    gguf_file: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None


class ReportConfig(Strict):
    formats: list[Literal["md", "csv", "html"]] = Field(default_factory=lambda: ["md", "csv", "html"])
    baseline_label: str = "base"


class _EvalBase(Strict):
    """`models`: `base`, training stage names, or `label=path` for any other checkpoint. `bootstrap_rounds`: the
    rounds of every CI and paired test (eval suites and the report); a suite whose protocol fixes its own (the
    arena: 100) says so in its block. A suite set to null (or absent) is not run."""

    models: list[str] = Field(default_factory=lambda: ["base"])
    backend: BackendConfig = BackendConfig()
    bootstrap_rounds: Annotated[int, Field(strict=True, ge=10)] = 1000


class _ExperimentBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: Annotated[int, Field(strict=True)] = 42
    output_root: str = "runs"
    base_model: ModelConfig = ModelConfig()
    report: ReportConfig = ReportConfig()


# ---------------------------------------------------------------- cross-field links

def link_problems(cfg) -> list[tuple[tuple, str]]:
    """Stage names unique, `init_from` refers backwards, data present for each recipe, eval models known,
    contamination sets configured: (path, message) per problem."""
    problems = []
    seen = ["base"]
    for i, stage in enumerate(cfg.train.stages):
        if stage.name in seen:
            problems.append((("train", "stages", i, "name"), f"duplicate stage name {stage.name!r}"))
        if stage.init_from not in seen:
            problems.append((("train", "stages", i, "init_from"),
                             f"unknown stage {stage.init_from!r}; expected one of {', '.join(seen)}"))
        block = RECIPES.get(stage.recipe).data_block
        if block and getattr(cfg.data, block, None) is None:
            problems.append((("train", "stages", i), f"recipe {stage.recipe} needs data.{block}"))
        seen.append(stage.name)
    for i, entry in enumerate(cfg.eval.models):
        if entry != "base" and entry not in seen and "=" not in entry:
            problems.append((("eval", "models", i), f"{entry!r} is not `base`, a train stage "
                             f"({', '.join(seen[1:]) or 'none'}) or `label=path`"))
    for i, name in enumerate(cfg.data.contamination.eval_sets):
        if name not in SUITES or SUITES.get(name).item_texts is None:
            known = [s.name for s in SUITES if s.item_texts is not None]
            problems.append((("data", "contamination", "eval_sets", i),
                             f"{name!r} is not a suite with items to check; expected one of {', '.join(known)}"))
        elif getattr(cfg.eval, name) is None:
            problems.append((("data", "contamination", "eval_sets", i),
                             f"suite {name} is not configured in eval.{name}; configure it so the check uses "
                             f"its item set"))
    return problems


# ---------------------------------------------------------------- assembly from the registries
def _union(models: list, tag: str):
    return Annotated[Union[tuple(models)], Field(discriminator=tag)]


def _build():
    sft = [s.settings for s in SOURCES if s.kind == "sft"]
    pref = [s.settings for s in SOURCES if s.kind == "preference"]
    SftData = create_model("SftData", __base__=_SftData, sources=(list[_union(sft, "name")], Field(min_length=1)))
    PreferenceData = create_model("PreferenceData", __base__=_PreferenceData,
                                  sources=(list[_union(pref, "name")], Field(min_length=1)))
    DataConfig = create_model("DataConfig", __base__=Strict, sft=(SftData | None, None),
                              preference=(PreferenceData | None, None),
                              contamination=(ContaminationConfig, ContaminationConfig()))
    stages = _union([r.config for r in RECIPES], "recipe")
    TrainConfig = create_model("TrainConfig", __base__=Strict, stages=(list[stages], Field(default_factory=list)))
    EvalConfig = create_model("EvalConfig", __base__=_EvalBase, **{s.name: (s.config | None, None) for s in SUITES})
    return create_model("ExperimentConfig", __base__=_ExperimentBase, data=(DataConfig, ...),
                        train=(TrainConfig, TrainConfig()), eval=(EvalConfig, EvalConfig()))


_SCHEMA: dict[tuple, Any] = {}


def _versions() -> tuple:
    for registry in (SOURCES, RECIPES, SUITES, OBJECTIVES):
        len(registry)  # discover entries first, so the version reflects them
    return (SOURCES.version, RECIPES.version, SUITES.version, OBJECTIVES.version)


def experiment_schema():
    """The ExperimentConfig model for the registries as they are now (cached until one changes)."""
    key = _versions()
    if key not in _SCHEMA:
        _SCHEMA.clear()
        _SCHEMA[key] = _build()
    return _SCHEMA[key]


def tagged_models() -> list:
    """The schema classes chosen by a tag (`name` of a source or objective, `recipe` of a stage), for messages."""
    return [*(s.settings for s in SOURCES), *(r.config for r in RECIPES), *(o.config for o in OBJECTIVES)]


def __getattr__(name: str):
    if name == "ExperimentConfig":
        return experiment_schema()
    raise AttributeError(name)


# ---------------------------------------------------------------- loading
def apply_overrides(tree: dict, overrides: list[str]) -> list[str]:
    """Apply `a.b.0.c=value` overrides in place (value parsed as YAML); returns problems."""
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r}: expected KEY=VALUE, e.g. data.sft.sources.0.percent=80")
            continue
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        parts = key.strip().split(".")
        node: Any = tree
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"override {key}: {'.'.join(parts[:i]) or '<root>'} has no item {part}")
                    break
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                problems.append(f"override {key}: {'.'.join(parts[:i]) or '<root>'} is a value, not a mapping or list")
                break
    return problems


def _validated(tree: dict, src: str, lines: Lines, problems: list[str]):
    """The schema's own checks, then (on a valid tree) the cross-field links, each at its own key's line."""
    cfg = validate(experiment_schema(), tree, src=src, lines=lines, problems=problems, tagged=tagged_models())
    links = []
    for path, msg in link_problems(cfg):
        where = next(("%s:%s" % lines[path[:k]] for k in range(len(path), -1, -1) if path[:k] in lines), src)
        links.append(f"{where}: {'.'.join(map(str, path))}: {msg}")
    if links:
        raise ConfigError(links)
    return cfg


def load_config(path, overrides: list[str] | None = None):
    """Load (following `extends:`), override and validate an experiment; ConfigError lists every problem."""
    tree, lines, problems = load_yaml(path, extends_key="extends")
    if not isinstance(tree, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys (name, data, train, eval, ...)"])
    problems += apply_overrides(tree, list(overrides or []))
    return _validated(tree, str(path), lines, problems)


def parse_config(data: dict):
    """Validate an in-memory tree (tests, sweeps); same error format without file lines."""
    return _validated(data, "<config>", {}, [])
