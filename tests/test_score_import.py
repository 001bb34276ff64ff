"""Score-only import: arena-hard-auto / ru_llm_arena folders and LIBRA predictions.json, from files the tests write
in those tools' layouts (and, when present, the real ru_llm_arena answers in ../shared/benchdata)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rutune.eval import arena_scoring as sc
from rutune.eval.errors import EvalError
from rutune.eval.score_import import judgment_records, load_arena_folder, read_arena_folder, read_libra_predictions

from conftest import shared_dir

BASE = "gpt-3.5-turbo-0125"
JUDGE = "gpt-4-1106-preview"
QIDS = [101, 102, 103, 104, 105, 106]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")


def answer_row(qid, model, text, token_len):
    """ru_llm_arena's answer row (gen_answer.py)."""
    return {"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
            "choices": [{"index": 0, "turns": [{"content": text, "token_len": token_len}]}], "tstamp": 0.0}


def judgment_row(qid, model, score1, score2=None, n_games=2):
    """ru_llm_arena's judgment row (gen_judgment.py): games[0] has the baseline as A, games[1] swaps."""
    games = [{"user_prompt": "…", "judgment": f"… [[{score1}]]", "score": score1},
             {"user_prompt": "…", "judgment": f"… [[{score2}]]", "score": score2}][:n_games]
    return {"question_id": qid, "model": model, "judge": JUDGE, "games": games}


def make_folder(root: Path) -> Path:
    write_jsonl(root / "question.jsonl", [{"question_id": q, "cluster": 1, "turns": [{"content": f"Вопрос {q}?"}],
                                           "category": "ru-arena-v0.1"} for q in QIDS])
    write_jsonl(root / "model_answer" / f"{BASE}.jsonl",
                [answer_row(q, BASE, f"Короткий ответ {q}.", 10) for q in QIDS])
    write_jsonl(root / "model_answer" / "alpha.jsonl",
                [answer_row(q, "alpha", f"# Ответ\n\n- пункт\n- **пункт** {q}", 30) for q in QIDS])
    write_jsonl(root / "model_answer" / "beta.jsonl", [answer_row(q, "beta", f"Ответ {q}", 8) for q in QIDS])
    jdir = root / "model_judgment" / JUDGE
    write_jsonl(jdir / "alpha.jsonl", [
        judgment_row(101, "alpha", "B>A", "A>B"),            # win, win
        judgment_row(102, "alpha", "B>>A", "A=B"),           # win ×3, tie
        '{"question_id": 103, "model": "alpha", "ga',          # torn line: unparsable → 103 has no judgment
        judgment_row(104, "alpha", "A>B", None),             # loss, game 2 without a label → invalid
        judgment_row(105, "alpha", "B=A", "A>>B", n_games=2),  # label outside the five → invalid; win ×3
        judgment_row(106, "alpha", "A>B", n_games=1),        # loss; game 2 missing
        judgment_row(999, "alpha", "B>A", "A>B"),            # a question that is not in question.jsonl
    ])
    write_jsonl(jdir / "beta.jsonl", [judgment_row(q, "beta", "A>B", "B>A") for q in QIDS[:5]]
                + [judgment_row(106, "beta", "A>B", "A>B"), judgment_row(106, "beta", "B>A", "A>B")])  # repeat
    return root


def test_judgments_become_rutune_game_records_with_missing_and_broken_games_invalid(tmp_path):
    root = make_folder(tmp_path / "arena-hard-v0.1")
    records, counts = judgment_records(root / "model_judgment" / JUDGE / "alpha.jsonl", [str(q) for q in QIDS])
    assert len(records) == 12 and [r["id"] for r in records[:2]] == ["101-g1", "101-g2"]
    by_id = {r["id"]: r for r in records}
    assert by_id["101-g1"]["model_score"] == 1.0 and by_id["101-g2"]["model_score"] == 1.0
    assert by_id["102-g1"]["strong"] and by_id["102-g2"]["model_score"] == 0.5
    assert by_id["103-g1"]["status"] == by_id["103-g2"]["status"] == "error"  # the torn line
    assert by_id["104-g2"]["status"] == "invalid" and by_id["104-g2"]["reason"] == "no verdict label"
    assert by_id["105-g1"]["status"] == "invalid" and "B=A" in by_id["105-g1"]["reason"]
    assert by_id["106-g2"]["status"] == "error" and by_id["106-g2"]["reason"] == "game missing"
    assert sum(r["valid"] for r in records) == 7  # 101 ×2, 102 ×2, 104 g1, 105 g2, 106 g1
    assert counts == {"lines": 7, "unparsable_lines": 1, "unknown_questions": 1, "repeated": 0}


