"""Pure arena maths: verdicts → battles → Bradley–Terry win rate vs the baseline, bootstrap CIs, length control.

The conventions follow ru_llm_arena (the Russian port of Arena-Hard v0.1), see docs/arena.md:

- game 1 puts the baseline in seat A and the model in seat B, game 2 swaps them;
- a `>>` verdict counts as `strong_weight` (3) identical battles, a tie as half a win for each side;
- only the five labels count; any other label or a failed judgment is not a battle but is still counted
  in `n_total`, so a table shows `n_valid / n_total` instead of silently shrinking;
- the score is the Bradley–Terry predicted win rate of the model against the baseline, on a 0–1 scale;
- the 95% CI comes from `rounds` bootstrap refits on battle rows (or whole questions), seeded and independent
  of input order (battles are sorted before resampling).

Everything here takes plain numbers and returns plain numbers; no I/O, no clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
ELO_SCALE = 400.0
ELO_INIT = 1000.0
_SEAT_SCORE = {"A>>B": (1.0, True), "A>B": (1.0, False), "A=B": (0.5, False), "B>A": (0.0, False),
               "B>>A": (0.0, True)}


@dataclass(frozen=True)
class Battles:
    """Exploded battle rows of one model against the baseline, sorted by (question, game).

    `scores` are the model's results (1 win, 0.5 tie, 0 loss); a strong verdict is `strong_weight` rows.
    """

    question_ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def model_score(label: str | None, game: int) -> tuple[float, int] | None:
    """The model's result and row count for one verdict, or None when the label is not one of the five.

    Game 1: A = baseline, B = model. Game 2: A = model, B = baseline.
    """
    if label not in _SEAT_SCORE:
        return None
    a_score, strong = _SEAT_SCORE[label]
    score = 1.0 - a_score if game == 1 else a_score
    return score, (3 if strong else 1)


def battles_from_games(games: Iterable[Mapping], strong_weight: int = 3) -> Battles:
    """Turn judgment records (`question_id`, `game`, `verdict`, `valid`) into exploded battle rows."""
    rows: list[tuple[str, int, float]] = []
    for g in games:
        if not g.get("valid"):
            continue
        result = model_score(g.get("verdict"), int(g["game"]))
        if result is None:
            continue
        score, count = result
        repeat = strong_weight if count > 1 else 1
        rows.extend([(str(g["question_id"]), int(g["game"]), score)] * repeat)
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return Battles(
        question_ids=np.array([r[0] for r in rows], dtype=object),
        scores=np.array([r[2] for r in rows], dtype=np.float64),
    )


# ---------------------------------------------------------------- Bradley–Terry
def fit_bradley_terry(
    player_a: np.ndarray, player_b: np.ndarray, score_a: np.ndarray, weights: np.ndarray, n_players: int,
    tol: float = 1e-12, max_iter: int = 100_000,
) -> np.ndarray:
    """Maximum-likelihood Bradley–Terry strengths (sum 1) by the minorise–maximise iteration.

    A tie is half a win for each side (score 0.5). Players with no wins converge to strength 0, so a model
    that loses every battle gets win rate 0 instead of an overflowing coefficient.
    """
    wins = np.zeros((n_players, n_players))
    np.add.at(wins, (player_a, player_b), weights * score_a)
    np.add.at(wins, (player_b, player_a), weights * (1.0 - score_a))
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    p = np.full(n_players, 1.0 / n_players)
    for _ in range(max_iter):
        denom = (games / (p[:, None] + p[None, :] + 1e-300)).sum(axis=1)
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), p)
        new /= new.sum()
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def win_rate(strength_model: float, strength_base: float) -> float:
    """Predicted probability that the model beats the baseline: p_m / (p_m + p_b)."""
    total = strength_model + strength_base
    return float(strength_model / total) if total > 0 else 0.5


def elo_from_win_rate(rate: float | np.ndarray) -> float | np.ndarray:
    """Elo-scale rating with the baseline at 1000 (clipped so 0 and 1 stay finite)."""
    r = np.clip(rate, 1e-12, 1 - 1e-12)
    return ELO_INIT + ELO_SCALE * np.log10(r / (1 - r))


def win_rate_from_elo(elo: float | np.ndarray, elo_base: float = ELO_INIT) -> float | np.ndarray:
    """The leaderboard's logistic: 1 / (1 + 10^((R_base − R_model)/400))."""
    return 1.0 / (1.0 + 10.0 ** ((elo_base - np.asarray(elo, dtype=float)) / ELO_SCALE))


def bt_win_rate(battles: Battles, row_weights: np.ndarray | None = None) -> float:
    """Bradley–Terry win rate of the model vs the baseline from its battles (0.5 when there are none)."""
    if len(battles) == 0:
        return float("nan")
    w = np.ones(len(battles)) if row_weights is None else np.asarray(row_weights, float)
    strengths = fit_bradley_terry(np.ones(len(battles), dtype=np.int64), np.zeros(len(battles), dtype=np.int64),
                                  battles.scores, w, n_players=2)
    return win_rate(strengths[1], strengths[0])


