"""Judge-reliability figures on hand-built two-order record sets with known agreement, seat and length numbers."""

from __future__ import annotations

import math
import statistics

import pytest

from rutune.eval import judge_reliability as jr


def g(q, game, verdict, valid=True):
    return {"question_id": q, "game": game, "verdict": verdict, "valid": valid}


# game 1: A = baseline, B = model; game 2: A = model, B = baseline
RECORDS = [
    g("q1", 1, "B>A"), g("q1", 2, "A>B"),     # model wins both: agree; seats second, first
    g("q2", 1, "A>B"), g("q2", 2, "A>B"),     # seat A both times: model loses then wins — a flip, both first
    g("q3", 1, "A=B"), g("q3", 2, "A=B"),     # tie, tie: agree
    g("q4", 1, "A>>B"), g("q4", 2, "B>A"),    # model loses both (strength differs, result agrees)
    g("q5", 1, "B>>A"), g("q5", 2, "B>A"),    # seat B both times: win then loss — a flip, both second
    g("q6", 1, "A>B"), g("q6", 2, None, valid=False),          # one valid game: no pair
    g("q7", 1, None, valid=False), g("q7", 2, "A>B"),          # an error record for game 1
    g("q8", 1, "B=A"), g("q8", 2, "A=B"),     # a label outside the five is invalid even if `valid` is set
]
LEN_MODEL = {"q1": 300, "q2": 100, "q3": 200, "q4": 150, "q5": 100, "q6": 500, "q7": 100, "q8": 120}
LEN_BASE = {"q1": 100, "q2": 300, "q3": 200, "q4": 100, "q5": 150, "q6": 100, "q7": 100, "q8": 100}


def test_counts_rates_and_swap_agreement_hand_checked():
    r = jr.judge_reliability(RECORDS, rounds=200, seed=0)
    assert (r["n_games"], r["n_valid"], r["n_invalid"]) == (16, 13, 3)
    assert r["invalid_rate"] == pytest.approx(3 / 16)
    assert r["tie_rate"] == pytest.approx(3 / 13)  # over valid games
    sa = r["swap_agreement"]
    assert r["n_pairs"] == sa["n"] == 5
    assert sa["value"] == pytest.approx(3 / 5) and r["flip_rate"] == pytest.approx(2 / 5)
    assert r["consistent_decisive_rate"] == pytest.approx(2 / 5)  # q1 (win) and q4 (loss); q3 agrees on a tie
    # result shares over the 10 paired verdicts: win .4, tie .2, loss .4 → chance .36, κ = (.6 − .36)/.64
    assert sa["chance"] == pytest.approx(0.36) and sa["kappa"] == pytest.approx(0.375)
    assert sa["ci_low"] <= 0.6 <= sa["ci_high"] and sa["ci_low"] < sa["ci_high"]
    assert 0.0 <= sa["ci_low"] and sa["ci_high"] <= 1.0


def test_first_position_and_bias_direction_hand_checked():
    r = jr.judge_reliability(RECORDS, rounds=0)
    fp = r["first_position"]
    # 10 decisive valid verdicts, 6 pick seat A: q1g2, q2g1, q2g2, q4g1, q6g1, q7g2
    assert fp["n_decisive"] == 10 and fp["win_rate"] == pytest.approx(0.6)
    assert fp["z"] == pytest.approx(0.1 / math.sqrt(0.25 / 10))
    pb = r["position_bias"]
    assert pb["both_first"] == pytest.approx(0.2) and pb["both_second"] == pytest.approx(0.2)
    assert pb["signed"] == pytest.approx(0.0)
    assert r["swap_agreement"]["ci_low"] is None  # rounds=0: no CI


def test_length_figures_hand_checked():
    r = jr.judge_reliability(RECORDS, LEN_MODEL, LEN_BASE, rounds=0)["length"]
    scores = [1, 1, 0, 1, .5, .5, 0, 0, 1, 0, 0, 1, .5]
    diffs = [200, 200, -200, -200, 0, 0, 50, 50, -50, -50, 400, 0, 20]
    assert r["n"] == 13
    assert r["pearson_r"] == pytest.approx(statistics.correlation(scores, diffs), abs=1e-6)
    # decisive games with unequal lengths: 9; the longer answer won q1 ×2, q2 game 1, q5 game 2
    assert r["n_decisive_unequal"] == 9 and r["longer_wins"] == pytest.approx(4 / 9)
    assert r["z"] == pytest.approx((4 / 9 - 0.5) / math.sqrt(0.25 / 9), abs=1e-6)
    assert jr.judge_reliability(RECORDS)["length"]["pearson_r"] is None  # no lengths, no length figures