def test_arena_folder_leaderboard_matches_rutune_scoring(tmp_path):
    root = make_folder(tmp_path / "arena-hard-v0.1")
    out = read_arena_folder(root, rounds=40, seed=0)
    assert (out["judge"], out["baseline"], out["n_questions"], out["length_unit"]) == (JUDGE, BASE, 6, "token_len")
    alpha = out["models"]["alpha"]
    wr = alpha["metrics"]["win_rate"]
    # alpha's battles: 101 win, win; 102 win ×3, tie; 104 loss; 105 win ×3; 106 loss → (2 + 3 + .5 + 3)/11
    assert wr["value"] == pytest.approx(8.5 / 11, abs=1e-6)
    assert (wr["n_valid"], wr["n_total"]) == (7, 12)
    assert alpha["counts"]["unparsable_lines"] == 1 and alpha["avg_length"] == 30.0
    # the same records through score_model directly give the same numbers (length control included)
    folder = load_arena_folder(root)
    direct = sc.score_model(folder.records["alpha"], {str(q): 30.0 for q in QIDS}, {str(q): 10.0 for q in QIDS},
                            {str(q): float(len(folder.answers["alpha"][str(q)][0])) for q in QIDS},
                            {str(q): float(len(folder.answers[BASE][str(q)][0])) for q in QIDS}, rounds=40, seed=0)
    for name in ("win_rate", "win_rate_lc", "win_rate_lc_alpaca"):
        assert alpha["metrics"][name]["value"] == direct[name]["value"]
        assert alpha["metrics"][name]["ci_low"] == direct[name]["ci_low"]
    beta = out["models"]["beta"]
    # beta loses every game of 101–105; the repeated 106 line (win, win) replaces the first (loss, loss)
    assert beta["metrics"]["win_rate"]["value"] == pytest.approx(2 / 12, abs=1e-6)
    assert beta["counts"]["repeated"] == 1
    assert beta["reliability"]["swap_agreement"]["value"] == 1.0
    style = alpha["metrics"]["win_rate_style"]
    assert style["value"] is not None and style["n_valid"] == 7 and style["features"] == ["length", "header", "list",
                                                                                           "bold"]
    assert set(out["style"]["coefficients"]) == {"length", "header", "list", "bold"}
    assert [row["model"] for row in out["leaderboard"]] == ["alpha", "beta"]
    assert alpha["reliability"]["n_games"] == 12 and alpha["reliability"]["n_pairs"] == 2  # 101 and 102
    json.dumps(out)  # JSON-ready


def test_a_model_without_answers_keeps_its_raw_win_rate(tmp_path):
    root = make_folder(tmp_path / "bench")
    (root / "model_answer" / "beta.jsonl").unlink()
    out = read_arena_folder(root, rounds=10)
    beta = out["models"]["beta"]["metrics"]
    assert beta["win_rate"]["value"] == pytest.approx(2 / 12, abs=1e-6)
    for name in ("win_rate_lc", "win_rate_lc_alpaca", "win_rate_style"):
        assert beta[name]["available"] is False and "model_answer/beta.jsonl" in beta[name]["reason"]
    assert out["models"]["alpha"]["metrics"]["win_rate_style"]["value"] is not None


