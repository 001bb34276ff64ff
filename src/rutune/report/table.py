"""The comparison table: one row per model, each cell a value with its 95% CI and a paired test against the base.

Columns come from the result files alone: every metric a suite wrote with a `display` block
(`rutune.results.display`) is a column — its title, decimals, order, per-item key and test kind. The report
names no suite. Values and CIs are the ones the eval stages wrote in results.json (never recomputed).

Significance (`alpha` = 0.05, two-sided) is tested on the items both models have a valid value for, paired by id:
- `mcnemar` columns (0/1 per item): exact McNemar (a paired bootstrap when some value is not 0/1);
- `paired_bootstrap` columns: paired bootstrap of the mean difference (two-sided p = twice the smaller tail of the
  resampled differences at 0);
- `none` columns (a refitted model score, such as the length-controlled judge score) carry their CI, no mark.
A column pooling several item groups (LIBRA's QA cells are means over lengths) tests the pooled items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rutune.report.collect import Run, SuiteResult
from rutune.report.labels import assign_labels, stage_chain
from rutune.stats import mcnemar, paired_bootstrap

ALPHA = 0.05
TEST_NAMES = {"mcnemar": "exact McNemar", "paired_bootstrap": "paired bootstrap of the mean difference"}


@dataclass(frozen=True)
class Column:
    """One report column, read from a metric's `display` block."""

    key: str  # "<suite>.<metric>"
    title: str
    suite: str
    metric: str
    decimals: int = 3
    direction: str = "higher"
    test: str = "none"
    order: float = 100
    items_file: str = "items.jsonl"
    item_key: str | None = None
    where: tuple = ()  # ((field, value), ...) items must match
    unit_title: str | None = None
    histogram: bool = False

    @classmethod
    def from_display(cls, suite: str, metric: str, d: dict) -> "Column":
        return cls(f"{suite}.{metric}", str(d.get("title", metric)), suite, metric, int(d.get("decimals", 3)),
                   d.get("direction", "higher"), d.get("test", "none"), float(d.get("order", 100)),
                   d.get("items_file", "items.jsonl"), d.get("item_key"), tuple(sorted((d.get("where") or {}).items())),
                   d.get("unit_title"), bool(d.get("histogram", False)))


def columns_of(runs: list[Run]) -> list[Column]:
    """Every displayed metric of every result file, once, in display order."""
    found: dict[str, Column] = {}
    for run in runs:
        for per_model in run.evals.values():
            for suite in per_model.values():
                for name, entry in suite.results.get("metrics", {}).items():
                    if isinstance(entry, dict) and isinstance(entry.get("display"), dict):
                        col = Column.from_display(suite.suite, name, entry["display"])
                        found.setdefault(col.key, col)
    return sorted(found.values(), key=lambda c: (c.order, c.key))


@dataclass
class Cell:
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_valid: int | None = None
    n_total: int | None = None
    unit: str | None = None
    note: str | None = None  # replaces the number: "no judge configured", "no valid items"
    fix: str | None = None  # the one-line fix the results carry (unavailable judge)
    p_value: float | None = None
    test: str | None = None
    n_pairs: int | None = None
    diff: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    @property
    def direction(self) -> str | None:
        if not self.significant or self.diff is None or self.diff == 0:
            return None
        return "higher" if self.diff > 0 else "lower"


@dataclass
class Row:
    label: str
    experiment: str
    model: str
    model_path: str | None
    cells: dict[str, Cell]
    is_baseline: bool = False


@dataclass
class Table:
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # printed under the table, visibly apart from the notes


