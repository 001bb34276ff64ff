"""Word n-gram overlap between a training mixture and evaluation sets.

An eval item counts as contaminated when any of its word n-grams (n = 13 by default, the size GPT-3's and
Llama's contamination studies used) also occurs in the training text. Text is normalised first (lowercase,
ё→е, punctuation removed) so formatting differences do not hide overlaps. Eval items shorter than n words
are compared as one whole n-gram of their length.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from rutune.data.filters import normalise

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


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


def _benchdata_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent.parent / "shared" / "benchdata"
        if candidate.is_dir():
            return candidate
    return None


def resolve_eval_set(spec: str) -> Path:
    """`arena` / `rummlu` name a known set (benchdata arena questions when present, else bundled); else a path."""
    if spec == "arena":
        root = _benchdata_root()
        real = root / "ru_llm_arena" / "arena-hard-v0.1" / "question.jsonl" if root else None
        return real if real and real.exists() else SAMPLES / "arena_questions.jsonl"
    if spec == "rummlu":
        return SAMPLES / "rummlu_mera.jsonl"
    path = Path(spec).expanduser()
    if not path.is_file():
        from rutune.data.sources import DataError

        raise DataError(f"data.contamination.eval_sets: {spec}: file not found (use a path, `arena` or `rummlu`)")
    return path


def eval_items(path: Path) -> dict[str, str]:
    """Question texts of an eval file: arena `turns[].content`, MERA `inputs.text`, or `question`/`text` fields."""
    items: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            key = str(row.get("question_id", (row.get("meta") or {}).get("id", i)))
            if "turns" in row:
                text = "\n".join(t.get("content", "") for t in row["turns"])
            elif isinstance(row.get("inputs"), dict):
                text = row["inputs"].get("text", "")
            else:
                text = row.get("question") or row.get("question_ru") or row.get("text") or row.get("input") or ""
            items[key] = text
    return items


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


def check_prepared(prepare_dir: Path, cfg) -> dict:
    """Contamination report of a prepared mixture against `cfg.eval_sets`."""
    per_set = {}
    for spec in cfg.eval_sets:
        path = resolve_eval_set(spec)
        items = eval_items(path)
        hits = overlap(_prepared_texts(prepare_dir), items, n=cfg.ngram_words)
        flagged = sorted(k for k, v in hits.items() if v)
        per_set[spec] = {"file": str(path), "items": len(items), "contaminated": len(flagged), "ids": flagged}
    summary = {k: f"{v['contaminated']}/{v['items']} items share a {cfg.ngram_words}-gram" for k, v in per_set.items()}
    return {"ngram_words": cfg.ngram_words, "sets": per_set, "summary": summary}
