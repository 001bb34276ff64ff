"""`build_report`: run directories in, report files out (Markdown, CSV, one self-contained HTML, PNG figures)."""

from __future__ import annotations

from pathlib import Path

from rutune.report.collect import ReportError, read_run
from rutune.report.plots import all_figures
from rutune.report.render import Document, render_csv, render_html, render_markdown
from rutune.report.table import build_table
from rutune.rundir import atomic_path, write_text_atomic

FORMATS = ("md", "csv", "html")


def build_report(run_dirs: list[str | Path], out_dir: str | Path, *, baseline_label: str = "base",
                 formats: tuple[str, ...] | list[str] = FORMATS, rounds: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Read `run_dirs` (one experiment or a sweep), write `report.{md,csv,html}` into `out_dir`; returns the paths.

    The Markdown report links the figures it writes under `out_dir/plots/`; the HTML embeds them.
    `rounds`/`seed` drive the paired bootstrap tests and the answer-length CIs.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ReportError(f"report formats: unknown {', '.join(unknown)} (expected {', '.join(FORMATS)})")
    if not run_dirs:
        raise ReportError("report: give at least one run directory")
    runs = [read_run(p) for p in run_dirs]
    seen: dict[str, Path] = {}
    for run in runs:
        if run.experiment in seen:
            raise ReportError(f"{run.root}: experiment {run.experiment!r} is also {seen[run.experiment]}; "
                              "give each run once")
        seen[run.experiment] = run.root
    table = build_table(runs, baseline_label=baseline_label, rounds=rounds, seed=seed)
    figures = all_figures(table, runs) if {"md", "html"} & set(formats) else []  # csv alone shows none
    doc = Document(table, runs, figures, baseline_label)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "md" in formats:
        rel = {}
        for fig in figures:
            path = out / "plots" / f"{fig.name}.png"
            with atomic_path(path) as tmp:
                tmp.write_bytes(fig.png)
            written[f"plot:{fig.name}"] = path
            rel[fig.name] = f"plots/{fig.name}.png"
        written["md"] = out / "report.md"
        write_text_atomic(written["md"], render_markdown(doc, rel))
    if "csv" in formats:
        written["csv"] = out / "report.csv"
        write_text_atomic(written["csv"], render_csv(table))
    if "html" in formats:
        written["html"] = out / "report.html"
        write_text_atomic(written["html"], render_html(doc))
    return written
