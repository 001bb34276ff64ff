"""Word n-gram overlap between a training mixture and evaluation sets.

An eval item counts as contaminated when any of its word n-grams (n = 13 by default, the size GPT-3's and
Llama's contamination studies used) also occurs in the training text. Text is normalised first (lowercase,
ё→е, punctuation removed) so formatting differences do not hide overlaps. Eval items shorter than n words
are compared as one whole n-gram of their length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

from rutune.data.filters import normalise

def _words(text: str) -> list[str]:
    return normalise(text).split()


def _ngrams(words: list[str], n: int) -> set[str]:
    """The word n-grams of already normalised words, as strings (exact keys: no hash collisions)."""
    if not words:
        return set()
    k = min(n, len(words))
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def ngrams(text: str, n: int) -> set[str]:
    """Word n-grams of the normalised text; a text shorter than n words is one n-gram of its length."""
    return _ngrams(_words(text), n)


def overlap(train_texts: Iterable[str], eval_items: dict[str, str], n: int = 13) -> dict[str, int]:
    """For each eval item id, the number of its n-grams found in the training texts (0 = clean).

    N-grams are compared as strings, not 32-bit hashes: at 10^5-10^6 training rows random hash collisions
    would flag clean items. Only the training n-grams that some eval item has are kept, so memory is bounded
    by the eval side.
    """
    item_words = {k: _words(v) for k, v in eval_items.items()}
    item_grams = {k: _ngrams(w, n) for k, w in item_words.items()}
    # Items shorter than n words use a shorter n-gram; index training text at every size in use.
    sizes = sorted({min(n, max(1, len(w))) for w in item_words.values()})
    wanted = set().union(*item_grams.values()) if item_grams else set()
    found: set[str] = set()
    for text in train_texts:
        words = _words(text)  # normalise and split once per text, then slice per n-gram size
        for size in sizes:
            found |= _ngrams(words, size) & wanted
    return {k: len(g & found) for k, g in item_grams.items()}


def _prepared_texts(prepare_dir: Path) -> Iterator[str]:
    import datasets

    for name in ("sft.parquet", "preference.parquet"):
        path = prepare_dir / name
        if not path.exists():
            continue
        ds = datasets.Dataset.from_parquet(str(path))
        for row in ds:
            if "messages" in row:
                yield "\n".join(m["content"] for m in row["messages"])
            else:
                yield "\n".join([*(m["content"] for m in row["prompt"]), row["chosen"], row["rejected"]])


def check_prepared(prepare_dir: Path, cfg, eval_sets: dict[str, Callable[[], dict[str, str]]]) -> dict:
    """Contamination report of a prepared mixture against `cfg.eval_sets`.

    `eval_sets` maps each set's name to a function returning its items (id → text): the items of the eval suite
    of that name as it is configured (its questions file, hub id and revision), so the check always covers the
    very item set the suite scores.
    """
    per_set = {}
    for name in cfg.eval_sets:
        if name not in eval_sets:
            from rutune.data.sources import DataError

            raise DataError(f"data.contamination.eval_sets: {name}: no such eval set")
        items = eval_sets[name]()
        hits = overlap(_prepared_texts(prepare_dir), items, n=cfg.ngram_words)
        flagged = sorted(k for k, v in hits.items() if v)
        per_set[name] = {"items": len(items), "contaminated": len(flagged), "ids": flagged}
    summary = {k: f"{v['contaminated']}/{v['items']} items share a {cfg.ngram_words}-gram" for k, v in per_set.items()}
    return {"ngram_words": cfg.ngram_words, "sets": per_set, "summary": summary}
