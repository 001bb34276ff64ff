"""Arena scoring against hand-computed values and the formulas in eval-protocols.md (§1.1, §2, §3, §12)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rutune.eval import arena_scoring as sc
from conftest import benchdata_dir


def game(q, g, verdict, valid=True):
    return {"question_id": q, "game": g, "verdict": verdict, "valid": valid}


# 7 games; model results: win, win, tie, loss×3, loss×3, loss, loss → (2 + 0.5) / 11
SMALL = [game("0", 1, "B>A"), game("1", 2, "A>B"), game("2", 1, "A=B"), game("3", 2, "B>>A"),
         game("4", 1, "A>>B"), game("5", 2, "B>A"), game("6", 1, "A>B")]


def test_model_score_orientation_per_game():
    assert sc.model_score("B>A", 1) == (1.0, 1)   # game 1: model in seat B
    assert sc.model_score("B>>A", 1) == (1.0, 3)
    assert sc.model_score("A>B", 2) == (1.0, 1)   # game 2: model in seat A
    assert sc.model_score("A>>B", 2) == (1.0, 3)
    assert sc.model_score("A=B", 2) == (0.5, 1)
    assert sc.model_score("B=A", 1) is None and sc.model_score("A<B", 1) is None and sc.model_score(None, 1) is None


def test_small_battle_set_hand_computed():
    b = sc.battles_from_games(SMALL)
    assert len(b) == 11
    assert sorted(b.scores.tolist()) == [0.0] * 8 + [0.5, 1.0, 1.0]
    assert sc.bt_win_rate(b) == pytest.approx(2.5 / 11, abs=1e-12)
    # the weight of strong verdicts is a parameter: ×1 gives (2 + 0.5) / 7
    assert sc.bt_win_rate(sc.battles_from_games(SMALL, strong_weight=1)) == pytest.approx(2.5 / 7, abs=1e-12)


def test_invalid_games_are_not_battles():
    games = SMALL + [game("7", 1, None, valid=False), game("8", 2, "B=A"), game("9", 1, "A>B", valid=False)]
    assert sc.bt_win_rate(sc.battles_from_games(games)) == pytest.approx(2.5 / 11, abs=1e-12)
    m = sc.score_model(games, {}, {}, {}, {}, rounds=10)
    assert (m["win_rate"]["n_valid"], m["win_rate"]["n_total"]) == (7, 10)


def test_all_losses_and_all_wins_stay_finite():
    lose = sc.battles_from_games([game(str(i), 1, "A>B") for i in range(5)])
    win = sc.battles_from_games([game(str(i), 2, "A>>B") for i in range(5)])
    assert sc.bt_win_rate(lose) == 0.0
    assert sc.bt_win_rate(win) == 1.0
    lo, hi = sc.percentile_ci(sc.bootstrap_win_rates(lose, 20, 0))
    assert lo == pytest.approx(0.0, abs=1e-9) and hi == pytest.approx(0.0, abs=1e-9)


def _logistic_bt(a, b, y, n_players, anchor=0):
    """eval-protocols §1.1: duplicate battles, ties → one A win + one B win, design ±ln 10, unpenalised logistic
    regression; Elo = 400·coef + 1000 shifted so the anchor is 1000. Solved here by Newton's method."""
    a2, b2 = np.concatenate([a, a]), np.concatenate([b, b])
    ties = y == 0.5
    y2 = np.concatenate([np.where(ties, 1.0, y), np.where(ties, 0.0, y)])
    x = np.zeros((len(a2), n_players))
    x[np.arange(len(a2)), a2] = math.log(10)
    x[np.arange(len(a2)), b2] = -math.log(10)
    keep = [i for i in range(n_players) if i != anchor]
    x = x[:, keep]
    beta = np.zeros(len(keep))
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ beta)))
        step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x, x.T @ (y2 - p))
        beta += step
        if np.abs(step).max() < 1e-13:
            break
    coef = np.zeros(n_players)
    coef[keep] = beta
    return 400 * coef + 1000


def test_three_model_cycle_is_symmetric():
    # X beats Y 2–1, Y beats Z 2–1, Z beats X 2–1: by symmetry all strengths are equal
    a = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    b = np.array([1, 1, 1, 2, 2, 2, 0, 0, 0])
    y = np.array([1, 1, 0, 1, 1, 0, 1, 1, 0], dtype=float)
    s = sc.fit_bradley_terry(a, b, y, np.ones(9), 3)
    assert s == pytest.approx([1 / 3] * 3, abs=1e-10)


