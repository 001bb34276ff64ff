"""Reference-study scale: the base model and 13 variants (13 run dirs), ruMMLU 14k items, arena 500 questions
(1000 games), QA1/QA2 500 items each, 1000 bootstrap rounds. Slow (a timing, not a unit test):
`.venv/bin/pytest tests/test_report_scale.py -m slow -s`."""

from __future__ import annotations

import json
import random
import time

import pytest

from _report_runs import source, write_prepare, write_stage
from rutune.report import build_report

N_MMLU, N_Q, N_QA = 14_000, 500, 500


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _entry(values, item_key=None):
    mean = sum(values) / len(values)
    return {"value": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01, "n_valid": len(values),
            "n_total": len(values), "item_key": item_key}


def write_model(run, model, rng, p):
    correct = [int(rng.random() < p) for _ in range(N_MMLU)]
    _lines(run / "eval/mmlu" / model / "items.jsonl", [{"id": f"m{i}", "correct": c} for i, c in enumerate(correct)])
    _dump(run / "eval/mmlu" / model / "results.json", {"metrics": {"accuracy": _entry(correct, "correct")}})
    qa = {t: [float(rng.random() < p) for _ in range(N_QA)] for t in ("qa1", "qa2")}
    _lines(run / "eval/babilong" / model / "items.jsonl",
           [{"id": f"{t}-{i}", "task": t, "score": s} for t in qa for i, s in enumerate(qa[t])])
    _dump(run / "eval/babilong" / model / "results.json", {"metrics": {t: _entry(v) for t, v in qa.items()}})
    scores = [rng.choice((0.0, 0.5, 1.0)) for _ in range(2 * N_Q)]
    lengths = [rng.randint(100, 900) for _ in range(N_Q)]
    _lines(run / "eval/arena" / model / "items.jsonl",
           [{"id": f"{q}-g{g}", "question_id": str(q), "game": g, "valid": True, "model_score": scores[2 * q + g - 1]}
            for q in range(N_Q) for g in (1, 2)])
    _lines(run / "eval/arena" / model / "answers.jsonl",
           [{"question_id": q, "choices": [{"turns": [{"content": "x", "model_token_len": n}]}]}
            for q, n in enumerate(lengths)])
    win = _entry(scores)
    _dump(run / "eval/arena" / model / "results.json", {"metrics": {
        "win_rate": win, "win_rate_lc": win,
        "avg_tokens": {"value": sum(lengths) / N_Q, "unit": "model_tokens", "n_valid": N_Q, "n_total": N_Q}}})


@pytest.mark.slow
def test_reference_scale_timing(tmp_path):
    rng = random.Random(0)
    runs = []
    for k in range(13):
        run = tmp_path / f"gm{k}"
        write_prepare(run, f"gm{k}", [source("grandmaster_pro_max", f"{20 + 10 * k}%", 1000, 200 + 100 * k,
                                             read=1000, after=1000)])
        write_stage(run, "sft", "sft", "base", [2.0 - 0.1 * i for i in range(50)])
        if k == 0:
            write_model(run, "base", rng, 0.55)
        write_model(run, "sft", rng, 0.55 + 0.005 * k)
        runs.append(run)
    start = time.perf_counter()
    written = build_report(runs, tmp_path / "out", rounds=1000)
    seconds = time.perf_counter() - start
    html_mb = written["html"].stat().st_size / 1e6
    print(f"\nreport: 14 rows, 13 runs: {seconds:.1f} s, html {html_mb:.2f} MB")
    assert seconds < 120 and html_mb < 5
    assert written["md"].read_text().count("| + GM ") == 13
