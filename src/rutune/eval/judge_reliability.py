"""How far a two-order pairwise judge can be trusted, from the games the arena already judged.

Every question is judged twice: game 1 seats the baseline as A (first) and the model as B, game 2 swaps them. A
record carries the judge's raw seat label (`verdict`: `A>>B` … `B>>A`), the `game` and `valid`; the model's result
after un-swapping follows from those two (`arena_scoring.model_score`). From them (reference eval-additions §3):

- swap agreement: share of questions with both games valid whose two games give the model the same result
  (win / tie / loss; strength ignored), with a bootstrap CI over questions, plus the agreement two independent
  verdicts would reach by chance (Σ share²) and Cohen's κ;
- first-position win rate: share of decisive verdicts (both games) that picked seat A, z against 0.5;
- position-bias direction among pairs: both games chose seat A / both chose seat B (a contradiction either way);
- length: Pearson r between the model's result (1/0.5/0) and len_model − len_baseline over valid games, and the
  share of decisive games with unequal lengths that the longer answer won (z against 0.5);
- tie rate (over valid games) and invalid rate (over all games: errors, invalid replies, labels outside the five,
  missing games all count).

Pure functions on plain records; no I/O.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from rutune.eval.arena_scoring import model_score

DEFAULT_MIN_AGREEMENT = 0.6
DEFAULT_MAX_FIRST_SKEW = 0.1
DEFAULT_MIN_PAIRS = 20
_SEAT = {"A>>B": "first", "A>B": "first", "A=B": "tie", "B>A": "second", "B>>A": "second"}


def seat_choice(verdict: str | None) -> str | None:
    """Which seat a raw label picked: "first" (A), "second" (B), "tie", or None for anything else."""
    return _SEAT.get(verdict) if isinstance(verdict, str) else None


def _z(successes: int, n: int) -> float | None:
    """z of a share against 0.5: (p − 0.5)/√(0.25/n)."""
    return None if n == 0 else (successes / n - 0.5) / math.sqrt(0.25 / n)


def _share(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _round(v):
    """A plain float, or None for a missing or non-finite value (JSON-safe)."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _cluster_ci(sums: np.ndarray, counts: np.ndarray, rounds: int, seed: int, level: float) -> tuple:
    """Percentile CI of Σsums/Σcounts when whole clusters (questions) are resampled with replacement."""
    n = len(sums)
    if n == 0 or rounds <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, (rounds, n))
    num, den = sums[draws].sum(axis=1), counts[draws].sum(axis=1)
    ratios = num[den > 0] / den[den > 0]
    if len(ratios) == 0:
        return None, None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def _games(records: Iterable[Mapping], key: str = "") -> list[dict]:
    """One dict per record: question cluster, pair key, game, result, seat choice (None when not valid)."""
    out = []
    for r in records:
        game = int(r["game"])
        label = r.get("verdict") if r.get("valid") else None
        result = model_score(label, game) if label is not None else None
        out.append({"cluster": str(r["question_id"]), "pair": (key, str(r["question_id"])), "game": game,
                    "score": result[0] if result else None, "seat": seat_choice(label) if result else None})
    return out


