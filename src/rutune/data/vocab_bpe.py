"""Continued BPE merge learning on top of an existing byte-level BPE vocabulary (pure functions, no I/O).

This is the core of Russian vocabulary *extension* as ruadapt's `extend` operation does it: every word is first
segmented with the tokenizer's own merges, then new merges are learned greedily by pair frequency on what is
left, and appended after all old merges with ids after the largest id in use. Because old merges keep their
ranks and every new merge has a lower priority than all of them, the old merges still fire first; a new merge
only fires on a pair that the old tokenizer leaves adjacent at the end.

Safety filter: by default a pair is only eligible when the merged string contains a byte-level character of a
UTF-8 lead byte 0xD0 or 0xD1 (`Ð`, `Ñ`). Those bytes start every character in U+0400–U+047F (Russian letters
included) and occur in no other UTF-8 sequence, so a text without such characters (English, code, digits,
emoji) can never trigger a new merge and tokenises to exactly the old ids.

Words here are strings in the tokenizer's own symbol alphabet (for byte-level BPE: the GPT-2 byte-to-unicode
mapping, where a leading space is `Ġ` and a Cyrillic letter is two symbols such as `Ð¿`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# Byte-level symbols of the UTF-8 lead bytes 0xD0 and 0xD1 (Cyrillic U+0400–U+047F).
CYRILLIC_LEAD_SYMBOLS = frozenset({"\u00d0", "\u00d1"})
MAX_EXTENSION = 1_000_000
MAX_EXTENSION_FACTOR = 10


class VocabError(ValueError):
    """Bad input to vocabulary extension or embedding initialisation; the message is one line."""


class ExtensionSizeError(VocabError):
    """The requested number of new tokens is not positive or absurdly large."""


class UnsupportedTokenizerError(VocabError):
    """The tokenizer is not a byte-level BPE this code can extend ("not supported yet")."""


class TextSourceError(VocabError):
    """A Russian text source is missing, not installed, or yields no text."""


class VocabMismatchError(VocabError):
    """A checkpoint and a tokenizer (or a tokenizer and its base) do not belong together."""


def byte_to_symbol() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte 0–255 maps to one printable unicode character.

    Printable Latin-1 bytes (`!`–`~`, `¡`–`¬`, `®`–`ÿ`) map to themselves; the other 68 bytes map, in byte order,
    to U+0100, U+0101, … — so a space (0x20) becomes `Ġ` (U+0120) and a newline `Ċ`.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_B2S = byte_to_symbol()
_S2B = {s: b for b, s in _B2S.items()}


def to_symbols(text: str) -> str:
    """UTF-8 bytes of `text` written in the byte-level alphabet (what a ByteLevel pre-tokenizer emits)."""
    return "".join(_B2S[b] for b in text.encode("utf-8"))


def from_symbols(symbols: str) -> bytes:
    """The raw bytes a byte-level token stands for; VocabError if a character is outside the alphabet."""
    try:
        return bytes(_S2B[ch] for ch in symbols)
    except KeyError as exc:
        raise VocabError(f"token {symbols!r}: character {exc.args[0]!r} is not in the byte-level alphabet") from None


def check_extension_size(num_new_tokens: int, vocab_size: int) -> None:
    """Reject a new-token count that is not an int, ≤ 0, > 1,000,000 or > 10 × the current vocabulary."""
    if isinstance(num_new_tokens, bool) or not isinstance(num_new_tokens, int):
        raise ExtensionSizeError(f"extension size {num_new_tokens!r}: must be an integer number of new tokens")
    if num_new_tokens <= 0:
        raise ExtensionSizeError(f"extension size {num_new_tokens}: must be at least 1 new token")
    limit = min(MAX_EXTENSION, MAX_EXTENSION_FACTOR * vocab_size)
    if num_new_tokens > limit:
        raise ExtensionSizeError(f"extension size {num_new_tokens}: more than {limit} new tokens "
                                 f"(limit: {MAX_EXTENSION:,} and {MAX_EXTENSION_FACTOR}x the vocabulary of {vocab_size})")


def merge_ranks(merges: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Pair → rank (its position in the merge list; lower fires first). A repeated pair keeps its first rank."""
    ranks: dict[tuple[str, str], int] = {}
    for rank, pair in enumerate(merges):
        ranks.setdefault((pair[0], pair[1]), rank)
    return ranks


