"""Extend a byte-level BPE tokenizer (`tokenizer.json`) with Russian merges; ids of old tokens never change.

What: `extend_tokenizer_json` takes a parsed `tokenizer.json` and text→count pairs (words, or running text),
splits every text the way the tokenizer itself would (its normalizer and pre-tokenizer, from the `tokenizers`
library), learns new merges on top of the existing segmentation (`vocab_bpe.learn_merges`) and returns a new
`tokenizer.json` whose merges are the old ones followed by the new ones and whose new tokens get ids after the
largest id in use (vocabulary, `added_tokens`, `tokenizer_config.json:added_tokens_decoder`).
`extend_tokenizer_dir` does the same on folders, so `AutoTokenizer.from_pretrained(out_dir)` loads the result
with the original chat template and special tokens.

Why this shape: normalizer, pre-tokenizer, decoder, post-processor, added tokens and chat template are copied
untouched, and only pairs containing a Cyrillic lead byte can merge (see `vocab_bpe`), so English, code, digits,
emoji and the chat markers tokenise to exactly the ids they had. The extended folder carries
`rutune_vocab.json` (fingerprints of base and extended tokenizer) so a checkpoint/tokenizer mismatch is
detectable later (`check_vocab_pairing`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from rutune.data.vocab_bpe import (
    UnsupportedTokenizerError,
    VocabError,
    VocabMismatchError,
    append_merges,
    check_extension_size,
    learn_merges,
    merge_ranks,
    segment,
)
from rutune.rundir import write_json_atomic

VOCAB_RECORD = "rutune_vocab.json"
# Key in the extended tokenizer_config.json: transformers keeps unknown keys in `init_kwargs` and writes them back on
# `save_pretrained`, so every later stage's checkpoint still says which ids are new (`extension_of`).
CONFIG_KEY = "rutune_vocab"
# Tokenizer files copied unchanged from the source folder (whichever exist).
COPIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                "added_tokens.json")
DEFAULT_SPACE_SHARE = 0.9


def load_tokenizer_json(folder: str | os.PathLike) -> dict:
    """Parse `<folder>/tokenizer.json` (or the file itself); VocabError if it is missing or not JSON."""
    path = Path(folder)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise VocabError(f"tokenizer {folder}: no tokenizer.json (only fast byte-level BPE tokenizers are supported)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VocabError(f"tokenizer {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _has_type(node, kind: str, key: str) -> bool:
    """Whether a (possibly `Sequence`-nested) normalizer/pre-tokenizer/decoder node contains a `kind` step."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == kind:
        return True
    return any(_has_type(child, kind, key) for child in node.get(key) or [])


def check_supported(tok: dict, where: str = "tokenizer") -> None:
    """Accept only byte-level BPE (GPT-2 / Qwen / Llama-3 / SmolLM2 style); anything else → "not supported yet"."""
    model = tok.get("model") or {}
    kind = model.get("type")
    problem = None
    if kind != "BPE":
        problem = f"model type {kind!r} (need BPE)"
    elif model.get("byte_fallback"):
        problem = "BPE with byte_fallback (SentencePiece-style)"
    elif model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        problem = "BPE with a subword prefix/suffix"
    elif model.get("dropout"):
        problem = "BPE with dropout"
    elif not _has_type(tok.get("pre_tokenizer"), "ByteLevel", "pretokenizers"):
        problem = "no ByteLevel pre-tokenizer"
    elif not _has_type(tok.get("decoder"), "ByteLevel", "decoders"):
        problem = "no ByteLevel decoder"
    if problem:
        raise UnsupportedTokenizerError(f"{where}: {problem} is not supported yet (only byte-level BPE)")


def merges_of(tok: dict) -> list[tuple[str, str]]:
    """The merge list as pairs, whether the file stores `"a b"` strings (legacy) or `["a", "b"]` lists."""
    out = []
    for m in tok["model"].get("merges") or []:
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
            if not sep:
                raise VocabError(f"merge {m!r}: expected two tokens separated by a space")
            out.append((a, b))
        else:
            out.append((m[0], m[1]))
    return out


def max_id_in_use(tok: dict, tokenizer_config: Mapping | None = None) -> int:
    """The largest id the tokenizer uses anywhere: BPE vocab, `added_tokens`, config `added_tokens_decoder`."""
    ids = list(tok["model"]["vocab"].values()) + [a["id"] for a in tok.get("added_tokens") or []]
    ids += [int(i) for i in ((tokenizer_config or {}).get("added_tokens_decoder") or {})]
    return max(ids) if ids else -1


