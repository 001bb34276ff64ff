"""Give a causal LM the rows of an extended vocabulary: each new row = mean of the rows of its old tokenisation.

What (ruadapt's `mean` init, LEP eq. 1–2): for a new token, take its bytes, decode them to text, encode that
text with the model's *old* tokenizer (no special tokens) and average the old input-embedding rows of those
ids; for an untied LM head, average the old head rows of the same ids. Old rows are never written, so they
stay bit-identical; a tied head shares the embedding matrix and follows it. The mean is taken in float64 and
cast to the weight's dtype, so a test can recompute it exactly.

Why: a new token then starts where the model already "thinks" its text is — averaging bounds how far the
next-token distribution moves (Hewitt), and ruadapt/LEP found it as good as fancier inits. The adapted
folder is a plain transformers checkpoint (model + extended tokenizer) plus `rutune_vocab.json`, which
`rutune.data.vocab.check_vocab_pairing` uses to refuse a wrong tokenizer later.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rutune.data.vocab import VOCAB_RECORD, effective_tokenizer_json, fingerprint, load_tokenizer_json
from rutune.data.vocab_bpe import VocabError, VocabMismatchError, from_symbols
from rutune.rundir import write_json_atomic

INIT_RECORD = "rutune_vocab_init.json"


def new_token_ids(extended: dict, first_new_id: int) -> dict[str, int]:
    """The extended tokenizer.json's BPE tokens with id ≥ `first_new_id` (the extension), in id order."""
    vocab = extended["model"]["vocab"]
    return dict(sorted(((t, i) for t, i in vocab.items() if i >= first_new_id), key=lambda kv: kv[1]))


def old_tokenisations(old_tokenizer, new_tokens: Mapping[str, int]) -> dict[int, tuple[int, ...]]:
    """new id → old ids: the token's bytes decoded to text and encoded by `old_tokenizer` without specials.

    `old_tokenizer` is a transformers fast tokenizer (its `backend_tokenizer`) or a `tokenizers.Tokenizer`. A
    token whose bytes are not valid UTF-8 on their own (part of a character) is segmented at the byte level
    with the old BPE model instead, which is what encoding its text would do if it could be decoded.
    """
    backend = getattr(old_tokenizer, "backend_tokenizer", old_tokenizer)
    out: dict[int, tuple[int, ...]] = {}
    for token, new_id in new_tokens.items():
        raw = from_symbols(token)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            ids = [t.id for t in backend.model.tokenize(token)]
        else:
            ids = backend.encode(text, add_special_tokens=False).ids
        if not ids:
            raise VocabError(f"new token {token!r} (id {new_id}): the old tokenizer encodes it to nothing")
        out[new_id] = tuple(ids)
    return out


def mean_rows(weight, sources: Mapping[int, Sequence[int]]) -> dict:
    """new id → mean of `weight[old ids]`, computed in float64 and cast to `weight.dtype`."""
    import torch

    return {new_id: weight[list(ids)].to(torch.float64).mean(dim=0).to(weight.dtype)
            for new_id, ids in sources.items()}


@dataclass(frozen=True)
class InitReport:
    """What `init_new_embeddings` did: ids, sizes, tying, and which old ids fed each new row."""

    first_new_id: int
    num_new_tokens: int
    rows_before: int
    rows_after: int
    tied: bool
    sources: Mapping[int, tuple[int, ...]]

    def to_dict(self) -> dict:
        return {"first_new_id": self.first_new_id, "num_new_tokens": self.num_new_tokens,
                "rows_before": self.rows_before, "rows_after": self.rows_after, "tied": self.tied,
                "init": "mean of old rows of the token's old tokenisation (float64 mean, cast)"}


