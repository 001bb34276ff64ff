"""On-policy preference pairs (the `on_policy` source): prompts and chosen answers from this run's prepared SFT
rows, rejected = a model's own greedy answer, generated once and cached.

- **Prompts.** Each `data.sft` row of the `from` source(s): prompt = the messages up to the last user turn, chosen =
  the last assistant answer (only answers whose Cyrillic share reaches `min_answer_russian_share`). Rows from
  `sft.parquet` give training pairs, rows from `sft_holdout.parquet` held-out pairs (split by prompt: the SFT block's
  dedup already keeps a first user turn in one split only). A held-out row is also dropped when its prompt equals a
  training row's or when its user turns + answer share a word 13-gram with any SFT training text
  (`contamination.overlap`), so held-out accuracy never measures what the SFT stage memorised.
- **Rejected.** The model's greedy continuation of the prompt rendered with its own chat template
  (`add_generation_prompt`), `max_new_tokens` new tokens, batched with left padding, special tokens removed.
  Pairs whose greedy answer equals the chosen one are dropped and counted (`greedy_equals_chosen`), as are empty
  greedy answers (`greedy_empty`). `chosen_max_tokens` cuts the chosen answer to its first N tokens.
- **Cache.** `<output_root>/_onpolicy/<key>.jsonl`, key = hash of (the model's weights and config/tokenizer files,
  the generation settings); one line per prompt (hash of the rendered prompt text → answer), appended and flushed
  after every batch. A rerun, another experiment with the same model and settings, or a resumed interrupted run
  generates only the prompts not yet in the file; a torn last line is ignored (and regenerated).
- **Identity.** `fingerprint` (part of the prepare stage's identity) is the weights hash, so other weights mean a
  new prepare and a new cache file; the generation settings are in the `data:` block the identity already covers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from rutune.data.filters import normalise, russian_share
from rutune.data.sources._common import DataError, seeded_unit
from rutune.rundir import model_hash, stable_hash

CACHE_DIR = "_onpolicy"
CACHE_FORMAT = 1


# ---------------------------------------------------------------- model and identity
def model_name(src, cfg) -> str:
    return cfg.base_model.path if src.model == "base" else src.model


def model_path(src, cfg, key: str) -> str:
    """The folder (or hub id) `from_pretrained` loads; a model that cannot be resolved is a DataError at `key`."""
    from rutune.models import ModelError, resolve_model_path

    try:
        if src.model == "base":
            return resolve_model_path(cfg.base_model.path, gguf_file=cfg.base_model.gguf_file)
        return resolve_model_path(src.model)
    except ModelError as e:
        raise DataError(f"{key}.model (on_policy): {model_name(src, cfg)}: {str(e).splitlines()[0]}") from None


def weights_hash(path: str) -> str:
    """Content hash of the weights, config and tokenizer files, chat template included (`rundir.model_hash`)."""
    return model_hash(path, (".safetensors", ".json", ".jinja"))


def _key_of(src, cfg) -> str:
    block = cfg.data.preference
    for i, s in enumerate(block.sources if block else []):
        if s is src:
            return f"data.preference.sources.{i}"
    return "data.preference.sources"


def fingerprint(src, cfg) -> dict:
    path = model_path(src, cfg, _key_of(src, cfg))
    return {"on_policy": model_name(src, cfg), "weights": weights_hash(path)}


def check(src, cfg, key: str) -> None:
    """Before any work: the `from` sources are data.sft entries and the model resolves."""
    sft = cfg.data.sft
    if sft is None:
        raise DataError(f"{key}.from (on_policy): needs data.sft (its rows give the prompts and chosen answers)")
    names = [s.name for s in sft.sources]
    for name in src.from_:
        if name not in names:
            raise DataError(f"{key}.from (on_policy): {name} is not a source of data.sft "
                            f"(data.sft.sources: {', '.join(names)})")
    model_path(src, cfg, key)


# ---------------------------------------------------------------- the cache
def prompt_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class GenerationCache:
    """Append-only JSONL of `{"prompt": <hash of the rendered prompt>, "answer": ...}` lines."""

    def __init__(self, path: Path):
        self.path = path
        self.answers: dict[str, str] = {}
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self.answers[entry["prompt"]] = entry["answer"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn line from an interrupted run: regenerated

    def add(self, items: list[tuple[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # finish a torn line so the new ones parse
                    f.write(b"\n")
            for k, answer in items:
                f.write((json.dumps({"prompt": k, "answer": answer}, ensure_ascii=False) + "\n").encode("utf-8"))
                self.answers[k] = answer
            f.flush()
            os.fsync(f.fileno())


def cache_file(output_root, weights: str, max_new_tokens: int) -> Path:
    key = stable_hash({"weights": weights, "max_new_tokens": max_new_tokens, "do_sample": False,
                       "format": CACHE_FORMAT})
    return Path(output_root) / CACHE_DIR / f"{key}.jsonl"


# ---------------------------------------------------------------- generation
def load_model(path: str, name: str, key: str):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{key}.model (on_policy): {name}: cannot load ({first})") from None
    return model.eval()


def _tokenizer(path: str, name: str, key: str):
    from rutune.data.templates import TemplateError, load_tokenizer

    try:
        return load_tokenizer(path)
    except TemplateError as e:
        raise DataError(f"{key}.model (on_policy): {name}: {e}") from None


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def generate_batch(model, tokenizer, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to rendered prompts, one left-padded batch; each cut at its first end-of-sequence token."""
    import torch

    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stops = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=stops, temperature=None, top_p=None, top_k=None)
    answers = []
    for row in out[:, width:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), len(row))
        answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return answers


