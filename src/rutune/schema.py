"""The strict-YAML layer every config file goes through (experiments, sweep grids, judge profiles).

Rules (users of other toolkits complained about each):
- unknown keys are errors (``extra="forbid"``), with a "did you mean" hint;
- duplicate YAML keys are errors, not "last one wins";
- every problem is listed with its file, line and dotted path, in one report, before anything runs;
- a file may start from another with ``extends: base.yaml`` (mappings merge key by key, anything else is
  replaced; ``key+: [...]`` appends to the base's list), and an error in an inherited key names the file and
  line it came from.

This module is a leaf: it imports nothing of rutune's, so every layer can declare its config models with
`Strict` and the shared number types.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """One or more configuration problems; `str()` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors and defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


Number = Annotated[float, Field(strict=True)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]

Lines = dict[tuple, tuple[str, int]]  # dotted path → (file, line) where the value was written


# ---------------------------------------------------------------- YAML with line numbers
class _LineLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys and remembers the line of every path."""


def _compose(loader: _LineLoader, node: yaml.Node, path: tuple, lines: Lines, problems: list[str], src: str):
    lines[path] = (src, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                problems.append(f"{src}:{key_node.start_mark.line + 1}: {dotted(path + (key,))}: duplicate key "
                                f"(first at line {lines[path + (key,)][1]}); remove one")
                continue
            out[key] = _compose(loader, value_node, path + (key,), lines, problems, src)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_compose(loader, child, path + (i,), lines, problems, src) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _parse(path: Path) -> tuple[Any, Lines, list[str]]:
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
    lines: Lines = {}
    problems: list[str] = []
    tree = _compose(loader, node, (), lines, problems, str(path)) if node is not None else {}
    return tree, lines, problems


def _merge(base: Any, over: Any, path: tuple, over_lines: Lines, lines: Lines) -> Any:
    """`over` on top of `base`: mappings merge key by key, any other value replaces (lists too).

    `lines` starts as the base file's and is updated in place: a replaced value takes the lines of `over`.
    """
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(key, str) and key.endswith("+") and isinstance(value, list):
                # `stages+: [...]` appends to the base file's list instead of replacing it
                name, start = key[:-1], len(base.get(key[:-1]) or [])
                out[name] = list(base.get(name) or []) + value
                n = len(path) + 1
                lines.update({path + (name, p[n] + start) + p[n + 1:]: v for p, v in over_lines.items()
                              if p[:n] == path + (key,) and len(p) > n})
                continue
            out[key] = _merge(base.get(key), value, path + (key,), over_lines, lines)
        if path in over_lines:
            lines[path] = over_lines[path]
        return out
    n = len(path)
    for p in [p for p in lines if p[:n] == path]:
        del lines[p]
    lines.update({p: v for p, v in over_lines.items() if p[:n] == path})
    return over


def load_yaml(path: str | Path, *, extends_key: str | None = None,
              _seen: tuple[Path, ...] = ()) -> tuple[Any, Lines, list[str]]:
    """Parse YAML keeping (file, line) for every path; returns (tree, lines, problems).

    With `extends_key` (experiments use `extends`), a top-level `extends: other.yaml` (relative to this file)
    loads that file first and merges this one over it; chains are followed, a cycle is an error.
    """
    path = Path(path).resolve() if _seen else Path(path)
    tree, lines, problems = _parse(path)
    if not (extends_key and isinstance(tree, dict) and extends_key in tree):
        return tree, lines, problems
    ref = tree.pop(extends_key)
    where = "%s:%s" % lines.get((extends_key,), (str(path), 0))
    if not isinstance(ref, str):
        return tree, lines, problems + [f"{where}: {extends_key}: expected the path of a YAML file"]
    base_path = (path.parent / ref).resolve()
    if base_path in _seen or base_path == path.resolve():
        return tree, lines, problems + [f"{where}: {extends_key}: {ref} extends itself (a cycle)"]
    try:
        base_tree, base_lines, base_problems = load_yaml(base_path, extends_key=extends_key,
                                                         _seen=_seen + (path.resolve(),))
    except ConfigError as e:
        return tree, lines, problems + [f"{where}: {extends_key}: {p}" for p in e.problems]
    if not isinstance(base_tree, dict):
        return tree, lines, problems + [f"{base_path}: the top level must be a mapping of keys"]
    merged_lines: Lines = dict(base_lines)
    merged = _merge(base_tree, tree, (), lines, merged_lines)
    return merged, merged_lines, base_problems + problems


# ---------------------------------------------------------------- validation with every error at once
TagModels = Callable[[], Iterable[type[BaseModel]]]


def _inner_model(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for sub in typing.get_args(arg):
            found = _inner_model(sub)
            if found is not None:
                return found
    return None


def tags_of(model: Any, tag_fields: tuple[str, ...] = ("name", "recipe")) -> tuple:
    """The literal values a discriminated-union member is chosen by (its `name` or `recipe` field)."""
    fields = (model.model_fields.get(name) for name in tag_fields)
    return tuple(tag for f in fields if f is not None for tag in getattr(f.annotation, "__args__", ()))


def hint(model: type[BaseModel] | None, key: str) -> str:
    if model is None:
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f"; did you mean `{close[0]}`?" if close else f"; allowed: {', '.join(model.model_fields)}"


def _model_at(root: type[BaseModel], loc: tuple, tagged: list) -> type[BaseModel] | None:
    """Best-effort walk of the schema to the model that owns `loc` (for 'did you mean' hints)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = getattr(model, "model_fields", {})
        if part in fields:
            model = _inner_model(fields[part].annotation)
        else:  # discriminated-union tags such as 'saiga_scored' appear in pydantic's loc
            model = next((c for c in tagged if part in tags_of(c)), model)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_error(err: dict, src: str, lines: Lines, root: type[BaseModel], tagged: list) -> str:
    """One pydantic error as `file:line: dotted.path: message` (the line of the closest written key)."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
    # Pydantic puts the discriminated-union tag right after the list index (or the field); it is not a YAML key.
    def union_tag(i: int, p: Any) -> bool:
        if i == 0 or not isinstance(p, str) or not any(p in tags_of(c) for c in tagged):
            return False
        owner = _model_at(root, loc[:i], tagged)
        return owner is None or p not in owner.model_fields  # `data.sft` is a field; `sources.0.saiga_scored` a tag

    yaml_loc = tuple(p for i, p in enumerate(loc) if not union_tag(i, p))
    where = src
    for k in range(len(yaml_loc), -1, -1):
        if yaml_loc[:k] in lines:
            where = "%s:%s" % lines[yaml_loc[:k]]
            break
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + hint(_model_at(root, loc[:-1], tagged), str(loc[-1]))
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        given = err.get("input", {})
        tag = next((given.get(f) for f in ("name", "recipe") if isinstance(given, dict) and f in given), "")
        expected = [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
        close = difflib.get_close_matches(str(tag), expected, n=1)
        msg = f"unknown name {tag!r}; " + (f"did you mean {close[0]!r}? " if close else "") + \
            "expected one of " + err["ctx"]["expected_tags"]
    return f"{where}: {dotted(yaml_loc)}: {msg}"


def validate(model: type[BaseModel], tree: Any, *, src: str, lines: Lines | None = None,
             problems: list[str] | None = None, tagged: Iterable[type[BaseModel]] = ()) -> Any:
    """`model.model_validate(tree)`, raising one ConfigError with every problem (YAML problems first)."""
    problems = list(problems or [])
    value = None
    try:
        value = model.model_validate(tree)
    except ValidationError as e:
        problems += [format_error(err, src, lines or {}, model, list(tagged)) for err in e.errors()]
    if problems:
        raise ConfigError(problems)
    return value


def load_file(model: type[BaseModel], path: str | Path, *, tagged: Iterable[type[BaseModel]] = ()) -> Any:
    """Read a strict YAML file into `model` (judge profiles and other single-model files)."""
    tree, lines, problems = load_yaml(path)
    if not isinstance(tree, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys"])
    return validate(model, tree, src=str(path), lines=lines, problems=problems, tagged=tagged)
