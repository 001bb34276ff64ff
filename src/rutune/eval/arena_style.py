"""Style-controlled Bradley–Terry for the arena: markdown counts, battle features, logistic fit, bootstrap.

A judge that likes long or heavily formatted answers inflates the raw win rate of models that write that way.
Style control (arena-hard-auto v2, LMArena) fits the battle outcomes on the model strengths *and* on per-battle
style differences, then reports the win rate predicted at a fixed style. See docs/arena-style.md.

Conventions (arena-hard-auto v2, `show_result.py` / `utils/add_markdown_info.py`; reference eval-additions §2.1):

- per answer: `length` (given by the caller, in the arena's unit: cl100k tokens when tiktoken is available, else
  model tokens or characters) and markdown counts on the text with fenced code blocks removed: headers, list items,
  bold spans (`markdown_counts`);
- per battle (model m vs baseline b): length `(len_m − len_b)/(len_m + len_b)`; for headers, lists, bold the
  density `d = count/(len + 1)` and `(d_m − d_b)/(d_m + d_b + 1)` (`battle_features`);
- each feature column is z-scored over all battle rows (sample std, ddof 1), once, before bootstrapping;
- outcomes are the model's un-swapped results: 1 win, 0.5 tie (a soft target, as arena-hard-auto v2), 0 loss; a
  `>>` verdict is `strong_weight` identical rows;
- the fit is an unpenalised logistic regression without intercept on [model indicator columns ‖ z-features]: the
  baseline's strength is fixed at 0, so θ_m is AH's θ_m − θ_baseline (the same likelihood, identifiable);
- the style-controlled win rate is σ(θ_m) — the prediction at z = 0, i.e. at the *average* style difference of
  all battles (AH's reference point); `reference="equal"` instead predicts at equal style (raw features 0);
- CIs from `rounds` refits on resampled battle rows (AH) or whole questions, seeded.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.special import expit, log_expit

from rutune.eval.arena_scoring import model_score, percentile_ci, resample_counts

FEATURES = ("length", "header", "list", "bold")
FEATURE_GROUPS = {"length": ("length",), "markdown": ("header", "list", "bold")}
COUNT_KEYS = ("length", "header_count", "list_count", "bold_count")
SEPARABLE_COEF = 20.0  # |coefficient| above this: σ saturates (1 − 2e-9), the fit ran into separable data

_FENCED = re.compile(r"```([^`]*)```")
_HEADER = re.compile(r"^#{1,6}\s", re.MULTILINE)  # = Σ_k count(^#{k}\s): one hit per header line of level 1–6
_ORDERED = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_UNORDERED = re.compile(r"^\s*[-*+]\s", re.MULTILINE)
_BOLD_STARS = re.compile(r"\*\*[^*\n]+\*\*")
_BOLD_UNDERSCORES = re.compile(r"__[^_\n]+__")


# ---------------------------------------------------------------- per answer
def strip_fenced_code(text: str) -> str:
    """The text without the contents of ``` fenced blocks, as arena-hard-auto counts markdown.

    AH deletes every occurrence of each block's inner text (the fences themselves stay and never match a counted
    pattern), so a line of code that also appears outside the block is removed there too; reproduced on purpose.
    """
    for inner in _FENCED.findall(text):
        if inner:
            text = text.replace(inner, "")
    return text


def markdown_counts(text: str) -> dict[str, int]:
    """Headers (`# ` … `###### ` at a line start), list items (`1. `, `- `, `* `, `+ `), bold spans (`**x**`,
    `__x__`) outside fenced code blocks — the counts arena-hard-auto v2 stores per answer, summed per feature."""
    body = strip_fenced_code(text)
    return {
        "header_count": len(_HEADER.findall(body)),
        "list_count": len(_ORDERED.findall(body)) + len(_UNORDERED.findall(body)),
        "bold_count": len(_BOLD_STARS.findall(body)) + len(_BOLD_UNDERSCORES.findall(body)),
    }


def style_counts(text: str, length: float) -> dict[str, float]:
    """Raw style counts of one answer: its `length` (caller's unit) and its markdown counts."""
    return {"length": float(length), **markdown_counts(text)}


def style_from_answers(texts: Mapping[str, str], lengths: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """`style_counts` per question id, for the ids that have both a text and a length."""
    return {str(q): style_counts(t, lengths[q]) for q, t in texts.items() if q in lengths and lengths[q] is not None}


def battle_features(model: Mapping[str, float], baseline: Mapping[str, float]) -> np.ndarray:
    """The four normalised style differences of one battle, model minus baseline (before z-scoring).

    length: (len_m − len_b)/(len_m + len_b), 0 when both are empty; markdown x: density d = count/(len + 1), then
    (d_m − d_b)/(d_m + d_b + 1). Order: `FEATURES`.
    """
    lm, lb = float(model["length"]), float(baseline["length"])
    out = np.zeros(len(FEATURES))
    out[0] = (lm - lb) / (lm + lb) if lm + lb > 0 else 0.0
    for j, key in enumerate(COUNT_KEYS[1:], start=1):
        dm, db = float(model[key]) / (lm + 1.0), float(baseline[key]) / (lb + 1.0)
        out[j] = (dm - db) / (dm + db + 1.0)
    return out


def standardise(raw: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, std) of each column over the rows, a row counted `weights` times (sample std, ddof 1).

    A constant column (std 0) becomes all zeros, so its coefficient stays 0 instead of dividing by zero.
    """
    raw = np.asarray(raw, float)
    w = np.ones(len(raw)) if weights is None else np.asarray(weights, float)
    total = w.sum()
    mean = (w[:, None] * raw).sum(axis=0) / total if total > 0 else np.zeros(raw.shape[1])
    var = (w[:, None] * (raw - mean) ** 2).sum(axis=0) / (total - 1) if total > 1 else np.zeros(raw.shape[1])
    std = np.sqrt(var)
    safe = np.where(std > 0, std, 1.0)
    z = np.where(std > 0, (raw - mean) / safe, 0.0)
    return z, mean, std


# ---------------------------------------------------------------- the fit
def logistic_loss(beta: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 0.0) -> float:
    """Σ w·[−y·log σ(xβ) − (1−y)·log σ(−xβ)] + (l2/2)·‖β‖² (soft targets y ∈ [0, 1])."""
    eta = x @ beta
    return float(-(w * (y * log_expit(eta) + (1 - y) * log_expit(-eta))).sum() + 0.5 * l2 * beta @ beta)


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, l2: float = 0.0,
                 start: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Minimise `logistic_loss` (no intercept) by damped Newton steps with backtracking.

    `l2` = 1/C of scikit-learn's `LogisticRegression(fit_intercept=False)`; 0 is unpenalised (arena-hard-auto v2).
    A tiny Levenberg damping on the Hessian only keeps the step solvable when a column is all zero; it does not
    move the optimum. Separable data have no finite optimum: the iteration stops after `max_iter` steps with large
    but finite coefficients (win rates at 0 or 1), as AH's capped L-BFGS does.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    k = x.shape[1]
    beta = np.zeros(k) if start is None else np.array(start, float)
    loss = logistic_loss(beta, x, y, w, l2)
    for _ in range(max_iter):
        p = expit(x @ beta)
        grad = x.T @ (w * (p - y)) + l2 * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + l2 * np.eye(k)
        damp = 1e-12 * max(float(np.trace(hess)) / k, 1e-300)
        step = np.linalg.solve(hess + damp * np.eye(k), grad)
        t = 1.0
        while True:
            candidate = beta - t * step
            new_loss = logistic_loss(candidate, x, y, w, l2)
            if new_loss <= loss + 1e-12 * abs(loss) or t < 1e-8:
                break
            t /= 2
        beta, improvement, loss = candidate, loss - new_loss, new_loss
        if np.max(np.abs(t * step)) < tol or improvement <= 1e-15 * max(abs(loss), 1.0):
            break
    return beta


# ---------------------------------------------------------------- battles
@dataclass(frozen=True)
class StyleBattles:
    """Exploded battle rows of several models against one baseline, with raw style features.

    Row r: model `models[model_index[r]]`, question `question_ids[r]`, game `games[r]`, the model's result
    `scores[r]` (1/0.5/0) and `raw[r]` = `battle_features` (model vs baseline answer of that question). A strong
    verdict is `strong_weight` identical rows. Sorted by (model, question, game).
    """

    models: tuple[str, ...]
    model_index: np.ndarray
    question_ids: np.ndarray
    games: np.ndarray
    scores: np.ndarray
    raw: np.ndarray
    n_valid: dict
    n_total: dict
    n_no_style: dict

    def __len__(self) -> int:
        return len(self.scores)


def build_style_battles(games_by_model: Mapping[str, Sequence[Mapping]],
                        style_by_model: Mapping[str, Mapping[str, Mapping[str, float]]],
                        style_baseline: Mapping[str, Mapping[str, float]], strong_weight: int = 3) -> StyleBattles:
    """Battle rows from rutune judgment records (`question_id`, `game`, `verdict`, `valid`) and style counts.

    The model's result is recomputed from the raw seat verdict and the game (`arena_scoring.model_score`), as the
    other arena scores do; a game that is not valid or has a label outside the five is not a battle. A valid game
    whose question lacks style counts on either side is left out and counted in `n_no_style`.
    """
    models = tuple(sorted(games_by_model))
    rows: list[tuple[int, str, int, float, tuple]] = []
    n_valid, n_total, n_no_style = {}, {}, {}
    for i, m in enumerate(models):
        games = games_by_model[m]
        n_total[m] = len(games)
        seen, missing = set(), 0
        style_m = style_by_model.get(m, {})
        for g in games:
            result = model_score(g.get("verdict"), int(g["game"])) if g.get("valid") else None
            if result is None:
                continue
            qid = str(g["question_id"])
            seen.add((qid, int(g["game"])))
            if qid not in style_m or qid not in style_baseline:
                missing += 1
                continue
            feats = tuple(battle_features(style_m[qid], style_baseline[qid]))
            repeat = strong_weight if result[1] > 1 else 1
            rows.extend([(i, qid, int(g["game"]), result[0], feats)] * repeat)
        n_valid[m], n_no_style[m] = len(seen), missing
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return StyleBattles(
        models=models,
        model_index=np.array([r[0] for r in rows], dtype=np.int64),
        question_ids=np.array([r[1] for r in rows], dtype=object),
        games=np.array([r[2] for r in rows], dtype=np.int64),
        scores=np.array([r[3] for r in rows], dtype=float),
        raw=np.array([r[4] for r in rows], dtype=float).reshape(len(rows), len(FEATURES)),
        n_valid=n_valid, n_total=n_total, n_no_style=n_no_style,
    )


def select_features(control: Sequence[str]) -> tuple[str, ...]:
    """Feature names for AH's `--control-features` groups (`length`, `markdown`) or single feature names."""
    names: list[str] = []
    for c in control:
        if c in FEATURE_GROUPS:
            names += FEATURE_GROUPS[c]
        elif c in FEATURES:
            names.append(c)
        else:
            raise ValueError(f"style control feature {c!r}: use length, markdown, header, list or bold")
    return tuple(f for f in FEATURES if f in names)


def design_matrix(battles: StyleBattles, features: Sequence[str] = FEATURES) -> tuple[np.ndarray, np.ndarray, dict]:
    """(X, y, info): X = [one column per model (1 on its rows) ‖ z-scored style features], y = scores.

    The z-scoring is over all rows of all models (AH: all battles of the category). `info` holds the column
    names, the feature means and stds (raw scale), so a reference point can be mapped into z-space.
    """
    cols = [FEATURES.index(f) for f in features]
    z, mean, std = standardise(battles.raw[:, cols])
    ind = np.zeros((len(battles), len(battles.models)))
    ind[np.arange(len(battles)), battles.model_index] = 1.0
    x = np.hstack([ind, z])
    return x, battles.scores.copy(), {"columns": list(battles.models) + [f"style:{f}" for f in features],
                                      "features": list(features), "mean": mean, "std": std}


def _unique_rows(battles: StyleBattles) -> np.ndarray:
    """Index of each exploded row's distinct (model, question, game) row, for fitting on counts."""
    keys = [(int(m), str(q), int(g)) for m, q, g in zip(battles.model_index, battles.question_ids, battles.games)]
    index: dict = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def _clean(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def style_controlled_scores(
    games_by_model: Mapping[str, Sequence[Mapping]],
    style_by_model: Mapping[str, Mapping[str, Mapping[str, float]]],
    style_baseline: Mapping[str, Mapping[str, float]],
    control: Sequence[str] = ("length", "markdown"), reference: str = "mean", rounds: int = 100, seed: int = 0,
    unit: str = "battle", l2: float = 0.0, strong_weight: int = 3, level: float = 0.95,
) -> dict:
    """Style-controlled win rates vs the baseline for several models fitted jointly, with bootstrap CIs.

    Inputs: per model its rutune judgment records and `style_counts` per question id; the baseline's style counts.
    Returns `{"models": {m: {value, ci_low, ci_high, median, n_valid, n_total, n_no_style}}, "coefficients":
    {feature: {value, median, ci_low, ci_high}}, ...settings}`. `value` is the full-data fit, `median` the
    bootstrap median (what arena-hard-auto prints). `reference`: "mean" (AH: style at z = 0, the average style
    difference over all battles) or "equal" (both answers of the same style, raw features 0).
    """
    if reference not in ("mean", "equal"):
        raise ValueError(f"style reference must be 'mean' or 'equal', not {reference!r}")
    features = select_features(control)
    battles = build_style_battles(games_by_model, style_by_model, style_baseline, strong_weight)
    n_models, k = len(battles.models), len(features)
    out_models = {m: {"value": None, "ci_low": None, "ci_high": None, "median": None,
                      "n_valid": battles.n_valid[m], "n_total": battles.n_total[m],
                      "n_no_style": battles.n_no_style[m], "item_key": None} for m in battles.models}
    settings = {"features": list(features), "reference": reference, "rounds": rounds, "seed": seed, "unit": unit,
                "l2": l2, "strong_weight": strong_weight, "level": level, "n_rows": len(battles),
                "tie": "soft target 0.5", "z_scoring": "once over all rows, ddof 1", "separable": False}
    if len(battles) == 0:
        return {"models": out_models, "coefficients": {f: None for f in features}, **settings}

    x, y, info = design_matrix(battles, features)
    z_ref = np.zeros(k)
    if reference == "equal":
        std = info["std"]
        z_ref = np.where(std > 0, -info["mean"] / np.where(std > 0, std, 1.0), 0.0)
    present = np.bincount(battles.model_index, minlength=n_models) > 0

    unique = _unique_rows(battles)
    first = np.unique(unique, return_index=True)[1]
    xu, yu = x[first], y[first]

    def fit(row_counts: np.ndarray, start: np.ndarray | None) -> np.ndarray:
        w = np.bincount(unique, weights=row_counts, minlength=len(first))
        keep = w > 0
        return fit_logistic(xu[keep], yu[keep], w[keep], l2=l2, start=start)

    def win_rates(beta: np.ndarray) -> np.ndarray:
        return expit(beta[:n_models] + z_ref @ beta[n_models:])

    beta = fit(np.ones(len(battles)), None)
    rng = np.random.default_rng(seed)
    boot, samples = np.zeros((rounds, len(beta))), np.zeros((rounds, n_models))
    for r in range(rounds):
        counts = resample_counts(rng, battles, unit)
        boot[r] = fit(counts, beta)
        drawn = np.bincount(battles.model_index, weights=counts, minlength=n_models) > 0
        samples[r] = np.where(drawn, win_rates(boot[r]), np.nan)  # a model with no row drawn says nothing
    point = win_rates(beta)
    tail = (1 - level) / 2 * 100
    for i, m in enumerate(battles.models):
        if not present[i]:
            continue
        lo, hi = percentile_ci(samples[:, i], level) if rounds else (float("nan"), float("nan"))
        drawn = samples[~np.isnan(samples[:, i]), i]
        out_models[m].update(value=_clean(point[i]), ci_low=_clean(lo), ci_high=_clean(hi),
                             median=_clean(np.median(drawn)) if len(drawn) else None)
    coefficients = {}
    for j, f in enumerate(features):
        col = boot[:, n_models + j] if rounds else np.array([])
        lo, hi = np.percentile(col, [tail, 100 - tail]) if rounds else (np.nan, np.nan)
        coefficients[f] = {"value": _clean(beta[n_models + j]), "median": _clean(np.median(col)) if rounds else None,
                           "ci_low": _clean(lo), "ci_high": _clean(hi), "mean_raw": _clean(info["mean"][j]),
                           "std_raw": _clean(info["std"][j])}
    # a coefficient this large means (nearly) separable outcomes — features that decide every battle, or a model
    # that wins or loses all of them: there is no finite optimum, only a saturated win rate
    settings["separable"] = bool(np.max(np.abs(beta)) > SEPARABLE_COEF)
    return {"models": out_models, "coefficients": coefficients, **settings}


def style_controlled_win_rate(games: Sequence[Mapping], style_model: Mapping[str, Mapping[str, float]],
                              style_baseline: Mapping[str, Mapping[str, float]], **kwargs) -> dict:
    """One model vs the baseline: `style_controlled_scores` with a single model (its column is the intercept).

    Returns the model's entry plus `coefficients` and the settings. With one model the "mean" reference is that
    model's own average style difference, so a model that is *always* longer keeps its length advantage; use
    `reference="equal"` to ask "at equal style", or fit several models jointly.
    """
    out = style_controlled_scores({"model": games}, {"model": style_model}, style_baseline, **kwargs)
    entry = out.pop("models")["model"]
    return {**entry, **out}
