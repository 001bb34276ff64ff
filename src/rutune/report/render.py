"""Markdown, CSV and one self-contained HTML file from the table, the mixture/contamination sections and figures."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass

from rutune.report.collect import Run
from rutune.report.plots import Figure
from rutune.report.sections import MixtureRow, contamination_lines, mixture_rows
from rutune.report.table import Cell, Column, Table, legend_tests, uniform_unit

MARKS = {"higher": "▲", "lower": "▼"}
WARNING = "⚠"


@dataclass
class Document:
    """Everything a renderer needs: the table, the runs (for mixture/contamination) and the figures."""

    table: Table
    runs: list[Run]
    figures: list[Figure]
    baseline_label: str


def fmt(value: float | None, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def cell_text(cell: Cell, col: Column, *, with_unit: bool = False) -> str:
    """`0.194 [0.171, 0.219] ▲ (380/400)`: value, 95% CI, significance vs base, valid/total when items failed."""
    if cell.note:
        return cell.note
    if cell.value is None:
        return "—"
    text = fmt(cell.value, col.decimals)
    if cell.ci_low is not None and cell.ci_high is not None:
        text += f" [{fmt(cell.ci_low, col.decimals)}, {fmt(cell.ci_high, col.decimals)}]"
    if with_unit and cell.unit:
        text += f" {cell.unit}"
    if cell.direction:
        text += f" {MARKS[cell.direction]}"
    if cell.n_valid is not None and cell.n_total is not None and cell.n_valid < cell.n_total:
        text += f" ({cell.n_valid}/{cell.n_total})"
    return text


def column_title(table: Table, col: Column) -> str:
    unit = uniform_unit(table, col) if col.unit_title else None
    return f"{col.title} ({unit})" if unit else col.title


def legend(doc: Document) -> list[str]:
    tests = legend_tests(doc.table.columns)
    lines = [f"Cells: value [95% CI]. ▲/▼: significantly higher/lower than `{doc.baseline_label}` "
             f"(two-sided p < 0.05 on the items both models have, paired by id"
             + (f": {tests}" if tests else "") + "). (valid/total): items that failed are left out of the value. "
             "—: not evaluated."]
    fixes = sorted({c.fix for r in doc.table.rows for c in r.cells.values() if c.fix})
    lines += [f"Not available: {fix}" for fix in fixes]
    return lines + doc.table.notes


def _percent(row: MixtureRow) -> str:
    return "—" if row.realised_percent is None else f"{row.realised_percent:.1f}%"


def _dropped(row: MixtureRow) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.dropped.items())) or "—"


def _num(x) -> str:
    return "—" if x is None else str(x)


MIXTURE_HEADER = ("block", "source", "requested", "available", "realised", "realised %", "read", "after filters",
                  "held out", "dropped")


def mixture_cells(row: MixtureRow) -> list[str]:
    return [row.kind, f"{row.source} ({row.short})", row.requested, _num(row.available), _num(row.realised),
            _percent(row), _num(row.rows_read), _num(row.after_filters), _num(row.held_out), _dropped(row)]


def run_caption(doc: Document, run: Run) -> str:
    labels = [r.label for r in doc.table.rows if r.experiment == run.experiment and not r.is_baseline]
    return f"{run.experiment}" + (f" — rows: {'; '.join(labels)}" if labels else "") + f" ({run.root})"


# ------------------------------------------------------------------------------------------------ markdown
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(doc: Document, figure_paths: dict[str, str] | None = None) -> str:
    t = doc.table
    lines = ["# rutune report", "", "## Results", ""]
    header = ["model"] + [column_title(t, c) for c in t.columns]
    with_unit = {c.key: bool(c.unit_title) and uniform_unit(t, c) is None for c in t.columns}
    body = [[r.label] + [cell_text(r.cells[c.key], c, with_unit=with_unit[c.key]) for c in t.columns] for r in t.rows]
    lines += _md_table(header, body) + [""]
    if t.warnings:
        lines += [f"**{WARNING} Warnings** (from the result files)", ""] + [f"- {WARNING} {w}" for w in t.warnings]
        lines += [""]
    lines += [f"- {line}" for line in legend(doc)] + ["", "## Mixtures", ""]
    for run in doc.runs:
        rows = mixture_rows(run)
        lines += [f"### {run_caption(doc, run)}", ""]
        lines += (_md_table(list(MIXTURE_HEADER), [mixture_cells(r) for r in rows]) if rows
                  else ["No prepare manifest."]) + [""]
    lines += ["## Contamination", ""]
    for run in doc.runs:
        found = contamination_lines(run)
        lines += [f"### {run.experiment}", ""] + ([f"- {line}" for line in found] or ["Not checked."]) + [""]
    if figure_paths:
        lines += ["## Figures", ""]
        for fig in doc.figures:
            lines += [f"![{fig.title}]({figure_paths[fig.name]})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ csv
CELL_FIELDS = ("value", "ci_low", "ci_high", "n_valid", "n_total", "unit", "note", "p_value", "test", "n_pairs",
               "direction")


def csv_header(table: Table) -> list[str]:
    head = ["label", "experiment", "model", "model_path", "is_baseline"]
    for col in table.columns:
        head += [col.key if f == "value" else f"{col.key}_{f}" for f in CELL_FIELDS]
    return head


def _csv_value(x) -> str:
    return "" if x is None else str(x)


def render_csv(table: Table) -> str:
    """One row per model; numbers at full precision (read back with float()); empty = missing."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(table))
    for r in table.rows:
        out = [r.label, r.experiment, r.model, r.model_path or "", "1" if r.is_baseline else "0"]
        for col in table.columns:
            cell = r.cells[col.key]
            out += [_csv_value(getattr(cell, f)) for f in CELL_FIELDS]
        writer.writerow(out)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ html
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1f; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d0d5; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f2f2f5; } td:first-child, th:first-child { text-align: left; }
tr.baseline td { background: #fafae8; font-weight: 600; }
.ci, .n { display: block; font-size: 12px; } .ci, .unit { color: #6b6b73; } .n { color: #b35c00; }
table.results td:first-child { white-space: normal; min-width: 220px; max-width: 320px; }
table.mixture td, table.mixture th { text-align: left; } table.mixture td.num { text-align: right; }
table.mixture td:last-child { white-space: normal; min-width: 240px; max-width: 420px; }
.up { color: #1a7f37; font-weight: 700; } .down { color: #c62828; font-weight: 700; }
.note { color: #6b6b73; font-style: italic; } ul.legend { font-size: 13px; color: #444; }
ul.warnings { font-size: 13px; color: #b35c00; font-weight: 600; list-style: none; padding-left: 0; }
img { max-width: 100%; border: 1px solid #e0e0e5; margin: 6px 0 18px; }
"""


def _html_cell(cell: Cell, col: Column, with_unit: bool) -> str:
    e = html.escape
    if cell.note:
        title = f' title="{e(cell.fix)}"' if cell.fix else ""
        return f'<td><span class="note"{title}>{e(cell.note)}</span></td>'
    if cell.value is None:
        return "<td>—</td>"
    inner = e(fmt(cell.value, col.decimals))
    if cell.direction:
        cls = "up" if cell.direction == "higher" else "down"
        inner += (f' <span class="{cls}" title="p = {cell.p_value:.4g} ({cell.test}, {cell.n_pairs} paired items)">'
                  f"{MARKS[cell.direction]}</span>")
    if with_unit and cell.unit:
        inner += f' <span class="unit">{e(cell.unit)}</span>'
    if cell.ci_low is not None and cell.ci_high is not None:
        inner += f'<span class="ci">[{fmt(cell.ci_low, col.decimals)}, {fmt(cell.ci_high, col.decimals)}]</span>'
    if cell.n_valid is not None and cell.n_total is not None and cell.n_valid < cell.n_total:
        inner += f'<span class="n">{cell.n_valid}/{cell.n_total} valid</span>'
    return f"<td>{inner}</td>"


def _html_table(header: list[str], rows: list[str], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(doc: Document) -> str:
    """One file: inline CSS, the PNGs embedded as data URIs, nothing fetched from anywhere."""
    e = html.escape
    t = doc.table
    with_unit = {c.key: bool(c.unit_title) and uniform_unit(t, c) is None for c in t.columns}
    rows = []
    for r in t.rows:
        cls = ' class="baseline"' if r.is_baseline else ""
        tip = e(f"{r.experiment}/{r.model}" + (f" · {r.model_path}" if r.model_path else ""))
        cells = "".join(_html_cell(r.cells[c.key], c, with_unit[c.key]) for c in t.columns)
        rows.append(f'<tr{cls}><td title="{tip}">{e(r.label)}</td>{cells}</tr>')
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>rutune report</title>",
             f"<style>{STYLE}</style></head><body>", "<h1>rutune report</h1>", "<h2>Results</h2>",
             _html_table(["model"] + [column_title(t, c) for c in t.columns], rows, "results"),
             ('<ul class="warnings">' + "".join(f"<li>{WARNING} {e(w)}</li>" for w in t.warnings) + "</ul>"
              if t.warnings else ""),
             '<ul class="legend">' + "".join(f"<li>{e(line)}</li>" for line in legend(doc)) + "</ul>",
             "<h2>Mixtures</h2>"]
    for run in doc.runs:
        mrows = mixture_rows(run)
        parts.append(f"<h3>{e(run_caption(doc, run))}</h3>")
        if mrows:
            body = ["<tr>" + "".join(f'<td{" class=num" if 3 <= i <= 8 else ""}>{e(c)}</td>'
                                     for i, c in enumerate(mixture_cells(m))) + "</tr>" for m in mrows]
            parts.append(_html_table(list(MIXTURE_HEADER), body, "mixture"))
        else:
            parts.append("<p>No prepare manifest.</p>")
    parts.append("<h2>Contamination</h2>")
    for run in doc.runs:
        found = contamination_lines(run)
        parts.append(f"<h3>{e(run.experiment)}</h3>")
        parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in found) + "</ul>" if found
                     else "<p>Not checked.</p>")
    if doc.figures:
        parts.append("<h2>Figures</h2>")
        for fig in doc.figures:
            data = base64.b64encode(fig.png).decode("ascii")
            parts.append(f'<h3>{e(fig.title)}</h3><img alt="{e(fig.title)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
