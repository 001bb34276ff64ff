"""ruIFEval suite: scores and items from scripted answers, instruction-level CIs over prompts, resume, identity,
bad rows as one line, and real tiny-model runs through `rutune eval ifeval` and `rutune run` (report columns)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rutune.cli import app
from rutune.eval.backend_base import BackendConfig, GenerationResult
from rutune.eval.errors import EvalError
from rutune.eval.suites import EvalRequest
from rutune.eval.suites.ifeval import IfevalConfig, inputs, item_texts, ratio_bootstrap_ci, run_ifeval
from rutune.stats import bootstrap_ci

runner = CliRunner()
ROWS = [
    {"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 2, "prompt": "p2", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
     "kwargs": [{}, {}]},
    {"key": 3, "prompt": "p3", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    {"key": 4, "prompt": "p4", "instruction_id_list": ["detectable_format:json_format", "punctuation:no_comma",
                                                      "detectable_format:title"], "kwargs": [{}, {}, {}]},
]
ANSWERS = {"p1": "Текст без запятых.",                  # followed
           "p2": '"Привет, мир"',                       # quoted, but a comma
           "p3": 'Конечно!\n"Ответ в кавычках"',        # quoted only after a preamble line: loose, not strict
           "p4": '```json\n{"a": 1}\n```'}              # JSON inside a fence, no comma, no <<title>>


class Scripted:
    """A backend that answers each prompt from a table and can fail on a given call (an interrupted run)."""

    batch_size = 1

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.prompts, self.fail_on_call = 0, [], fail_on_call

    def generate(self, requests):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.prompts += [r.messages[0]["content"] for r in requests]
        assert all(r.temperature == 0.0 and r.max_new_tokens == 512 for r in requests)  # greedy, the default cap
        return [GenerationResult(ANSWERS[r.messages[0]["content"]], 7) for r in requests]


def write_rows(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def request(cfg, out: Path, rounds: int = 200) -> EvalRequest:
    return EvalRequest(cfg, BackendConfig(), "scripted", "scripted", out, rounds=rounds)


def test_scripted_answers_give_hand_counted_scores_items_and_breakdown(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    res = run_ifeval(request(IfevalConfig(path=path), tmp_path / "o"), backend=Scripted())
    m = res["metrics"]
    assert m["prompt_level_strict"]["value"] == 0.25      # only p1
    assert m["prompt_level_loose"]["value"] == 0.5        # p1 and p3 (preamble line dropped)
    assert m["inst_level_strict"]["value"] == pytest.approx(4 / 7)  # 1 + 1 + 0 + 2 of 1 + 2 + 1 + 3
    assert m["inst_level_loose"]["value"] == pytest.approx(5 / 7)
    assert (m["prompt_level_strict"]["n_valid"], m["inst_level_strict"]["n_valid"]) == (4, 7)
    assert {k: v["display"]["test"] for k, v in m.items()} == {
        "prompt_level_strict": "mcnemar", "prompt_level_loose": "mcnemar",
        "inst_level_strict": "paired_bootstrap", "inst_level_loose": "paired_bootstrap"}
    assert m["inst_level_loose"]["display"]["item_key"] == "inst_loose_followed"
    items = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    assert [(r["id"], r["inst_strict"], r["inst_loose"], r["prompt_strict"], r["prompt_loose"],
             r["inst_strict_followed"]) for r in items] == [
        ("1", [1], [1], 1, 1, 1), ("2", [0, 1], [0, 1], 0, 0, 1), ("3", [0], [1], 0, 1, 0),
        ("4", [1, 1, 0], [1, 1, 0], 0, 0, 2)]
    assert items[2]["response"] == ANSWERS["p3"] and items[3]["instruction_ids"][2] == "detectable_format:title"
    extra = res["extra"]
    assert extra["per_instruction"]["startend:quotation"] == {"n": 2, "strict": 0.5, "loose": 1.0}
    assert extra["per_instruction"]["punctuation:no_comma"]["strict"] == pytest.approx(2 / 3)
    assert (extra["substituted"], extra["n_instructions"], extra["source"]) == (False, 7, path)
    assert json.loads((tmp_path / "o" / "results.json").read_text())["metrics"] == json.loads(json.dumps(m))


def test_instruction_level_ci_resamples_prompts_not_instructions():
    values = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert ratio_bootstrap_ci(values, [1] * 10, rounds=500, seed=3) == pytest.approx(
        bootstrap_ci(values, rounds=500, seed=3))  # one instruction per prompt: the prompt-level bootstrap
    # One prompt with 3 followed of 3, one with 0 of 1: a resample holds k copies of the first, so the ratio can
    # only be 3k/(3k + 2 − k) for k = 0, 1, 2; the interval's ends are among those values.
    low, high = ratio_bootstrap_ci([3, 0], [3, 1], rounds=1000, seed=0)
    assert (low, high) == (0.0, 1.0) and 0.75 in {3 * k / (2 * k + 2) for k in range(3)}


def test_resume_after_interrupt_asks_only_for_unanswered_prompts(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(KeyboardInterrupt):
        run_ifeval(request(IfevalConfig(path=path), tmp_path / "o"), backend=Scripted(fail_on_call=3), chunk=1)
    assert len((tmp_path / "o" / "items.jsonl").read_text().splitlines()) == 2
    second = Scripted()
    resumed = run_ifeval(request(IfevalConfig(path=path), tmp_path / "o"), backend=second)
    assert second.prompts == ["p3", "p4"]
    straight = run_ifeval(request(IfevalConfig(path=path), tmp_path / "fresh"), backend=Scripted())
    assert resumed["metrics"] == straight["metrics"]


def test_limit_bundled_sample_identity_and_item_texts(tmp_path):
    res = run_ifeval(request(IfevalConfig(limit=3), tmp_path / "o"), backend=type("B", (), {
        "generate": lambda self, reqs: [GenerationResult("ответ", 1, "length") for _ in reqs]})())
    assert (res["extra"]["substituted"], res["extra"]["n_prompts"], res["extra"]["truncated"]) == (True, 3, 3)
    assert list(item_texts(IfevalConfig(limit=2))) == ["ifeval-1001", "ifeval-1002"]
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    before = inputs(IfevalConfig(path=path), None)
    write_rows(tmp_path / "rows.jsonl", ROWS[:3])
    assert inputs(IfevalConfig(path=path), None) != before  # the file's content is part of the identity
    assert inputs(IfevalConfig(path="NLP-Core-Team/ruIFEval", revision="abc"), None) == [
        "hub:NLP-Core-Team/ruIFEval@abc"]


def one_line_error(args, *parts):
    r = runner.invoke(app, args)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and all(p in lines[0] for p in parts), r.output


def test_bad_rows_are_one_line_errors_naming_the_row(tmp_path):
    bad_id = write_rows(tmp_path / "bad_id.jsonl", [ROWS[0], {**ROWS[2], "instruction_id_list": ["startend:quotaton"]}])
    bad_kw = write_rows(tmp_path / "bad_kw.jsonl", [{**ROWS[0], "kwargs": [{"num_words": 3}]}])
    with pytest.raises(EvalError, match=r"bad_id.jsonl line 2 \(key 3\).*did you mean 'startend:quotation'"):
        run_ifeval(request(IfevalConfig(path=bad_id), tmp_path / "o"), backend=Scripted())
    assert not (tmp_path / "o").exists()  # nothing is written before the rows are valid
    one_line_error(["eval", "ifeval", "--model", "tiny", "--path", bad_kw, "--out", str(tmp_path / "c")],
                   "bad_kw.jsonl line 1", "num_words")
    one_line_error(["eval", "ifeval", "--model", "tiny", "--path", str(tmp_path / "none.jsonl")], "none.jsonl")


def test_cli_on_the_tiny_model(tmp_path):
    r = runner.invoke(app, ["eval", "ifeval", "--model", "tiny", "--limit", "5", "--max-new-tokens", "8",
                            "--rounds", "50", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["extra"]["n_prompts"] == 5 and res["extra"]["substituted"] is True
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert [r["id"] for r in items] == ["1001", "1002", "1003", "1004", "1005"]
    assert all(isinstance(r["response"], str) and r["n_tokens"] <= 8 for r in items)
    assert "ruIFEval tiny: prompt strict" in r.output and "bundled sample, not ruIFEval" in r.output


def test_experiment_run_puts_ruifeval_columns_in_the_report(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: ife\noutput_root: {tmp_path / 'runs'}\ndata: {{}}\neval:\n  models: [base]\n  bootstrap_rounds: 50\n"
                      "  ifeval: {limit: 5, max_new_tokens: 8}\n", encoding="utf-8")
    r = runner.invoke(app, ["run", str(config)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "runs" / "ife" / "eval" / "ifeval" / "base" / "results.json").read_text())
    assert res["extra"]["n_prompts"] == 5
    report = next((tmp_path / "runs" / "ife" / "report").glob("*.md")).read_text(encoding="utf-8")
    header = next(line for line in report.splitlines() if "ruIFEval" in line)
    for title in ("ruIFEval prompt strict", "ruIFEval prompt loose", "ruIFEval instr. strict",
                  "ruIFEval instr. loose"):
        assert title in header
    assert "ifeval: bundled sample" in report, report  # the substitution note
