"""Source-independent filters: Russian share, exact and near dedup of first user turns.

Each filter answers "drop reason or None" so the prepare stage can count every drop by reason.
Near dedup uses MinHash over word n-gram shingles with LSH banding: candidate pairs share a band,
and a candidate is a duplicate when its estimated Jaccard similarity reaches the threshold. Memory is
a few integers per kept row, so 10⁶ rows fit.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def russian_share(text: str) -> float:
    """Cyrillic letters over all letters (0 when the text has no letters)."""
    letters = LETTER.findall(text)
    if not letters:
        return 0.0
    return sum(1 for ch in letters if CYRILLIC.match(ch)) / len(letters)


def normalise(text: str) -> str:
    """Lowercase, ё→е, punctuation removed, whitespace collapsed: the key for exact dedup."""
    text = text.lower().replace("ё", "е")
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def shingles(text: str, ngram_words: int) -> set[int]:
    words = normalise(text).split()
    if not words:
        return set()
    n = min(ngram_words, len(words))
    return {zlib.crc32(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1)}


class Deduplicator:
    """Remembers what it has kept; `check(text)` → "duplicate_exact" | "duplicate_near" | None (and keeps it)."""

    _PRIME = (1 << 61) - 1

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.8, ngram_words: int = 5,
                 num_perm: int = 64, seed: int = 0):
        self.exact, self.near, self.threshold, self.ngram_words = exact, near, threshold, ngram_words
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, self._PRIME, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, self._PRIME, size=num_perm, dtype=np.uint64)
        # Bands of `rows` rows: a pair at the threshold collides in some band with high probability.
        self._rows = 4
        self._bands = num_perm // self._rows
        self._seen_exact: set[int] = set()
        self._buckets: list[dict[bytes, int]] = [dict() for _ in range(self._bands)]
        self._signatures: list[np.ndarray] = []

    def _signature(self, text: str) -> np.ndarray | None:
        sh = shingles(text, self.ngram_words)
        if not sh:
            return None
        h = np.fromiter(sh, dtype=np.uint64)
        # (a*h + b) mod p with uint64 wrap-around is fine as a hash family for this purpose.
        return (np.outer(h, self._a) + self._b).min(axis=0)

    def check(self, text: str) -> str | None:
        key = zlib.crc32(normalise(text).encode())
        if self.exact and key in self._seen_exact:
            return "duplicate_exact"
        sig = self._signature(text) if self.near else None
        if sig is not None:
            candidates = set()
            for band in range(self._bands):
                chunk = sig[band * self._rows:(band + 1) * self._rows].tobytes()
                if chunk in self._buckets[band]:
                    candidates.add(self._buckets[band][chunk])
            for idx in candidates:
                if float(np.mean(self._signatures[idx] == sig)) >= self.threshold:
                    return "duplicate_near"
            idx = len(self._signatures)
            self._signatures.append(sig)
            for band in range(self._bands):
                self._buckets[band].setdefault(sig[band * self._rows:(band + 1) * self._rows].tobytes(), idx)
        self._seen_exact.add(key)
        return None


def record_text(record) -> str:
    """All message text of a record (conversation or preference pair), for language checks."""
    if hasattr(record, "messages"):
        return "\n".join(m.content for m in record.messages if m.role != "system")
    return "\n".join([*(m.content for m in record.prompt if m.role != "system"), record.chosen])
