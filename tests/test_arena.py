"""RU Arena stage end to end: real benchdata questions and answers, the tiny model, a scripted judge server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from judge_server import JudgeServer, question_of, verdict_for  # noqa: E402

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.arena import ArenaConfig  # noqa: E402
from conftest import benchdata_dir  # noqa: E402
from rutune.eval import arena_data  # noqa: E402
from rutune.eval.arena import run_arena, summary_line  # noqa: E402
from rutune.eval.errors import EvalError  # noqa: E402
from rutune.eval.judge import NO_JUDGE_FIX, JudgeProfile, load_prompt  # noqa: E402

BENCH = benchdata_dir()
needs_bench = pytest.mark.skipif(BENCH is None, reason="benchdata ru_llm_arena not found (../shared/benchdata)")
QUESTIONS = BENCH / "arena-hard-v0.1" / "question.jsonl" if BENCH else None
BASELINE = BENCH / "arena-hard-v0.1" / "model_answer" / "gpt-3.5-turbo-0125.jsonl" if BENCH else None
RESULTS = [">>", ">", "=", "<", "<<"]


def answers_file(model: str) -> Path:
    return BENCH / "arena-hard-v0.1" / "model_answer" / f"{model}.jsonl"


@pytest.fixture
def no_env_judge(monkeypatch):
    for k in ("RUTUNE_JUDGE_BASE_URL", "RUTUNE_JUDGE_MODEL", "RUTUNE_JUDGE_API_KEY"):
        monkeypatch.delenv(k, raising=False)


def by_question_index(questions):
    """A judge whose verdict for the model depends only on the question's position: RESULTS[i % 5]."""
    index = {q.text.strip(): i for i, q in enumerate(questions)}
    baseline_texts = set()

    def reply(body):
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        a = user.split("Assistant A's Answer|>\n", 1)[1].split("\n<|The End of Assistant A", 1)[0]
        seat = "B" if a in baseline_texts else "A"
        return f"Итог: [[{verdict_for(RESULTS[index[question_of(body)] % 5], seat)}]]"

    return reply, baseline_texts


def expected_share(n_questions: int) -> float:
    # per question, both games give the same model result: >> → 3+3 wins, > → 1+1, = → ½+½ of 2, < → 0 of 2,
    # << → 0 of 6
    wins = rows = 0.0
    for i in range(n_questions):
        r = RESULTS[i % 5]
        rows += 6 if len(r) == 2 else 2
        wins += {">>": 6, ">": 2, "=": 1, "<": 0, "<<": 0}[r]
    return wins / rows


@needs_bench
def test_tiny_model_end_to_end_on_20_real_questions(tmp_path, no_env_judge):
    import torch

    torch.set_num_threads(2)
    from rutune.models import tiny_model_path

    cfg = ArenaConfig(limit=20, max_new_tokens=8, questions=str(QUESTIONS), baseline=str(BASELINE))
    questions = arena_data.load_questions(QUESTIONS, limit=20)
    assert len(questions) == 20 and questions[0].question_id == "721086674"  # the real benchdata file
    reply, baseline_texts = by_question_index(questions)
    baseline = arena_data.load_answers(BASELINE)
    baseline_texts.update(baseline[q.question_id].content for q in questions)
    out = tmp_path / "arena" / "tiny"
    with JudgeServer(reply) as server:
        prof = JudgeProfile(base_url=server.base_url, model="scripted", concurrency=8)
        res = run_arena(cfg, BackendConfig(batch_size=20), str(tiny_model_path()), "tiny", out, judge=prof,
                        progress=False)
        assert len(server.calls) == 40

        class NoGeneration:
            def generate(self, requests):
                raise AssertionError("answers must be reused on rerun")

        again = run_arena(cfg, BackendConfig(batch_size=20), str(tiny_model_path()), "tiny", out, judge=prof,
                          progress=False, backend=NoGeneration())
        assert len(server.calls) == 40  # zero judge calls on rerun
    wr = res["metrics"]["win_rate"]
    assert wr["value"] == pytest.approx(expected_share(20), abs=1e-9)
    assert wr["ci_low"] <= wr["value"] <= wr["ci_high"] and (wr["n_valid"], wr["n_total"]) == (40, 40)
    assert again["metrics"] == res["metrics"]
    # answers: the leaderboard's format with both length units recorded
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [int(q.question_id) for q in questions]
    for r in rows:
        turn = r["choices"][0]["turns"][0]
        assert 0 < turn["model_token_len"] <= 8 and r["model_id"] == "tiny"
        assert turn["token_len_unit"] in ("cl100k", "model")
    assert res["metrics"]["avg_model_tokens"]["value"] == pytest.approx(
        np.mean([r["choices"][0]["turns"][0]["model_token_len"] for r in rows]))
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == [f"{q.question_id}-g{g}" for q in questions for g in (1, 2)]
    saved = json.loads((out / "results.json").read_text())
    assert saved["suite"] == "arena" and saved["model"] == "tiny"
    assert saved["extra"]["judge"]["model"] == "scripted" and saved["extra"]["prompt_hash"] == load_prompt().hash
    assert saved["extra"]["counts"] == {"questions": 20, "answers": 20, "games": 40, "ok": 40, "invalid": 0,
                                        "error": 0, "injection_flagged": 0, "judge_calls": 40,
                                        "position": {"pairs": 20, "consistent": 20}}


