"""Source-independent filters: Russian share, exact and near dedup of first user turns.

Each filter answers "drop reason or None" so the prepare stage can count every drop by reason.
Near dedup uses MinHash over character 4-gram shingles with LSH banding: candidate pairs share a band,
and a candidate is a duplicate when its exact shingle Jaccard similarity reaches the threshold. Memory is
a few hundred bytes per kept row (its normalised first turn, truncated, and its band keys).
"""

from __future__ import annotations

import hashlib
import re

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


def shingles(text: str, chars: int = 4, *, normalised: bool = False) -> np.ndarray:
    """Sorted unique hashes (uint64) of the character n-grams of the normalised text.

    Vectorised: code points → a polynomial rolling hash of each n-gram, so a 400-character turn costs
    microseconds. Deterministic across processes (no salted `hash()`), which keeps prepared mixtures stable.
    """
    norm = text if normalised else normalise(text)
    if not norm:
        return np.empty(0, dtype=np.uint64)
    cps = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) <= chars:
        cps = np.concatenate([cps, np.zeros(chars - len(cps) + 1, dtype=np.uint64)])
    n = len(cps) - chars + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(chars):
        h = h * np.uint64(1_000_003) + cps[j:j + n]
    return np.unique(h)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted unique arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class Deduplicator:
    """Remembers what it has kept; `check(text)` → "duplicate_exact" | "duplicate_near" | None (and keeps it).

    Near duplicates: MinHash LSH (16 bands × 4 rows) finds candidates; their MinHash signatures (kept for every
    row) screen them in one vectorised comparison, and the few whose estimate is near the threshold are confirmed
    by the exact Jaccard similarity of character shingles, so the threshold is not blurred by estimate noise.
    Memory per kept row: its normalised first turn (truncated to `MAX_CHARS`), a 256-byte signature, band keys.
    """

    _PRIME = (1 << 61) - 1
    MAX_CHARS = 400
    SCREEN_MARGIN = 0.12  # estimates this far below the threshold still get the exact check (~2σ at 64 perms)
    MAX_BUCKET = 64  # rows remembered per LSH bucket: bounds the work per row on highly repetitive data

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.7, shingle_chars: int = 4,
                 seed: int = 0):
        self.exact, self.near, self.threshold, self.shingle_chars = exact, near, threshold, shingle_chars
        rng = np.random.default_rng(seed)
        self._rows, self._bands = 4, 16
        num_perm = self._rows * self._bands
        self._a = rng.integers(1, self._PRIME, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, self._PRIME, size=num_perm, dtype=np.uint64)
        self._seen_exact: set[bytes] = set()
        self._buckets: list[dict[int, list[int]]] = [dict() for _ in range(self._bands)]
        self._texts: list[str] = []
        self._sigs = np.empty((1024, num_perm), dtype=np.uint32)

    def _signature(self, sh: np.ndarray) -> np.ndarray:
        h = sh
        # (a*h + b) with uint64 wrap-around: a cheap universal-style hash family, enough for MinHash/LSH.
        return ((np.outer(h, self._a) + self._b).min(axis=0) & 0xFFFFFFFF).astype(np.uint32)

    def check(self, text: str) -> str | None:
        norm = normalise(text)[: self.MAX_CHARS]
        # 128-bit key: a 32-bit one (crc32) collides by the birthday bound at ~10^5-10^6 rows and would drop
        # distinct rows as exact duplicates; 16 bytes keeps memory bounded where the string itself may not be.
        key = hashlib.blake2b(norm.encode(), digest_size=16).digest()
        if self.exact and key in self._seen_exact:
            return "duplicate_exact"
        self._seen_exact.add(key)
        if not self.near or not norm:
            return None
        sh = shingles(norm, self.shingle_chars, normalised=True)
        sig = self._signature(sh)
        bands = [hash(sig[i * self._rows:(i + 1) * self._rows].tobytes()) for i in range(self._bands)]
        candidates = sorted({idx for band, b in enumerate(bands) for idx in self._buckets[band].get(b, ())})
        if candidates:
            estimates = (self._sigs[candidates] == sig).mean(axis=1)
            for idx in np.asarray(candidates)[estimates >= self.threshold - self.SCREEN_MARGIN]:
                if jaccard(sh, shingles(self._texts[idx], self.shingle_chars, normalised=True)) >= self.threshold:
                    return "duplicate_near"
        idx = len(self._texts)
        self._texts.append(norm)
        if idx == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[idx] = sig
        for band, b in enumerate(bands):
            bucket = self._buckets[band].setdefault(b, [])
            if len(bucket) < self.MAX_BUCKET:
                bucket.append(idx)
        return None


def record_text(record) -> str:
    """All message text of a record (conversation or preference pair), for language checks."""
    if hasattr(record, "messages"):
        return "\n".join(m.content for m in record.messages if m.role != "system")
    return "\n".join([*(m.content for m in record.prompt if m.role != "system"), record.chosen])