def fingerprint(tok: dict) -> str:
    """Identity of a tokenizer's id space: BPE vocab, merges and added tokens (16 hex chars).

    Hashes a line-per-entry text (`id<TAB>token`, `left<SP>right`, `id<TAB>content`) rather than canonical
    JSON: the same identity, several times faster on a 150k-token vocabulary.
    """
    h = hashlib.sha256()
    for token, i in sorted(tok["model"]["vocab"].items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"v{i}\t{token}\n".encode())
    for a, b in merges_of(tok):
        h.update(f"m{a} {b}\n".encode())
    for added in sorted((a["id"], a["content"]) for a in tok.get("added_tokens") or []):
        h.update(f"a{added[0]}\t{added[1]}\n".encode())
    return h.hexdigest()[:16]


def word_forms(word_counts: Mapping[str, int], *, space_share: float = DEFAULT_SPACE_SHARE) -> dict[str, int]:
    """Each word as it occurs in running text: `" word"` (after a space) and `"word"` (line start, after «, ( …).

    Byte-level tokenizers keep a leading space inside the word's pre-token, so the space form is the common one;
    `space_share` of the count goes to it (rounded), the rest to the bare form. Zero counts are dropped.
    """
    if not 0.0 <= space_share <= 1.0:
        raise VocabError(f"space_share {space_share}: must be between 0 and 1")
    out: dict[str, int] = {}
    for word, count in word_counts.items():
        spaced = round(count * space_share)
        for form, n in ((" " + word, spaced), (word, count - spaced)):
            if n > 0:
                out[form] = out.get(form, 0) + n
    return out


def _backend(tok: dict):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tok))


def pretoken_counts(tok: dict, text_counts: Mapping[str, int], *, backend=None) -> dict[str, int]:
    """Split every text with the tokenizer's own normalizer + pre-tokenizer; count the pieces (byte-level strings).

    A text with count c adds c to each of its pieces, so words (with `word_forms`) and whole documents (count 1)
    can be mixed in one mapping. `backend`: the `tokenizers.Tokenizer` of `tok`, if already built.
    """
    backend = backend or _backend(tok)
    norm, pre = backend.normalizer, backend.pre_tokenizer
    out: dict[str, int] = {}
    for text, count in text_counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise VocabError(f"text {text[:40]!r}: count {count!r} is not a non-negative integer")
        if count == 0 or not text:
            continue
        if norm is not None:
            text = norm.normalize_str(text)
        pieces = pre.pre_tokenize_str(text) if pre is not None else [(text, None)]
        for piece, _ in pieces:
            out[piece] = out.get(piece, 0) + count
    return out


@dataclass(frozen=True)
class VocabExtension:
    """What an extension did, for a stage manifest: sizes, ids, fingerprints, timings."""

    base_fingerprint: str
    fingerprint: str
    requested: int
    first_new_id: int
    num_new_tokens: int
    num_new_merges: int
    reused_merges: int  # new merges whose result was an old (previously unbuildable) token
    old_merges: int
    pretokens: int  # distinct pre-tokens counted
    merge_words: int  # of those, eligible ones that old merges leave in >1 piece
    unreachable: int  # new tokens whose own string does not encode to that single token
    learn_seconds: float
    new_tokens: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        """ids 0 … first_new_id + num_new_tokens - 1 (the embedding rows the model needs at least)."""
        return self.first_new_id + self.num_new_tokens

    def to_dict(self, *, with_tokens: bool = False) -> dict:
        """JSON-ready summary; the token list only on request (it can be 100k entries)."""
        out = asdict(self)
        out["vocab_size"] = self.vocab_size
        if not with_tokens:
            out.pop("new_tokens")
        return out


def _with_added_tokens(tok: dict, tokenizer_config: Mapping | None) -> dict[str, int]:
    """The BPE vocab plus every added/special token at its own id.

    `tokenizers` gives an added token that is not in the model vocab the id `len(vocab) + k` when it loads a
    file, ignoring the id written there; that is harmless while the added tokens sit right after a gap-free
    vocab, but new tokens after them would push `<|im_end|>` & co. to new ids. Listing them in the vocab (as
    SmolLM2's file already does) pins their ids. They are split off before BPE, so no merge ever builds them.
    """
    vocab = dict(tok["model"]["vocab"])
    declared = [(a["content"], a["id"]) for a in tok.get("added_tokens") or []]
    for i, entry in ((tokenizer_config or {}).get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, Mapping) else None
        if content is not None:
            declared.append((content, int(i)))
    taken = set(vocab.values())
    for content, i in declared:
        if content not in vocab and i not in taken:
            vocab[content] = i
            taken.add(i)
    return vocab


