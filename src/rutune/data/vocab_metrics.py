"""Tokenizer-efficiency metrics for vocabulary adaptation (pure; no model needed).

* chars per token = Σ characters / Σ tokens over the texts, specials not added (ruadapt/LEP "symbols per
  token"); higher means shorter sequences for the same text.
* tokens per word = Σ tokens / Σ whitespace-separated words (`str.split()`, as lm-eval's `count_words`).
* new-token share = fraction of generated ids ≥ the first new id: whether an adapted model actually emits
  its new tokens (LEP notes it keeps emitting old short tokens until trained).
* repeated word 4-grams = (n-grams − distinct n-grams) / n-grams of one generated answer (seq-rep-4 of Welleck
  et al. 2019, arXiv 1908.04319), on whitespace words so that it compares across tokenizers. A greedy loop is
  fast and useless; this is the number that says a chars/s gain was bought with one.
* Cyrillic share = Cyrillic letters / all letters of an answer. The speed goal is Russian characters per second;
  an answer to a Russian prompt written as Python code (ASCII, many characters per old token) is fast and not
  Russian, and seq-rep-4 does not see it.

A tokenizer is anything with `encode(text, add_special_tokens=False)` returning a list of ids (transformers)
or an object with `.ids` (`tokenizers.Tokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rutune.data.vocab_bpe import VocabError


def _ids(tokenizer, text: str) -> list[int]:
    out = tokenizer.encode(text, add_special_tokens=False)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def _texts(texts: Iterable[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise VocabError(f"{what}: expected a list of texts, got one string")
    items = [t for t in texts if t]
    if not items:
        raise VocabError(f"{what}: no non-empty texts to measure")
    return items


def token_counts(tokenizer, texts: Iterable[str]) -> list[int]:
    """Number of tokens of each text (no special tokens added)."""
    return [len(_ids(tokenizer, t)) for t in _texts(texts, "token_counts")]


def chars_per_token(tokenizer, texts: Iterable[str]) -> float:
    """Σ len(text) / Σ tokens over `texts`."""
    items = _texts(texts, "chars_per_token")
    tokens = sum(len(_ids(tokenizer, t)) for t in items)
    return sum(len(t) for t in items) / tokens


def tokens_per_word(tokenizer, texts: Iterable[str]) -> float:
    """Σ tokens / Σ whitespace-separated words over `texts`."""
    items = _texts(texts, "tokens_per_word")
    words = sum(len(t.split()) for t in items)
    if words == 0:
        raise VocabError("tokens_per_word: the texts contain no words")
    return sum(len(_ids(tokenizer, t)) for t in items) / words


def new_token_share(ids: Sequence[int], first_new_id: int) -> float:
    """Share of `ids` that are new tokens (id ≥ `first_new_id`); VocabError for an empty sequence."""
    ids = list(ids)
    if not ids:
        raise VocabError("new_token_share: no generated ids")
    if first_new_id < 0:
        raise VocabError(f"new_token_share: first_new_id {first_new_id} is negative")
    return sum(1 for i in ids if i >= first_new_id) / len(ids)


def repeated_ngrams(text: str, n: int = 4) -> tuple[int, int]:
    """(repeated, total) word n-grams of `text`: total = words − n + 1 (0 if fewer words), repeated = total −
    distinct. Counts, not a ratio, so that answers aggregate as Σ repeated / Σ total."""
    if n < 1:
        raise VocabError(f"repeated_ngrams: n must be >= 1, got {n}")
    words = text.split()
    grams = [tuple(words[k:k + n]) for k in range(len(words) - n + 1)]
    return len(grams) - len(set(grams)), len(grams)


def cyrillic_letters(text: str) -> tuple[int, int]:
    """(Cyrillic, all) letters of `text` (`str.isalpha`; Cyrillic = U+0400–U+04FF, which holds ё/Ё)."""
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if "\u0400" <= c <= "\u04ff"), len(letters)


def pooled_share(texts: Iterable[str], count) -> float | None:
    """Σ part / Σ whole of `count(text)` over `texts` (`count` = `repeated_ngrams` or `cyrillic_letters`), so long
    answers weigh by their size; None when the whole is 0 (no 4-grams, no letters, no texts)."""
    counts = [count(t) for t in texts]
    whole = sum(w for _, w in counts)
    return sum(part for part, _ in counts) / whole if whole else None


def tokenizer_stats(tokenizer, texts: Iterable[str]) -> dict:
    """chars/token, tokens/word and totals in one pass (for a metrics table)."""
    items = _texts(texts, "tokenizer_stats")
    tokens = sum(len(_ids(tokenizer, t)) for t in items)
    chars = sum(len(t) for t in items)
    words = sum(len(t.split()) for t in items)
    return {"texts": len(items), "chars": chars, "words": words, "tokens": tokens,
            "chars_per_token": chars / tokens, "tokens_per_word": tokens / words if words else None}


__all__ = ["chars_per_token", "cyrillic_letters", "new_token_share", "pooled_share", "repeated_ngrams",
           "token_counts", "tokenizer_stats", "tokens_per_word"]
