"""The arena suite's style-controlled score and judge-reliability figures, end to end on real benchdata answers
with scripted judges: what lands in results.json, its display block, the warnings and their configurable threshold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from judge_server import JudgeServer, question_of  # noqa: E402

from conftest import benchdata_dir  # noqa: E402
from rutune.eval import arena_data  # noqa: E402
from rutune.eval.arena import run_arena, summary_line  # noqa: E402
from rutune.eval.judge import JudgeProfile  # noqa: E402
from rutune.eval.suites import EvalRequest  # noqa: E402
from rutune.eval.suites.arena import ArenaConfig, run as run_suite  # noqa: E402

BENCH = benchdata_dir()
pytestmark = pytest.mark.skipif(BENCH is None, reason="benchdata ru_llm_arena not found (../shared/benchdata)")
ROOT = BENCH / "arena-hard-v0.1" if BENCH else None


def _answers(model: str) -> str:
    return str(ROOT / "model_answer" / f"{model}.jsonl")


def _seats(body) -> tuple[str, str]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    a = user.split("Assistant A's Answer|>\n", 1)[1].split("\n<|The End of Assistant A", 1)[0]
    b = user.split("Assistant B's Answer|>\n", 1)[1].split("\n<|The End of Assistant B", 1)[0]
    return a, b


def length_lover(body) -> str:
    """The longer answer wins, except on every fifth question (by a hash of its text), where the shorter one does:
    seat-blind, and not separable by length (a fully deterministic length judge has no finite style fit)."""
    import zlib

    a, b = _seats(body)
    longer_wins = zlib.crc32(question_of(body).encode()) % 5 != 0
    return "[[A>B]]" if (len(a) >= len(b)) == longer_wins else "[[B>A]]"


def test_suite_writes_the_style_controlled_score_with_its_column_and_coefficients(tmp_path):
    """A judge that only rewards length: at equal style the model (qwen2-7b, longer than the baseline on most
    questions) must lose part of its raw advantage, and the length coefficient must carry the effect."""
    cfg = ArenaConfig(answers=_answers("qwen2-7b-instruct"), limit=60, questions=str(ROOT / "question.jsonl"),
                      baseline=_answers("gpt-3.5-turbo-0125"), bootstrap_rounds=30)
    with JudgeServer(length_lover) as server:
        prof = tmp_path / "judge.yaml"
        prof.write_text(f"base_url: {server.base_url}\nmodel: length-lover\nconcurrency: 16\n")
        cfg = cfg.model_copy(update={"judge": str(prof)})
        res = run_suite(EvalRequest(cfg, None, None, "qwen2-7b", tmp_path / "o", seed=0, rounds=30))
    sc, raw = res["metrics"]["win_rate_style"], res["metrics"]["win_rate"]
    assert sc["display"]["title"] == "Judge (SC)" and sc["display"]["test"] == "none"
    assert sc["reference"] == "equal" and sc["length_unit"] == res["extra"]["length_unit"] == "cl100k"
    assert raw["value"] > 0.7 and sc["value"] < raw["value"] - 0.05  # measured: 0.750 → 0.661
    assert sc["ci_low"] <= sc["value"] <= sc["ci_high"]
    assert (sc["n_valid"], sc["n_total"]) == (raw["n_valid"], raw["n_total"]) == (120, 120)
    coef = res["extra"]["style"]["coefficients"]
    assert set(coef) == {"length", "header", "list", "bold"} and res["extra"]["style"]["features"] == list(coef)
    assert res["extra"]["style"]["separable"] is False
    assert coef["length"]["value"] > 0.5 and coef["length"]["value"] > max(abs(coef[f]["value"])
                                                                         for f in ("header", "list", "bold"))
    # the verdict never depends on the seat: perfect swap agreement, no warning
    rel = res["extra"]["reliability"]
    assert rel["swap_agreement"]["value"] == 1.0 and res["metrics"]["swap_agreement"]["value"] == 1.0
    assert 0.7 < rel["length"]["longer_wins"] < 0.9 and rel["length"]["unit"] == "cl100k"
    assert rel["length"]["pearson_r"] > 0.2  # measured 0.29: a step in length is only loosely linear
    assert res["extra"]["warnings"] == []
    # Avg len: the value and its CI come from the 60 questions of this run, not the whole answer file
    avg = res["metrics"]["avg_tokens"]
    assert avg["ci_low"] < avg["value"] < avg["ci_high"]
    assert len((tmp_path / "o" / "lengths.jsonl").read_text().splitlines()) == 60
    assert "style-controlled" in summary_line(res)


def half_seat_biased(index: dict[str, int]):
    """Even questions: the longer answer wins (consistent across seats); odd questions: seat A always wins."""

    def reply(body):
        a, b = _seats(body)
        if index[question_of(body)] % 2:
            return "[[A>B]]"
        return "[[A>B]]" if len(a) >= len(b) else "[[B>A]]"

    return reply


@pytest.mark.parametrize("threshold, swap_warned", [(0.6, True), (0.5, False)])
def test_swap_agreement_warning_follows_the_configured_threshold(tmp_path, threshold, swap_warned):
    """40 questions, half judged by seat: swap agreement exactly 20/40 = 0.5; seat A picks 40 + 20 of 80 decisive
    verdicts (0.75, z = 4.5), so the first-position warning fires at either threshold; 0.5 is not below 0.5."""
    questions = arena_data.load_questions(ROOT / "question.jsonl", limit=40)
    index = {q.text.strip(): i for i, q in enumerate(questions)}
    cfg = ArenaConfig(answers=_answers("gpt-4o-mini"), limit=40, questions=str(ROOT / "question.jsonl"),
                      baseline=_answers("gpt-3.5-turbo-0125"), bootstrap_rounds=20, min_swap_agreement=threshold)
    with JudgeServer(half_seat_biased(index)) as server:
        prof = JudgeProfile(base_url=server.base_url, model="half-biased", concurrency=16)
        res = run_arena(cfg, None, None, "sft", tmp_path / "run" / "eval" / "arena" / "sft", judge=prof,
                        progress=False)
    rel = res["extra"]["reliability"]
    assert rel["swap_agreement"]["value"] == 0.5 and rel["n_pairs"] == 40
    assert rel["first_position"]["win_rate"] == 0.75 and rel["first_position"]["n_decisive"] == 80
    assert res["extra"]["reliability_thresholds"]["min_swap_agreement"] == threshold
    warnings = res["extra"]["warnings"]
    assert any("swap agreement 0.50" in w and f"below {threshold:.2f}" in w for w in warnings) is swap_warned
    assert any("favours the first (A) seat" in w for w in warnings)
    assert all(w.startswith("judge ") for w in warnings)
    assert "\nwarning: judge favours the first (A) seat" in summary_line(res)
    # the report prints the suite's lines under its table, naming the row and the suite
    from rutune.report import build_report

    md = build_report([tmp_path / "run"], tmp_path / "report", rounds=20, formats=["md"])["md"].read_text("utf-8")
    table_part = md.split("## Mixtures")[0]
    assert ("· arena: judge swap agreement 0.50" in table_part) is swap_warned
    assert "· arena: judge favours the first (A) seat" in table_part


def test_without_a_judge_the_new_scores_are_marked_unavailable(tmp_path, monkeypatch):
    for k in ("RUTUNE_JUDGE_BASE_URL", "RUTUNE_JUDGE_MODEL", "RUTUNE_JUDGE_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    res = run_arena(ArenaConfig(answers=_answers("gpt-4o-mini"), limit=3, questions=str(ROOT / "question.jsonl"),
                                baseline=_answers("gpt-3.5-turbo-0125")), None, None, "m", tmp_path, progress=False)
    for name in ("win_rate_style", "swap_agreement"):
        assert res["metrics"][name]["available"] is False and res["metrics"][name]["n_total"] == 6
    assert "warnings" not in res["extra"] and "reliability" not in res["extra"]


def test_bad_style_settings_are_config_errors():
    with pytest.raises(ValueError, match="style_control"):
        ArenaConfig(style_control=["colour"])
    with pytest.raises(ValueError, match="min_swap_agreement"):
        ArenaConfig(min_swap_agreement=1.5)