def extend_tokenizer_json(tok: dict, text_counts: Mapping[str, int], num_new_tokens: int, *,
                          tokenizer_config: Mapping | None = None, min_count: int = 1,
                          where: str = "tokenizer", backend=None) -> tuple[dict, VocabExtension]:
    """Return (extended tokenizer.json dict, report); `tok` is not modified.

    `text_counts` maps texts to counts (see `pretoken_counts`); fewer than `num_new_tokens` tokens are added only
    when the text runs out of eligible pairs (the report says how many). `backend`: the `tokenizers.Tokenizer`
    that `tok` describes, if the caller has it (saves rebuilding a large one).
    """
    check_supported(tok, where)
    vocab = tok["model"]["vocab"]
    first_new_id = max_id_in_use(tok, tokenizer_config) + 1
    check_extension_size(num_new_tokens, first_new_id)
    merges = merges_of(tok)
    started = time.perf_counter()
    backend = backend or _backend(tok)
    counts = pretoken_counts(tok, text_counts, backend=backend)
    if not counts:
        raise VocabError(f"{where}: no text to learn merges from (all counts are zero or texts empty)")
    model = backend.model
    ignore = bool(tok["model"].get("ignore_merges"))
    learned = learn_merges(vocab, merges, counts, num_new_tokens, min_count=min_count, ignore_merges=ignore,
                           segmenter=lambda w: [t.value for t in model.tokenize(w)], vocab_size=first_new_id)
    new_vocab, new_merges, added = append_merges(_with_added_tokens(tok, tokenizer_config), merges, learned,
                                                 first_new_id)
    seconds = time.perf_counter() - started
    legacy = any(isinstance(m, str) for m in tok["model"].get("merges") or [])
    out = {**tok, "model": {**tok["model"], "vocab": new_vocab,
                            "merges": [f"{a} {b}" if legacy else [a, b] for a, b in new_merges]}}
    ranks = merge_ranks(new_merges)
    unreachable = sum(1 for t in added if segment(t, ranks, vocab=new_vocab, ignore_merges=ignore) != (t,))
    report = VocabExtension(
        base_fingerprint=fingerprint(tok), fingerprint=fingerprint(out), requested=num_new_tokens,
        first_new_id=first_new_id, num_new_tokens=len(added), num_new_merges=len(learned.merges),
        reused_merges=learned.reused, old_merges=len(merges), pretokens=len(counts), merge_words=learned.words,
        unreachable=unreachable, learn_seconds=round(seconds, 3), new_tokens=tuple(added))
    return out, report


def _vocab_files(tok: dict) -> tuple[str, str]:
    """`vocab.json` and `merges.txt` contents matching a tokenizer.json (for folders that carry them)."""
    vocab = json.dumps(tok["model"]["vocab"], ensure_ascii=False)
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges_of(tok))
    return vocab, merges


def _load_hf(folder: str | os.PathLike):
    """`AutoTokenizer.from_pretrained(folder)`, with one-line errors."""
    from transformers import AutoTokenizer

    load_tokenizer_json(folder)  # a clear error for a folder without tokenizer.json
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VocabError(f"tokenizer {folder}: transformers cannot load it ({first})") from None


def effective_tokenizer_json(folder: str | os.PathLike, tokenizer=None) -> tuple[dict, str]:
    """(tokenizer.json as transformers really runs it, the class `AutoTokenizer` picks) for a folder.

    transformers 5 rebuilds model-specific tokenizers from vocab + merges with the class's own normalizer and
    pre-tokenizer (`Qwen2Tokenizer` applies Qwen's regex and NFC even when the file says plain ByteLevel, as the
    tiny model's file does), so merges must be learned on — and written with — that effective pipeline.
    `tokenizer`: the folder's tokenizer if the caller already loaded it with `AutoTokenizer`.
    """
    hf = tokenizer if tokenizer is not None else _load_hf(folder)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedTokenizerError(f"tokenizer {folder}: slow (non-fast) tokenizer is not supported yet")
    return json.loads(backend.to_str()), type(hf).__name__


