"""The report's generic warnings: every result file's `extra.warnings` lines are printed under the results table
(Markdown and HTML), labelled by row and suite, and nothing is printed when no result has any."""

from __future__ import annotations

import json

from _report_runs import write_mmlu
from rutune.report import build_report
from rutune.report.collect import read_run
from rutune.report.table import build_table

LINE = "judge swap agreement 0.41 over 40 question pairs is below 0.60: treat the scores as unreliable"


def _with_warning(run, model: str, lines) -> None:
    path = run / "eval" / "mmlu" / model / "results.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    results["extra"]["warnings"] = lines
    path.write_text(json.dumps(results), encoding="utf-8")


def test_warnings_of_any_suite_are_printed_under_the_table(tmp_path):
    run = tmp_path / "e"
    write_mmlu(run, "base", 100)
    write_mmlu(run, "sft", 150)
    _with_warning(run, "sft", [LINE, "", 7])  # blank and non-text entries are not lines
    table = build_table([read_run(run)], rounds=50)
    sft_label = table.rows[1].label
    assert table.warnings == [f"{sft_label} · mmlu: {LINE}"]
    written = build_report([run], tmp_path / "out", rounds=50)
    md = written["md"].read_text(encoding="utf-8")
    results = md.split("## Results")[1].split("## Mixtures")[0]
    table_end = results.rindex("| ")
    warn_at = results.index(f"- ⚠ {sft_label} · mmlu: {LINE}")
    assert table_end < warn_at < results.index("- Cells: value [95% CI]")  # between the table and the legend
    assert "⚠ Warnings" in results
    html = written["html"].read_text(encoding="utf-8")
    assert f'<ul class="warnings"><li>⚠ {sft_label} · mmlu: {LINE}</li></ul>' in html
    assert html.index('class="results"') < html.index('class="warnings"') < html.index('class="legend"')


def test_no_warnings_section_without_warnings(tmp_path):
    run = tmp_path / "e"
    write_mmlu(run, "base", 100)
    write_mmlu(run, "sft", 150)
    written = build_report([run], tmp_path / "out", rounds=50, formats=["md", "html"])
    assert "⚠" not in written["md"].read_text(encoding="utf-8")
    assert 'class="warnings"' not in written["html"].read_text(encoding="utf-8")
