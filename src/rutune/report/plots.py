"""The report's figures as PNG bytes (matplotlib's Agg backend, no display, no torch).

- each metric against the mixture percentage of the source a sweep varies (one line per model stage, the base
  model as a dashed line with its CI band);
- training loss curves per stage, one line per experiment;
- answer-length histograms per model (arena answers, in the table's length unit).

A figure with nothing to draw is left out (returns None).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from rutune.report.collect import Run
from rutune.report.labels import short_names, source_percents
from rutune.report.table import Table, item_values

DPI = 90


@dataclass
class Figure:
    name: str  # file stem
    title: str
    png: bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(n: int, ncols: int, size: tuple[float, float]):
    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def swept_source(runs: list[Run]) -> str | None:
    """The source whose percent differs most across runs (the first source of the first run when none differs)."""
    per_run = [source_percents(r) for r in runs]
    order: list[str] = []
    for p in per_run:
        order += [s for s in p if s not in order]
    if not order:
        return None
    return max(order, key=lambda s: (len({p[s] for p in per_run if s in p}), -order.index(s)))


def metric_vs_mixture(table: Table, runs: list[Run]) -> Figure | None:
    source = swept_source(runs)
    if source is None:
        return None
    percent_of = {r.experiment: source_percents(r).get(source) for r in runs}
    if len({x for x in percent_of.values() if x is not None}) < 2:
        return None  # one mixture share: nothing to draw against (a line needs two x values)
    short = short_names(runs).get(source, source)
    cols = [c for c in table.columns if any(r.cells[c.key].value is not None for r in table.rows)]
    if not cols:
        return None
    xs_all = [x for x in percent_of.values() if x is not None]
    fig, axes = _grid(len(cols), 3, (4.2, 3.2))
    for ax, col in zip(axes, cols):
        lines: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
        for row in table.rows:
            cell = row.cells[col.key]
            if cell.value is None:
                continue
            if row.is_baseline:
                ax.axhline(cell.value, color="grey", linestyle="--", label=row.label)
                if cell.ci_low is not None and cell.ci_high is not None:
                    ax.axhspan(cell.ci_low, cell.ci_high, color="grey", alpha=0.15)
                continue
            x = percent_of.get(row.experiment)
            if x is not None:
                lines.setdefault(row.model, []).append((x, cell.value, cell.ci_low, cell.ci_high))
        for model, points in sorted(lines.items()):
            points.sort()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            err = [[max(0.0, y - (lo if lo is not None else y)) for _, y, lo, _ in points],
                   [max(0.0, (hi if hi is not None else y) - y) for _, y, _, hi in points]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=model)
        ax.set_title(col.title)
        if xs_all:
            pad = max(5.0, 0.1 * (max(xs_all) - min(xs_all)))
            ax.set_xlim(min(xs_all) - pad, max(xs_all) + pad)
        ax.set_xlabel(f"{short} %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Metrics vs the {short} share of the mixture (95% CI)")
    return Figure("metrics_vs_mixture", f"Metrics vs {short} %", _png(fig))


def loss_curves(runs: list[Run]) -> Figure | None:
    stages = sorted({name for r in runs for name, s in r.stages.items() if s.log})
    if not stages:
        return None
    fig, axes = _grid(len(stages), 2, (5.5, 3.5))
    for ax, name in zip(axes, stages):
        for run in runs:
            stage = run.stages.get(name)
            if stage and stage.log:
                ax.plot([r.get("step", i) for i, r in enumerate(stage.log)], [r["loss"] for r in stage.log],
                        label=run.experiment)
        recipe = next((r.stages[name].recipe for r in runs if name in r.stages and r.stages[name].recipe), None)
        ax.set_title(f"{name}" + (f" ({recipe})" if recipe and recipe != name else ""))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training loss")
    return Figure("loss_curves", "Training loss curves", _png(fig))


def histograms(table: Table, runs: list[Run]) -> list[Figure]:
    """Per-model histograms of the per-item values of every column whose display asks for one (the arena's
    answer lengths)."""
    by_exp = {r.experiment: r for r in runs}
    figures = []
    for col in (c for c in table.columns if c.histogram):
        panels = []
        for row in table.rows:
            suite = by_exp[row.experiment].evals[row.model].get(col.suite)
            values = list(item_values(col, suite).values()) if suite else []
            if values:
                panels.append((row.label, row.cells[col.key].unit, values))
        if not panels:
            continue
        top = max(max(p[2]) for p in panels)
        bins = [top * i / 20 for i in range(21)] if top > 0 else 20
        fig, axes = _grid(len(panels), 3, (4.0, 2.8))
        for ax, (label, unit, values) in zip(axes, panels):
            ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
            mean = sum(values) / len(values)
            ax.axvline(mean, color="black", linestyle=":", label=f"mean {mean:.0f}")
            ax.set_title(label if len(label) <= 40 else label[:38] + "…", fontsize=9)
            ax.set_xlabel(f"{col.title}" + (f" ({unit})" if unit else ""))
            ax.legend(fontsize=7)
        fig.suptitle(f"{col.title}: per-item values per model")
        figures.append(Figure(f"hist_{col.key}", f"{col.title} histograms", _png(fig)))
    return figures


def all_figures(table: Table, runs: list[Run]) -> list[Figure]:
    figures = [metric_vs_mixture(table, runs), loss_curves(runs), *histograms(table, runs)]
    return [f for f in figures if f is not None]