def resample_counts(rng: np.random.Generator, battles, unit: str) -> np.ndarray:
    """How many times each row is drawn in one bootstrap round (`battles`: any sized rows with `question_ids`)."""
    n = len(battles)
    if unit == "battle":
        return np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
    if unit == "question":
        qids, inverse = np.unique(battles.question_ids.astype(str), return_inverse=True)
        drawn = np.bincount(rng.integers(0, len(qids), len(qids)), minlength=len(qids))
        return drawn[inverse].astype(float)
    raise ValueError(f"bootstrap unit must be 'battle' or 'question', not {unit!r}")


def bootstrap_win_rates(
    battles: Battles, rounds: int = 100, seed: int = 0, row_weights: np.ndarray | None = None,
    unit: str = "battle",
) -> np.ndarray:
    """Win rates of `rounds` BT refits on resampled battles (rows, or whole questions with `unit='question'`)."""
    if len(battles) == 0:
        return np.full(rounds, np.nan)
    rng = np.random.default_rng(seed)
    w = np.ones(len(battles)) if row_weights is None else np.asarray(row_weights, float)
    return np.array([bt_win_rate(battles, w * resample_counts(rng, battles, unit)) for _ in range(rounds)])


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """CI bounds taken as percentiles on the Elo scale, then mapped back to win rates (as the leaderboard)."""
    samples = np.asarray(samples, float)
    samples = samples[~np.isnan(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(elo_from_win_rate(samples), [tail, 100 - tail])
    return float(win_rate_from_elo(lo)), float(win_rate_from_elo(hi))


# ---------------------------------------------------------------- length control
def length_deltas(question_ids: Sequence[str], len_model: Mapping[str, float],
                  len_base: Mapping[str, float]) -> np.ndarray:
    """Δ = baseline length − model length per question id (a missing answer counts as length 0)."""
    return np.array([float(len_base.get(q, 0.0)) - float(len_model.get(q, 0.0)) for q in question_ids])


def ru_length_weights(battles: Battles, len_model: Mapping[str, float], len_base: Mapping[str, float]) -> np.ndarray:
    """ru_llm_arena's length control: rows the model wins get 2·σ(Δ/s); ties and losses keep weight 1.

    Δ is baseline minus model length for that question and s the sample standard deviation (ddof 1) of Δ over
    all questions, so a win with a longer-than-baseline answer counts less than 1.
    """
    questions = sorted(set(len_base) | set(len_model))
    spread = float(np.std(length_deltas(questions, len_model, len_base), ddof=1)) if len(questions) > 1 else 0.0
    weights = np.ones(len(battles))
    if spread <= 0 or len(battles) == 0:
        return weights
    delta = length_deltas(list(battles.question_ids), len_model, len_base)
    wins = battles.scores == 1.0
    weights[wins] = 2.0 / (1.0 + np.exp(-delta[wins] / spread))
    return weights


def fit_length_glm(scores: np.ndarray, weights: np.ndarray, feature: np.ndarray,
                   ridge: float = 1e-6, max_iter: int = 100) -> tuple[float, float]:
    """Weighted logistic fit P(model wins) = σ(θ + φ·x) on soft outcomes by Newton's method.

    A ridge of `ridge`·Σw keeps the fit finite when the outcomes are separable (all wins or all losses).
    """
    x = np.column_stack([np.ones_like(feature), feature])
    beta = np.zeros(2)
    lam = ridge * float(np.sum(weights))
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (weights * (scores - p)) - lam * beta
        hess = (x * (weights * p * (1 - p))[:, None]).T @ x + lam * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-12:
            break
    return float(beta[0]), float(beta[1])


def alpaca_lc_win_rate(battles: Battles, chars_model: Mapping[str, float], chars_base: Mapping[str, float],
                       row_weights: np.ndarray | None = None) -> float:
    """AlpacaEval-style length-controlled win rate: fit σ(θ + φ·tanh(Δ/s)), report σ(θ) (Δ set to 0).

    Δ is baseline minus model length in characters, s its standard deviation over the battles. Unlike AlpacaEval
    2.0 there is no per-instruction difficulty term (it is tied to AlpacaEval's own prompt set) and no
    cross-validated L1 regularisation.
    """
    if len(battles) == 0:
        return float("nan")
    w = np.ones(len(battles)) if row_weights is None else np.asarray(row_weights, float)
    delta = length_deltas(list(battles.question_ids), chars_model, chars_base)
    spread = float(np.std(delta))
    feature = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    theta, _ = fit_length_glm(battles.scores, w, feature)
    return float(1.0 / (1.0 + np.exp(-theta)))


def bootstrap_alpaca_lc(battles: Battles, chars_model: Mapping[str, float], chars_base: Mapping[str, float],
                        rounds: int = 100, seed: int = 0, unit: str = "battle") -> np.ndarray:
    if len(battles) == 0:
        return np.full(rounds, np.nan)
    rng = np.random.default_rng(seed)
    return np.array([alpaca_lc_win_rate(battles, chars_model, chars_base, resample_counts(rng, battles, unit))
                     for _ in range(rounds)])


# ---------------------------------------------------------------- one model, several models
def _metric(value: float, samples: np.ndarray, n_valid: int, n_total: int) -> dict:
    lo, hi = percentile_ci(samples)
    clean = lambda v: None if v is None or np.isnan(v) else round(float(v), 6)  # noqa: E731
    return {"value": clean(value), "ci_low": clean(lo), "ci_high": clean(hi), "n_valid": n_valid,
            "n_total": n_total, "item_key": None}


def score_model(
    games: Sequence[Mapping], len_model: Mapping[str, float], len_base: Mapping[str, float],
    chars_model: Mapping[str, float], chars_base: Mapping[str, float], rounds: int = 100, seed: int = 0,
    strong_weight: int = 3, unit: str = "battle",
) -> dict[str, dict]:
    """All arena metrics of one model vs the baseline (0–1 scale) with CIs and valid/total game counts.

    `len_*` are lengths in the table's token unit (ru_llm_arena's length control), `chars_*` in characters
    (AlpacaEval-style length control).
    """
    battles = battles_from_games(games, strong_weight=strong_weight)
    n_total = len(games)
    n_valid = len({(str(g["question_id"]), int(g["game"])) for g in games
                   if g.get("valid") and model_score(g.get("verdict"), int(g["game"])) is not None})
    lc_w = ru_length_weights(battles, len_model, len_base)
    return {
        "win_rate": _metric(bt_win_rate(battles), bootstrap_win_rates(battles, rounds, seed, unit=unit),
                            n_valid, n_total),
        "win_rate_lc": _metric(bt_win_rate(battles, lc_w),
                               bootstrap_win_rates(battles, rounds, seed, row_weights=lc_w, unit=unit),
                               n_valid, n_total),
        "win_rate_lc_alpaca": _metric(alpaca_lc_win_rate(battles, chars_model, chars_base),
                                      bootstrap_alpaca_lc(battles, chars_model, chars_base, rounds, seed, unit),
                                      n_valid, n_total),
    }


def score_models(games_by_model: Mapping[str, Sequence[Mapping]], rounds: int = 100, seed: int = 0,
                 strong_weight: int = 3) -> dict[str, dict]:
    """Joint Bradley–Terry fit of several models against one baseline, bootstrapped on the pooled battle table.

    Returns per model {value, ci_low, ci_high, elo} with the baseline anchored at Elo 1000; this is the
    leaderboard's procedure (all models in one table, each round resampling the whole table).
    """
    names = sorted(games_by_model)
    per = [battles_from_games(games_by_model[m], strong_weight) for m in names]
    a = np.concatenate([np.full(len(b), i + 1) for i, b in enumerate(per)]).astype(np.int64)
    scores = np.concatenate([b.scores for b in per]) if per else np.array([])
    n = len(scores)

    def fit(weights: np.ndarray) -> np.ndarray:
        s = fit_bradley_terry(a, np.zeros(n, dtype=np.int64), scores, weights, n_players=len(names) + 1)
        return np.array([win_rate(s[i + 1], s[0]) for i in range(len(names))])

    point = fit(np.ones(n))
    rng = np.random.default_rng(seed)
    samples = np.array([fit(np.bincount(rng.integers(0, n, n), minlength=n).astype(float)) for _ in range(rounds)])
    out = {}
    for i, m in enumerate(names):
        lo, hi = percentile_ci(samples[:, i])
        out[m] = {"value": float(point[i]), "ci_low": lo, "ci_high": hi, "elo": float(elo_from_win_rate(point[i]))}
    return out


def position_consistency(games: Iterable[Mapping]) -> dict[str, int]:
    """How often the two seatings of one question agree on the model's result (win / tie / loss).

    A judge with a strong position bias gives opposite results for the two orders; `pairs` counts questions with
    both games valid.
    """
    by_question: dict[str, dict[int, float]] = {}
    for g in games:
        result = model_score(g.get("verdict"), int(g["game"])) if g.get("valid") else None
        if result is not None:
            by_question.setdefault(str(g["question_id"]), {})[int(g["game"])] = result[0]
    pairs = [r for r in by_question.values() if len(r) == 2]
    return {"pairs": len(pairs), "consistent": sum(1 for r in pairs if r[1] == r[2])}


def average_length(lengths: Mapping[str, float]) -> float | None:
    values = [float(v) for v in lengths.values() if v is not None]
    return float(np.mean(values)) if values else None