def test_arena_hard_v2_layout_is_read(tmp_path):
    root = tmp_path / "arena-hard-v2.0"
    write_jsonl(root / "question.jsonl", [{"uid": f"u{i}", "category": "hard_prompt", "prompt": "?"} for i in range(4)])
    for model, text, n in (("o3-mini-2025-01-31", "база", 5), ("m", "## длинный\n- a\n- b", 20)):
        write_jsonl(root / "model_answer" / f"{model}.jsonl", [
            {"uid": f"u{i}", "ans_id": "x", "model": model,
             "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": {"answer": text}}],
             "metadata": {"token_len": n, "header_count": {"h1": 0}}} for i in range(4)])
    write_jsonl(root / "model_judgment" / "gpt-4.1" / "m.jsonl", [
        {"uid": f"u{i}", "category": "hard_prompt", "judge": "gpt-4.1", "model": "m", "baseline": "o3-mini-2025-01-31",
         "games": [{"score": "B>A", "judgment": {}, "prompt": []}, {"score": "A=B", "judgment": {}, "prompt": []}]}
        for i in range(4)])
    out = read_arena_folder(root, rounds=10)
    assert out["baseline"] == "o3-mini-2025-01-31" and out["judge"] == "gpt-4.1"
    m = out["models"]["m"]
    assert m["metrics"]["win_rate"]["value"] == pytest.approx(0.75, abs=1e-6)  # 4 wins + 4 ties of 8
    assert m["avg_length"] == 20.0


def test_bad_arena_folders_fail_with_one_line(tmp_path):
    with pytest.raises(EvalError, match="no question.jsonl"):
        read_arena_folder(tmp_path)
    root = make_folder(tmp_path / "bench")
    (root / "model_judgment" / "other-judge").mkdir()
    with pytest.raises(EvalError, match="2 judges .*other-judge.*pass judge=NAME"):
        read_arena_folder(root)
    with pytest.raises(EvalError, match="no model_judgment/nope/"):
        read_arena_folder(root, judge="nope")
    bad = root / "model_answer" / "alpha.jsonl"
    bad.write_text(bad.read_text(encoding="utf-8") + '{"question_id": 107, "choices": []}\n', encoding="utf-8")
    with pytest.raises(EvalError) as e:
        read_arena_folder(root, judge=JUDGE)
    assert str(e.value).startswith(f"{bad}:7:") and "\n" not in str(e.value)
    (root / "model_answer" / f"{BASE}.jsonl").unlink()
    with pytest.raises(EvalError, match="baseline"):
        load_arena_folder(root, judge=JUDGE)


