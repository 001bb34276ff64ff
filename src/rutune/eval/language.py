"""Answer language: the share of Cyrillic letters in a model's answers to Russian prompts.

A model that cannot speak Russian answers a Russian question in English, echoes it, or says nothing; the share
of Cyrillic letters among all letters of its answer (`rutune.data.filters.russian_share`) tells English answers
(≈0) from Russian ones (≈1). It cannot tell an echo from an answer; the held-out NLL and the arena can.
An answer with no letters at all scores 0: saying nothing is not answering in Russian.
"""

from __future__ import annotations

from collections.abc import Sequence

from rutune.data.filters import russian_share
from rutune.eval.backends import GenerationRequest
from rutune.eval.errors import EvalError


def answer_prompt(messages: Sequence[dict]) -> tuple[dict, ...]:
    """The user turn a held-out conversation opens with, as a one-message chat.

    System turns are left out: grounded-RAG rows carry their documents there (thousands of tokens for a
    135M model's window and a CPU's patience), and the question is whether the reply to a Russian user
    message is Russian. The model's own template adds its default system prompt.
    """
    for m in messages:
        if m["role"] == "user":
            return ({"role": "user", "content": m["content"]},)
    raise EvalError("held-out conversation has no user turn to answer")


def cyrillic_answers(backend, prompts: Sequence[tuple[dict, ...]], *, max_new_tokens: int) -> list[dict]:
    """Greedy answers to `prompts` (one request each) with their Cyrillic share; rows in prompt order."""
    requests = [GenerationRequest(messages=p, max_new_tokens=max_new_tokens) for p in prompts]
    results = backend.generate(requests) if requests else []
    return [{"answer": r.text, "answer_tokens": r.n_tokens, "cyrillic_share": russian_share(r.text)}
            for r in results]


__all__ = ["answer_prompt", "cyrillic_answers"]