def _report(games: list[dict], len_diff: Mapping[tuple, float] | None, rounds: int, seed: int,
            level: float) -> dict:
    valid = [g for g in games if g["score"] is not None]
    n_games, n_valid = len(games), len(valid)
    ties = sum(1 for g in valid if g["score"] == 0.5)

    by_pair: dict[tuple, dict[int, dict]] = {}
    for g in valid:
        by_pair.setdefault(g["pair"], {})[g["game"]] = g
    pairs = [(key, p[1], p[2]) for key, p in by_pair.items() if 1 in p and 2 in p]
    agree = np.array([float(g1["score"] == g2["score"]) for _, g1, g2 in pairs])
    decisive_agree = sum(1 for _, g1, g2 in pairs if g1["score"] == g2["score"] != 0.5)
    both_first = sum(1 for _, g1, g2 in pairs if g1["seat"] == g2["seat"] == "first")
    both_second = sum(1 for _, g1, g2 in pairs if g1["seat"] == g2["seat"] == "second")
    # chance agreement of two independent verdicts with the observed result shares, and Cohen's κ
    results = [g["score"] for _, g1, g2 in pairs for g in (g1, g2)]
    shares = [results.count(v) / len(results) for v in (0.0, 0.5, 1.0)] if results else []
    chance = sum(s * s for s in shares) if shares else None
    pc = float(agree.mean()) if len(agree) else None
    kappa = (pc - chance) / (1 - chance) if pc is not None and chance is not None and chance < 1 else None

    clusters: dict[str, list[float]] = {}
    for (pair_key, _, _), a in zip(pairs, agree):
        clusters.setdefault(pair_key[1], []).append(float(a))  # the question id: a cluster across models
    names = sorted(clusters)
    lo, hi = _cluster_ci(np.array([sum(clusters[c]) for c in names]), np.array([len(clusters[c]) for c in names],
                                                                                dtype=float), rounds, seed, level)

    decisive = [g for g in valid if g["seat"] in ("first", "second")]
    first = sum(1 for g in decisive if g["seat"] == "first")

    length: dict = {"pearson_r": None, "n": 0, "longer_wins": None, "n_decisive_unequal": 0, "z": None}
    if len_diff is not None:
        xs = [(g["score"], len_diff[g["pair"]]) for g in valid if g["pair"] in len_diff]
        length["n"] = len(xs)
        if len(xs) > 1:
            s, d = np.array(xs, dtype=float).T
            if s.std() > 0 and d.std() > 0:
                length["pearson_r"] = float(np.corrcoef(s, d)[0, 1])
        unequal = [(sc, dl) for sc, dl in xs if sc != 0.5 and dl != 0]
        longer = sum(1 for sc, dl in unequal if (sc == 1.0) == (dl > 0))
        length.update(longer_wins=_share(longer, len(unequal)), n_decisive_unequal=len(unequal),
                      z=_z(longer, len(unequal)))

    return {
        "n_games": n_games, "n_valid": n_valid, "n_invalid": n_games - n_valid,
        "invalid_rate": _round(_share(n_games - n_valid, n_games)),
        "tie_rate": _round(_share(ties, n_valid)),
        "n_pairs": len(pairs),
        "swap_agreement": {"value": _round(pc), "ci_low": _round(lo), "ci_high": _round(hi), "n": len(pairs),
                           "chance": _round(chance), "kappa": _round(kappa)},
        "flip_rate": _round(None if pc is None else 1 - pc),
        "consistent_decisive_rate": _round(_share(decisive_agree, len(pairs))),
        "first_position": {"win_rate": _round(_share(first, len(decisive))), "n_decisive": len(decisive),
                           "z": _round(_z(first, len(decisive)))},
        "position_bias": {"both_first": _round(_share(both_first, len(pairs))),
                          "both_second": _round(_share(both_second, len(pairs))),
                          "signed": _round(_share(both_first - both_second, both_first + both_second))},
        "length": {k: _round(v) if isinstance(v, float) else v for k, v in length.items()},
        "bootstrap": {"rounds": rounds, "seed": seed, "level": level, "unit": "question"},
    }


def _length_diffs(key: str, len_model: Mapping[str, float] | None,
                  len_base: Mapping[str, float] | None) -> dict[tuple, float] | None:
    if len_model is None or len_base is None:
        return None
    return {(key, str(q)): float(len_model[q]) - float(len_base[q]) for q in len_model
            if q in len_base and len_model[q] is not None and len_base[q] is not None}