def test_general_bradley_terry_equals_logistic_formula():
    rng = np.random.default_rng(3)
    n = 400
    a = rng.integers(0, 4, n)
    b = (a + rng.integers(1, 4, n)) % 4
    y = rng.choice([0.0, 0.5, 1.0], n, p=[0.4, 0.2, 0.4])
    y[a == 2] = rng.choice([0.0, 0.5, 1.0], int((a == 2).sum()), p=[0.2, 0.2, 0.6])
    s = sc.fit_bradley_terry(a, b, y, np.ones(n), 4)
    elo = 1000 + 400 * np.log10(s / s[0])
    assert elo == pytest.approx(_logistic_bt(a, b, y, 4), abs=1e-6)


def _synthetic_judgments(seed, share_win, share_tie, n_questions=60, strong=0.3):
    rng = np.random.default_rng(seed)
    games = []
    for q in range(n_questions):
        for g in (1, 2):
            u = rng.random()
            result = ">" if u < share_win else "=" if u < share_win + share_tie else "<"
            if result != "=" and rng.random() < strong:
                result += result[0]
            seat = "B" if g == 1 else "A"
            other = "A" if seat == "B" else "B"
            label = {">": f"{seat}>{other}", ">>": f"{seat}>>{other}", "=": "A=B", "<": f"{other}>{seat}",
                     "<<": f"{other}>>{seat}"}[result]
            games.append(game(f"q{q}", g, label))
    return games


def test_three_models_joint_fit_equals_formulas():
    by_model = {"m1": _synthetic_judgments(1, 0.2, 0.1), "m2": _synthetic_judgments(2, 0.5, 0.2),
                "m3": _synthetic_judgments(3, 0.7, 0.1)}
    out = sc.score_models(by_model, rounds=30, seed=0)
    names = sorted(by_model)
    a_list, y_list = [], []
    for i, m in enumerate(names):
        b = sc.battles_from_games(by_model[m])
        share = float(b.scores.sum() / len(b))  # §12: star graph → weighted win share, >> ×3, ties ½
        assert out[m]["value"] == pytest.approx(share, abs=1e-9)
        assert out[m]["elo"] == pytest.approx(1000 + 400 * math.log10(share / (1 - share)), abs=1e-6)
        assert out[m]["ci_low"] < out[m]["value"] < out[m]["ci_high"]
        a_list.append(np.full(len(b), i + 1))
        y_list.append(b.scores)
    elo = _logistic_bt(np.concatenate(a_list), np.zeros(sum(map(len, a_list)), dtype=int), np.concatenate(y_list), 4)
    for i, m in enumerate(names):
        assert out[m]["elo"] == pytest.approx(elo[i + 1], abs=1e-5)
        assert out[m]["value"] == pytest.approx(1 / (1 + 10 ** ((1000 - elo[i + 1]) / 400)), abs=1e-9)


def test_bootstrap_seeded_and_independent_of_input_order():
    games = _synthetic_judgments(5, 0.4, 0.2)
    shuffled = [games[i] for i in np.random.default_rng(0).permutation(len(games))]
    s1 = sc.bootstrap_win_rates(sc.battles_from_games(games), 50, seed=7)
    s2 = sc.bootstrap_win_rates(sc.battles_from_games(shuffled), 50, seed=7)
    s3 = sc.bootstrap_win_rates(sc.battles_from_games(games), 50, seed=8)
    assert np.array_equal(s1, s2)
    assert not np.array_equal(s1, s3)
    lo, hi = sc.percentile_ci(s1)
    elo = 1000 + 400 * np.log10(s1 / (1 - s1))
    assert lo == pytest.approx(1 / (1 + 10 ** ((1000 - np.percentile(elo, 2.5)) / 400)), abs=1e-12)
    assert hi == pytest.approx(1 / (1 + 10 ** ((1000 - np.percentile(elo, 97.5)) / 400)), abs=1e-12)


def test_question_bootstrap_resamples_whole_questions():
    games = _synthetic_judgments(6, 0.4, 0.2)
    b = sc.battles_from_games(games)
    counts = sc.resample_counts(np.random.default_rng(0), b, "question")
    for q in set(b.question_ids):
        assert len(set(counts[b.question_ids == q])) == 1  # every row of one question drawn equally often