def _number(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def item_values(col: Column, suite: SuiteResult) -> dict[str, float]:
    """Per-item values a column's paired test compares, by item id (only valid items)."""
    if not col.item_key:
        return {}
    where = dict(col.where)
    out = {}
    for r in suite.rows(col.items_file):
        value = r.get(col.item_key)
        if value is None or r.get("valid") is False or r.get("id") is None:
            continue
        if all(r.get(k) == v for k, v in where.items()):
            out[str(r["id"])] = float(value)
    return out


def paired_test(model: dict[str, float], base: dict[str, float], *, accuracy: bool, rounds: int,
                seed: int) -> dict | None:
    """Over the ids both sides have: McNemar for accuracy (0/1) items, else a paired bootstrap of the mean difference.

    None when the two share no item.
    """
    ids = sorted(set(model) & set(base))
    if not ids:
        return None
    a = np.array([model[i] for i in ids])
    b = np.array([base[i] for i in ids])
    diff = float(np.mean(a - b))
    if accuracy and np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        return {"p_value": mcnemar(a, b)["p_value"], "test": "mcnemar", "n_pairs": len(ids), "diff": diff}
    res = paired_bootstrap(a, b, rounds=rounds, seed=seed)
    return {"p_value": res["p_value"], "test": "paired_bootstrap", "n_pairs": len(ids), "diff": diff}


def make_cell(col: Column, suite: SuiteResult | None) -> Cell:
    """A cell from one suite's results (an empty cell when the suite or metric is missing)."""
    entry = suite.metric(col.metric) if suite else None
    if entry is None:
        return Cell()
    cell = Cell(value=_number(entry.get("value")), ci_low=_number(entry.get("ci_low")),
                ci_high=_number(entry.get("ci_high")), n_valid=entry.get("n_valid"), n_total=entry.get("n_total"),
                unit=(entry.get("display") or {}).get("unit_title") or entry.get("unit"))
    if entry.get("available") is False:
        cell.note = entry.get("note") or "not available"
        cell.fix = entry.get("reason")
        return cell
    if cell.value is None:
        cell.note = f"no valid items ({cell.n_valid}/{cell.n_total})"
    return cell


def _model_order(run: Run, model: str) -> tuple[int, str]:
    chain = stage_chain(run, model)
    return (len(chain) if chain else 99, model)


def build_table(runs: list[Run], *, baseline_label: str = "base", rounds: int = 1000, seed: int = 0) -> Table:
    """Rows for the baseline (once, from the first run that evaluated it) and every other evaluated model."""
    columns = columns_of(runs)
    notes: list[str] = []
    base_run = next((r for r in runs if baseline_label in r.evals), None)
    keys = [(base_run, baseline_label)] if base_run else []
    for run in runs:
        keys += [(run, m) for m in sorted(run.evals, key=lambda m: _model_order(run, m)) if m != baseline_label]
    others = [r.experiment for r in runs if baseline_label in r.evals and r is not base_run]
    if base_run and others:
        notes.append(f"`{baseline_label}` row from run {base_run.experiment} (also evaluated in {', '.join(others)}).")
    if base_run is None:
        notes.append(f"No results for the baseline `{baseline_label}` in any run: no significance marks.")
    notes += substitution_notes(runs)
    labels = assign_labels(keys, baseline_label)
    base_evals = base_run.evals[baseline_label] if base_run else {}
    rows = []
    for run, model in keys:
        evals = run.evals[model]
        cells = {}
        for col in columns:
            cell = make_cell(col, evals.get(col.suite))
            if model != baseline_label and col.test != "none" and cell.value is not None \
                    and col.suite in base_evals and col.suite in evals:
                test = paired_test(item_values(col, evals[col.suite]), item_values(col, base_evals[col.suite]),
                                   accuracy=col.test == "mcnemar", rounds=rounds, seed=seed)
                if test:
                    cell.p_value, cell.test, cell.n_pairs, cell.diff = (test["p_value"], test["test"],
                                                                        test["n_pairs"], test["diff"])
            cells[col.key] = cell
        model_path = next((s.results.get("model_path") for s in evals.values() if s.results.get("model_path")), None)
        rows.append(Row(labels[(run.experiment, model)], run.experiment, model, model_path, cells,
                        is_baseline=model == baseline_label))
    return Table(columns, rows, notes, result_warnings(rows, {(run.experiment, m): run.evals[m] for run, m in keys}))


def result_warnings(rows: list[Row], evals: dict[tuple[str, str], dict[str, SuiteResult]]) -> list[str]:
    """Every line a result file lists under `extra.warnings`, as "<row label> · <suite>: <line>", in row order.

    A suite writes there what a reader must not miss next to its numbers (the arena judge's swap agreement below
    its configured threshold, say); the report names no suite and prints each line once per row it belongs to.
    """
    out = []
    for row in rows:
        for name, suite in sorted(evals.get((row.experiment, row.model), {}).items()):
            lines = (suite.results.get("extra") or {}).get("warnings") or []
            out += [f"{row.label} · {name}: {line}" for line in lines if isinstance(line, str) and line.strip()]
    return out


def substitution_notes(runs: list[Run]) -> list[str]:
    """A visible note for every suite whose results say bundled sample data stood in for the real set."""
    found = set()
    for run in runs:
        for per_model in run.evals.values():
            for suite in per_model.values():
                extra = suite.results.get("extra") or {}
                parts = [k for k, v in extra.items() if isinstance(v, dict) and v.get("substituted")]
                if extra.get("substituted") is True or parts:
                    found.add((suite.suite, ", ".join(parts) or "items"))
    return [f"{suite}: bundled sample data ({what}) stood in for the real set (results.json `substituted`)."
            for suite, what in sorted(found)]


def uniform_unit(table: Table, col: Column) -> str | None:
    """The unit all of a column's cells share, or None when they differ or carry none."""
    units = {r.cells[col.key].unit for r in table.rows if r.cells[col.key].value is not None}
    return units.pop() if len(units) == 1 else None


def legend_tests(columns: list[Column]) -> str:
    """Which test each column's ▲/▼ comes from, grouped by test kind (built from the columns themselves)."""
    groups: dict[str, list[str]] = {}
    for col in columns:
        groups.setdefault(col.test, []).append(col.title)
    parts = [f"{TEST_NAMES[t]} for {', '.join(titles)}" for t, titles in groups.items() if t in TEST_NAMES]
    if groups.get("none"):
        parts.append(f"{', '.join(groups['none'])} not tested")
    return "; ".join(parts)
