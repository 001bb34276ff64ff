"""Design.md's one-way arrows, checked by walking every import with stdlib `ast`.

records · config · rundir · models · attention  ←  data  ←  train · eval  ←  report  ←  cli · serve · pipeline
`eval` never imports `train`; `report` never imports torch (directly or through what it imports).
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "rutune"

RANK = {"base": 0, "data": 1, "train": 2, "eval": 2, "report": 3, "top": 4}
BASE = {"records", "config", "config_train", "config_eval", "rundir", "models", "attention", "__init__", "real_models"}
TOP = {"cli", "serve", "serve_app", "pipeline", "sweep", "demo", "__main__"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "rutune"
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head in BASE:
        return "base"
    if head in ("data", "train", "eval", "report"):
        return head
    if head in TOP:
        return "top"
    if head == "samples":
        return "base"
    raise AssertionError(f"module {module} has no layer: add it to tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    pkg = module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from rutune import models` imports the submodule
            for a in node.names:
                found.add(f"{mod}.{a.name}")
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def rutune_imports(mod: str) -> set[str]:
    out = set()
    for imp in imports_of(MODULES[mod]):
        if imp.startswith("rutune"):
            # keep only names that are modules or packages
            while imp and imp not in MODULES:
                imp = imp.rpartition(".")[0]
            if imp and imp != mod:
                out.add(imp)
    return out


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_arrows_point_one_way(mod):
    src = layer_of(mod)
    for imp in rutune_imports(mod):
        dst = layer_of(imp)
        if dst == src:
            continue
        assert RANK[dst] < RANK[src], f"{mod} ({src}) imports {imp} ({dst}): arrows must point down"
        assert not (src == "eval" and dst == "train"), f"{mod} imports {imp}: eval never imports train"


def closure(mod: str) -> set[str]:
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(rutune_imports(m))
    return seen


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if layer_of(m) == "report"))
def test_report_never_imports_torch(mod):
    for m in closure(mod):
        external = {i.split(".")[0] for i in imports_of(MODULES[m])}
        assert not external & {"torch", "transformers", "peft", "accelerate", "trl"}, f"{mod} reaches torch via {m}"


def test_eval_does_not_reach_train():
    for mod in (m for m in MODULES if layer_of(m) == "eval"):
        assert not any(layer_of(m) == "train" for m in closure(mod)), mod


def test_checker_catches_a_back_arrow(tmp_path):
    """The walker itself must see a backwards import (otherwise the tests above prove nothing)."""
    fake = tmp_path / "rutune" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from rutune.train import sft\nimport rutune.report.table\n")
    global SRC
    old = SRC
    try:
        SRC = tmp_path / "rutune"
        found = imports_of(fake)
    finally:
        SRC = old
    assert "rutune.train.sft" in found and "rutune.report.table" in found
    assert RANK[layer_of("rutune.train.sft")] > RANK[layer_of("rutune.data.bad")]
