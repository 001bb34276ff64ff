"""RU Arena stage: answers for the model → pairwise judgments in both seat orders → scores → result files.

Output folder (`<run>/eval/arena/<model>/`, see docs/results-format.md and docs/arena.md):

- `answers.jsonl` — the model's answers in the ru_llm_arena answer format, appended per batch (resumable);
- `judgments.jsonl` — the judge cache: one record per finished game (see `rutune.eval.judge_client`);
- `items.jsonl` — one row per game (`id` = `<question_id>-g<game>`), written at the end;
- `lengths.jsonl` — per answered question of this run: characters, cl100k tokens, model tokens;
- `results.json` — win rate vs the baseline on a 0–1 scale with its 95% CI, both length-controlled variants,
  average answer length with its unit, the judge's identity (never its key), the prompt hash and every count.

The maths lives in `rutune.eval.arena_scoring`, the judge in `rutune.eval.judge` / `judge_client`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from rutune.eval.backend_base import BackendConfig
from rutune.eval import arena_data
from rutune.eval.arena_data import Answer, Question
from rutune.eval.arena_scoring import average_length, position_consistency, score_model
from rutune.eval.arena_style import style_controlled_win_rate, style_from_answers
from rutune.eval.judge_reliability import judge_reliability, reliability_warnings
from rutune.eval.errors import EvalError
from rutune.items import append_rows, read_items, truncate_torn_tail
from rutune.eval.judge import NO_JUDGE_FIX, JudgeProfile, profile_prompt, resolve_judge
from rutune.eval.judge_client import CACHE_FILE, count_statuses, judge_games, make_games
from rutune.rundir import stable_hash, write_json_atomic, write_text_atomic

ANSWERS_FILE = "answers.jsonl"
LENGTHS_FILE = "lengths.jsonl"


def _progress(total: int, description: str, enabled: bool):
    """A rich progress bar on stderr (a no-op context when disabled)."""
    import contextlib

    if not enabled or total == 0:
        return contextlib.nullcontext(lambda n=1: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as p:
            task = p.add_task(description, total=total)
            yield lambda n=1: p.advance(task, n)

    return bar()


def generation_fingerprint(model_path: str, cfg, backend_cfg: BackendConfig) -> str:
    """Identity of how answers were produced; answers with another fingerprint are regenerated."""
    return stable_hash({"model": str(model_path), "max_new_tokens": cfg.max_new_tokens,
                        "system_prompt": cfg.system_prompt, "chat_template": backend_cfg.apply_chat_template})


def generate_answers(questions: list[Question], generate: Callable, out_path: Path, model_id: str,
                     fingerprint: str, max_new_tokens: int, system_prompt: str | None = None, batch_size: int = 8,
                     progress: bool = False) -> dict[str, Answer]:
    """Answers for `questions` (greedy), appended to `out_path` per batch; finished ones are reused.

    `generate(requests) -> results` is a backend's `generate`. Lengths are recorded in the model's tokens and,
    when tiktoken's cl100k encoding is available, in cl100k tokens (`token_len`, the leaderboard's unit).
    """
    from rutune.eval.backends import GenerationRequest

    truncate_torn_tail(out_path)
    done = {str(r["question_id"]): arena_data.answer_from_row(r, str(out_path))
            for r in read_items(out_path) if r.get("fingerprint") == fingerprint}
    todo = [q for q in questions if q.question_id not in done]
    with _progress(len(todo), f"answers ({model_id})", progress) as advance:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            requests = [GenerationRequest(
                messages=tuple(([{"role": "system", "content": system_prompt}] if system_prompt else [])
                               + [{"role": "user", "content": q.text}]),
                max_new_tokens=max_new_tokens, temperature=0.0) for q in batch]
            results = generate(requests)
            rows = []
            for q, res in zip(batch, results):
                cl = arena_data.count_cl100k(res.text)
                answer = Answer(q.question_id, res.text, token_len=cl if cl is not None else res.n_tokens,
                                token_len_unit="cl100k" if cl is not None else "model", model_token_len=res.n_tokens,
                                model_id=model_id)
                done[q.question_id] = answer
                rows.append(arena_data.answer_row(answer, f"{model_id}-{q.question_id}", time.time(),
                                                  fingerprint=fingerprint, finish_reason=res.finish_reason))
            out_path.parent.mkdir(parents=True, exist_ok=True)
            append_rows(out_path, rows)
            advance(len(batch))
    return {q.question_id: done[q.question_id] for q in questions}


def _lengths(answers: dict[str, Answer], unit: str) -> dict[str, float]:
    if unit == "chars":
        return {q: float(len(a.content)) for q, a in answers.items()}
    return {q: float(a.token_len) for q, a in answers.items() if a.token_len is not None}


def length_unit(model: dict[str, Answer], baseline: dict[str, Answer]) -> str:
    """cl100k tokens when every answer on both sides has them (the leaderboard's unit), else characters."""
    both = list(model.values()) + list(baseline.values())
    return "cl100k" if both and all(a.token_len is not None and a.token_len_unit == "cl100k" for a in both) else "chars"


def _unavailable(reason: str, n_total: int) -> dict:
    return {"value": None, "ci_low": None, "ci_high": None, "n_valid": 0, "n_total": n_total, "item_key": None,
            "available": False, "note": "no judge configured", "reason": reason}


def score_answers(questions: list[Question], model: dict[str, Answer], baseline: dict[str, Answer],
                  records: list[dict] | None, cfg, seed: int,
                  no_judge_reason: str = NO_JUDGE_FIX) -> tuple[dict, dict]:
    """(`metrics`, judge part of `extra`) of results.json from answers and (optionally) judge records.

    The extra part: the style fit's coefficients and settings (`style`), the judge-reliability report
    (`reliability`) with its thresholds, and `warnings` (lines the report prints under its table)."""
    unit = length_unit(model, baseline)
    n_total = 2 * len(questions)
    model_tokens = {q: a.model_token_len for q, a in model.items() if a.model_token_len is not None}
    cl = {q: a.token_len for q, a in model.items() if a.token_len_unit == "cl100k" and a.token_len is not None}
    metrics = {
        "avg_tokens": {"value": average_length(cl or model_tokens), "unit": "cl100k" if cl else "model_tokens",
                       "n_valid": len(cl or model_tokens), "n_total": len(questions), "item_key": None},
        "avg_model_tokens": {"value": average_length(model_tokens), "unit": "model_tokens",
                             "n_valid": len(model_tokens), "n_total": len(questions), "item_key": None},
        "avg_chars": {"value": average_length(_lengths(model, "chars")), "unit": "chars",
                      "n_valid": len(model), "n_total": len(questions), "item_key": None},
    }
    if records is None:
        for name in ("win_rate", "win_rate_lc", "win_rate_lc_alpaca", "win_rate_style", "swap_agreement"):
            metrics[name] = _unavailable(no_judge_reason, n_total)
        return metrics, {}
    metrics.update(score_model(records, _lengths(model, unit), _lengths(baseline, unit), _lengths(model, "chars"),
                               _lengths(baseline, "chars"), rounds=cfg.bootstrap_rounds, seed=seed,
                               strong_weight=cfg.strong_weight, unit=cfg.bootstrap_unit))
    metrics["win_rate_lc"]["length_unit"] = unit
    metrics["win_rate_lc_alpaca"]["length_unit"] = "chars"
    style = style_score(records, model, baseline, unit, cfg, seed)
    metrics["win_rate_style"] = {k: style[k] for k in ("value", "ci_low", "ci_high", "n_valid", "n_total",
                                                       "item_key", "median", "n_no_style", "reference")}
    metrics["win_rate_style"]["length_unit"] = unit
    rel = reliability(records, model, baseline, unit, cfg, seed)
    metrics["swap_agreement"] = rel["metric"]
    extra = {"style": {k: v for k, v in style.items() if k not in metrics["win_rate_style"] or k == "reference"},
             "reliability": rel["report"], "reliability_thresholds": rel["thresholds"],
             "warnings": rel["warnings"]}  # each line names the judge; the report adds the row and suite
    return metrics, extra


def style_score(records: list[dict], model: dict[str, Answer], baseline: dict[str, Answer], unit: str, cfg,
                seed: int) -> dict:
    """Style-controlled win rate of one model vs the baseline (`arena_style.style_controlled_win_rate`).

    Style counts come from the answer texts both sides already have, lengths in the arena's `unit` (cl100k tokens
    when every answer has them, else characters). With a single model the "mean" reference is that model's own
    average style difference, which keeps most of a length advantage; the suite's default "equal" asks how the
    model fares when both answers have the same style (docs/arena-style.md).
    """
    style_model = style_from_answers({q: a.content for q, a in model.items()}, _lengths(model, unit))
    style_base = style_from_answers({q: a.content for q, a in baseline.items()}, _lengths(baseline, unit))
    return style_controlled_win_rate(records, style_model, style_base, control=tuple(cfg.style_control),
                                     reference=cfg.style_reference, rounds=cfg.bootstrap_rounds, seed=seed,
                                     unit=cfg.bootstrap_unit, strong_weight=cfg.strong_weight)


def reliability(records: list[dict], model: dict[str, Answer], baseline: dict[str, Answer], unit: str, cfg,
                seed: int) -> dict:
    """Judge-reliability figures on this model's games (`judge_reliability`), its warnings and thresholds.

    Returns `{"report", "metric", "warnings", "thresholds"}`; `metric` is swap agreement as a results.json metric
    (value with its bootstrap CI over questions; n_valid = question pairs with both games valid).
    """
    report = judge_reliability(records, _lengths(model, unit), _lengths(baseline, unit),
                               rounds=cfg.bootstrap_rounds, seed=seed)
    report["length"]["unit"] = unit
    sa = report["swap_agreement"]
    metric = {"value": sa["value"], "ci_low": sa["ci_low"], "ci_high": sa["ci_high"], "n_valid": sa["n"],
              "n_total": len({r["question_id"] for r in records}), "item_key": None}
    warnings = reliability_warnings(report, cfg.min_swap_agreement, cfg.max_first_position_skew)
    return {"report": report, "metric": metric, "warnings": warnings,
            "thresholds": {"min_swap_agreement": cfg.min_swap_agreement,
                           "max_first_position_skew": cfg.max_first_position_skew}}


def _item_rows(records: list[dict], model: dict[str, Answer]) -> list[dict]:
    keep = ("id", "question_id", "game", "status", "valid", "verdict", "reason", "model_score", "strong",
            "injection_flagged", "calls", "followups")
    rows = []
    for r in records:
        row = {k: r.get(k) for k in keep}
        a = model.get(str(r["question_id"]))
        row["model_chars"] = len(a.content) if a else None
        row["model_token_len"] = a.model_token_len if a else None
        rows.append(row)
    return rows


def run_arena(cfg, backend_cfg: BackendConfig | None, model_path: str | None, model_label: str,
              out_dir: str | Path, seed: int = 0, judge: JudgeProfile | None = None, progress: bool = True,
              backend=None) -> dict:
    """Answers (generated, or `cfg.answers`), judgments, scores; writes the result files and returns results.json.

    With no judge configured the answers and average lengths are still written and the judge metrics are marked
    `available: false` with the one-line fix.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend_cfg = backend_cfg or BackendConfig()
    questions = arena_data.load_questions(cfg.questions, cfg.revision, cfg.limit)
    baseline_path = cfg.baseline or arena_data.default_baseline()  # a str stays a str: a URL is not a Path
    baseline = arena_data.load_answers(baseline_path)
    missing = [q.question_id for q in questions if q.question_id not in baseline]
    if missing:
        raise EvalError(f"arena baseline {baseline_path}: no answer for {len(missing)} of {len(questions)} questions "
                        f"(first: question_id {missing[0]})")
    baseline = {q.question_id: baseline[q.question_id] for q in questions}

    profile = judge if judge is not None else resolve_judge(cfg.judge)  # a bad profile fails before generation
    prompt = profile_prompt(profile) if profile is not None else None
    if profile is not None:
        profile.api_key()  # a missing key also fails now, not after hours of generation (the value is not kept)

    if cfg.answers:
        given = arena_data.load_answers(cfg.answers)
        model = {q.question_id: given[q.question_id] for q in questions if q.question_id in given}
    else:
        if model_path is None and backend is None:
            raise EvalError("arena: give a model path or `answers:` (an existing answer file)")
        loaded = [backend]

        def generate(requests):  # the model is loaded only if some answers are missing
            if loaded[0] is None:
                from rutune.eval.backends import make_backend

                loaded[0] = make_backend(backend_cfg, str(model_path))
            return loaded[0].generate(requests)

        model = generate_answers(questions, generate, out_dir / ANSWERS_FILE, model_label,
                                 generation_fingerprint(str(model_path), cfg, backend_cfg), cfg.max_new_tokens,
                                 cfg.system_prompt, backend_cfg.batch_size, progress)

    records = None
    if profile is not None:
        games = make_games({q.question_id: q.text for q in questions}, {k: a.content for k, a in model.items()},
                           {k: a.content for k, a in baseline.items()})
        with _progress(len(games), f"judging ({profile.model})", progress) as advance:
            records = judge_games(games, profile, prompt, out_dir / CACHE_FILE, on_done=lambda r: advance(1))
        # a question without a model answer still counts: both its games are explicit errors
        answered = {r["question_id"] for r in records}
        records += [{"id": f"{q.question_id}-g{g}", "question_id": q.question_id, "game": g, "status": "error",
                     "valid": False, "verdict": None, "reason": "no model answer", "model_score": None}
                    for q in questions if q.question_id not in answered for g in (1, 2)]
        order = {q.question_id: i for i, q in enumerate(questions)}
        records.sort(key=lambda r: (order[r["question_id"]], r["game"]))
        write_text_atomic(out_dir / "items.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in _item_rows(records, model)))

    metrics, judged = score_answers(questions, model, baseline, records, cfg, seed)
    write_text_atomic(out_dir / LENGTHS_FILE, "".join(json.dumps(
        {"id": q.question_id, "chars": len(a.content), "cl100k": a.token_len if a.token_len_unit == "cl100k" else None,
         "model_tokens": a.model_token_len}) + "\n" for q in questions if (a := model.get(q.question_id))))
    unit = length_unit(model, baseline)
    counts = {"questions": len(questions), "answers": len(model), "games": 2 * len(questions)}
    if records is not None:
        counts.update(count_statuses(records))
        counts["injection_flagged"] = sum(1 for r in records if r.get("injection_flagged"))
        counts["judge_calls"] = sum(int(r.get("calls") or 0) for r in records)
        counts["position"] = position_consistency(records)
    results = {
        "suite": "arena",
        "model": model_label,
        "model_path": str(model_path) if model_path is not None else None,
        "metrics": metrics,
        "extra": {
            "scale": "0-1 (win rate vs the baseline; the baseline itself is 0.5)",
            "baseline": {"path": str(baseline_path), "model": next(iter(baseline.values())).model_id},
            "questions": {"source": str(cfg.questions or arena_data.default_questions()), "n": len(questions)},
            "judge": profile.identity() if profile else None,
            "judge_configured": profile is not None,
            "prompt_hash": prompt.hash if prompt else None,
            "prompt_source": prompt.source if prompt else None,
            "length_unit": unit,
            "bootstrap": {"rounds": cfg.bootstrap_rounds, "unit": cfg.bootstrap_unit, "seed": seed,
                          "level": 0.95},
            "strong_weight": cfg.strong_weight,
            "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": 0.0,
                           "system_prompt": cfg.system_prompt, "backend": backend_cfg.kind,
                           "answers_file": str(cfg.answers) if cfg.answers else str(out_dir / ANSWERS_FILE)},
            "counts": counts,
            **judged,
        },
    }
    write_json_atomic(out_dir / "results.json", results)
    return results


def summary_line(results: dict) -> str:
    """One line for the terminal: win rate with CI and counts, or why it is missing; average length with unit."""
    m = results["metrics"]
    wr, length = m["win_rate"], m["avg_tokens"]
    unit = {"cl100k": "cl100k tokens", "model_tokens": "model tokens"}.get(length["unit"], length["unit"])
    size = f"avg length {length['value']:.1f} {unit}" if length["value"] is not None else "no answers"
    if wr.get("available") is False:
        return f"{results['model']}: answers written, {size}; win rate not available — {wr['reason']}"
    if wr["value"] is None:
        return f"{results['model']}: no valid judgments ({wr['n_valid']}/{wr['n_total']}), {size}"
    lc = m["win_rate_lc"]["value"]
    sc = (m.get("win_rate_style") or {}).get("value")
    line = (f"{results['model']}: win rate vs baseline {wr['value']:.3f} (95% CI {wr['ci_low']:.3f}–"
            f"{wr['ci_high']:.3f}; {wr['n_valid']}/{wr['n_total']} valid games), length-controlled "
            f"{lc:.3f}" + (f", style-controlled {sc:.3f}" if sc is not None else "") + f", {size}")
    return "\n".join([line] + [f"warning: {w}" for w in results["extra"].get("warnings", [])])
