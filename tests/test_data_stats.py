"""`rutune data stats` on a prepared file: counts, token percentiles and the histogram PNG."""

import numpy as np
from typer.testing import CliRunner

from rutune.cli import app
from rutune.config import parse_config
from rutune.data.prepare import run_prepare
from rutune.data.stats import compute_stats, _rows
from rutune.data.templates import load_tokenizer, render
from rutune.models import tiny_model_path
from sample_rows import gm_row, saiga_row, write_jsonl


def test_stats_counts_and_percentiles(tmp_path):
    tiny_model_dir = tiny_model_path()
    gm = write_jsonl(tmp_path / "gm.jsonl", [gm_row(i) for i in range(6)])
    sg = write_jsonl(tmp_path / "s.jsonl", [saiga_row(i) for i in range(4)])
    cfg = parse_config({"name": "s", "output_root": str(tmp_path / "runs"), "data": {"sft": {"sources": [
        {"name": "grandmaster_pro_max", "path": str(gm), "percent": 100},
        {"name": "saiga_scored", "path": str(sg), "percent": 50}]}}})
    run_prepare(cfg)
    prepared = tmp_path / "runs" / "s" / "prepare" / "sft.parquet"
    tok = load_tokenizer(str(tiny_model_dir))
    _, records = _rows(prepared)
    stats = compute_stats(records, tok)
    assert {k: v["rows"] for k, v in stats.items()} == {"grandmaster_pro_max": 6, "saiga_scored": 2}
    gm_lengths = sorted(len(tok(render(tok, [m.to_dict() for m in r.messages]), add_special_tokens=False)["input_ids"])
                        for r in records if r.source == "grandmaster_pro_max")
    assert stats["grandmaster_pro_max"]["tokens"]["p100"] == gm_lengths[-1]
    assert stats["grandmaster_pro_max"]["tokens"]["p50"] == int(np.percentile(gm_lengths, 50))
    assert 0.8 < stats["saiga_scored"]["russian_share"] <= 1.0

    result = CliRunner().invoke(app, ["data", "stats", str(prepared), "--tokenizer", str(tiny_model_dir),
                                      "--png", str(tmp_path / "h.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_stats_missing_file_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2
    assert "none.parquet: prepared file not found" in result.output