def judge_reliability(games: Sequence[Mapping], len_model: Mapping[str, float] | None = None,
                      len_base: Mapping[str, float] | None = None, rounds: int = 100, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Reliability figures of the judge on one model's games (records: `question_id`, `game`, `verdict`, `valid`).

    `len_model` / `len_base`: answer lengths per question id (any one unit for both); without them the length
    figures are None.
    """
    return _report(_games(games), _length_diffs("", len_model, len_base), rounds, seed, level)


def judge_reliability_by_model(games_by_model: Mapping[str, Sequence[Mapping]],
                               len_by_model: Mapping[str, Mapping[str, float]] | None = None,
                               len_base: Mapping[str, float] | None = None, rounds: int = 100, seed: int = 0,
                               level: float = 0.95) -> dict:
    """`{"models": {m: report}, "overall": report}`; overall pools every model's games and its bootstrap resamples
    question ids (all models' pairs for one question move together)."""
    models, pooled, diffs = {}, [], {} if len_by_model is not None and len_base is not None else None
    for m in sorted(games_by_model):
        lm = len_by_model.get(m) if len_by_model is not None else None
        d = _length_diffs(m, lm, len_base)
        g = _games(games_by_model[m], key=m)
        models[m] = _report(g, d, rounds, seed, level)
        pooled += g
        if diffs is not None and d is not None:
            diffs.update(d)
    return {"models": models, "overall": _report(pooled, diffs, rounds, seed, level)}


def swap_agreement_warning(report: Mapping, threshold: float = DEFAULT_MIN_AGREEMENT,
                           min_pairs: int = DEFAULT_MIN_PAIRS) -> str | None:
    """One line when the judge's swap agreement is below `threshold` (default 0.6), else None.

    0.6 sits above what a judge whose two verdicts are independent of each other reaches by chance on typical
    arena result mixes (Σ share² ≈ 0.35–0.5 for win/tie/loss shares like 0.45/0.1/0.45 … 0.6/0.1/0.3) and below
    the consistency published for strong judges (MT-Bench GPT-4 ≈ 0.65, FastChat #3911 GPT-4 ≈ 0.87), so it flags
    judges whose verdicts mostly follow the seat rather than the answers. Fewer than `min_pairs` pairs: no verdict
    either way (None).
    """
    sa = report.get("swap_agreement") or {}
    value, n = sa.get("value"), sa.get("n", 0)
    if value is None or n < min_pairs or value >= threshold:
        return None
    fp = report.get("first_position") or {}
    side = ""
    if fp.get("win_rate") is not None:
        side = f"; seat A wins {fp['win_rate']:.0%} of decisive verdicts (z = {fp['z']:.1f})"
    level = (report.get("bootstrap") or {}).get("level", 0.95)
    ci = f" ({level:.0%} CI {sa['ci_low']:.2f}–{sa['ci_high']:.2f})" if sa.get("ci_low") is not None else ""
    return (f"judge swap agreement {value:.2f}{ci} over {n} question pairs is below {threshold:.2f}: its verdicts "
            f"often change when the answers swap seats{side}; treat the scores as unreliable")


def first_position_warning(report: Mapping, max_skew: float = DEFAULT_MAX_FIRST_SKEW, min_z: float = 3.0,
                           min_pairs: int = DEFAULT_MIN_PAIRS) -> str | None:
    """One line when decisive verdicts favour one seat: |P1 − 0.5| > `max_skew` and |z| > `min_z`, else None.

    Because every question is judged in both seat orders, an order-blind judge has P1 = 0.5 whatever the models'
    strengths, so this check is not inflated by a lopsided pairing the way swap agreement is (a judge that
    follows seat A in 40% of games and is consistent otherwise keeps swap agreement ≈ 0.6 when the model wins 85%
    of its games, but shows P1 ≈ 0.7). 0.1 leaves room for the mild bias reported for GPT-4 (FastChat #3911: the
    answer shown first wins 52.6%).
    """
    fp = report.get("first_position") or {}
    p1, z = fp.get("win_rate"), fp.get("z")
    if p1 is None or z is None or report.get("n_pairs", 0) < min_pairs:
        return None
    if abs(p1 - 0.5) <= max_skew or abs(z) <= min_z:
        return None
    seat = "first (A)" if p1 > 0.5 else "second (B)"
    return (f"judge favours the {seat} seat: it picks seat A in {p1:.0%} of {fp['n_decisive']} decisive verdicts "
            f"(z = {z:.1f}); treat the scores as unreliable")


def reliability_warnings(report: Mapping, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                         max_first_skew: float = DEFAULT_MAX_FIRST_SKEW,
                         min_pairs: int = DEFAULT_MIN_PAIRS) -> list[str]:
    """Both checks on one report (`swap_agreement_warning`, `first_position_warning`): the lines that apply."""
    lines = [swap_agreement_warning(report, min_agreement, min_pairs),
             first_position_warning(report, max_first_skew, min_pairs=min_pairs)]
    return [line for line in lines if line]
