"""Experiment configuration: YAML → pydantic models, with every error reported at once.

Rules the schema enforces (users of other toolkits complained about each):
- unknown keys are errors (``extra="forbid"``), with a "did you mean" hint;
- duplicate YAML keys are errors, not "last one wins";
- a mixture size is either ``percent`` or ``count``, never a bare number whose type decides;
- every problem is listed with its YAML path and line, in one report, before anything runs.

Dotted overrides (``data.sft.sources.0.percent=80``) are applied to the raw YAML tree before
validation, so they get the same checks as the file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rutune.config_eval import EvalConfig
from rutune.config_train import TrainConfig


class ConfigError(ValueError):
    """One or more configuration problems; `str()` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Number = Annotated[float, Field(strict=True)]


# ---------------------------------------------------------------- data sources
class SourceBase(Strict):
    """Fields every dataset source shares. `path` is a hub id, a local file or folder; null = bundled sample."""

    path: str | None = None
    revision: str | None = None
    split: str = "train"
    percent: Number | None = Field(default=None, ge=0)
    count: Annotated[int, Field(strict=True, ge=0)] | None = None
    min_russian_share: Number | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_size(self):
        if self.percent is None and self.count is None:
            raise ValueError("give exactly one of `percent` (share of this source, 250 = 2.5 passes) or `count` (rows)")
        if self.percent is not None and self.count is not None:
            raise ValueError("give `percent` or `count`, not both")
        return self


class GrandMasterSource(SourceBase):
    name: Literal["grandmaster_pro_max"]
    prompt_lang: list[str] | None = None
    answer_lang: list[str] | None = None
    max_answer_tokens: Annotated[int, Field(strict=True, gt=0)] | None = None


class SaigaScoredSource(SourceBase):
    name: Literal["saiga_scored"]
    min_score: Annotated[int, Field(strict=True, ge=1, le=10)] | None = 8
    exclude_regex: bool = True
    language: list[str] | None = None


class GroundedRagSource(SourceBase):
    name: Literal["grounded_rag_ru_v2"]
    types: list[Literal["good", "ood"]] | None = None
    documents_to: Literal["system", "user"] = "system"
    keep_relevant_ids_turn: bool = True


class SaigaPreferencesSource(SourceBase):
    name: Literal["saiga_preferences"]
    sonnet_approved_only: bool = True
    exclude_regex: bool = True
    length_ratio: Number | None = Field(default=1.5, gt=1)
    length_ratio_drop_probability: Number = Field(default=0.8, ge=0, le=1)


class ChatJsonlSource(SourceBase):
    """Any local file with a `messages` column in HF chat format: the escape hatch for own data."""

    name: Literal["chat_messages"]


SftSource = Annotated[
    Union[GrandMasterSource, SaigaScoredSource, GroundedRagSource, ChatJsonlSource], Field(discriminator="name")
]
PreferenceSource = Annotated[Union[SaigaPreferencesSource], Field(discriminator="name")]


class DedupConfig(Strict):
    exact: bool = True
    near: bool = True
    near_threshold: Number = Field(default=0.7, gt=0, le=1)
    shingle_chars: Annotated[int, Field(strict=True, ge=2)] = 4


class SftData(Strict):
    sources: list[SftSource] = Field(min_length=1)
    max_tokens: Annotated[int, Field(strict=True, gt=0)] = 4096
    overlength: Literal["drop", "truncate"] = "drop"
    dedup: DedupConfig = DedupConfig()
    holdout_percent: Number = Field(default=0, ge=0, lt=100)


class PreferenceData(Strict):
    sources: list[PreferenceSource] = Field(min_length=1)
    max_tokens: Annotated[int, Field(strict=True, gt=0)] = 4096
    overlength: Literal["drop", "truncate_prompt"] = "truncate_prompt"
    dedup: DedupConfig = DedupConfig()


class ContaminationConfig(Strict):
    ngram_words: Annotated[int, Field(strict=True, ge=1)] = 13
    eval_sets: list[str] = Field(default_factory=list)


class DataConfig(Strict):
    sft: SftData | None = None
    preference: PreferenceData | None = None
    contamination: ContaminationConfig = ContaminationConfig()


