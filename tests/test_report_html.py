"""The HTML report is one self-contained file (inline CSS, PNGs as data URIs) holding the table; the report
package builds it without loading torch."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

from _report_runs import JUDGE_FIX, make_sweep
from rutune.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_with_table_and_images(tmp_path):
    written = build_report(make_sweep(tmp_path), tmp_path / "out", formats=("html",), rounds=100)
    assert set(written) == {"html"} and not (tmp_path / "out" / "plots").exists()
    page = written["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # nothing is fetched: no links, no scripts or stylesheets from elsewhere, every src is an inline PNG
    assert not re.search(r"\bhref\s*=", page) and "<link" not in page and "<script" not in page
    assert "url(" not in page and "@import" not in page
    srcs = re.findall(r'\bsrc\s*=\s*"([^"]*)"', page)
    assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == PNG_MAGIC
    # the results table: header, every row, a cell with its CI and mark, the valid/total counts
    table = page.split('<table class="results">')[1].split("</table>")[0]
    heads = re.findall(r"<th>(.*?)</th>", table)
    assert heads == ["model", "Judge", "Judge (LC)", "Avg len (model tokens)", "ruMMLU", "QA1", "QA2"]
    labels = re.findall(r'<tr[^>]*><td title="[^"]*">(.*?)</td>', table)
    assert labels == ["base", "+ GM 60% + Saiga 20%", "+ GM 60% + Saiga 20% + Saiga Pref 100%",
                      "+ GM 80% + Saiga 20%"]
    assert ('<td>0.800 <span class="up" title="p = 1.735e-18 (mcnemar, 200 paired items)">▲</span>'
            '<span class="ci">[0.740, 0.860]</span></td>') in table
    assert '<span class="down"' in table and '<span class="n">25/30 valid</span>' in table
    assert f'title="{JUDGE_FIX}">no judge configured</span>' in table
    assert "<h2>Mixtures</h2>" in page and "<td>grandmaster_pro_max (GM)</td>" in page
    assert "<li>arena: 2/50 items share a 13-gram; flagged ids: 7, 19</li>" in page


def test_report_builds_without_torch(tmp_path):
    runs = make_sweep(tmp_path)
    code = ("import sys\n"
            "from pathlib import Path\n"
            "import rutune.report\n"
            "from rutune.report import build_report\n"
            f"build_report([Path({str(runs[0])!r}), Path({str(runs[1])!r})], Path({str(tmp_path / 'o')!r}), "
            "rounds=50)\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules)\n"
            "print('loaded:', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded: []"
    assert (tmp_path / "o" / "report.html").exists()