def extend_tokenizer_dir(src_dir: str | os.PathLike, out_dir: str | os.PathLike, text_counts: Mapping[str, int],
                         num_new_tokens: int, *, min_count: int = 1, source_tokenizer=None) -> VocabExtension:
    """Write the extended tokenizer of `src_dir` (a tokenizer or model folder) to `out_dir`, atomically.

    `out_dir` gets the new `tokenizer.json` (the effective pipeline, see `effective_tokenizer_json`), the other
    tokenizer files copied (chat template and special-tokens map unchanged; `tokenizer_config.json` with
    `tokenizer_class` set to the class the source loads as, so the folder alone loads the same way),
    `vocab.json`/`merges.txt` rewritten if the source has them, and `rutune_vocab.json` (the report plus the
    new tokens). `source_tokenizer`: `AutoTokenizer.from_pretrained(src_dir)` if already loaded. Returns the report.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise VocabError(f"tokenizer folder {src}: not found")
    hf = source_tokenizer if source_tokenizer is not None else _load_hf(src)
    tok, tokenizer_class = effective_tokenizer_json(src, hf)
    config_path = src / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    new_tok, report = extend_tokenizer_json(tok, text_counts, num_new_tokens, tokenizer_config=config,
                                            min_count=min_count, where=f"tokenizer {src}",
                                            backend=hf.backend_tokenizer)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.extending-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "tokenizer.json").write_text(json.dumps(new_tok, ensure_ascii=False), encoding="utf-8")
        for name in COPIED_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({**config, "tokenizer_class": tokenizer_class, CONFIG_KEY: {
                "base_fingerprint": report.base_fingerprint, "fingerprint": report.fingerprint,
                "first_new_id": report.first_new_id, "num_new_tokens": report.num_new_tokens}},
                ensure_ascii=False, indent=2), encoding="utf-8")
        if (src / "vocab.json").is_file() or (src / "merges.txt").is_file():
            vocab_text, merges_text = _vocab_files(new_tok)
            (tmp / "vocab.json").write_text(vocab_text, encoding="utf-8")
            (tmp / "merges.txt").write_text(merges_text, encoding="utf-8")
        write_json_atomic(tmp / VOCAB_RECORD, {"source": str(src), "tokenizer_class": tokenizer_class,
                                               **report.to_dict(with_tokens=True)})
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _embedding_rows(model_dir: Path) -> int | None:
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return int(rows) if rows else None


def extension_of(tokenizer) -> dict | None:
    """{base_fingerprint, fingerprint, first_new_id, num_new_tokens} of an extended transformers tokenizer, else None."""
    info = (getattr(tokenizer, "init_kwargs", None) or {}).get(CONFIG_KEY)
    return dict(info) if isinstance(info, Mapping) and "first_new_id" in info else None


def check_vocab_pairing(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> None:
    """VocabMismatchError when a checkpoint and a tokenizer cannot belong together.

    Caught: the tokenizer uses ids beyond the model's embedding rows; the model was adapted to a different
    extended tokenizer (fingerprint in its `rutune_vocab.json`); an extended tokenizer paired with a model
    that was never adapted to it (the tokenizer has `rutune_vocab.json`, the model does not match it).
    """
    model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
    tok = load_tokenizer_json(tokenizer_dir)
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    needed = max_id_in_use(tok, config) + 1
    rows = _embedding_rows(model_dir)
    if rows is not None and needed > rows:
        raise VocabMismatchError(f"tokenizer {tokenizer_dir} uses ids up to {needed - 1} but model {model_dir} has "
                                 f"{rows} embedding rows: pair the model with the tokenizer it was adapted to")
    model_record = model_dir / VOCAB_RECORD
    tok_record = tokenizer_dir / VOCAB_RECORD
    actual = fingerprint(tok)
    if model_record.is_file():
        expected = json.loads(model_record.read_text(encoding="utf-8"))["fingerprint"]
        if expected != actual:
            raise VocabMismatchError(f"model {model_dir} was adapted to tokenizer {expected}, but {tokenizer_dir} "
                                     f"is {actual}: use the tokenizer saved with the checkpoint")
    elif tok_record.is_file() and model_dir.resolve() != tokenizer_dir.resolve():
        raise VocabMismatchError(f"tokenizer {tokenizer_dir} is an extended vocabulary but model {model_dir} was "
                                 "never adapted to it: run embedding initialisation first")


__all__ = ["CONFIG_KEY", "VOCAB_RECORD", "VocabExtension", "check_supported", "check_vocab_pairing",
           "effective_tokenizer_json", "extend_tokenizer_dir", "extension_of",
           "extend_tokenizer_json", "fingerprint", "load_tokenizer_json", "max_id_in_use", "merges_of",
           "pretoken_counts", "word_forms"]
