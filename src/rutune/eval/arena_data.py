"""RU Arena files in the ru_llm_arena formats: questions, answers, where the real copies live, answer lengths.

Question row: `{"question_id", "cluster", "turns": [{"content"}], "category"}` (local jsonl, or the hub copy
`Vikhrmodels/ru-arena-general` at a pinned revision). Answer row: `{"question_id", "answer_id", "model_id",
"choices": [{"index": 0, "turns": [{"content", "token_len"}]}], "tstamp"}`; the leaderboard's `token_len` is
tiktoken cl100k (gpt-3.5-turbo's encoding). rutune's own answer rows add `model_token_len` and `token_len_unit`.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rutune.data.sources import is_local_path
from rutune.eval.errors import EvalError
from rutune.eval.upstream import is_url, local

HUB_QUESTIONS = "Vikhrmodels/ru-arena-general"
HUB_REVISION = "256a4398c5c22d28306720d1cddc24667ce6c9e4"
BASELINE_MODEL = "gpt-3.5-turbo-0125"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str
    cluster: int | None = None
    category: str | None = None


@dataclass(frozen=True)
class Answer:
    question_id: str
    content: str
    token_len: int | None = None  # in `token_len_unit`
    token_len_unit: str = "cl100k"
    model_token_len: int | None = None
    model_id: str | None = None


def default_questions() -> Path:
    """The bundled placeholder questions: a stand-in, not the leaderboard's 500 (results say so)."""
    return SAMPLES / "arena_questions.jsonl"


def default_baseline() -> Path:
    """The bundled placeholder baseline answers (to the bundled placeholder questions)."""
    return SAMPLES / "arena_baseline.jsonl"


def _jsonl_rows(path: Path, what: str) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise EvalError(f"arena {what} file {path}: not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise EvalError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append((lineno, row))
    return rows


def question_from_row(row: dict, where: str) -> Question:
    if "question_id" not in row:
        raise EvalError(f"{where}: missing `question_id`")
    turns = row.get("turns")
    if not (isinstance(turns, list) and turns and isinstance(turns[0], dict)
            and isinstance(turns[0].get("content"), str)):
        raise EvalError(f"{where}: `turns` must be a list whose first item has text `content`")
    cluster = row.get("cluster")
    return Question(str(row["question_id"]), turns[0]["content"], int(cluster) if cluster is not None else None,
                    row.get("category"))


def load_questions(ref: str | os.PathLike | None = None, revision: str | None = None,
                   limit: int | None = None) -> list[Question]:
    """Questions from a local jsonl (default: the bundled placeholders), a pinned URL, or a hub dataset id."""
    ref = str(ref) if ref is not None else str(default_questions())
    if is_url(ref):
        ref = str(local(ref))
    if not is_local_path(ref):
        import datasets

        try:
            ds = datasets.load_dataset(ref, revision=revision or (HUB_REVISION if ref == HUB_QUESTIONS else None),
                                       split="train")
        except Exception as e:  # noqa: BLE001 - the hub or cache failing is bad input here, not a bug
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EvalError(f"arena questions {ref}: cannot load from the hub ({first[:200]}); pass a local "
                            "question.jsonl instead") from None
        questions = [question_from_row(dict(row), f"{ref}[{i}]") for i, row in enumerate(ds)]
    else:
        path = Path(ref).expanduser()
        questions = [question_from_row(row, f"{path}:{n}") for n, row in _jsonl_rows(path, "questions")]
    seen: set[str] = set()
    for q in questions:
        if q.question_id in seen:
            raise EvalError(f"arena questions {ref}: question_id {q.question_id} appears twice")
        seen.add(q.question_id)
    if not questions:
        raise EvalError(f"arena questions {ref}: no questions")
    return questions[:limit] if limit else questions


def answer_from_row(row: dict, where: str) -> Answer:
    if "question_id" not in row:
        raise EvalError(f"{where}: missing `question_id`")
    try:
        turn = row["choices"][0]["turns"][0]
        content = turn["content"]
    except (KeyError, IndexError, TypeError):
        raise EvalError(f"{where}: expected `choices[0].turns[0].content`") from None
    if not isinstance(content, str):
        raise EvalError(f"{where}: `choices[0].turns[0].content` must be text")
    token_len = turn.get("token_len")
    return Answer(str(row["question_id"]), content, int(token_len) if token_len is not None else None,
                  turn.get("token_len_unit", "cl100k"), turn.get("model_token_len"), row.get("model_id"))


def load_answers(path: str | os.PathLike) -> dict[str, Answer]:
    """Answers by question id (a later row for the same id replaces an earlier one); a URL is fetched first."""
    path = local(path)
    return {a.question_id: a for a in (answer_from_row(row, f"{path}:{n}") for n, row in _jsonl_rows(path, "answers"))}


def answer_row(answer: Answer, answer_id: str, tstamp: float, **extra) -> dict:
    """An answer in the leaderboard's format, plus rutune's length fields."""
    turn = {"content": answer.content, "token_len": answer.token_len, "token_len_unit": answer.token_len_unit,
            "model_token_len": answer.model_token_len}
    qid = int(answer.question_id) if answer.question_id.isdigit() else answer.question_id  # the leaderboard's ints
    return {"question_id": qid, "answer_id": answer_id, "model_id": answer.model_id,
            "choices": [{"index": 0, "turns": [turn]}], "tstamp": tstamp, **extra}


@functools.lru_cache(maxsize=1)
def _cl100k():
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception:  # noqa: BLE001 - no package, or no cached BPE file and no network
        return None


def count_cl100k(text: str) -> int | None:
    """Length in tiktoken cl100k tokens (the leaderboard's unit), or None when the encoding is unavailable."""
    enc = _cl100k()
    return len(enc.encode(text, disallowed_special=())) if enc is not None else None