def test_ru_length_control_weights_hand_computed():
    games = [game("a", 1, "B>A"), game("b", 1, "B>A"), game("c", 1, "A>B"), game("d", 1, "A=B")]
    b = sc.battles_from_games(games)
    len_model = {"a": 300, "b": 100, "c": 300, "d": 300}
    len_base = {"a": 200, "b": 200, "c": 200, "d": 200}
    deltas = np.array([-100, 100, -100, -100], float)
    s = deltas.std(ddof=1)  # 100
    w = sc.ru_length_weights(b, len_model, len_base)
    order = list(b.question_ids)
    expected = {"a": 2 / (1 + math.exp(100 / s)), "b": 2 / (1 + math.exp(-100 / s)), "c": 1.0, "d": 1.0}
    assert w == pytest.approx([expected[q] for q in order], abs=1e-12)
    # weighted share: wins weighted, ties ½ with weight 1, losses weight 1
    wins = expected["a"] + expected["b"]
    assert sc.bt_win_rate(b, w) == pytest.approx((wins + 0.5) / (wins + 2), abs=1e-12)


def test_alpaca_lc_removes_a_pure_length_preference():
    # the judge prefers whichever answer is longer; the model is longer on half the questions
    rng = np.random.default_rng(0)
    games, chars_m, chars_b = [], {}, {}
    for q in range(200):
        longer = q % 4 != 0  # model longer on 75% → raw win rate 0.75
        chars_m[str(q)] = 900 + rng.integers(0, 50) if longer else 300 + rng.integers(0, 50)
        chars_b[str(q)] = 600
        for g in (1, 2):
            model_seat = "B" if g == 1 else "A"
            other = "A" if model_seat == "B" else "B"
            games.append(game(str(q), g, f"{model_seat}>{other}" if longer else f"{other}>{model_seat}"))
    b = sc.battles_from_games(games)
    assert sc.bt_win_rate(b) == pytest.approx(0.75)
    lc = sc.alpaca_lc_win_rate(b, chars_m, chars_b)
    assert abs(lc - 0.5) < abs(0.75 - 0.5)  # controlling for length moves the score towards a coin flip


def test_alpaca_glm_equals_unpenalised_logistic_fit():
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.3 + 1.2 * x)))).astype(float)
    theta, phi = sc.fit_length_glm(y, np.ones(300), x, ridge=0.0)
    # independent check: the gradient of the log-likelihood is zero at the optimum
    p = 1 / (1 + np.exp(-(theta + phi * x)))
    assert abs(np.sum(y - p)) < 1e-8 and abs(np.sum((y - p) * x)) < 1e-8
    sklearn = pytest.importorskip("sklearn.linear_model")
    lr = sklearn.LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[:, None], y)
    assert theta == pytest.approx(lr.intercept_[0], abs=1e-5) and phi == pytest.approx(lr.coef_[0][0], abs=1e-5)


def test_leaderboard_bootstrap_file_matches_published_scores():
    bench = benchdata_dir()
    if bench is None:
        pytest.skip("benchdata ru_llm_arena not found beside the repo (../shared/benchdata)")
    rows = [json.loads(line) for line in open(Path(bench) / "bootstrapping_results.jsonl")]
    published = {"gpt-4-1106-preview": 90.9, "gpt-4o-mini": 83.9, "qwen2-7b-instruct": 37.5,
                 "vikhr-llama3.1-8b-instruct-r-21-09-24": 63.4, "gpt-3.5-turbo-0125": 50.0}
    for model, score in published.items():
        elo = np.array([r[model] for r in rows])
        assert float(sc.win_rate_from_elo(np.median(elo))) * 100 == pytest.approx(score, abs=0.15)
        lo, hi = sc.percentile_ci(sc.win_rate_from_elo(elo))
        assert lo * 100 <= score + 1e-9 and hi * 100 >= score - 1e-9


def test_position_consistency_counts_agreeing_seatings():
    games = [game("a", 1, "B>A"), game("a", 2, "A>>B"),   # model wins in both seats
             game("b", 1, "A>B"), game("b", 2, "A>B"),    # position bias: seat A always wins
             game("c", 1, "A=B"), game("c", 2, "A=B"),
             game("d", 1, "B>A"), game("d", 2, None, valid=False)]
    assert sc.position_consistency(games) == {"pairs": 3, "consistent": 2}