def test_real_ru_llm_arena_answers_with_a_scripted_judge(tmp_path):
    """Extra check on the real answer files (skipped without ../shared/benchdata): 60 questions, a judge that
    always prefers the longer answer; the style fit must put its weight on length."""
    shared = shared_dir()
    src = shared / "benchdata" / "ru_llm_arena" / "arena-hard-v0.1" if shared else None
    if src is None or not (src / "question.jsonl").is_file():
        pytest.skip("../shared/benchdata/ru_llm_arena not present")
    root = tmp_path / "arena-hard-v0.1"
    questions = (src / "question.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    write_jsonl(root / "question.jsonl", questions)
    keep = {json.loads(q)["question_id"] for q in questions}
    lengths = {}
    for model in (BASE, "gpt-4o-mini", "qwen2-7b-instruct"):
        rows = [json.loads(line) for line in (src / "model_answer" / f"{model}.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]
        rows = [r for r in rows if r["question_id"] in keep]
        write_jsonl(root / "model_answer" / f"{model}.jsonl", rows)
        lengths[model] = {r["question_id"]: r["choices"][0]["turns"][0]["token_len"] for r in rows}
    for model in ("gpt-4o-mini", "qwen2-7b-instruct"):
        rows = []
        for q in keep:
            longer = lengths[model][q] > lengths[BASE][q]
            rows.append(judgment_row(q, model, "B>A" if longer else "A>B", "A>B" if longer else "B>A"))
        write_jsonl(root / "model_judgment" / JUDGE / f"{model}.jsonl", rows)
    out = read_arena_folder(root, rounds=20)
    for model in ("gpt-4o-mini", "qwen2-7b-instruct"):
        r = out["models"][model]
        assert r["avg_length"] == pytest.approx(np.mean(list(lengths[model].values())))
        assert r["reliability"]["swap_agreement"]["value"] == 1.0
        assert r["reliability"]["length"]["longer_wins"] == 1.0
    assert out["style"]["coefficients"]["length"]["value"] > 2.0


# ---------------------------------------------------------------- LIBRA
def libra_item(length, answer, pos, neg=()):
    """One entry of LIBRA's predictions.json (predict.py / answer_generator.py)."""
    return {"length": length, "model_answer": answer, "positive_outputs": list(pos), "negative_outputs": list(neg)}


PREDICTIONS = {
    "ru_babilong_qa1": [
        libra_item("4k", "Мария в саду.", ["сад"], ["кухня"]),            # raw 1 (substring), norm 0 ("саду")
        libra_item("4k", "кухня или сад", ["сад"], ["кухня"]),            # every negative found → 0
        libra_item("8k", "На кухне.", ["кухня"], ["сад", "спальня"]),      # raw 0, norm 0 without lemmas
        libra_item("8k", "рассада, сад и спальня", ["сад"], ["спальня", "кухня"]),  # 1 − 1/2 = 0.5 both ways
    ],
    "ru_babilong_qa2": [
        libra_item("4k", "Футбол в ванной.", ["ванная"], []),             # raw 0, norm 0 without lemmas
        libra_item("4k", "ванная", ["ванная"], []),                       # 1, 1
        libra_item("8k", None, ["сад"], []),                              # no answer: not scored
    ],
    "ru_qasper": [libra_item("8k", "x", ["x"])],                         # LIBRA scores it with f1: skipped
}


def test_libra_predictions_scored_per_length_and_total(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(PREDICTIONS, ensure_ascii=False), encoding="utf-8")
    out = read_libra_predictions(path, lemmatise=False, rounds=50)
    assert out["tasks"] == ["ru_babilong_qa1", "ru_babilong_qa2"] and "ru_qasper" in out["skipped_tasks"]
    assert out["lengths"] == {"ru_babilong_qa1": ["4k", "8k"], "ru_babilong_qa2": ["4k", "8k"]}
    pl = out["per_length"]
    assert pl["ru_babilong_qa1"]["4k"]["mean"] == pytest.approx(0.5)       # (1 + 0)/2
    assert pl["ru_babilong_qa1"]["4k"]["mean_norm"] == pytest.approx(0.0)
    assert pl["ru_babilong_qa1"]["8k"]["mean"] == pytest.approx(0.25)      # (0 + 0.5)/2
    assert pl["ru_babilong_qa2"]["4k"]["mean"] == pytest.approx(0.5)
    assert pl["ru_babilong_qa2"]["8k"]["mean"] is None                      # its only answer is null
    m = out["metrics"]
    assert m["ru_babilong_qa1"]["value"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["ru_babilong_qa2"]["value"] == pytest.approx((0.5 + 0.0) / 2)  # a length with no score counts 0
    assert m["total"]["value"] == pytest.approx((0.375 + 0.25) / 2)
    assert m["total_norm"]["value"] == pytest.approx(((0 + 0.25) / 2 + 0.25) / 2)
    assert out["missing_lengths"]["ru_babilong_qa2"] == ["8k"]
    assert (m["total"]["n_valid"], m["total"]["n_total"]) == (6, 7)


def test_libra_configured_lengths_count_a_missing_length_as_zero(tmp_path):
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"ru_babilong_qa1": PREDICTIONS["ru_babilong_qa1"]}), encoding="utf-8")
    out = read_libra_predictions(path, lengths=["4k", "8k", "16k"], lemmatise=False, rounds=20)
    assert out["metrics"]["ru_babilong_qa1"]["value"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert out["missing_lengths"]["ru_babilong_qa1"] == ["16k"]
    per_task = read_libra_predictions(path, lengths={"ru_babilong_qa1": ["8k"]}, lemmatise=False, rounds=20)
    assert per_task["metrics"]["total"]["value"] == pytest.approx(0.25)
    with_lemmas = read_libra_predictions(path, lemmatise=True, rounds=20)
    if with_lemmas["lemmatiser"] == "pymorphy3":  # "в саду" → сад, "на кухне" → кухня
        assert with_lemmas["per_length"]["ru_babilong_qa1"]["4k"]["mean_norm"] == pytest.approx(0.5)
        assert with_lemmas["per_length"]["ru_babilong_qa1"]["8k"]["mean_norm"] == pytest.approx(0.75)


@pytest.mark.parametrize("content, message", [
    ('[{"length": "4k"}]', "expected the LIBRA predictions.json layout"),
    ('{"ru_babilong_qa1": {"4k": 0.5, "dataset_total_score": 0.5}, "total_score": 0.5}', "eval.py score file"),
    ('{"ru_babilong_qa1": [{"length": "4k", "model_answer": "a"}]}',
     r"ru_babilong_qa1\[0\]: missing `positive_outputs`"),
    ('{"ru_babilong_qa1": [{"length": "4k", "positive_outputs": ["a"]}]}', "missing `model_answer`"),
    ('{"ru_babilong_qa1": "nope"}', "task ru_babilong_qa1: expected a list"),
    ('{"ru_babilong_qa1": [\n{"length": "4k",\n}]}', r"predictions.json:3: not JSON"),
])
def test_libra_wrong_layout_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "predictions.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalError, match=message) as e:
        read_libra_predictions(path, rounds=5)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_libra_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(EvalError, match="file not found"):
        read_libra_predictions(tmp_path / "nope.json")
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(PREDICTIONS), encoding="utf-8")
    with pytest.raises(EvalError, match="no task ru_babilong_qa9"):
        read_libra_predictions(path, tasks=["ru_babilong_qa9"])


def test_judgment_file_with_bad_bytes_counts_lines_and_answer_file_with_bad_token_len_fails(tmp_path):
    root = make_folder(tmp_path / "bench")
    jfile = root / "model_judgment" / JUDGE / "beta.jsonl"
    jfile.write_bytes(jfile.read_bytes() + b'{"question_id": 101, "games": "\xff\xfe"}\n')
    out = read_arena_folder(root, rounds=5)
    assert out["models"]["beta"]["counts"]["unparsable_lines"] == 1
    afile = root / "model_answer" / "beta.jsonl"
    afile.write_text(afile.read_text(encoding="utf-8") + json.dumps(answer_row(101, "beta", "x", "много")) + "\n",
                     encoding="utf-8")
    with pytest.raises(EvalError, match=r"beta.jsonl:7: `token_len` must be a number"):
        read_arena_folder(root, rounds=5)


# ---------------------------------------------------------------- measured numbers (docs/arena-style.md)
def _scripted_label(model_side: float, base_side: float, game: int) -> str:
    """The side with the larger value wins, strongly when it is more than twice the other; equal → tie."""
    if model_side == base_side:
        return "A=B"
    model_wins = model_side > base_side
    strong = max(model_side, base_side) > 2 * min(model_side, base_side)
    model_seat = "B" if game == 1 else "A"
    winner = model_seat if model_wins else ("A" if model_seat == "B" else "B")
    return f"{winner}>{'>' if strong else ''}{'A' if winner == 'B' else 'B'}"


@pytest.mark.slow
def test_measure_scripted_judges_on_real_answers(tmp_path):
    """The table in docs/arena-style.md: three scripted judges over the real ru_llm_arena answers (500 questions,
    5 models vs gpt-3.5-turbo-0125), scored by read_arena_folder. Run with `-m slow -s` to print it."""
    import random

    from rutune.eval.arena_style import markdown_counts

    shared = shared_dir()
    src = shared / "benchdata" / "ru_llm_arena" / "arena-hard-v0.1" if shared else None
    if src is None or not (src / "question.jsonl").is_file():
        pytest.skip("../shared/benchdata/ru_llm_arena not present")
    models = ["gpt-4-1106-preview", "gpt-4o-mini", "qwen2.5-14b-instruct", "vikhr-llama3.1-8b-instruct-r-21-09-24",
              "qwen2-7b-instruct"]
    tok, md = {}, {}
    for m in [BASE] + models:
        rows = [json.loads(line) for line in (src / "model_answer" / f"{m}.jsonl").read_text(
            encoding="utf-8").splitlines() if line.strip()]
        turns = {r["question_id"]: r["choices"][0]["turns"][0] for r in rows}
        tok[m] = {q: t["token_len"] for q, t in turns.items()}
        md[m] = {q: sum(markdown_counts(t["content"]).values()) / (t["token_len"] + 1) for q, t in turns.items()}

    def length80(m, q, game, rng):  # the longer answer wins 80% of games, the shorter 20%
        a, b = tok[m][q], tok[BASE][q]
        return _scripted_label(*((a, b) if rng.random() < 0.8 else (b, a)), game)

    def seat40(m, q, game, rng):  # 40% of games: seat A, whatever the answers; otherwise the longer answer
        return "A>B" if rng.random() < 0.4 else _scripted_label(tok[m][q], tok[BASE][q], game)

    def markdown80(m, q, game, rng):  # higher markdown density (headers+lists+bold per token) wins 80% of games
        a, b = md[m][q], md[BASE][q]
        return _scripted_label(*((a, b) if rng.random() < 0.8 else (b, a)), game)

    results = {}
    for name, judge in (("length80", length80), ("seat40", seat40), ("markdown80", markdown80)):
        root = tmp_path / name
        write_jsonl(root / "question.jsonl", (src / "question.jsonl").read_text(encoding="utf-8").splitlines())
        for m in [BASE] + models:
            (root / "model_answer").mkdir(parents=True, exist_ok=True)
            (root / "model_answer" / f"{m}.jsonl").write_bytes((src / "model_answer" / f"{m}.jsonl").read_bytes())
        rng = random.Random(0)
        for m in models:
            write_jsonl(root / "model_judgment" / "scripted" / f"{m}.jsonl", [
                {"question_id": q, "model": m, "judge": "scripted",
                 "games": [{"score": judge(m, q, game, rng)} for game in (1, 2)]} for q in tok[BASE]])
        out = read_arena_folder(root, rounds=100, seed=0)
        equal = read_arena_folder(root, rounds=0, seed=0, reference="equal")
        results[name] = out
        print(f"\n### {name}: model | win rate (95% CI) | ru-LC | AE-LC | style (95% CI) | style at equal style | "
              "swap agr. | P(seat A) | longer wins | avg tokens")
        for row in out["leaderboard"]:
            r = out["models"][row["model"]]
            mt, rel = r["metrics"], r["reliability"]
            s = mt["win_rate_style"]
            print(f"| {row['model']} | {row['win_rate']:.3f} ({row['ci_low']:.3f}–{row['ci_high']:.3f}) | "
                  f"{mt['win_rate_lc']['value']:.3f} | {mt['win_rate_lc_alpaca']['value']:.3f} | "
                  f"{s['value']:.3f} ({s['ci_low']:.3f}–{s['ci_high']:.3f}) | "
                  f"{equal['models'][row['model']]['metrics']['win_rate_style']['value']:.3f} | "
                  f"{rel['swap_agreement']['value']:.3f} | {rel['first_position']['win_rate']:.3f} | "
                  f"{rel['length']['longer_wins']:.3f} | {r['avg_length']:.0f} |")
        coef = out["style"]["coefficients"]
        print("coefficients (median, 95% CI):", ", ".join(
            f"{f} {c['median']:.3f} ({c['ci_low']:.3f}–{c['ci_high']:.3f})" for f, c in coef.items()))
        o = out["reliability"]
        print(f"pooled: swap agreement {o['swap_agreement']['value']:.3f} ({o['swap_agreement']['ci_low']:.3f}–"
              f"{o['swap_agreement']['ci_high']:.3f}), κ {o['swap_agreement']['kappa']:.3f}, P(seat A) "
              f"{o['first_position']['win_rate']:.3f} (z {o['first_position']['z']:.1f}); warnings: "
              f"{len(out['warnings'])}")
    # length80: every model has the same style-free strength; style control shrinks the length-driven spread
    raw = [r["win_rate"] for r in results["length80"]["leaderboard"]]
    styled = [r["win_rate_style"] for r in results["length80"]["leaderboard"]]
    assert max(raw) - min(raw) > 0.1 and max(styled) - min(styled) < 0.6 * (max(raw) - min(raw))
    # seat40: swap agreement stays ≈ 0.6 (lopsided results agree by chance), the first-seat check fires
    assert results["seat40"]["reliability"]["first_position"]["win_rate"] > 0.65
    assert any("seat" in w for w in results["seat40"]["warnings"])
    # markdown80: the weight moves to the markdown columns, not to length
    coef = results["markdown80"]["style"]["coefficients"]
    assert coef["list"]["ci_low"] > 0.3 and abs(coef["length"]["median"]) < 0.1
