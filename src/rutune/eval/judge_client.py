"""Judging many games through the official `openai` async client: concurrency, retries, cache, error records.

Each game (one question, one seat order) ends as exactly one record in the judge cache (`judgments.jsonl`):

- `status: ok` — a valid label;
- `status: invalid` — the judge answered but gave conflicting labels, a label outside the five, or none after
  `verdict_followups` follow-ups (final: a rerun does not ask again);
- `status: error` — the call failed (retries exhausted, 4xx): an explicit record that the score and the table
  count; a rerun retries these.

The cache key is (question, hash of answer A, hash of answer B, judge model, prompt hash, game), so a rerun makes
zero calls for finished games and a changed answer, judge or prompt is judged afresh. Records are appended and
flushed to the OS one by one (a kill loses no finished game); fsync, which only matters on power loss, is batched
to once per `SYNC_INTERVAL_S` and at the end (`items.AppendLog`). A torn last line left by a kill is dropped on the
next run.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import gc
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from rutune.eval.arena_scoring import model_score
from rutune.eval.backends import run_sync
from rutune.items import AppendLog, read_items, truncate_torn_tail
from rutune.eval.judge import JudgeError, JudgePrompt, JudgeProfile, neutralise_markers, parse_verdict
from rutune.rundir import stable_hash

CACHE_FILE = "judgments.jsonl"
FINAL = ("ok", "invalid")
RETRY_AFTER_CAP_S = 600.0
SYNC_INTERVAL_S = 1.0  # fsync of the cache at most this far apart (and at the end); every record is flushed at once


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Game:
    """One judgment to make. Game 1: A = baseline, B = model; game 2: A = model, B = baseline."""

    question_id: str
    game: int
    question: str
    answer_a: str
    answer_b: str

    def key(self, judge_model: str, prompt_hash: str) -> str:
        return stable_hash({"q": self.question_id, "a": text_hash(self.answer_a), "b": text_hash(self.answer_b),
                            "judge": judge_model, "prompt": prompt_hash, "game": self.game})


def make_games(questions: dict[str, str], model_answers: dict[str, str], baseline_answers: dict[str, str]) -> list[Game]:
    """Both seat orders for every question that has a model answer and a baseline answer, in question order."""
    games = []
    for qid, question in questions.items():
        if qid in model_answers and qid in baseline_answers:
            base, model = baseline_answers[qid], model_answers[qid]
            games.append(Game(qid, 1, question, base, model))
            games.append(Game(qid, 2, question, model, base))
    return games


# ---------------------------------------------------------------- cache
def load_cache(path: str | os.PathLike) -> dict[str, dict]:
    """Records by key (the last one wins), dropping a torn last line in place so appends start clean."""
    truncate_torn_tail(path)
    return {r["key"]: r for r in read_items(path) if "key" in r}


# ---------------------------------------------------------------- retries
def _retry_after_s(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify(exc: Exception) -> tuple[str, bool]:
    """(reason, retryable) for an exception from the client. Auth and unknown-model errors are fatal."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.RateLimitError):
        return "429", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code >= 500:
            return "5xx", True
        if code in (401, 403):
            raise JudgeError(f"judge rejected the API key (HTTP {code}); check the env var the profile names") from None
        if code == 404:
            raise JudgeError("judge endpoint or model not found (HTTP 404); base_url must end in /v1 and `model` "
                             "must be served there") from None
        if code in (408, 409):
            return str(code), True
        return f"http {code}", False
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError, KeyError,
                        IndexError, TypeError, AttributeError)):
        return "bad response", True
    return type(exc).__name__, False


def make_client(profile: JudgeProfile):
    """The official async client for `profile`, on openai's aiohttp transport (`openai[aiohttp]`).

    Why aiohttp: with 32 requests in flight the default httpx transport spends more event-loop CPU per request
    (pure-Python HTTP parsing, and a connection pool that rescans every connection on each request start and
    end); on the 1000-judgment bench the aiohttp transport took ~11 % less client CPU per judgment (1.85 → 1.65 ms,
    docs/arena.md). Retries are
    ours (`max_retries=0`), so the client never repeats a call we did not count.
    """
    import openai

    return openai.AsyncOpenAI(base_url=profile.base_url, api_key=profile.api_key(), timeout=profile.timeout_s,
                              max_retries=0, http_client=openai.DefaultAioHttpClient(timeout=profile.timeout_s,
                                                                                     verify=_tls_context()))


