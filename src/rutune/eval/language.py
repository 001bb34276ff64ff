"""Answer language: the share of Cyrillic letters in a model's answers to Russian prompts.

A model that cannot speak Russian answers a Russian question in English, echoes it, or says nothing. Two numbers:

- `cyrillic_share`: Cyrillic letters among all letters of the answer (`rutune.data.filters.russian_share`).
  It tells English answers (≈0) from Russian ones (≈1), but an echo of the Russian question scores ≈1 too —
  and echoing is exactly what SmolLM2-135M-Instruct does with Russian questions.
- `own_cyrillic_share`: the same share over the answer's *own* words only: words that occur in the prompt are
  left out (case-insensitive; the answer's last word also when it is the start of a prompt word, i.e. an echo
  cut by the token budget). A pure echo has no own letters and scores 0, as does an answer with no letters.
"""

from __future__ import annotations

import re
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


WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def own_words(answer: str, prompt: str) -> list[str]:
    """The answer's words that it did not copy from the prompt (see the module docstring)."""
    seen = {w.lower() for w in WORD.findall(prompt)}
    words = WORD.findall(answer)
    own = [w for w in words if w.lower() not in seen]
    if own and own[-1] is words[-1] and any(p.startswith(own[-1].lower()) for p in seen):
        own.pop()  # an echo cut off mid-word by max_new_tokens
    return own


def own_cyrillic_share(answer: str, prompt: str) -> float:
    """Cyrillic share of the answer's own words; 0 when it has none (a pure echo or no letters)."""
    return russian_share(" ".join(own_words(answer, prompt)))


def cyrillic_answers(backend, prompts: Sequence[tuple[dict, ...]], *, max_new_tokens: int) -> list[dict]:
    """Greedy answers to `prompts` (one request each) with both Cyrillic shares; rows in prompt order."""
    requests = [GenerationRequest(messages=p, max_new_tokens=max_new_tokens) for p in prompts]
    results = backend.generate(requests) if requests else []
    rows = []
    for prompt, r in zip(prompts, results):
        asked = "\n".join(m["content"] for m in prompt)
        rows.append({"answer": r.text, "answer_tokens": r.n_tokens, "cyrillic_share": russian_share(r.text),
                     "own_cyrillic_share": own_cyrillic_share(r.text, asked)})
    return rows


__all__ = ["answer_prompt", "cyrillic_answers", "own_cyrillic_share", "own_words"]