@needs_bench
def test_no_judge_still_writes_answers_and_lengths(tmp_path, no_env_judge):
    res = run_arena(ArenaConfig(answers=str(answers_file("qwen2-7b-instruct")), limit=10, questions=str(QUESTIONS),
                                baseline=str(BASELINE)), None, None, "qwen2-7b",
                    tmp_path, progress=False)
    wr = res["metrics"]["win_rate"]
    assert wr["available"] is False and wr["reason"] == NO_JUDGE_FIX and wr["value"] is None
    assert (wr["n_valid"], wr["n_total"]) == (0, 20)
    rows = [json.loads(line) for line in open(answers_file("qwen2-7b-instruct"))]
    ids = [q.question_id for q in arena_data.load_questions(QUESTIONS, limit=10)]
    lens = {str(r["question_id"]): r["choices"][0]["turns"][0]["token_len"] for r in rows}
    assert res["metrics"]["avg_tokens"] == {"value": pytest.approx(np.mean([lens[i] for i in ids])),
                                            "unit": "cl100k", "n_valid": 10, "n_total": 10, "item_key": None}
    assert "win rate not available" in summary_line(res) and "cl100k tokens" in summary_line(res)
    assert (tmp_path / "results.json").exists() and not (tmp_path / "items.jsonl").exists()


@needs_bench
def test_real_answers_with_a_length_loving_judge(tmp_path):
    """Real qwen2-7b vs gpt-3.5 answers; the scripted judge picks the longer answer, strongly when it is 2× longer.
    The BT score must equal the weighted win share, and length control must pull it down."""
    model = arena_data.load_answers(answers_file("qwen2-7b-instruct"))
    base = arena_data.load_answers(BASELINE)
    questions = arena_data.load_questions(QUESTIONS, limit=100)

    def reply(body):
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        a = user.split("Assistant A's Answer|>\n", 1)[1].split("\n<|The End of Assistant A", 1)[0]
        b = user.split("Assistant B's Answer|>\n", 1)[1].split("\n<|The End of Assistant B", 1)[0]
        long, short = max(len(a), len(b)), min(len(a), len(b))
        op = ">>" if long > 2 * short else ">"
        return f"[[A{op}B]]" if len(a) >= len(b) else f"[[B{op}A]]"

    with JudgeServer(reply) as server:
        prof = JudgeProfile(base_url=server.base_url, model="length-lover", concurrency=16)
        res = run_arena(ArenaConfig(answers=str(answers_file("qwen2-7b-instruct")), limit=100,
                                    questions=str(QUESTIONS), baseline=str(BASELINE)), None, None,
                        "qwen2-7b", tmp_path, judge=prof, progress=False)
    wins = rows = 0
    for q in questions:
        m, b = len(model[q.question_id].content), len(base[q.question_id].content)
        weight = 3 if max(m, b) > 2 * min(m, b) else 1
        rows += 2 * weight
        wins += 2 * weight if m > b else 0
    wr, lc = res["metrics"]["win_rate"], res["metrics"]["win_rate_lc"]
    assert wr["value"] == pytest.approx(wins / rows, abs=1e-6)
    assert wr["ci_low"] < wr["value"] < wr["ci_high"] and wr["ci_high"] - wr["ci_low"] < 0.25
    assert lc["value"] < wr["value"] and lc["length_unit"] == "cl100k"


