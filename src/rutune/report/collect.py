"""Read what the stages left in run directories into plain data: manifests, eval results and items, loss curves.

Reads files only (never a model, never torch). Layout (see `rutune.rundir`):

    prepare/manifest.json, prepare/contamination.json
    train/<stage>/manifest.json (recipe, init_from), train/<stage>/metrics.jsonl (one JSON line per logging step)
    eval/<suite>/<model>/results.json (+ items.jsonl and any per-item file a metric's display names)

Missing pieces are simply absent in the result; a file that exists but cannot be read is a `ReportError`
naming the file (and line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rutune.items import ItemsError, read_items
from rutune.rundir import MANIFEST, RunDir

ITEMS = "items.jsonl"
RESULTS = "results.json"
METRICS = "metrics.jsonl"


class ReportError(ValueError):
    """Bad or unreadable report input; the message is one line naming the file."""


@dataclass
class SuiteResult:
    """One suite's output for one model: results.json and its per-item rows (other row files read on demand)."""

    suite: str
    folder: Path
    results: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    _other: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    def metric(self, name: str) -> dict[str, Any] | None:
        entry = self.results.get("metrics", {}).get(name)
        return entry if isinstance(entry, dict) else None

    def rows(self, file_name: str = ITEMS) -> list[dict[str, Any]]:
        """Per-item rows of one of the suite's files (items.jsonl unless a metric's display names another)."""
        if file_name == ITEMS:
            return self.items
        if file_name not in self._other:
            self._other[file_name] = read_jsonl(self.folder / file_name)
        return self._other[file_name]


@dataclass
class Stage:
    name: str
    recipe: str | None
    init_from: str | None
    log: list[dict[str, Any]]
    data_block: str | None = None  # the prepared data block it trained on (from its manifest)


@dataclass
class Run:
    """One experiment's run directory, read."""

    root: Path
    experiment: str
    prepare: dict[str, Any] | None
    contamination: dict[str, Any] | None
    stages: dict[str, Stage]
    evals: dict[str, dict[str, SuiteResult]]  # model label → suite → result


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise ReportError(f"{path}: cannot read ({e.strerror})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of an items file (`eval.items.read_items`: a torn last line is ignored, any other bad line is an
    error), each a JSON object."""
    try:
        rows = read_items(path)
    except ItemsError as e:
        raise ReportError(str(e)) from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ReportError(f"{path}: row {n} is not a JSON object")
    return rows


def read_suite(folder: Path, suite: str) -> SuiteResult | None:
    results_path = folder / RESULTS
    if not results_path.exists():
        return None
    results = _read_json(results_path)
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ReportError(f"{results_path}: no `metrics` mapping (see docs/results-format.md)")
    for name, entry in results["metrics"].items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise ReportError(f"{results_path}: metrics.{name} has no `value`")
    return SuiteResult(suite, folder, results, read_jsonl(folder / ITEMS))


def _read_stages(run: RunDir) -> dict[str, Stage]:
    stages = {}
    train_root = run.root / "train"
    for folder in sorted(p for p in train_root.iterdir() if p.is_dir()) if train_root.is_dir() else []:
        manifest = _read_json(folder / MANIFEST) if (folder / MANIFEST).exists() else {}
        log = [r for r in read_jsonl(folder / METRICS) if "loss" in r]
        if manifest or log:
            stages[folder.name] = Stage(folder.name, manifest.get("recipe"), manifest.get("init_from"), log,
                                        manifest.get("data_block"))
    return stages


def read_run(root: str | Path) -> Run:
    """Everything a report needs from one run directory."""
    run = RunDir(root)
    if not run.root.is_dir():
        raise ReportError(f"{run.root}: no such run directory")
    if not any((run.root / part).is_dir() for part in ("prepare", "train", "eval")):
        raise ReportError(f"{run.root}: not a run directory (no prepare/, train/ or eval/ inside)")
    prepare = _read_json(run.prepare / MANIFEST) if (run.prepare / MANIFEST).exists() else None
    contamination_path = run.prepare / "contamination.json"
    contamination = _read_json(contamination_path) if contamination_path.exists() else None
    evals: dict[str, dict[str, SuiteResult]] = {}
    eval_root = run.root / "eval"
    for suite_dir in sorted(p for p in eval_root.iterdir() if p.is_dir()) if eval_root.is_dir() else []:
        for model_dir in sorted(p for p in suite_dir.iterdir() if p.is_dir()):
            result = read_suite(model_dir, suite_dir.name)
            if result is not None:
                evals.setdefault(model_dir.name, {})[suite_dir.name] = result
    # The folder is `<output_root>/<experiment>`; the prepare manifest's own name may be another experiment's
    # when a sweep linked an identical prepare stage into this run.
    experiment = run.root.name
    return Run(run.root, experiment, prepare, contamination, _read_stages(run), evals)


def mixture_sources(run: Run, kind: str) -> list[dict[str, Any]]:
    """The prepare manifest's per-source reports of one block (`sft` or `preference`)."""
    block = (run.prepare or {}).get(kind) or {}
    return list(block.get("sources") or [])