# ---------------------------------------------------------------- model
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
    bootstrap_rounds: Annotated[int, Field(strict=True, ge=10)] = 1000


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: Annotated[int, Field(strict=True)] = 42
    output_root: str = "runs"
    base_model: ModelConfig = ModelConfig()
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _stage_links(self):
        self.train.check_links(has_sft_data=self.data.sft is not None, has_pref_data=self.data.preference is not None)
        return self


# ---------------------------------------------------------------- YAML with line numbers
class _LineLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys and remembers the line of every path."""


def _compose(loader: _LineLoader, node: yaml.Node, path: tuple, lines: dict, problems: list[str], src: str):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                problems.append(
                    f"{src}:{key_node.start_mark.line + 1}: {_dotted(path + (key,))}: duplicate key "
                    f"(first at line {lines[path + (key,)]}); remove one"
                )
                continue
            out[key] = _compose(loader, value_node, path + (key,), lines, problems, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_compose(loader, child, path + (i,), lines, problems, src) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def load_yaml(path: str | Path) -> tuple[Any, dict[tuple, int], list[str]]:
    """Parse YAML keeping line numbers; returns (tree, lines, problems)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}"]) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    tree = _compose(loader, node, (), lines, problems, str(path)) if node is not None else {}
    return tree, lines, problems


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
                    problems.append(f"override {key}: {_dotted(tuple(parts[:i]))} has no item {part}")
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
                problems.append(f"override {key}: {_dotted(tuple(parts[:i]))} is a value, not a mapping or list")
                break
    return problems


def _hint(model: type[BaseModel] | None, key: str) -> str:
    if model is None:
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"; did you mean `{close[0]}`?" if close else f"; allowed: {', '.join(model.model_fields)}"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """Best-effort walk of the schema to the model that owns `loc` (for 'did you mean' hints)."""
    model: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = _inner_model(fields[part].annotation)
        else:
            # discriminated-union tags such as 'saiga_scored' appear in pydantic's loc
            model = _union_member(model, part)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    import typing

    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for sub in typing.get_args(arg):
            found = _inner_model(sub)
            if found is not None:
                return found
    return None


def _tagged_models() -> list:
    """The schema classes chosen by a tag field (`name` of a source, `recipe` of a stage)."""
    from rutune import config_train as schema_train

    return [GrandMasterSource, SaigaScoredSource, GroundedRagSource, ChatJsonlSource, SaigaPreferencesSource,
            *schema_train.STAGE_MODELS]


def _tags_of(model: Any) -> tuple:
    fields = (model.model_fields.get(name) for name in ("name", "recipe"))
    return tuple(tag for f in fields if f is not None for tag in getattr(f.annotation, "__args__", ()))


def _union_member(model: Any, tag: str) -> Any:
    return next((c for c in _tagged_models() if tag in _tags_of(c)), model)


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and any(part in _tags_of(c) for c in _tagged_models())


def _format_error(err: dict, src: str, lines: dict[tuple, int]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
    # Pydantic puts the discriminated-union tag right after the list index; it is not a YAML key.
    yaml_loc = tuple(p for i, p in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and _is_tag(p)))
    line = None
    for k in range(len(yaml_loc), -1, -1):
        if yaml_loc[:k] in lines:
            line = lines[yaml_loc[:k]]
            break
    where = f"{src}:{line}" if line else src
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _hint(_model_at(loc[:-1]), str(loc[-1]))
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown name {err.get('input', {}).get('name') if isinstance(err.get('input'), dict) else ''!r}; " + (
            "expected one of " + err["ctx"]["expected_tags"]
        )
    return f"{where}: {_dotted(yaml_loc)}: {msg}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment; raise ConfigError listing every problem."""
    tree, lines, problems = load_yaml(path)
    if not isinstance(tree, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys (name, data, train, eval, ...)"])
    problems += apply_overrides(tree, list(overrides or []))
    try:
        cfg = ExperimentConfig.model_validate(tree)
    except ValidationError as e:
        problems += [_format_error(err, str(path), lines) for err in e.errors()]
        cfg = None
    if problems:
        raise ConfigError(problems)
    return cfg


def parse_config(data: dict) -> ExperimentConfig:
    """Validate an in-memory tree (tests, sweeps); same error format without file lines."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError([_format_error(err, "<config>", {}) for err in e.errors()]) from None
