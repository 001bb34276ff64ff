"""`rutune score arena|libra` through typer's CliRunner, on folders and files the tests write in arena-hard-auto /
ru_llm_arena and LIBRA layouts: the leaderboard numbers, the files written, invalid games counted, and bad input
as one line with exit code 2 (never a traceback)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rutune.cli import app
from test_score_import import BASE, JUDGE, PREDICTIONS, answer_row, judgment_row, make_folder, write_jsonl

runner = CliRunner()


def md_row(markdown: str, first_cell: str) -> list[str]:
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def test_score_arena_writes_the_leaderboard_as_markdown_and_json(tmp_path):
    root = make_folder(tmp_path / "arena-hard-v0.1")
    out = tmp_path / "board" / "lb.md"
    r = runner.invoke(app, ["score", "arena", str(root), "--out", str(out), "--rounds", "40"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert [row["model"] for row in data["leaderboard"]] == ["alpha", "beta"]
    alpha = data["models"]["alpha"]["metrics"]
    # alpha: 101 win, win; 102 win ×3, tie; 104 loss; 105 win ×3; 106 loss → (2 + 3 + .5 + 3)/11; 7 of 12 games
    # valid (torn line, missing game, label outside the five, no label: all invalid, none dropped silently)
    assert alpha["win_rate"]["value"] == pytest.approx(8.5 / 11, abs=1e-6)
    md = out.read_text(encoding="utf-8")
    row = md_row(md, "alpha")
    assert row[1].startswith(f"{8.5 / 11:.3f} [") and row[9] == "7/12" and row[10] == "1"
    assert row[4] == (f"{alpha['win_rate_style']['value']:.3f} [{alpha['win_rate_style']['ci_low']:.3f}, "
                      f"{alpha['win_rate_style']['ci_high']:.3f}]")
    assert md_row(md, "beta")[5] == "1.000"  # beta's judge agrees with itself across seats on every pair
    assert f"Judge `{JUDGE}`, baseline `{BASE}`" in md and "Style control (reference `mean`" in md
    assert md in r.output  # printed as well
    assert data["settings"]["min_swap_agreement"] == 0.6


def test_score_arena_prints_the_swap_agreement_warning_below_the_threshold(tmp_path):
    """A judge that always picks seat A: no pair agrees (0/20), every decisive verdict is seat A."""
    root = tmp_path / "arena"
    qids = list(range(1, 21))
    write_jsonl(root / "question.jsonl", [{"question_id": q, "turns": [{"content": f"В {q}?"}]} for q in qids])
    for model, length in ((BASE, 10), ("gamma", 20)):
        write_jsonl(root / "model_answer" / f"{model}.jsonl", [answer_row(q, model, f"Ответ {q}", length + q % 3)
                                                               for q in qids])
    write_jsonl(root / "model_judgment" / JUDGE / "gamma.jsonl", [judgment_row(q, "gamma", "A>B", "A>B")
                                                                   for q in qids])
    out = tmp_path / "lb.md"
    r = runner.invoke(app, ["score", "arena", str(root), "--out", str(out), "--rounds", "20"])
    assert r.exit_code == 0, r.output
    md = out.read_text(encoding="utf-8")
    assert "⚠ gamma: judge swap agreement 0.00" in md and "below 0.60" in md
    assert md_row(md, "gamma")[6] == "1.000"  # P(seat A)
    r = runner.invoke(app, ["score", "arena", str(root), "--out", str(out), "--rounds", "20",
                            "--min-swap-agreement", "0"])
    md = out.read_text(encoding="utf-8")
    assert r.exit_code == 0 and "judge swap agreement" not in md
    assert "⚠ gamma: judge favours the first (A) seat" in md  # the seat check does not depend on that threshold


@pytest.mark.parametrize("setup, args, message", [
    (lambda root: None, [], "not a folder"),
    (lambda root: root.mkdir(), [], "no question.jsonl"),
    (lambda root: (make_folder(root), (root / "model_judgment" / "other").mkdir()), [], "holds 2 judges"),
    (lambda root: make_folder(root), ["--judge", "nobody"], "no model_judgment/nobody/"),
    (lambda root: (make_folder(root), (root / "question.jsonl").write_text('{"question_id": 1}\n{oops\n')), [],
     "question.jsonl:2: not JSON"),
    (lambda root: make_folder(root), ["--style-reference", "median"], "--style-reference median"),
])
def test_score_arena_bad_input_is_one_line_exit_2(tmp_path, setup, args, message):
    root = tmp_path / "arena"
    setup(root)
    r = runner.invoke(app, ["score", "arena", str(root), "--out", str(tmp_path / "lb.md"), "--rounds", "5", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # exit 2, not an escaped exception
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1
    assert not (tmp_path / "lb.md").exists()


def test_score_libra_writes_per_length_and_total_scores(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(PREDICTIONS, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "libra.md"
    r = runner.invoke(app, ["score", "libra", str(path), "--out", str(out), "--no-lemmatise", "--rounds", "50"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert data["metrics"]["total"]["value"] == pytest.approx((0.375 + 0.25) / 2)
    md = out.read_text(encoding="utf-8")
    qa1_4k = md_row(md, "ru_babilong_qa1")  # the first qa1 row: 4k, raw (1 + 0)/2, normalised 0
    assert qa1_4k[1] == "4k" and qa1_4k[2].startswith("0.500 [") and qa1_4k[3].startswith("0.000 [")
    total = md_row(md, "**total**")
    assert total[2].startswith(f"{(0.375 + 0.25) / 2:.3f}") and total[4] == "6/7"
    assert total[3].startswith(f"{((0 + 0.25) / 2 + 0.25) / 2:.3f}")
    assert "ru_babilong_qa2: no scored prediction for 8k (counted 0" in md  # its only answer is null
    assert "skipped ru_qasper" in md
    qa2_8k = next(x for x in md.splitlines() if x.startswith("| ru_babilong_qa2 | 8k |"))
    assert qa2_8k == "| ru_babilong_qa2 | 8k | — | — | 0/1 |"  # no number, no [nan, nan]
    assert "NaN" not in out.with_suffix(".json").read_text(encoding="utf-8")  # standard JSON


@pytest.mark.parametrize("content, message", [
    ('{"ru_babilong_qa1": {"4k": 0.5, "dataset_total_score": 0.5}, "total_score": 0.5}', "eval.py score file"),
    ('[{"length": "4k"}]', "expected the LIBRA predictions.json layout"),
    ('{"ru_babilong_qa1": [{"length": "4k", "model_answer": "a"}]}', "missing `positive_outputs`"),
    ("\xff\xfe", "not UTF-8"),
])
def test_score_libra_wrong_layout_is_one_line_exit_2(tmp_path, content, message):
    path = tmp_path / "predictions.json"
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode("utf-8"))
    r = runner.invoke(app, ["score", "libra", str(path), "--out", str(tmp_path / "o.md")])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1
    r = runner.invoke(app, ["score", "libra", str(tmp_path / "absent.json")])
    assert r.exit_code == 2 and "file not found" in r.output