@functools.cache
def _tls_context():
    """One TLS context per process, made the way the client would make it: building one loads the CA bundle
    (~25 ms), which every judging run (one per model in a study) would otherwise repeat."""
    import importlib

    import openai

    # openai 2 builds on httpx, openai 3 on httpx2: use the package its own client class comes from
    http_cls = next(c for c in openai.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    return importlib.import_module(http_cls.__module__.split(".")[0]).create_ssl_context()


class _Caller:
    """Holds the client, the concurrency limit and the retry policy for one judging run."""

    def __init__(self, profile: JudgeProfile, client=None, sleep: Callable = asyncio.sleep):
        self.profile = profile
        self.client = client or make_client(profile)
        self.limit = asyncio.Semaphore(profile.concurrency)
        self.sleep = sleep
        self.rng = random.Random(0)

    async def complete(self, messages: list[dict], stats: dict) -> str:
        """One chat completion with retries; returns the reply text or raises the last error."""
        p = self.profile
        for attempt in range(p.retries + 1):
            stats["calls"] += 1
            try:
                async with self.limit:
                    # the client's generic `post` skips the typed-params transform (~0.7 ms of CPU per call),
                    # which caps throughput at high concurrency; the request and error handling are the client's
                    data = await self.client.post("/chat/completions", cast_to=dict, body={
                        "model": p.model, "messages": messages, "temperature": p.temperature,
                        "max_tokens": p.max_tokens})
                return data["choices"][0]["message"]["content"] or ""
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                reason, retryable = classify(exc)
                stats["retries"][reason] = stats["retries"].get(reason, 0) + 1
                stats["last_error"] = f"{reason}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
                if not retryable or attempt == p.retries:
                    raise _Failed(stats["last_error"]) from None
                wait = _retry_after_s(exc) if reason == "429" else None
                if wait is not None:  # the server's Retry-After wins over our own schedule (sane cap: 10 min)
                    wait = min(wait, RETRY_AFTER_CAP_S)
                else:
                    wait = min(p.backoff_s * (2 ** attempt) * (0.5 + self.rng.random()), p.max_backoff_s)
                await self.sleep(wait)
        raise _Failed("unreachable")  # pragma: no cover


class _Failed(Exception):
    pass


async def _judge_game(caller: _Caller, prompt: JudgePrompt, game: Game, key: str) -> dict:
    answer_a, flagged_a = neutralise_markers(game.answer_a)
    answer_b, flagged_b = neutralise_markers(game.answer_b)
    model_seat = "B" if game.game == 1 else "A"
    flagged_model = flagged_b if model_seat == "B" else flagged_a
    flagged_base = flagged_a if model_seat == "B" else flagged_b
    messages = prompt.render(game.question, answer_a, answer_b)
    stats: dict = {"calls": 0, "retries": {}, "last_error": None}
    replies: list[str] = []
    started = time.monotonic()
    status, label, reason = "error", None, ""
    try:
        for round_ in range(caller.profile.verdict_followups + 1):
            text = await caller.complete(messages, stats)
            replies.append(text)
            verdict = parse_verdict(text, prompt.regex)
            if verdict.status != "none":
                status, label, reason = verdict.status, verdict.label, verdict.reason
                break
            status, reason = "invalid", f"no verdict label after {round_} follow-up(s)"
            messages = messages + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": prompt.followup}]
    except _Failed as e:
        status, label, reason = "error", None, str(e)
    score = model_score(label, game.game) if status == "ok" else None
    return {
        "key": key, "id": f"{game.question_id}-g{game.game}", "question_id": game.question_id, "game": game.game,
        "status": status, "valid": status == "ok", "verdict": label, "reason": reason,
        "model_score": score[0] if score else None, "strong": bool(score and score[1] > 1),
        "injection_flagged": flagged_model > 0, "injection_markers": {"model": flagged_model, "baseline": flagged_base},
        "calls": stats["calls"], "followups": max(0, len(replies) - 1), "retries": stats["retries"],
        "judge_model": caller.profile.model, "prompt_hash": prompt.hash,
        "answer_a_hash": text_hash(game.answer_a), "answer_b_hash": text_hash(game.answer_b),
        "elapsed_s": round(time.monotonic() - started, 3), "judgment": "\n\n".join(replies),
    }


async def judge_games_async(games: list[Game], profile: JudgeProfile, prompt: JudgePrompt, cache_path: Path,
                            on_done: Callable[[dict], None] | None = None, client=None) -> list[dict]:
    """Judge every game not finished in the cache; return one record per game, in `games` order."""
    cache = load_cache(cache_path)
    keys = [g.key(profile.model, prompt.hash) for g in games]
    todo = [(g, k) for g, k in zip(games, keys) if cache.get(k, {}).get("status") not in FINAL]
    if todo:
        caller = _Caller(profile, client=client)
        log = AppendLog(cache_path, sync_interval_s=SYNC_INTERVAL_S)

        async def run_one(game: Game, key: str) -> None:
            record = await _judge_game(caller, prompt, game, key)
            log.append([record])  # in the OS before the next await: a kill loses no finished judgment
            cache[key] = record
            if on_done:
                on_done(record)

        async def sync_periodically() -> None:  # bounds what a power loss can take even while no game finishes
            while True:
                await asyncio.sleep(SYNC_INTERVAL_S)
                log.sync()

        syncer = asyncio.ensure_future(sync_periodically())
        # Why freeze: a full (generation-2) garbage collection walks every object the process holds — openai's
        # typed models, and in a study torch and the models too — and blocks the event loop meanwhile: ~130 ms
        # per pass in the judge bench, during which all in-flight answers wait. Frozen objects are skipped, so a
        # pass only walks what this run allocates; unfreezing at the end hands them back to the collector.
        gc.freeze()
        try:
            await asyncio.gather(*(run_one(g, k) for g, k in todo))
        finally:
            gc.unfreeze()
            syncer.cancel()
            await asyncio.gather(syncer, return_exceptions=True)  # let the cancellation land before the loop ends
            log.close()
            if client is None:
                await caller.client.close()
    return [cache[k] for k in keys]


def judge_games(games: list[Game], profile: JudgeProfile, prompt: JudgePrompt, cache_path: str | os.PathLike,
                on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Synchronous entry point: judge `games` (resuming from `cache_path`) and return their records."""
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return run_sync(judge_games_async(games, profile, prompt, cache_path, on_done=on_done))


def count_statuses(records: Iterable[dict]) -> dict[str, int]:
    out = {"ok": 0, "invalid": 0, "error": 0}
    for r in records:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out
