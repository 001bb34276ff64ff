"""Source-independent filters: Russian share, exact and near dedup of first user turns.

Each filter answers "drop reason or None" so the prepare stage can count every drop by reason.
Near dedup uses MinHash over character 4-gram shingles with LSH banding: candidate pairs share a band,
and a candidate is a duplicate when its exact shingle Jaccard similarity reaches the threshold. Memory is
a few hundred bytes per kept row (its normalised first turn, truncated, and its band keys).
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


def shingles(text: str, chars: int = 4) -> set[int]:
    """Hashed character n-grams of the normalised text (robust for short prompts, unlike word n-grams)."""
    norm = normalise(text)
    if len(norm) <= chars:
        return {zlib.crc32(norm.encode())} if norm else set()
    return {zlib.crc32(norm[i:i + chars].encode()) for i in range(len(norm) - chars + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Deduplicator:
    """Remembers what it has kept; `check(text)` → "duplicate_exact" | "duplicate_near" | None (and keeps it).

    Near duplicates: MinHash LSH (16 bands × 4 rows) finds candidates; each candidate is then confirmed by the
    exact Jaccard similarity of character shingles, so the threshold is not blurred by MinHash's estimate
    noise. Kept texts are stored truncated to `MAX_CHARS` for that check.
    """

    _PRIME = (1 << 61) - 1
    MAX_CHARS = 400

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.7, shingle_chars: int = 4,
                 seed: int = 0):
        self.exact, self.near, self.threshold, self.shingle_chars = exact, near, threshold, shingle_chars
        rng = np.random.default_rng(seed)
        self._rows, self._bands = 4, 16
        num_perm = self._rows * self._bands
        self._a = rng.integers(1, self._PRIME, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, self._PRIME, size=num_perm, dtype=np.uint64)
        self._seen_exact: set[int] = set()
        self._buckets: list[dict[int, list[int]]] = [dict() for _ in range(self._bands)]
        self._texts: list[str] = []

    def _bands_of(self, sh: set[int]) -> list[int]:
        h = np.fromiter(sh, dtype=np.uint64)
        # (a*h + b) with uint64 wrap-around: a cheap universal-style hash family, enough for LSH bucketing.
        sig = (np.outer(h, self._a) + self._b).min(axis=0)
        return [hash(sig[i * self._rows:(i + 1) * self._rows].tobytes()) for i in range(self._bands)]

    def check(self, text: str) -> str | None:
        norm = normalise(text)[: self.MAX_CHARS]
        key = zlib.crc32(norm.encode())
        if self.exact and key in self._seen_exact:
            return "duplicate_exact"
        self._seen_exact.add(key)
        if not self.near or not norm:
            return None
        sh = shingles(norm, self.shingle_chars)
        bands = self._bands_of(sh)
        candidates = {idx for band, b in enumerate(bands) for idx in self._buckets[band].get(b, ())}
        for idx in sorted(candidates):
            if jaccard(sh, shingles(self._texts[idx], self.shingle_chars)) >= self.threshold:
                return "duplicate_near"
        idx = len(self._texts)
        self._texts.append(norm)
        for band, b in enumerate(bands):
            self._buckets[band].setdefault(b, []).append(idx)
        return None


def record_text(record) -> str:
    """All message text of a record (conversation or preference pair), for language checks."""
    if hasattr(record, "messages"):
        return "\n".join(m.content for m in record.messages if m.role != "system")
    return "\n".join([*(m.content for m in record.prompt if m.role != "system"), record.chosen])