def cut_to_tokens(tokenizer, text: str, n: int) -> str:
    """The longest prefix of `text` made of its first `n` tokens (cut at a token's character offset)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= n:
        return text
    return text[:enc["offset_mapping"][n - 1][1]].rstrip()


def generate_answers(prompts: list[list[dict]], *, tokenizer, path: str, name: str, key: str, max_new_tokens: int,
                     batch_size: int, output_root, show: bool = True) -> tuple[list[str], dict]:
    """Greedy answers to `prompts` (message lists), from the cache where present; returns (answers, info)."""
    texts = [render(tokenizer, p) for p in prompts]
    weights = weights_hash(path)
    cache = GenerationCache(cache_file(output_root, weights, max_new_tokens))
    todo = sorted({prompt_key(t): t for t in texts if prompt_key(t) not in cache.answers}.items(),
                  key=lambda kv: len(kv[1]))
    t0, generated = time.time(), 0
    if todo:
        model = load_model(path, name, key)
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            answers = generate_batch(model, tokenizer, [t for _, t in chunk], max_new_tokens)
            cache.add([(k, a) for (k, _), a in zip(chunk, answers)])
            generated += len(chunk)
            if show:
                print(f"on_policy: generated {generated}/{len(todo)} greedy answers ({name})", flush=True)
        del model
    info = {"model": name, "weights": weights, "cache": str(cache.path), "prompts": len(texts),
            "generated": generated, "from_cache": len(texts) - generated,
            "seconds": round(time.time() - t0, 1)}
    return [cache.answers[prompt_key(t)] for t in texts], info


# ---------------------------------------------------------------- rows for the prepare stage
def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.is_file() else []


def _prompt_text(messages: list[dict]) -> str:
    return normalise("\n".join(f"{m['role']}: {m['content']}" for m in messages))


def build_rows(src, cfg, prepare_dir: Path, key: str) -> tuple[Any, str, dict]:
    """The source's raw rows (`prompt`, `chosen`, `rejected`, `sft_split`, `skip`, ...) as a `datasets.Dataset`,
    a description for messages, and the generation info for the manifest."""
    import datasets

    from rutune.data.contamination import overlap

    train_rows, hold_rows = _read(prepare_dir / "sft.parquet"), _read(prepare_dir / "sft_holdout.parquet")
    train_prompts = {_prompt_text(r["messages"][:-1]) for r in train_rows}
    candidates, seen = [], set()
    for split, rows in (("train", train_rows), ("holdout", hold_rows)):
        for r in rows:
            if r["source"] not in src.from_:
                continue
            msgs = r["messages"]
            prompt, chosen = msgs[:-1], msgs[-1]["content"]
            text = _prompt_text(prompt)
            if (split, text) in seen:  # a row repeated by percent > 100
                continue
            seen.add((split, text))
            row = {"prompt": prompt, "chosen": chosen, "rejected": "", "sft_split": split,
                   "sft_row": json.loads(r.get("meta") or "{}").get("row"), "from": r["source"],
                   "model": model_name(src, cfg), "skip": None}
            if russian_share(chosen) < src.min_answer_russian_share:
                row["skip"] = "answer_not_russian"
            elif split == "holdout" and text in train_prompts:
                row["skip"] = "prompt_in_sft_train"
            candidates.append(row)
    held = {i: "\n".join([*(m["content"] for m in c["prompt"] if m["role"] == "user"), c["chosen"]])
            for i, c in enumerate(candidates) if c["sft_split"] == "holdout" and c["skip"] is None}
    if held:
        texts = ("\n".join(m["content"] for m in r["messages"] if m["role"] != "system") for r in train_rows)
        for i, hits in overlap(texts, held, n=cfg.data.contamination.ngram_words).items():
            if hits:
                candidates[i]["skip"] = "overlaps_sft_train"
    usable = [i for i, c in enumerate(candidates) if c["skip"] is None]
    if not usable:
        skipped: dict[str, int] = {}
        for c in candidates:
            skipped[c["skip"]] = skipped.get(c["skip"], 0) + 1
        raise DataError(f"{key}.from (on_policy): no usable prompts in the prepared data.sft rows of "
                        f"{', '.join(src.from_)} ({len(candidates)} rows; "
                        + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none read") + ")")
    if src.max_prompts is not None and len(usable) > src.max_prompts:
        ranked = sorted(usable, key=lambda i: seeded_unit(cfg.seed, "on_policy", candidates[i]["prompt"]))
        for i in ranked[src.max_prompts:]:
            candidates[i]["skip"] = "max_prompts"
        usable = sorted(ranked[:src.max_prompts])
    name, path = model_name(src, cfg), model_path(src, cfg, key)
    tokenizer = _tokenizer(path, name, key)
    if src.chosen_max_tokens is not None:
        for i in usable:
            candidates[i]["chosen"] = cut_to_tokens(tokenizer, candidates[i]["chosen"], src.chosen_max_tokens)
    answers, info = generate_answers([candidates[i]["prompt"] for i in usable], tokenizer=tokenizer, path=path,
                                     name=name, key=key, max_new_tokens=src.max_new_tokens,
                                     batch_size=src.batch_size, output_root=cfg.output_root)
    for i, answer in zip(usable, answers):
        candidates[i]["rejected"] = answer
    where = f"{key} (on_policy from {', '.join(src.from_)})"
    return datasets.Dataset.from_list(candidates), where, info


def split_by_sft(part_path: Path) -> tuple[list[int], list[int]]:
    """(training, held-out) row indices of the filtered pairs: held out = built from an SFT held-out row."""
    import pyarrow.parquet as pq

    metas = pq.read_table(part_path, columns=["meta"]).column("meta").to_pylist()
    held = [i for i, m in enumerate(metas) if json.loads(m or "{}").get("sft_split") == "holdout"]
    held_set = set(held)
    return [i for i in range(len(metas)) if i not in held_set], held
