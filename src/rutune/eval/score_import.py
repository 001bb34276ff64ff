"""Score-only import of other tools' result folders: no model, no judge calls, only files already written.

- `read_arena_folder(dir, judge=None)`: an arena-hard-auto / ru_llm_arena benchmark folder
  (`question.jsonl`, `model_answer/<model>.jsonl`, `model_judgment/<judge>/<model>.jsonl`). Every model's
  judgments become rutune's per-game records, then the usual arena scores (`arena_scoring.score_model`: raw and
  length-controlled win rates), the style-controlled win rate (`arena_style`) and the judge-reliability figures
  (`judge_reliability`) are computed, one leaderboard row per model.
- LIBRA's `predictions.json`: `rutune.eval.libra_import.read_libra_predictions` (re-exported here).

Formats: docs/arena-style.md ("Import"). Judgment lines that are not JSON objects with a question id, games that
are missing or carry no valid label, and questions without a judgment line all end up as invalid games counted in
`n_total`; broken question or answer files stop with one line naming the file and line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from rutune.eval import arena_data
from rutune.eval.arena_scoring import LABELS, average_length, model_score, score_model
from rutune.eval.arena_style import style_controlled_scores, style_from_answers
from rutune.eval.errors import EvalError
from rutune.eval.judge_reliability import (DEFAULT_MAX_FIRST_SKEW, DEFAULT_MIN_AGREEMENT,
                                           judge_reliability_by_model, reliability_warnings)

QUESTION_FILE = "question.jsonl"
ANSWER_DIR = "model_answer"
JUDGMENT_DIR = "model_judgment"


# ---------------------------------------------------------------- arena folders
@dataclass
class ArenaFolder:
    """What `load_arena_folder` read: question ids in file order, per-game records per model, answers.

    `answers[m]` maps question id → (text, token_len or None); a model without an answer file is absent.
    `counts[m]` says how many judgment lines were read, unparsable, about unknown questions, or repeated.
    """

    root: Path
    judge: str
    baseline: str
    question_ids: list[str]
    records: dict[str, list[dict]]
    answers: dict[str, dict[str, tuple[str, int | None]]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def _read_jsonl(path: Path, strict: bool) -> tuple[list[tuple[int, dict]], int]:
    """(rows with line numbers, number of bad lines). `strict`: a bad line is an EvalError naming file:line."""
    rows, bad = [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if strict:
                    why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                    raise EvalError(f"{path}:{lineno}: not JSON ({why})") from None
                bad += 1
                continue
            if not isinstance(row, dict):
                if strict:
                    raise EvalError(f"{path}:{lineno}: expected a JSON object per line")
                bad += 1
                continue
            rows.append((lineno, row))
    return rows, bad


def _question_id(row: dict) -> str | None:
    """arena-hard-auto v0.1 / ru_llm_arena use `question_id` (often an int), v2.0 uses `uid`."""
    qid = row.get("question_id", row.get("uid"))
    return None if qid is None else str(qid)


def _answer(row: dict, where: str) -> tuple[str, tuple[str, int | None]]:
    """(question id, (text, token_len)) from a v0.1 answer row (`choices[0].turns[0]`) or a v2.0 one
    (`messages[-1].content[.answer]`, `metadata.token_len`)."""
    if "choices" in row:
        a = arena_data.answer_from_row(row, where)
        return a.question_id, (a.content, a.token_len)
    qid = _question_id(row)
    messages = row.get("messages")
    if qid is None or not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise EvalError(f"{where}: expected an answer row with `question_id` and `choices[0].turns[0].content` "
                        "(arena-hard v0.1) or `uid` and `messages` (v2.0)")
    content = messages[-1].get("content")
    if isinstance(content, dict):
        content = content.get("answer")
    if not isinstance(content, str):
        raise EvalError(f"{where}: the last message has no text answer")
    token_len = (row.get("metadata") or {}).get("token_len") if isinstance(row.get("metadata"), dict) else None
    return qid, (content, int(token_len) if token_len is not None else None)


def _load_answers(path: Path) -> dict[str, tuple[str, int | None]]:
    rows, _ = _read_jsonl(path, strict=True)
    out = {}
    for lineno, row in rows:
        try:
            qid, answer = _answer(row, f"{path}:{lineno}")
        except (TypeError, ValueError) as e:
            if isinstance(e, EvalError):
                raise
            raise EvalError(f"{path}:{lineno}: `token_len` must be a number") from None
        out[qid] = answer
    return out


def _record(qid: str, game: int, label, status: str, reason: str) -> dict:
    result = model_score(label, game) if status == "ok" else None
    return {"id": f"{qid}-g{game}", "question_id": qid, "game": game, "status": status, "valid": status == "ok",
            "verdict": label if isinstance(label, str) else None, "reason": reason,
            "model_score": result[0] if result else None, "strong": bool(result and result[1] > 1)}


def judgment_records(path: Path, question_ids: Sequence[str]) -> tuple[list[dict], dict[str, int]]:
    """rutune per-game records (game 1 = baseline in seat A) for every question, from one judgment file.

    A line is `{question_id|uid, model, judge, games: [game1, game2]}` with each game's label in `score`. A line
    that is not a JSON object with a question id counts as unparsable; its question then has no judgment and both
    its games are `error` records. A later line for the same question replaces an earlier one (as arena-hard-auto's
    loader does). Labels outside the five are `invalid` (ru_llm_arena's scorer drops them too).
    """
    rows, bad = _read_jsonl(path, strict=False)
    known = set(question_ids)
    by_q: dict[str, object] = {}
    counts = {"lines": len(rows) + bad, "unparsable_lines": bad, "unknown_questions": 0, "repeated": 0}
    for _, row in rows:
        qid = _question_id(row)
        if qid is None:
            counts["unparsable_lines"] += 1
            continue
        if qid not in known:
            counts["unknown_questions"] += 1
            continue
        counts["repeated"] += qid in by_q
        by_q[qid] = row.get("games")
    records = []
    for qid in question_ids:
        games = by_q.get(qid)
        for game in (1, 2):
            if qid not in by_q:
                records.append(_record(qid, game, None, "error", "no judgment line"))
                continue
            g = games[game - 1] if isinstance(games, list) and len(games) >= game else None
            if not isinstance(g, dict):
                records.append(_record(qid, game, None, "error", "game missing"))
                continue
            label = g.get("score")
            if label in LABELS:
                records.append(_record(qid, game, label, "ok", ""))
            else:
                why = "no verdict label" if label is None else f"label {label!r} is not one of the five"
                records.append(_record(qid, game, label, "invalid", why))
    return records, counts


def load_arena_folder(root: str | os.PathLike, judge: str | None = None, baseline: str | None = None) -> ArenaFolder:
    """Read an arena-hard-auto / ru_llm_arena benchmark folder (e.g. `data/arena-hard-v0.1`).

    `judge`: the subfolder of `model_judgment/` (required when there are several). `baseline`: the baseline
    model's name; by default the judgment rows' `baseline` field (v2.0), else ru_llm_arena's gpt-3.5-turbo-0125
    when its answer file exists. The baseline's own judgment file, if any, is skipped.
    """
    root = Path(root).expanduser()
    qfile, jroot = root / QUESTION_FILE, root / JUDGMENT_DIR
    if not qfile.is_file():
        raise EvalError(f"arena folder {root}: no {QUESTION_FILE} (expected question.jsonl, model_answer/, "
                        "model_judgment/<judge>/ as arena-hard-auto writes them)")
    if not jroot.is_dir():
        raise EvalError(f"arena folder {root}: no {JUDGMENT_DIR}/ folder")
    judges = sorted(p.name for p in jroot.iterdir() if p.is_dir())
    if judge is None:
        if len(judges) != 1:
            raise EvalError(f"arena folder {root}: {JUDGMENT_DIR}/ holds {len(judges)} judges "
                            f"({', '.join(judges) or 'none'}); pass judge=NAME")
        judge = judges[0]
    jdir = jroot / judge
    if not jdir.is_dir():
        raise EvalError(f"arena folder {root}: no {JUDGMENT_DIR}/{judge}/ (judges: {', '.join(judges) or 'none'})")

    qrows, _ = _read_jsonl(qfile, strict=True)
    question_ids = []
    for lineno, row in qrows:
        qid = _question_id(row)
        if qid is None:
            raise EvalError(f"{qfile}:{lineno}: missing `question_id` (or `uid`)")
        if qid in question_ids:
            raise EvalError(f"{qfile}:{lineno}: question_id {qid} appears twice")
        question_ids.append(qid)
    if not question_ids:
        raise EvalError(f"{qfile}: no questions")

    files = sorted(jdir.glob("*.jsonl"))
    if not files:
        raise EvalError(f"arena folder {root}: {JUDGMENT_DIR}/{judge}/ has no <model>.jsonl files")
    if baseline is None:
        baseline = _baseline_from_rows(files) or (
            arena_data.BASELINE_MODEL if (root / ANSWER_DIR / f"{arena_data.BASELINE_MODEL}.jsonl").is_file() else None)
        if baseline is None:
            raise EvalError(f"arena folder {root}: cannot tell the baseline model; pass baseline=NAME")
    bfile = root / ANSWER_DIR / f"{baseline}.jsonl"
    answers = {baseline: _load_answers(bfile)} if bfile.is_file() else {}

    records, counts = {}, {}
    for f in files:
        model = f.stem
        if model == baseline:
            continue
        records[model], counts[model] = judgment_records(f, question_ids)
        afile = root / ANSWER_DIR / f"{model}.jsonl"
        if afile.is_file():
            answers[model] = _load_answers(afile)
    return ArenaFolder(root, judge, baseline, question_ids, records, answers, counts)


def _baseline_from_rows(files: Sequence[Path]) -> str | None:
    """The `baseline` field of the first readable judgment line (arena-hard-auto v2.0 writes it), if any."""
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    return row["baseline"] if isinstance(row.get("baseline"), str) else None
    return None


def _unavailable(reason: str, n_total: int) -> dict:
    return {"value": None, "ci_low": None, "ci_high": None, "n_valid": 0, "n_total": n_total, "item_key": None,
            "available": False, "reason": reason}


def score_arena_folder(folder: ArenaFolder, rounds: int = 100, seed: int = 0, strong_weight: int = 3,
                       unit: str = "battle", control: Sequence[str] = ("length", "markdown"),
                       reference: str = "mean", l2: float = 0.0,
                       min_agreement: float = DEFAULT_MIN_AGREEMENT,
                       max_first_skew: float = DEFAULT_MAX_FIRST_SKEW) -> dict:
    """Per-model arena results from what `load_arena_folder` read (pure: no file access).

    Per model: `metrics` = `score_model`'s `win_rate`, `win_rate_lc`, `win_rate_lc_alpaca` plus
    `win_rate_style` (joint style-controlled fit of all models with answers), `avg_length`, `reliability` and the
    judgment-file `counts`; at the top: the style coefficients, the pooled reliability, warnings and a leaderboard
    sorted by win rate. Lengths are the answer files' `token_len` when every answer (all models and the baseline)
    has one, else characters; without the baseline's answers, or a model's, the length-based scores are marked
    unavailable.
    """
    base = folder.answers.get(folder.baseline)
    with_answers = [m for m in sorted(folder.records) if m in folder.answers and base is not None]
    everyone = [folder.answers[m] for m in with_answers] + ([base] if base else [])
    use_tokens = bool(everyone) and all(tl is not None for a in everyone for _, tl in a.values())
    unit_name = "token_len" if use_tokens else "chars"

    def lengths(answers: Mapping[str, tuple[str, int | None]], tokens: bool) -> dict[str, float]:
        return {q: float(tl if tokens else len(t)) for q, (t, tl) in answers.items()}

    len_base = lengths(base, use_tokens) if base else None
    chars_base = lengths(base, False) if base else None
    style_base = style_from_answers({q: t for q, (t, _) in base.items()}, len_base) if base else {}
    style_by_model = {m: style_from_answers({q: t for q, (t, _) in folder.answers[m].items()},
                                            lengths(folder.answers[m], use_tokens)) for m in with_answers}
    style = style_controlled_scores({m: folder.records[m] for m in with_answers}, style_by_model, style_base,
                                    control=control, reference=reference, rounds=rounds, seed=seed, unit=unit,
                                    l2=l2, strong_weight=strong_weight) if with_answers else None
    len_by_model = {m: lengths(folder.answers[m], use_tokens) for m in with_answers}
    reliability = judge_reliability_by_model(folder.records, len_by_model, len_base, rounds=rounds, seed=seed)

    models, warnings = {}, []
    for m in sorted(folder.records):
        games = folder.records[m]
        n_total = len(games)
        if m in with_answers:
            metrics = score_model(games, len_by_model[m], len_base, lengths(folder.answers[m], False), chars_base,
                                  rounds=rounds, seed=seed, strong_weight=strong_weight, unit=unit)
            metrics["win_rate_style"] = {**style["models"][m], "features": style["features"],
                                         "reference": reference}
            avg = average_length(len_by_model[m])
        else:
            reason = (f"no {ANSWER_DIR}/{folder.baseline}.jsonl (baseline answers)" if base is None
                      else f"no {ANSWER_DIR}/{m}.jsonl")
            metrics = score_model(games, {}, {}, {}, {}, rounds=rounds, seed=seed, strong_weight=strong_weight,
                                  unit=unit)
            for name in ("win_rate_lc", "win_rate_lc_alpaca", "win_rate_style"):
                metrics[name] = _unavailable(reason, n_total)
            avg = None
        metrics["win_rate_lc"]["length_unit"] = unit_name
        metrics["win_rate_lc_alpaca"]["length_unit"] = "chars"
        rel = reliability["models"][m]
        warn = reliability_warnings(rel, min_agreement, max_first_skew)
        warnings += [f"{m}: {line}" for line in warn]
        models[m] = {"metrics": metrics, "avg_length": avg, "length_unit": unit_name, "reliability": rel,
                     "counts": folder.counts.get(m, {}), "warnings": warn}
    warnings = [f"all models: {line}" for line in
                reliability_warnings(reliability["overall"], min_agreement, max_first_skew)] + warnings
    board = sorted(({"model": m, "win_rate": r["metrics"]["win_rate"]["value"],
                     "ci_low": r["metrics"]["win_rate"]["ci_low"], "ci_high": r["metrics"]["win_rate"]["ci_high"],
                     "win_rate_lc": r["metrics"]["win_rate_lc"]["value"],
                     "win_rate_style": r["metrics"]["win_rate_style"]["value"],
                     "swap_agreement": r["reliability"]["swap_agreement"]["value"],
                     "n_valid": r["metrics"]["win_rate"]["n_valid"], "n_total": r["metrics"]["win_rate"]["n_total"],
                     "avg_length": r["avg_length"]} for m, r in models.items()),
                   key=lambda row: (row["win_rate"] is None, -(row["win_rate"] or 0.0), row["model"]))
    return {
        "source": str(folder.root), "judge": folder.judge, "baseline": folder.baseline,
        "n_questions": len(folder.question_ids), "length_unit": unit_name,
        "models": models, "leaderboard": board,
        "style": {k: v for k, v in style.items() if k != "models"} if style else None,
        "reliability": reliability["overall"], "warnings": warnings,
        "settings": {"rounds": rounds, "seed": seed, "strong_weight": strong_weight, "bootstrap_unit": unit,
                     "scale": "0-1 (win rate vs the baseline; the baseline itself is 0.5)"},
    }


def read_arena_folder(root: str | os.PathLike, judge: str | None = None, baseline: str | None = None,
                      **score_kwargs) -> dict:
    """`score_arena_folder(load_arena_folder(root, judge, baseline), **score_kwargs)`."""
    return score_arena_folder(load_arena_folder(root, judge, baseline), **score_kwargs)


from rutune.eval.libra_import import read_libra_predictions  # noqa: E402 - the other score-only import

__all__ = ["ArenaFolder", "judgment_records", "load_arena_folder", "read_arena_folder", "read_libra_predictions",
           "score_arena_folder"]
