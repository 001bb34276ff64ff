"""Russian text for vocabulary extension, from installed packages only, with a record of what was used.

Two sources, both offline:

* `wordfreq` (PyPI, code Apache-2.0, data CC-BY-SA 4.0): Russian word frequencies (`top_n_list('ru', n)`,
  `word_frequency`), lower-cased, from Wikipedia, subtitles, news, books and Twitter, frozen around 2021.
  Frequencies become integer counts per 100 million words. Only all-Cyrillic words (hyphenated allowed) are
  kept. Lists are lower-cased, so a share of each count goes to the capitalised form (`Слово`), otherwise
  sentence-initial words and names would stay fragmented.
* rutune's bundled samples (`rutune/samples/*.jsonl`, original text written for rutune, Apache-2.0 like the
  package): every message text (`content` fields; `inputs` string values for the MMLU-style rows).

The samples are split by *document* (one JSONL row) into merge-learning text and held-out measurement text,
deterministically from a hash of the row's first text, so exact duplicates of a first message fall on the
same side; any text string that also occurs on the held-out side is dropped from the merge side. Held-out text
is what chars/token is measured on and must not be used to learn merges or to train.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rutune.data.vocab import DEFAULT_SPACE_SHARE, word_forms
from rutune.data.vocab_bpe import TextSourceError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
WORDFREQ_LICENCE = ("wordfreq code Apache-2.0; word-frequency data CC-BY-SA-4.0 (attribution: wordfreq by "
                    "Robyn Speer et al.; built from Wikipedia, OpenSubtitles, news, Google Books Ngrams, Twitter)")
SAMPLES_LICENCE = "Apache-2.0 (original text written for rutune, shipped inside the rutune package)"
PER_WORDS = 100_000_000  # wordfreq frequencies become counts per 100M words (its `large` list starts at 1 per 100M)
_RUSSIAN_WORD = re.compile(r"^[а-яё]+(?:-[а-яё]+)*$")
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class SourceRecord:
    """One text source as a stage manifest lists it."""

    name: str
    package: str
    version: str
    licence: str
    used: int  # words (word lists) or documents (samples) taken
    detail: str


@dataclass(frozen=True)
class Document:
    """One JSONL row of a bundled sample file: its message texts in file order."""

    source: str  # file stem
    row: int  # 0-based line number among non-empty lines
    texts: tuple[str, ...]

    @property
    def key(self) -> str:
        """What decides the split side: the first text, case-folded, whitespace collapsed."""
        return " ".join(self.texts[0].casefold().split()) if self.texts else f"{self.source}:{self.row}"

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.row}"


def is_russian(text: str, min_share: float = 0.5) -> bool:
    """True when at least `min_share` of the letters in `text` are Cyrillic (False for text without letters)."""
    letters = _LETTER.findall(text)
    return bool(letters) and sum(1 for ch in letters if _CYRILLIC.match(ch)) >= min_share * len(letters)


def _texts_of(row, out: list[str], key: str | None = None) -> None:
    """Collect message texts: string values under a `content` key (any depth) or inside `inputs`."""
    if isinstance(row, dict):
        for k, v in row.items():
            _texts_of(v, out, k if k in ("content", "inputs") else key)
    elif isinstance(row, list):
        for v in row:
            _texts_of(v, out, key)
    elif isinstance(row, str) and key is not None and row.strip():
        out.append(row)


def sample_documents(samples_dir: str | Path | None = None) -> list[Document]:
    """Every row of `<samples_dir>/*.jsonl` (default: the bundled samples) as a Document, files in name order."""
    folder = Path(samples_dir) if samples_dir is not None else SAMPLES_DIR
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise TextSourceError(f"text source samples: no *.jsonl files in {folder}")
    docs = []
    for path in files:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise TextSourceError(f"text source {path}: line {i + 1} is not JSON") from None
            texts: list[str] = []
            _texts_of(row, texts)
            if texts:
                docs.append(Document(path.stem, i, tuple(texts)))
    if not docs:
        raise TextSourceError(f"text source samples: {folder} has no message texts")
    return docs


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(docs: Iterable[Document], *, held_out_share: float = 0.25,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """(merge documents, held-out documents): a document is held out when hash(seed, key) < `held_out_share`.

    Deterministic, independent of input order and of the other documents; documents with the same key (an
    exact duplicate first message) always land on the same side.
    """
    if not 0.0 < held_out_share < 1.0:
        raise TextSourceError(f"held_out_share {held_out_share}: must be strictly between 0 and 1")
    merge, held = [], []
    for doc in docs:
        (held if _unit(seed, doc.key) < held_out_share else merge).append(doc)
    if not held or not merge:
        raise TextSourceError(f"text split: {len(merge)} merge and {len(held)} held-out documents; "
                              "need at least one of each (more documents or another held_out_share)")
    return merge, held


def wordfreq_counts(n_words: int, *, wordlist: str = "large", capitalized_share: float = 0.1) -> dict[str, int]:
    """The `n_words` most frequent all-Cyrillic Russian words of wordfreq → count per 100M words.

    `capitalized_share` of each count (rounded) goes to the capitalised spelling; words whose count rounds to
    zero are dropped. TextSourceError if wordfreq is not installed or yields no word.
    """
    if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words <= 0:
        raise TextSourceError(f"text source wordfreq: n_words {n_words!r} must be a positive integer")
    if not 0.0 <= capitalized_share <= 1.0:
        raise TextSourceError(f"capitalized_share {capitalized_share}: must be between 0 and 1")
    try:
        import wordfreq
    except ImportError:
        raise TextSourceError("text source wordfreq: package not installed; run: pip install wordfreq==3.1.1") from None
    counts: dict[str, int] = {}
    for word in wordfreq.top_n_list("ru", n_words, wordlist=wordlist):
        if not _RUSSIAN_WORD.match(word):
            continue
        count = round(wordfreq.word_frequency(word, "ru", wordlist=wordlist) * PER_WORDS)
        upper = round(count * capitalized_share)
        for form, n in ((word, count - upper), (word[:1].upper() + word[1:], upper)):
            if n > 0:
                counts[form] = counts.get(form, 0) + n
    if not counts:
        raise TextSourceError(f"text source wordfreq: no Russian words in list {wordlist!r}")
    return counts


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RussianText:
    """Merge-learning counts, held-out measurement texts, and where they came from."""

    merge_counts: dict[str, int]  # text → count, ready for `vocab.extend_tokenizer_json`
    heldout_texts: tuple[str, ...]  # Russian texts of held-out documents (measurement only)
    merge_documents: tuple[str, ...]  # "file:row" refs
    heldout_documents: tuple[str, ...]
    sources: tuple[SourceRecord, ...] = field(default=())
    settings: Mapping = field(default_factory=dict)

    def manifest(self) -> dict:
        """JSON-ready record for a stage manifest: sources with licences, sizes, the split, settings."""
        return {
            "sources": [vars(s) for s in self.sources],
            "settings": dict(self.settings),
            "merge_texts": len(self.merge_counts),
            "merge_documents": list(self.merge_documents),
            "heldout_documents": list(self.heldout_documents),
            "heldout_texts": len(self.heldout_texts),
            "heldout_chars": sum(len(t) for t in self.heldout_texts),
        }


def russian_text(*, n_words: int = 50_000, wordlist: str = "large", capitalized_share: float = 0.1,
                 space_share: float = DEFAULT_SPACE_SHARE, held_out_share: float = 0.25, seed: int = 0,
                 sample_weight: int = 100, use_wordfreq: bool = True,
                 samples_dir: str | Path | None = None) -> RussianText:
    """Assemble merge-learning text and held-out text.

    Merge counts = wordfreq words in running-text forms (`vocab.word_forms`: `" слово"` / `"слово"`) + every
    text of the merge-side sample documents with count `sample_weight` (a running-text occurrence weighs like
    `sample_weight` per 100M words). Held-out texts = the Russian texts (`is_russian`) of the held-out documents.
    """
    if isinstance(sample_weight, bool) or not isinstance(sample_weight, int) or sample_weight < 0:
        raise TextSourceError(f"sample_weight {sample_weight!r}: must be a non-negative integer")
    docs = sample_documents(samples_dir)
    merge_docs, held_docs = split_documents(docs, held_out_share=held_out_share, seed=seed)
    held_set = {t for d in held_docs for t in d.texts}
    counts: dict[str, int] = {}
    sources = []
    if use_wordfreq:
        words = wordfreq_counts(n_words, wordlist=wordlist, capitalized_share=capitalized_share)
        counts.update(word_forms(words, space_share=space_share))
        sources.append(SourceRecord("wordfreq-ru", "wordfreq", _version("wordfreq"), WORDFREQ_LICENCE,
                                    len({w.lower() for w in words}),
                                    f"top {n_words} of list {wordlist!r}, all-Cyrillic words, counts per 100M words"))
    if sample_weight > 0:
        for doc in merge_docs:
            for text in doc.texts:
                if text not in held_set:
                    counts[text] = counts.get(text, 0) + sample_weight
    heldout = tuple(t for d in held_docs for t in d.texts if is_russian(t))
    if not heldout:
        raise TextSourceError("text split: the held-out documents contain no Russian text")
    if not counts:
        raise TextSourceError("text sources: nothing to learn merges from (wordfreq off and sample_weight 0)")
    files = sorted({d.source for d in docs})
    sources.append(SourceRecord("rutune-samples", "rutune", _version("rutune"), SAMPLES_LICENCE,
                                len(merge_docs) if sample_weight > 0 else 0,
                                f"{len(docs)} documents in {', '.join(files)}; {len(merge_docs)} merge, "
                                f"{len(held_docs)} held out (share {held_out_share}, seed {seed})"))
    settings = {"n_words": n_words, "wordlist": wordlist, "capitalized_share": capitalized_share,
                "space_share": space_share, "held_out_share": held_out_share, "seed": seed,
                "sample_weight": sample_weight, "use_wordfreq": use_wordfreq}
    return RussianText(counts, heldout, tuple(d.ref for d in merge_docs), tuple(d.ref for d in held_docs),
                       tuple(sources), settings)


def merge_side_texts(*, held_out_share: float = 0.25, seed: int = 0,
                     samples_dir: str | Path | None = None) -> list[str]:
    """Russian texts of the merge-side sample documents, minus any text that also occurs on the held-out side.

    What the `vocab` stage trains embeddings on: the same side the merges were learned from, so the held-out
    texts (`heldout_items`) stay unseen by both the tokenizer and the model. Order: file, row, message.
    """
    merge_docs, held_docs = split_documents(sample_documents(samples_dir), held_out_share=held_out_share, seed=seed)
    held = {t for d in held_docs for t in d.texts}
    out = [t for d in merge_docs for t in d.texts if t not in held and is_russian(t)]
    if not out:
        raise TextSourceError("text split: the merge-side documents contain no Russian text to train on")
    return out


def heldout_items(*, held_out_share: float = 0.25, seed: int = 0,
                  samples_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """(id, text) of the held-out Russian texts, the measurement side of `russian_text` (no wordfreq needed).

    The id is `<file>:<row>:<message>`, stable across models and tokenizers, so per-text numbers pair by id.
    """
    _, held_docs = split_documents(sample_documents(samples_dir), held_out_share=held_out_share, seed=seed)
    out = [(f"{d.ref}:{i}", t) for d in held_docs for i, t in enumerate(d.texts) if is_russian(t)]
    if not out:
        raise TextSourceError("text split: the held-out documents contain no Russian text")
    return out


__all__ = ["Document", "RussianText", "SourceRecord", "heldout_items", "is_russian", "merge_side_texts",
           "russian_text", "sample_documents", "split_documents", "wordfreq_counts"]
