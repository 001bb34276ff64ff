"""Style-controlled Bradley–Terry (arena_style): hand-checked counts and features, equality with scikit-learn's
LogisticRegression on the same design matrix, recovery of known coefficients, and the length-bias case."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from rutune.eval import arena_scoring as sc
from rutune.eval import arena_style as st

LABEL = {1: {1.0: "B>A", 0.5: "A=B", 0.0: "A>B"}, 2: {1.0: "A>B", 0.5: "A=B", 0.0: "B>A"}}


def rec(q, g, result, strong=False, valid=True):
    """A rutune judgment record whose un-swapped model result is `result` (game 1: model in seat B)."""
    label = LABEL[g][result]
    if strong and result != 0.5:
        label = label.replace(">", ">>")
    return {"question_id": q, "game": g, "verdict": label, "valid": valid}


def counts(length, h=0, li=0, b=0):
    return {"length": float(length), "header_count": h, "list_count": li, "bold_count": b}


def sklearn_fit(x, y, w=None, c=np.inf):
    """sklearn on soft targets: a tie row becomes a win and a loss row of half weight each (same loss)."""
    w = np.ones(len(y)) if w is None else w
    ties = y == 0.5
    x2 = np.vstack([x, x[ties]])
    y2 = np.concatenate([np.where(ties, 1.0, y), np.zeros(int(ties.sum()))])
    w2 = np.concatenate([np.where(ties, 0.5 * w, w), 0.5 * w[ties]])
    model = LogisticRegression(C=c, fit_intercept=False, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    return model.fit(x2, y2, sample_weight=w2).coef_[0]


# ---------------------------------------------------------------- counts and features
def test_markdown_counts_follow_arena_hard_regexes():
    text = ("# Заголовок\n"
            "## Второй\n"
            "####### seven hashes is not a header\n"
            "#hashtag is not a header\n"
            "1. первый\n"
            "10. десятый\n"
            "  - вложенный\n"
            "* звёздочка\n"
            "+ плюс\n"
            "**жирный** в начале строки — не список\n"
            "и __подчёркнутый__ и **ещё**\n"
            "```python\n# comment in code\n- not a list\n**not bold**\n```\n"
            "-no space, not a list\n")
    assert st.markdown_counts(text) == {"header_count": 2, "list_count": 5, "bold_count": 3}


def test_code_block_text_is_removed_everywhere_as_arena_hard_does():
    # AH deletes every occurrence of a fenced block's inner text, so the same text outside the block goes too
    text = "```\n- item\n```\n\n- item\n- other\n"
    assert st.markdown_counts(text)["list_count"] == 1


def test_battle_features_hand_checked():
    model = st.style_counts("# T\n\n- a\n- b\n\n**bold** text", 10)
    base = st.style_counts("plain", 5)
    assert model == counts(10, 1, 2, 1)
    # length (10−5)/(10+5); densities 1/11, 2/11, 1/11 vs 0 → d/(d+1)
    assert st.battle_features(model, base) == pytest.approx([1 / 3, 1 / 12, 2 / 13, 1 / 12], abs=1e-12)
    # a shorter model with fewer lists: densities 1/5 vs 3/21 = 1/7 → (1/5 − 1/7)/(1/5 + 1/7 + 1) = 1/23.5
    f = st.battle_features(counts(4, li=1), counts(20, li=3))
    assert f == pytest.approx([-16 / 24, 0.0, (1 / 5 - 1 / 7) / (1 / 5 + 1 / 7 + 1), 0.0], abs=1e-12)
    # two empty answers: length feature 0, not 0/0
    assert st.battle_features(counts(0), counts(0)) == pytest.approx([0, 0, 0, 0])


def test_standardise_uses_sample_std_and_zeroes_constant_columns():
    raw = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [6.0, 5.0]])
    z, mean, std = st.standardise(raw)
    assert mean == pytest.approx([3.0, 5.0])
    assert std[0] == pytest.approx(math.sqrt(14 / 3))  # ddof 1, as torch.std in AH
    assert z[:, 0] == pytest.approx((raw[:, 0] - 3) / math.sqrt(14 / 3))
    assert np.all(z[:, 1] == 0) and std[1] == 0
    # a row weight counts that row that many times
    z2, mean2, std2 = st.standardise(raw[:3], weights=np.array([1.0, 1.0, 2.0]))
    assert mean2[0] == pytest.approx(2.25) and std2[0] == pytest.approx(np.std([1, 2, 3, 3], ddof=1))


# ---------------------------------------------------------------- the fit
def _synthetic_design(n, beta, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 3, n)
    x = np.zeros((n, 7))
    x[np.arange(n), m] = 1.0
    x[:, 3:] = rng.normal(size=(n, 4))
    p = 1 / (1 + np.exp(-x @ beta))
    tie = 0.4 * np.minimum(p, 1 - p)  # tie mass chosen so that E[y] = p: soft-target MLE stays consistent
    u = rng.random(n)
    y = np.where(u < p - tie / 2, 1.0, np.where(u < p + tie / 2, 0.5, 0.0))
    return x, y


BETA = np.array([0.5, -0.3, 1.0, 0.8, -0.4, 0.2, 0.0])


@pytest.mark.parametrize("l2", [0.0, 2.0, 0.25])
def test_fit_equals_sklearn_logistic_regression(l2):
    x, y = _synthetic_design(5000, BETA, seed=1)
    w = np.random.default_rng(2).integers(1, 4, len(y)).astype(float)
    ours = st.fit_logistic(x, y, w, l2=l2)
    theirs = sklearn_fit(x, y, w, c=np.inf if l2 == 0 else 1 / l2)
    assert ours == pytest.approx(theirs, abs=1e-6)
    # the penalty really is in play: coefficients shrink as l2 grows
    if l2 > 0:
        assert np.linalg.norm(ours) < np.linalg.norm(st.fit_logistic(x, y, w))


def test_fit_recovers_generating_coefficients_at_large_n():
    x, y = _synthetic_design(40_000, BETA, seed=3)
    beta = st.fit_logistic(x, y)
    assert beta == pytest.approx(BETA, abs=0.08)
    assert np.abs(st.fit_logistic(*_synthetic_design(400, BETA, seed=3)) - BETA).max() > 0.08  # small n: it does not


def test_fit_handles_an_all_zero_column_and_separable_data():
    x = np.column_stack([np.ones(6), np.zeros(6)])
    beta = st.fit_logistic(x, np.array([1, 1, 1, 0, 1, 0.5]))
    assert beta[1] == 0.0 and beta[0] == pytest.approx(math.log(4.5 / 1.5))
    sep = st.fit_logistic(np.ones((4, 1)), np.ones(4))  # all wins: no finite optimum, but a finite answer
    assert np.isfinite(sep).all() and 1 / (1 + math.exp(-sep[0])) > 0.999


# ---------------------------------------------------------------- battles and scores
def _three_models(seed=0, nq=120):
    rng = np.random.default_rng(seed)
    base, style, games = {}, {"m1": {}, "m2": {}, "m3": {}}, {"m1": [], "m2": [], "m3": []}
    strength = {"m1": -0.5, "m2": 0.3, "m3": 1.0}
    for i in range(nq):
        q = str(i)
        base[q] = counts(rng.integers(50, 400), rng.integers(0, 3), rng.integers(0, 8), rng.integers(0, 5))
        for m in style:
            style[m][q] = counts(rng.integers(50, 800), rng.integers(0, 4), rng.integers(0, 10), rng.integers(0, 6))
            f = st.battle_features(style[m][q], base[q])
            p = 1 / (1 + math.exp(-(strength[m] + 3 * f[0])))
            for g in (1, 2):
                u = rng.random()
                result = 1.0 if u < p - 0.1 else 0.5 if u < p + 0.1 else 0.0
                games[m].append(rec(q, g, result, strong=rng.random() < 0.2))
    return games, style, base


def test_style_scores_equal_sklearn_on_the_same_design_matrix():
    games, style, base = _three_models()
    battles = st.build_style_battles(games, style, base)
    x, y, info = st.design_matrix(battles)
    assert info["columns"] == ["m1", "m2", "m3", "style:length", "style:header", "style:list", "style:bold"]
    assert np.abs(x[:, 3:].mean(axis=0)).max() < 1e-12 and x[:, 3:].std(axis=0, ddof=1) == pytest.approx(1.0)
    coef = sklearn_fit(x, y)  # exploded rows: a >> verdict is 3 identical rows
    out = st.style_controlled_scores(games, style, base, rounds=20, seed=0)
    for i, m in enumerate(["m1", "m2", "m3"]):
        assert out["models"][m]["value"] == pytest.approx(1 / (1 + math.exp(-coef[i])), abs=1e-5)
    for j, f in enumerate(st.FEATURES):
        assert out["coefficients"][f]["value"] == pytest.approx(coef[3 + j], abs=1e-5)
    assert out["coefficients"]["length"]["value"] > 1.0  # the generating length effect is visible
    # control=("length",) fits only the length column, again equal to sklearn on that design
    x1, y1, _ = st.design_matrix(battles, ("length",))
    out1 = st.style_controlled_scores(games, style, base, control=("length",), rounds=0)
    assert out1["coefficients"]["length"]["value"] == pytest.approx(sklearn_fit(x1, y1)[3], abs=1e-5)
    assert set(out1["coefficients"]) == {"length"}


def test_longer_answer_winning_moves_weight_into_length_and_pulls_win_rates_to_half():
    # three models: "long" is longer than the baseline on 80% of questions, "short" on 20%, "mixed" on 50%, always
    # by the same factor 1.6 either way, so the pooled mean length feature is 0. The longer answer wins 90% of
    # games and nothing else matters: every model's style-free strength is the baseline's.
    rng = np.random.default_rng(7)
    share = {"long": 0.8, "short": 0.2, "mixed": 0.5}
    base, style, games = {}, {m: {} for m in share}, {m: [] for m in share}
    for i in range(300):
        q = f"q{i}"
        lb = 300.0
        base[q] = counts(lb, 1, 3, 2)
        for m in share:
            longer = (i % 10) < share[m] * 10
            lm = lb * 1.6 if longer else lb / 1.6
            style[m][q] = counts(lm, int(rng.integers(0, 3)), int(rng.integers(0, 6)), int(rng.integers(0, 4)))
            for g in (1, 2):
                won = rng.random() < (0.9 if longer else 0.1)
                games[m].append(rec(q, g, 1.0 if won else 0.0))
    out = st.style_controlled_scores(games, style, base, rounds=30, seed=0)
    raw = {m: sc.bt_win_rate(sc.battles_from_games(games[m])) for m in share}
    assert raw["long"] > 0.68 and raw["short"] < 0.32
    coef = out["coefficients"]
    assert coef["length"]["value"] > 2.0 and coef["length"]["ci_low"] > 1.5
    assert max(abs(coef[f]["value"]) for f in ("header", "list", "bold")) < 0.3
    for m in share:
        controlled = out["models"][m]["value"]
        assert abs(controlled - 0.5) < 0.06, (m, controlled)
        assert out["models"][m]["ci_low"] < 0.5 < out["models"][m]["ci_high"]
    assert abs(out["models"]["long"]["value"] - out["models"]["short"]["value"]) < 0.1  # raw gap ≈ 0.45
    assert out["separable"] is False


def test_a_judge_decided_by_length_alone_is_reported_as_separable():
    base = {str(i): counts(100) for i in range(40)}
    style = {str(i): counts(150 if i % 2 else 60) for i in range(40)}
    games = [rec(str(i), g, 1.0 if i % 2 else 0.0) for i in range(40) for g in (1, 2)]
    out = st.style_controlled_win_rate(games, style, base, control=("length",), rounds=5)
    assert out["separable"] is True and out["coefficients"]["length"]["value"] > st.SEPARABLE_COEF


def test_single_model_equal_reference_removes_an_always_longer_advantage():
    # one model, longer on 75% of questions, judged by σ(6·length feature): at equal style the win rate is 0.5,
    # at the model's own average style ("mean", AH's reference) it keeps the advantage
    rng = np.random.default_rng(1)
    base, style, games = {}, {}, []
    for i in range(600):
        q = str(i)
        base[q] = counts(200)
        u = rng.uniform(0.1, 1.2) * (1 if rng.random() < 0.75 else -1)
        style[q] = counts(200 * math.exp(u))
        f = math.tanh(u / 2)  # = (lm − lb)/(lm + lb)
        for g in (1, 2):
            games.append(rec(q, g, 1.0 if rng.random() < 1 / (1 + math.exp(-6 * f)) else 0.0))
    equal = st.style_controlled_win_rate(games, style, base, control=("length",), reference="equal", rounds=30)
    mean = st.style_controlled_win_rate(games, style, base, control=("length",), reference="mean", rounds=0)
    raw = sc.bt_win_rate(sc.battles_from_games(games))
    assert raw > 0.65
    assert abs(equal["value"] - 0.5) < 0.05 and equal["ci_low"] < 0.5 < equal["ci_high"]
    assert mean["value"] > 0.6
    # "equal" is the same fit evaluated at raw feature 0: z0 = −mean/std
    c = equal["coefficients"]["length"]
    theta = math.log(mean["value"] / (1 - mean["value"]))
    z0 = -c["mean_raw"] / c["std_raw"]
    assert equal["value"] == pytest.approx(1 / (1 + math.exp(-(theta + c["value"] * z0))), abs=1e-4)


def test_bootstrap_is_seeded_and_resamples_questions_when_asked():
    games, style, base = _three_models(seed=4, nq=60)
    a = st.style_controlled_scores(games, style, base, rounds=25, seed=3)
    b = st.style_controlled_scores(games, style, base, rounds=25, seed=3)
    c = st.style_controlled_scores(games, style, base, rounds=25, seed=4)
    q = st.style_controlled_scores(games, style, base, rounds=25, seed=3, unit="question")
    assert a == b and a["models"] != c["models"]
    for m in ("m1", "m2", "m3"):
        e = a["models"][m]
        assert e["ci_low"] < e["value"] < e["ci_high"] and e["ci_low"] < e["median"] < e["ci_high"]
        assert q["models"][m]["value"] == e["value"] and q["models"][m]["ci_low"] != e["ci_low"]
    assert a["coefficients"]["length"]["ci_low"] < a["coefficients"]["length"]["ci_high"]


def test_invalid_games_and_missing_style_are_counted_not_fitted():
    games = [rec("a", 1, 1.0), rec("a", 2, 0.0), rec("b", 1, 1.0, strong=True), rec("b", 2, 0.5),
             {"question_id": "c", "game": 1, "verdict": None, "valid": False},
             {"question_id": "c", "game": 2, "verdict": "B=A", "valid": True},
             rec("d", 1, 1.0), rec("d", 2, 1.0)]
    style = {"a": counts(10), "b": counts(30, li=2), "c": counts(5)}  # no style for "d"
    base = {q: counts(20) for q in "abcd"}
    battles = st.build_style_battles({"m": games}, {"m": style}, base)
    assert len(battles) == 2 + 3 + 1  # a: 2 rows, b: >> as 3 rows + a tie
    assert (battles.n_valid["m"], battles.n_total["m"], battles.n_no_style["m"]) == (6, 8, 2)
    out = st.style_controlled_win_rate(games, style, base, rounds=5)
    assert (out["n_valid"], out["n_total"], out["n_no_style"]) == (6, 8, 2)
    empty = st.style_controlled_win_rate([rec("x", 1, 1.0, valid=False)], {}, {}, rounds=5)
    assert empty["value"] is None and empty["n_total"] == 1


def test_bad_arguments_say_what_to_use():
    with pytest.raises(ValueError, match="length, markdown"):
        st.select_features(["colour"])
    with pytest.raises(ValueError, match="'mean' or 'equal'"):
        st.style_controlled_scores({}, {}, {}, reference="zero")
    assert st.select_features(["markdown", "length"]) == ("length", "header", "list", "bold")