def test_a_judge_that_always_picks_seat_a_agrees_never_and_is_flagged():
    records = [g(f"q{i}", game, "A>B") for i in range(30) for game in (1, 2)]
    r = jr.judge_reliability(records, rounds=50)
    assert r["swap_agreement"]["value"] == 0.0 and r["flip_rate"] == 1.0
    assert r["first_position"]["win_rate"] == 1.0 and r["first_position"]["z"] == pytest.approx(math.sqrt(60))
    assert r["position_bias"]["signed"] == 1.0
    warning = jr.swap_agreement_warning(r)
    assert warning is not None and "0.00" in warning and "seat A wins 100%" in warning and "\n" not in warning


def test_a_consistent_judge_is_not_flagged_and_small_samples_are_not_judged():
    good = [g(f"q{i}", 1, "B>A") for i in range(25)] + [g(f"q{i}", 2, "A>B") for i in range(25)]
    r = jr.judge_reliability(good, rounds=20)
    assert r["swap_agreement"]["value"] == 1.0 and r["swap_agreement"]["kappa"] is None  # chance = 1: κ undefined
    assert jr.swap_agreement_warning(r) is None
    small = jr.judge_reliability(RECORDS, rounds=20)  # agreement 0.6 over 5 pairs
    assert jr.swap_agreement_warning(small) is None                              # 0.6 is not below 0.6
    assert jr.swap_agreement_warning(small, threshold=0.7) is None               # 5 < 20 pairs
    assert "0.60" in jr.swap_agreement_warning(small, threshold=0.7, min_pairs=5)


def test_per_model_and_pooled_reports():
    other = [g("q1", 1, "B>A"), g("q1", 2, "A>B"), g("q2", 1, "A>B"), g("q2", 2, "B>A"),
             g("q3", 1, "A=B"), g("q3", 2, "A=B")]
    out = jr.judge_reliability_by_model({"m": RECORDS, "n": other},
                                        {"m": LEN_MODEL, "n": {"q1": 10, "q2": 10, "q3": 10}}, LEN_BASE, rounds=100)
    assert out["models"]["m"]["swap_agreement"]["value"] == pytest.approx(0.6)
    assert out["models"]["n"]["swap_agreement"]["value"] == pytest.approx(1.0)
    pooled = out["overall"]
    assert pooled["n_pairs"] == 8 and pooled["swap_agreement"]["value"] == pytest.approx(6 / 8)
    assert pooled["n_games"] == 22 and pooled["length"]["n"] == 13 + 6
    assert pooled["swap_agreement"]["ci_low"] <= 0.75 <= pooled["swap_agreement"]["ci_high"]


def test_pooled_bootstrap_resamples_questions_not_model_question_pairs():
    # two models judged identically on the same 10 questions (agree on 6, flip on 4): if the pooled bootstrap
    # resampled (model, question) pairs its CI would be narrower; resampling question ids gives exactly the
    # one-model interval (same seed, same 10 clusters, every cluster's sum and count doubled)
    one = [g(f"q{i}", 1, "B>A") for i in range(10)] + [g(f"q{i}", 2, "A>B" if i < 6 else "B>A") for i in range(10)]
    out = jr.judge_reliability_by_model({"m": one, "n": one}, rounds=300, seed=5)
    single = jr.judge_reliability(one, rounds=300, seed=5)["swap_agreement"]
    pooled = out["overall"]["swap_agreement"]
    assert pooled["value"] == single["value"] == pytest.approx(0.6)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((single["ci_low"], single["ci_high"]))
    assert single["ci_high"] - single["ci_low"] > 0.4


def test_seat_choice_reads_the_raw_label():
    assert [jr.seat_choice(v) for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A", "B=A", None)] == \
        ["first", "first", "tie", "second", "second", None, None]


def test_a_seat_following_judge_on_a_lopsided_pair_passes_agreement_but_fails_first_position():
    # the model's answer is better on 85% of questions; in 40% of games the judge just picks seat A. Swap
    # agreement stays ≈ 0.6 (the lopsided results agree by chance), the first-seat share shows the bias.
    import random

    rng = random.Random(0)
    records = []
    for i in range(400):
        model_better = rng.random() < 0.85
        for game in (1, 2):
            if rng.random() < 0.4:
                label = "A>B"
            else:
                model_seat = "B" if game == 1 else "A"
                winner = model_seat if model_better else ("A" if model_seat == "B" else "B")
                label = f"{winner}>{'A' if winner == 'B' else 'B'}"
            records.append(g(f"q{i}", game, label))
    r = jr.judge_reliability(records, rounds=50)
    assert 0.58 < r["swap_agreement"]["value"] < 0.68 and abs(r["swap_agreement"]["kappa"]) < 0.15
    assert jr.swap_agreement_warning(r) is None
    assert r["first_position"]["win_rate"] > 0.65
    line = jr.first_position_warning(r)
    assert line is not None and "first (A)" in line
    assert jr.reliability_warnings(r) == [line]
    always_a = jr.judge_reliability([g(f"q{i}", game, "A>B") for i in range(30) for game in (1, 2)], rounds=0)
    assert len(jr.reliability_warnings(always_a)) == 2
    assert jr.first_position_warning(jr.judge_reliability(RECORDS, rounds=0)) is None  # 5 pairs: too few
