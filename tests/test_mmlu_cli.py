"""`rutune eval mmlu` / `rutune eval babilong`: results on disk, bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rutune.cli import app

MERA = str(Path(__file__).parent / "data" / "rummlu_mera_mini.jsonl")
runner = CliRunner()


def test_mmlu_cli(tmp_path):
    r = runner.invoke(app, ["eval", "mmlu", "--model", "tiny", "--data", MERA, "--shots", "1", "--limit", "8",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metrics"]["accuracy"]["n_total"] == 8 and "ruMMLU tiny: accuracy" in r.output


def test_babilong_cli(tmp_path):
    r = runner.invoke(app, ["eval", "babilong", "--model", "tiny", "--tasks", "qa1", "--lengths", "256,8k",
                            "--samples", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["extra"]["missing_lengths"] == {"qa1": ["8k"]} and res["extra"]["skipped"] == 2
    assert "lengths counted as 0" in r.output


def one_line_error(args, pattern):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and pattern in lines[0], r.output


def test_bad_input_one_line(tmp_path):
    one_line_error(["eval", "mmlu", "--model", str(tmp_path / "nope"), "--data", MERA, "--out", str(tmp_path / "a")],
                   "folder not found")
    one_line_error(["eval", "mmlu", "--model", "tiny", "--data", MERA, "--domains", "astrology"],
                   "unknown domain 'astrology'")
    one_line_error(["eval", "mmlu", "--model", "tiny", "--shots", "6"], "--shots")
    one_line_error(["eval", "babilong", "--model", "tiny", "--tasks", "qa3"], "--tasks")
    one_line_error(["eval", "babilong", "--model", "tiny", "--lengths", "lots", "--out", str(tmp_path / "b")],
                   "length 'lots'")
