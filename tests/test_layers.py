"""Design.md's one-way arrows, checked by walking every import (function-level ones too) with stdlib `ast`.

    leaf  ←  base  ←  data  ←  train · eval  ←  config  ←  top (cli, pipeline, sweep, serve, launchers)
    leaf  ←  report

Never-rules this table encodes: report imports nothing of eval or train (only leaf modules: the result files are
its whole input); eval never imports train; data never imports train or eval; leaf modules import only other leaf
modules (`rundir` reads the package version from the root). No import circles anywhere.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "rutune"

LEAF = {"__init__", "records", "rundir", "schema", "registry", "items", "stats", "results", "attention"}
BASE = {"models", "real_models", "model_errors"}
TOP = {"cli", "cli_suites", "cli_vocab", "cli_score", "serve", "serve_app", "pipeline", "sweep", "sweep_slurm",
       "launch_slurm", "slurm_graph", "__main__"}
MAY_IMPORT = {
    "leaf": {"leaf"},
    "base": {"leaf", "base"},
    "data": {"leaf", "base", "data"},
    "train": {"leaf", "base", "data", "train"},
    "eval": {"leaf", "base", "data", "eval"},
    "report": {"leaf", "report"},
    "config": {"leaf", "base", "data", "train", "eval", "config"},
    "top": {"leaf", "base", "data", "train", "eval", "report", "config", "top"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "rutune"
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in LEAF or head == "samples":
        return "leaf"
    if head in BASE:
        return "base"
    if head in ("data", "train", "eval", "report"):
        return head
    if head == "config":
        return "config"
    if head in TOP:
        return "top"
    raise AssertionError(f"module {module} has no layer: add it to tests/test_layers.py")


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, src: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    pkg = module_name(path, src).split(".")
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
            for a in node.names:  # `from rutune import models` imports the submodule
                found.add(f"{mod}.{a.name}")
    return found


def modules(src: Path) -> dict[str, Path]:
    return {module_name(p, src): p for p in src.rglob("*.py")}


def rutune_imports(mod: str, mods: dict[str, Path], src: Path) -> set[str]:
    out = set()
    for imp in imports_of(mods[mod], src):
        if imp.startswith("rutune"):
            while imp and imp not in mods:  # keep only names that are modules or packages
                imp = imp.rpartition(".")[0]
            if imp and imp != mod:
                out.add(imp)
    return out


def violations(src: Path) -> list[str]:
    """Every import that breaks the layer table, as `module (layer) imports module (layer)`."""
    mods = modules(src)
    bad = []
    for mod in sorted(mods):
        layer = layer_of(mod)
        imported = rutune_imports(mod, mods, src)
        for imp in sorted(imported):
            if any(other.startswith(imp + ".") for other in imported):
                continue  # `from rutune.train import sft` names the package and the module: report the module
            if imp == "rutune" and layer == "leaf":
                continue
            target = layer_of(imp)
            if target not in MAY_IMPORT[layer]:
                bad.append(f"{mod} ({layer}) imports {imp} ({target})")
    return bad


def cycles(src: Path) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (Tarjan)."""
    mods = modules(src)
    graph = {m: rutune_imports(m, mods, src) - {"rutune"} for m in mods}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_follows_the_layer_table():
    assert violations(SRC) == []


def test_there_are_no_import_circles():
    assert cycles(SRC) == []


def closure(mod: str) -> set[str]:
    mods = modules(SRC)
    seen, todo = set(), [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(rutune_imports(m, mods, SRC))
    return seen


@pytest.mark.parametrize("mod", sorted(m for m in modules(SRC) if layer_of(m) == "report"))
def test_report_never_reaches_torch(mod):
    for m in closure(mod):
        external = {i.split(".")[0] for i in imports_of(modules(SRC)[m], SRC)}
        assert not external & {"torch", "transformers", "peft", "accelerate", "trl"}, f"{mod} reaches torch via {m}"


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "rutune"
    for rel, text in {"__init__.py": "", "data/__init__.py": "", "train/__init__.py": "", "train/sft.py": "",
                      "report/__init__.py": "", "eval/__init__.py": "", "eval/a.py": "", "stats.py": "",
                      **files}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


def test_the_checker_fails_on_a_back_arrow_and_a_never_rule(tmp_path):
    """The real checker, run on a fake package: data → train (back arrow) and report → eval (never-rule) are both
    reported, the allowed report → leaf import is not."""
    src = _fake_package(tmp_path, {"data/bad.py": "def f():\n    from rutune.train import sft\n",
                                   "report/bad.py": "import rutune.eval.a\nfrom rutune import stats\n"})
    assert violations(src) == ["rutune.data.bad (data) imports rutune.train.sft (train)",
                               "rutune.report.bad (report) imports rutune.eval.a (eval)"]


def test_the_checker_finds_a_circle(tmp_path):
    src = _fake_package(tmp_path, {"eval/b.py": "from rutune.eval import c\n",
                                   "eval/c.py": "def f():\n    import rutune.eval.b\n"})
    assert cycles(src) == [["rutune.eval.b", "rutune.eval.c"]]