def segment(word: str, ranks: Mapping[tuple[str, str], int], *, vocab: Mapping[str, int] | None = None,
            ignore_merges: bool = False) -> tuple[str, ...]:
    """Apply BPE merges to one pre-token, the way the `tokenizers` BPE model does.

    Start from single symbols; repeatedly merge the adjacent pair with the lowest rank (leftmost on a tie) until
    no adjacent pair has a rank. With `ignore_merges` a word that is itself in `vocab` is returned whole.
    """
    if ignore_merges and vocab is not None and word in vocab:
        return (word,)
    parts = list(word)
    while len(parts) > 1:
        best_rank, best_at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get((parts[i], parts[i + 1]))
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_at = rank, i
        if best_rank is None:
            break
        parts[best_at:best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return tuple(parts)


@dataclass(frozen=True)
class LearnedMerges:
    """The outcome of `learn_merges`: new merges in priority order and the new tokens they create.

    `new_tokens` lists, in merge order, the merged strings that were not in the vocabulary before (they get new
    ids). A merge whose result already existed (an old token the old merges never build) is kept in `merges`
    but adds no token; `reused` counts them. `pair_counts[i]` is the frequency of `merges[i]` when it was chosen.
    """

    merges: tuple[tuple[str, str], ...]
    new_tokens: tuple[str, ...]
    pair_counts: tuple[int, ...]
    reused: int
    words: int  # distinct words that took part (eligible, more than one symbol after old merges)


def _pairs(symbols: Sequence[str]) -> Iterable[tuple[str, str]]:
    return zip(symbols, symbols[1:])


def learn_merges(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], word_counts: Mapping[str, int],
                 num_new_tokens: int, *, required_symbols: frozenset[str] | None = CYRILLIC_LEAD_SYMBOLS,
                 min_count: int = 1, ignore_merges: bool = False,
                 segmenter: Callable[[str], Sequence[str]] | None = None,
                 vocab_size: int | None = None) -> LearnedMerges:
    """Learn up to `num_new_tokens` new BPE tokens on top of (`vocab`, `merges`) from `word_counts`.

    Each word (a pre-token in the vocabulary's symbol alphabet) is segmented with the old merges (`segmenter`, or
    `segment` with the old ranks), then the most frequent adjacent pair is merged everywhere, repeatedly. Ties
    go to the shorter merged string, then to the smaller (left, right) strings, so the result never depends
    on dict order. A pair is eligible only if the merged string contains one of `required_symbols` (None: every
    pair). Stops after `num_new_tokens` new tokens or when no eligible pair occurs at least `min_count` times.
    `vocab_size` (default `len(vocab)`) is what the size limit of `check_extension_size` is relative to.
    """
    check_extension_size(num_new_tokens, len(vocab) if vocab_size is None else vocab_size)
    if min_count < 1:
        raise VocabError(f"min_count {min_count}: must be at least 1")
    ranks = merge_ranks(merges)
    seg = segmenter or (lambda w: segment(w, ranks, vocab=vocab, ignore_merges=ignore_merges))

    def eligible(a: str, b: str) -> bool:
        return required_symbols is None or any(ch in required_symbols for ch in a + b)

    words: list[list[str]] = []
    counts: list[int] = []
    for word, count in sorted(word_counts.items()):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise VocabError(f"word {word!r}: count {count!r} is not a non-negative integer")
        if count == 0 or not word:
            continue
        if required_symbols is not None and not any(ch in required_symbols for ch in word):
            continue
        missing = next((ch for ch in word if ch not in vocab), None)
        if missing is not None:
            raise VocabError(f"word {word!r}: symbol {missing!r} is not in the vocabulary")
        symbols = list(seg(word))
        if len(symbols) > 1:
            words.append(symbols)
            counts.append(count)

    pair_count: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for wi, symbols in enumerate(words):
        for pair in _pairs(symbols):
            pair_count[pair] = pair_count.get(pair, 0) + counts[wi]
            where.setdefault(pair, set()).add(wi)

    def key(pair: tuple[str, str]) -> tuple[int, int, str, str]:
        return (-pair_count[pair], len(pair[0]) + len(pair[1]), pair[0], pair[1])

    heap = [key(p) for p in pair_count if eligible(*p)]
    heapq.heapify(heap)
    chosen: list[tuple[str, str]] = []
    chosen_counts: list[int] = []
    new_tokens: list[str] = []
    known = set(vocab)
    reused = 0
    while heap and len(new_tokens) < num_new_tokens:
        neg, _, a, b = heapq.heappop(heap)
        pair = (a, b)
        if pair_count.get(pair, 0) != -neg:
            continue  # stale entry: the count changed after it was pushed
        if -neg < min_count:
            break
        merged = a + b
        chosen.append(pair)
        chosen_counts.append(-neg)
        if merged in known:
            reused += 1
        else:
            known.add(merged)
            new_tokens.append(merged)
        touched: set[tuple[str, str]] = set()
        for wi in sorted(where.pop(pair, ())):
            symbols = words[wi]
            c = counts[wi]
            for p in _pairs(symbols):
                pair_count[p] -= c
                touched.add(p)
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[wi] = out
            for p in _pairs(out):
                pair_count[p] = pair_count.get(p, 0) + c
                where.setdefault(p, set()).add(wi)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in touched:
            n = pair_count.get(p, 0)
            if n <= 0:
                pair_count.pop(p, None)
                where.pop(p, None)
            elif p != pair and eligible(*p):
                heapq.heappush(heap, key(p))
    return LearnedMerges(merges=tuple(chosen), new_tokens=tuple(new_tokens), pair_counts=tuple(chosen_counts),
                         reused=reused, words=len(words))


def append_merges(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], learned: LearnedMerges,
                  first_new_id: int) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """Old vocab + new tokens at ids `first_new_id`, `first_new_id + 1`, …; old merges followed by the new ones.

    Returns (vocab, merges, new token → id). Every old entry keeps its id; `first_new_id` must be above every id
    in use (the caller includes added/special tokens that live outside the BPE vocabulary).
    """
    if vocab and first_new_id <= max(vocab.values()):
        raise VocabError(f"first new id {first_new_id}: not above the largest vocabulary id {max(vocab.values())}")
    added = {tok: first_new_id + i for i, tok in enumerate(learned.new_tokens)}
    clash = next((t for t in added if t in vocab), None)
    if clash is not None:
        raise VocabError(f"new token {clash!r} is already in the vocabulary")
    return {**vocab, **added}, [*map(tuple, merges), *learned.merges], added


__all__ = ["CYRILLIC_LEAD_SYMBOLS", "ExtensionSizeError", "LearnedMerges", "TextSourceError", "UnsupportedTokenizerError",
           "VocabError", "VocabMismatchError", "append_merges", "byte_to_symbol", "check_extension_size",
           "from_symbols", "learn_merges", "merge_ranks", "segment", "to_symbols"]
