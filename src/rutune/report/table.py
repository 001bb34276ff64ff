"""The comparison table: one row per model, each cell a value with its 95% CI and a paired test against the base.

Values and CIs are the ones the eval stages wrote in results.json (never recomputed), except the average answer
length, whose CI is a percentile bootstrap over the per-question lengths in the arena answer file.

Significance (`alpha` = 0.05, two-sided) is tested on the items both models have a valid value for, paired by id:

- accuracy columns (ruMMLU `correct`, LIBRA containment `score`, 0/1 per item): exact McNemar;
- the others (arena per-game model score 1/0.5/0 against the shared baseline answers, answer lengths): paired
  bootstrap of the mean difference (two-sided p = twice the smaller tail of the resampled differences at 0).

The length-controlled judge score is a reweighted Bradley–Terry fit, not a mean of items, so it carries its CI
but no mark. The QA cells are LIBRA's mean over lengths; their test pools the items of all lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rutune.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap
from rutune.report.collect import Run, SuiteResult
from rutune.report.labels import stage_chain, assign_labels

ALPHA = 0.05
UNIT_NAMES = {"cl100k": "cl100k tokens", "model_tokens": "model tokens", "chars": "chars"}


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    suite: str
    metric: str
    decimals: int
    paired: str | None  # "items", "arena" (per-game scores), "lengths", or None (no test)
    accuracy: bool = False  # 0/1 items: McNemar (a paired bootstrap when some value is not 0/1)
    task: str | None = None  # babilong: keep items of this task
    item_field: str | None = None  # per-item field; default: the metric's item_key


COLUMNS = (
    Column("judge", "Judge", "arena", "win_rate", 3, "arena"),
    Column("judge_lc", "Judge (LC)", "arena", "win_rate_lc", 3, None),
    Column("avg_len", "Avg len", "arena", "avg_tokens", 0, "lengths"),
    Column("rummlu", "ruMMLU", "mmlu", "accuracy", 3, "items", accuracy=True),
    Column("qa1", "QA1", "babilong", "qa1", 3, "items", accuracy=True, task="qa1", item_field="score"),
    Column("qa2", "QA2", "babilong", "qa2", 3, "items", accuracy=True, task="qa2", item_field="score"),
)
OPTIONAL_COLUMNS = (Column("cyrillic", "Cyrillic share", "nll", "cyrillic_share", 3, "items"),
                    Column("own_cyrillic", "Cyrillic share (own words)", "nll", "own_cyrillic_share", 3, "items"),
                    Column("nll", "Held-out NLL", "nll", "nll_per_token", 3, "items"))


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


def _number(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def question_lengths(suite: SuiteResult, unit: str | None) -> dict[str, float]:
    """Per-question lengths in the unit of results.json's avg_tokens (answers file, else the items' model tokens)."""
    if unit in suite.answer_lengths:
        return suite.answer_lengths[unit]
    if unit == "model_tokens":
        return {str(r["question_id"]): float(r["model_token_len"]) for r in suite.items
                if r.get("model_token_len") is not None and r.get("question_id") is not None}
    return {}


def item_values(col: Column, suite: SuiteResult) -> dict[str, float]:
    """Per-item values a column's paired test compares, by item id (only valid items)."""
    if col.paired == "arena":
        return {str(r["id"]): float(r["model_score"]) for r in suite.items
                if r.get("valid") and r.get("model_score") is not None}
    if col.paired == "lengths":
        return question_lengths(suite, (suite.metric(col.metric) or {}).get("unit"))
    if col.paired == "items":
        key = col.item_field or (metric_of(col, suite) or {}).get("item_key")
        if not key:
            return {}
        return {str(r["id"]): float(r[key]) for r in suite.items
                if r.get(key) is not None and (col.task is None or r.get("task") == col.task)}
    return {}


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


def metric_of(col: Column, suite: SuiteResult) -> dict | None:
    """The column's metric entry; an optional suite's column falls back to the suite's first metric."""
    entry = suite.metric(col.metric)
    if entry is None and col.key == "nll":
        entry = next((e for e in suite.results["metrics"].values() if isinstance(e, dict)), None)
    return entry


def make_cell(col: Column, suite: SuiteResult | None, *, rounds: int, seed: int) -> Cell:
    """A cell from one suite's results (an empty cell when the suite or metric is missing)."""
    entry = metric_of(col, suite) if suite else None
    if entry is None:
        return Cell()
    cell = Cell(value=_number(entry.get("value")), ci_low=_number(entry.get("ci_low")),
                ci_high=_number(entry.get("ci_high")), n_valid=entry.get("n_valid"), n_total=entry.get("n_total"),
                unit=entry.get("unit"))
    if entry.get("available") is False:
        cell.note = "no judge configured" if col.suite == "arena" else "not available"
        cell.fix = entry.get("reason")
        return cell
    if cell.value is None:
        cell.note = f"no valid items ({cell.n_valid}/{cell.n_total})"
    if col.paired == "lengths" and cell.ci_low is None:
        lengths = list(question_lengths(suite, cell.unit).values())
        if lengths:
            cell.ci_low, cell.ci_high = bootstrap_ci(lengths, rounds=rounds, seed=seed)
    return cell


def _model_order(run: Run, model: str) -> tuple[int, str]:
    chain = stage_chain(run, model)
    return (len(chain) if chain else 99, model)


def build_table(runs: list[Run], *, baseline_label: str = "base", rounds: int = 1000, seed: int = 0) -> Table:
    """Rows for the baseline (once, from the first run that evaluated it) and every other evaluated model."""
    suites_seen = {s for run in runs for per_model in run.evals.values() for s in per_model}
    columns = list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c.suite in suites_seen]
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
    labels = assign_labels(keys, baseline_label)
    base_evals = base_run.evals[baseline_label] if base_run else {}
    rows = []
    for run, model in keys:
        evals = run.evals[model]
        cells = {}
        for col in columns:
            cell = make_cell(col, evals.get(col.suite), rounds=rounds, seed=seed)
            if model != baseline_label and col.paired and cell.value is not None and col.suite in base_evals \
                    and col.suite in evals:
                test = paired_test(item_values(col, evals[col.suite]), item_values(col, base_evals[col.suite]),
                                   accuracy=col.accuracy, rounds=rounds, seed=seed)
                if test:
                    cell.p_value, cell.test, cell.n_pairs, cell.diff = (test["p_value"], test["test"],
                                                                        test["n_pairs"], test["diff"])
            cells[col.key] = cell
        model_path = next((s.results.get("model_path") for s in evals.values() if s.results.get("model_path")), None)
        rows.append(Row(labels[(run.experiment, model)], run.experiment, model, model_path, cells,
                        is_baseline=model == baseline_label))
    return Table(columns, rows, notes)


def uniform_unit(table: Table, col: Column) -> str | None:
    """The unit all of a column's cells share, or None when they differ or carry none."""
    units = {r.cells[col.key].unit for r in table.rows if r.cells[col.key].value is not None}
    return units.pop() if len(units) == 1 else None
