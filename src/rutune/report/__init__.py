"""rutune.report: the comparison table (95% CIs, paired tests vs the base model), mixture and contamination
sections, figures; Markdown, CSV and one self-contained HTML. Reads result files only and never imports torch.

Public API: `build_report(run_dirs, out_dir, *, baseline_label="base", formats=("md","csv","html"))` and
`ReportError` (bad input, one line naming the file).
"""

from rutune.report.build import build_report
from rutune.report.collect import ReportError

__all__ = ["ReportError", "build_report"]