def _is_tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def init_new_embeddings(model, sources: Mapping[int, Sequence[int]]) -> InitReport:
    """Resize `model` (in place) to hold every id in `sources` and write each new row as the old-row mean.

    Rows grow to max(current rows, largest new id + 1) — a checkpoint with spare padded rows (Qwen2.5) keeps
    its size and only the new ids' rows are written. Old ids (< first new id) must exist and are not touched.
    """
    import torch

    if not sources:
        raise VocabError("embedding init: no new tokens to initialise")
    first_new_id = min(sources)
    emb = model.get_input_embeddings()
    rows_before = emb.weight.shape[0]
    if first_new_id > rows_before:
        raise VocabMismatchError(f"embedding init: model has {rows_before} rows but the tokenizer's new ids start at "
                                 f"{first_new_id}: the tokenizer was extended from a different base")
    bad = next(((n, i) for n, ids in sources.items() for i in ids if i >= first_new_id or i < 0), None)
    if bad is not None:
        raise VocabError(f"embedding init: new token {bad[0]} would be built from id {bad[1]}, not an old id")
    tie_flag = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    tied = tie_flag and _is_tied(model)
    old_in = emb.weight.detach()[:first_new_id].clone()
    head = model.get_output_embeddings()
    old_out = None if tied or head is None else head.weight.detach()[:first_new_id].clone()
    rows_after = max(rows_before, max(sources) + 1)
    if rows_after != rows_before:
        model.resize_token_embeddings(rows_after, mean_resizing=False)
        if tie_flag and not _is_tied(model):
            model.tie_weights()
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        for new_id, row in mean_rows(old_in, sources).items():
            weight[new_id] = row
        if old_out is not None:
            head_weight = model.get_output_embeddings().weight
            for new_id, row in mean_rows(old_out, sources).items():
                head_weight[new_id] = row
    return InitReport(first_new_id, len(sources), rows_before, rows_after, tied,
                      {k: tuple(v) for k, v in sorted(sources.items())})


def adapt_checkpoint(model_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                     out_dir: str | os.PathLike) -> InitReport:
    """Model of `model_dir` + extended tokenizer of `tokenizer_dir` → a loadable checkpoint in `out_dir`.

    `tokenizer_dir` must come from `rutune.data.vocab.extend_tokenizer_dir` on this model's own tokenizer
    (checked by fingerprint). Writes `save_pretrained` weights/config, the extended tokenizer files,
    `rutune_vocab.json` (fingerprints, sizes) and `rutune_vocab_init.json` (old ids behind each new row),
    atomically (built beside `out_dir`, then renamed).
    """
    from transformers import AutoModelForCausalLM

    model_dir, tokenizer_dir, out = Path(model_dir), Path(tokenizer_dir), Path(out_dir)
    record_path = tokenizer_dir / VOCAB_RECORD
    if not record_path.is_file():
        raise VocabError(f"tokenizer {tokenizer_dir}: no {VOCAB_RECORD}; make it with vocab.extend_tokenizer_dir")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    extended = load_tokenizer_json(tokenizer_dir)
    if fingerprint(extended) != record["fingerprint"]:
        raise VocabMismatchError(f"tokenizer {tokenizer_dir}: tokenizer.json does not match its {VOCAB_RECORD} "
                                 "(edited after extension?)")
    base_json, _ = effective_tokenizer_json(model_dir)
    if fingerprint(base_json) != record["base_fingerprint"]:
        raise VocabMismatchError(f"tokenizer {tokenizer_dir} was extended from tokenizer {record['base_fingerprint']}, "
                                 f"but model {model_dir} uses {fingerprint(base_json)}: extend this model's tokenizer")
    from transformers import AutoTokenizer

    old_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sources = old_tokenisations(old_tokenizer, new_token_ids(extended, record["first_new_id"]))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    report = init_new_embeddings(model, sources)
    tmp = out.with_name(f".{out.name}.adapting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp))
        for item in tokenizer_dir.iterdir():
            if item.is_file() and item.name != VOCAB_RECORD:
                shutil.copy2(item, tmp / item.name)
        write_json_atomic(tmp / VOCAB_RECORD, {
            "fingerprint": record["fingerprint"], "base_fingerprint": record["base_fingerprint"],
            "base_model": str(model_dir), "tokenizer": str(tokenizer_dir), **report.to_dict()})
        write_json_atomic(tmp / INIT_RECORD, {str(k): list(v) for k, v in report.sources.items()})
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


__all__ = ["INIT_RECORD", "InitReport", "adapt_checkpoint", "init_new_embeddings", "mean_rows", "new_token_ids",
           "old_tokenisations"]