@needs_bench
def test_missing_model_answers_are_explicit_errors(tmp_path, no_env_judge):
    src = [json.loads(line) for line in open(answers_file("gpt-4o-mini"))]
    ids = [q.question_id for q in arena_data.load_questions(QUESTIONS, limit=6)]
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in src if str(r["question_id"]) in ids[:4]))
    with JudgeServer(lambda body: "[[A=B]]") as server:
        prof = JudgeProfile(base_url=server.base_url, model="tie-judge")
        res = run_arena(ArenaConfig(answers=str(partial), limit=6, questions=str(QUESTIONS), baseline=str(BASELINE)), None, None, "4o-mini", tmp_path / "o",
                        judge=prof, progress=False)
    wr = res["metrics"]["win_rate"]
    assert (wr["n_valid"], wr["n_total"], wr["value"]) == (8, 12, 0.5)
    assert res["extra"]["counts"]["error"] == 4
    items = [json.loads(line) for line in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    assert sorted(i["id"] for i in items if i["status"] == "error") == sorted(f"{q}-g{g}" for q in ids[4:]
                                                                                 for g in (1, 2))


def test_bundled_placeholders_and_bad_input(tmp_path, monkeypatch):
    assert arena_data.default_questions() == arena_data.SAMPLES / "arena_questions.jsonl"
    qs = arena_data.load_questions(None)
    base = arena_data.load_answers(arena_data.default_baseline())
    assert len(qs) == 20 and all(q.question_id in base for q in qs)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": [{"content": "Привет"}]}\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(EvalError, match=r"q.jsonl:2: `turns` must be a list"):
        arena_data.load_questions(bad)
    bad.write_text('{"question_id": 1, "turns": [{"content": "a"}]}\n{"question_id": 1, "turns": [{"content": "b"}]}\n')
    with pytest.raises(EvalError, match="question_id 1 appears twice"):
        arena_data.load_questions(bad)
    ans = tmp_path / "a.jsonl"
    ans.write_text('{"question_id": 1, "choices": [{"turns": [{"content": "x"}]}]}\nnot json\n')
    with pytest.raises(EvalError, match=r"a.jsonl:2: not JSON"):
        arena_data.load_answers(ans)
    ans.write_text('{"question_id": 999, "choices": [{"turns": [{"content": "x"}]}]}\n')
    with pytest.raises(EvalError, match=r"baseline .*a.jsonl: no answer for 20 of 20 questions"):
        run_arena(ArenaConfig(baseline=str(ans)), None, "tiny", "m", tmp_path / "o", progress=False)


def test_hub_questions_use_the_pinned_revision(monkeypatch):
    import datasets

    seen = {}

    def fake_load(name, revision=None, split=None):
        seen.update(name=name, revision=revision, split=split)
        return [{"question_id": 5, "cluster": 1, "turns": [{"content": "Вопрос"}], "category": "ru-arena-v0.1"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    (q,) = arena_data.load_questions(arena_data.HUB_QUESTIONS)
    assert seen == {"name": "Vikhrmodels/ru-arena-general", "revision": arena_data.HUB_REVISION, "split": "train"}
    assert (q.question_id, q.text, q.cluster) == ("5", "Вопрос", 1)


def test_hub_unreachable_is_one_line(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(EvalError) as e:
        arena_data.load_questions("nobody-here/no-such-arena")
    assert "\n" not in str(e.value) and "pass a local question.jsonl" in str(e.value)


@needs_bench
def test_cli_eval_arena(tmp_path, no_env_judge):
    from typer.testing import CliRunner

    from rutune.cli import app

    runner = CliRunner()
    out = tmp_path / "o"
    r = runner.invoke(app, ["eval", "arena", "--answers", str(answers_file("gpt-4o-mini")), "--limit", "5",
                            "--out", str(out), "--questions", str(QUESTIONS), "--baseline", str(BASELINE)])
    assert r.exit_code == 0, r.output
    assert "win rate not available" in r.output and (out / "results.json").exists()
    with JudgeServer(lambda body: "[[A=B]]") as server:
        prof = tmp_path / "judge.yaml"
        prof.write_text(f"base_url: {server.base_url}\nmodel: tie\nconcurrency: 4\n")
        r = runner.invoke(app, ["eval", "arena", "--answers", str(answers_file("gpt-4o-mini")), "--limit", "5",
                                "--out", str(out), "--judge", str(prof), "--questions", str(QUESTIONS),
                                "--baseline", str(BASELINE)])
    assert r.exit_code == 0, r.output
    assert "win rate vs baseline 0.500" in r.output and "10/10 valid games" in r.output
    r = runner.invoke(app, ["eval", "arena", "--answers", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert r.exit_code == 2 and "missing.jsonl: not found" in r.output and "Traceback" not in r.output
    prof.write_text("base_url: http://127.0.0.1:9/v1\nmodle: x\n")
    r = runner.invoke(app, ["eval", "arena", "--answers", str(answers_file("gpt-4o-mini")), "--judge", str(prof),
                            "--out", str(out)])
    assert r.exit_code == 2 and "modle: unknown key" in r.output


class CountingBackend:
    """A stand-in for a backend's `generate`: echoes a fixed Russian answer and counts requests."""

    def __init__(self):
        self.prompts = []

    def generate(self, requests):
        from rutune.eval.backends import GenerationResult

        self.prompts += [r.messages[-1]["content"] for r in requests]
        assert all(r.temperature == 0.0 and r.max_new_tokens == 64 for r in requests)
        return [GenerationResult(text=f"Ответ на: {r.messages[-1]['content'][:10]}", n_tokens=7) for r in requests]


def test_answer_generation_resumes_after_a_torn_write(tmp_path, monkeypatch):
    from rutune.eval.arena import generate_answers

    questions = arena_data.load_questions(arena_data.SAMPLES / "arena_questions.jsonl", limit=6)
    out = tmp_path / "answers.jsonl"
    first = CountingBackend()
    generate_answers(questions[:4], first.generate, out, "m", "fp1", 64, batch_size=2)
    out.write_text(out.read_text() + '{"question_id": 5, "choi')  # killed mid-write
    second = CountingBackend()
    answers = generate_answers(questions, second.generate, out, "m", "fp1", 64, batch_size=2)
    assert second.prompts == [q.text for q in questions[4:]]  # only the unfinished questions
    assert list(answers) == [q.question_id for q in questions]
    assert len(out.read_text().splitlines()) == 6
    third = CountingBackend()  # another model or settings (fingerprint) → answers are regenerated
    generate_answers(questions[:2], third.generate, out, "m", "fp2", 64, batch_size=2)
    assert len(third.prompts) == 2


def test_lengths_in_cl100k_when_the_encoding_is_available(tmp_path, monkeypatch):
    from rutune.eval.arena import generate_answers, length_unit

    class FakeEncoding:
        def encode(self, text, disallowed_special=()):
            return list(range(len(text.split())))

    monkeypatch.setattr(arena_data, "_cl100k", lambda: FakeEncoding())
    questions = arena_data.load_questions(arena_data.SAMPLES / "arena_questions.jsonl", limit=3)
    answers = generate_answers(questions, CountingBackend().generate, tmp_path / "a.jsonl", "m", "fp", 64)
    a = answers[questions[0].question_id]
    assert (a.token_len, a.token_len_unit, a.model_token_len) == (len(a.content.split()), "cl100k", 7)
    base = arena_data.load_answers(arena_data.SAMPLES / "arena_baseline.jsonl")
    assert length_unit(answers, {q: base[q] for q in answers}) == "cl100k"
    monkeypatch.setattr(arena_data, "_cl100k", lambda: None)
    other = generate_answers(questions, CountingBackend().generate, tmp_path / "b.jsonl", "m", "fp", 64)
    assert other[questions[0].question_id].token_len_unit == "model"
    assert length_unit(other, {q: base[q] for q in other}) == "chars"  # never mix units across the pair


def test_bad_judge_profile_fails_before_any_generation(tmp_path):
    bad = tmp_path / "judge.yaml"
    bad.write_text("base_url: http://127.0.0.1:9/v1\n")

    class MustNotGenerate:
        def generate(self, requests):
            raise AssertionError("generation must not start with a broken judge profile")

    with pytest.raises(EvalError, match="model: required key is missing"):
        run_arena(ArenaConfig(judge=str(bad), questions=str(arena_data.SAMPLES / "arena_questions.jsonl"),
                              baseline=str(arena_data.SAMPLES / "arena_baseline.jsonl")), None, "tiny", "m",
                  tmp_path / "o", progress=False, backend=MustNotGenerate())


def test_answers_through_the_openai_backend(tmp_path, no_env_judge):
    """One local server plays both parts: it answers questions (generation) and judges (requests with the judge
    template); the model's answers are longer than the baseline's, and the scripted judge prefers the longer one."""
    from typer.testing import CliRunner

    from rutune.cli import app

    def reply(body):
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        if "<|User Prompt|>" not in user:
            return "Подробный ответ модели. " * 200
        a = user.split("Assistant A's Answer|>\n", 1)[1].split("\n<|The End of Assistant A", 1)[0]
        b = user.split("Assistant B's Answer|>\n", 1)[1].split("\n<|The End of Assistant B", 1)[0]
        return "[[A>B]]" if len(a) > len(b) else "[[B>A]]"

    samples = arena_data.SAMPLES
    with JudgeServer(reply) as server:
        prof = tmp_path / "judge.yaml"
        prof.write_text(f"base_url: {server.base_url}\nmodel: judge\n")
        r = CliRunner().invoke(app, [
            "eval", "arena", "--model", "served-model", "--backend", "openai", "--base-url", server.base_url,
            "--judge", str(prof), "--questions", str(samples / "arena_questions.jsonl"),
            "--baseline", str(samples / "arena_baseline.jsonl"), "--limit", "5", "--max-new-tokens", "64",
            "--out", str(tmp_path / "o")])
        generation = [c for c in server.calls if c.body.get("model") == "served-model"]
    assert r.exit_code == 0, r.output
    assert len(generation) == 5 and all(c.body["temperature"] == 0 for c in generation)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["metrics"]["win_rate"]["value"] == 1.0 and res["extra"]["generation"]["backend"] == "openai"
    rows = [json.loads(line) for line in (tmp_path / "o" / "answers.jsonl").read_text().splitlines()]
    assert rows[0]["choices"][0]["turns"][0]["content"].startswith("Подробный ответ модели.")
