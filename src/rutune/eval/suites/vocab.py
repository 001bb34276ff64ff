"""Vocabulary-efficiency suite for any model: chars/token, tokens/word, bits per character, Russian generation speed.

Text: the held-out side of `rutune.data.russian_text` (the bundled sample documents the `vocab` stage neither
learned merges from nor trained on; same `held_out_share`/`seed` as the stage), minus any text that occurs in the
experiment's prepared training data (`prepare/*.parquet`), each cut to `max_chars` characters at a space. Items
are keyed by `<file>:<row>:<message>`, so the same texts pair across models whatever their tokenizers.

Per text (`items.jsonl`): characters, words, tokens (no specials), and the NLL of the text's tokens given the
end-of-text token as the only context (`rutune.eval.nll.sequence_nll`), in bits. Aggregates are ratios of sums
(Σ chars / Σ tokens, Σ tokens / Σ words, Σ bits / Σ chars) with item-bootstrap CIs; bits per character is
comparable across tokenizers because every model scores the same characters from the same context.

Generation (`generation.jsonl`): the first `prompts` texts (cut to `prompt_chars`) as one-turn chats, greedy,
`max_new_tokens` new tokens at most, batch 1, one untimed warm-up; per prompt the decoded answer (`text`: a fast
loop is no speed-up), wall seconds, its characters, generated ids, and the share of them that are new tokens
(ids ≥ the tokenizer's first new id, 0 for a tokenizer that was never extended), and its repeated word 4-grams
(`Gen rep-4` = Σ repeated / Σ 4-grams, seq-rep-4: near 0 for prose, towards 1 for a loop) and Cyrillic letters
(`Gen Cyrillic share` = Σ Cyrillic / Σ letters: near 1 for Russian, low for code or English). Speed = Σ characters /
Σ seconds; `extra.timing` records threads, device and the load average, which on shared CPUs moves the number
more than anything else.
"""

from __future__ import annotations

import math
from pathlib import Path

from rutune.eval.suites import EvalRequest, Suite, file_inputs, values_summary
from rutune.results import annotate, display
from rutune.schema import NonNegativeInt, Number, PositiveInt, Strict
from pydantic import Field

TRAINING_FILES = ("sft.parquet", "preference.parquet")


class VocabConfig(Strict):
    """`held_out_share`/`split_seed`: the text split; must equal the `vocab` stage's `text.held_out_share`/`seed`.
    `limit`: first held-out texts only. `prompts`: generation prompts (0 skips the speed measurement)."""

    held_out_share: Number = Field(default=0.25, gt=0, lt=1)
    split_seed: NonNegativeInt = 0
    limit: PositiveInt | None = None
    max_chars: PositiveInt = 2000
    prompts: NonNegativeInt = 8
    prompt_chars: PositiveInt = 300
    max_new_tokens: PositiveInt = 64


# ---------------------------------------------------------------- pure helpers
def cut_text(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters, at the last whitespace before the cut when there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    space = head.rstrip().rfind(" ")
    return head[:space] if space > max_chars // 2 else head


def ratio_ci(num, den, *, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(Σnum/Σden, CI low, CI high): items resampled with replacement, the ratio of sums recomputed each round."""
    import numpy as np

    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if len(a) == 0 or len(a) != len(b) or b.sum() == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(rounds, len(a)))
    sums = b[idx].sum(axis=1)
    samples = a[idx].sum(axis=1)[sums > 0] / sums[sums > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(a.sum() / b.sum()), float(low), float(high)


def paired_ratio(a_num, a_den, b_num, b_den, *, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Ratio of two models' aggregate ratios on the same items, (Σa_num/Σa_den) / (Σb_num/Σb_den), with a paired
    bootstrap CI (the same resampled items for both) and a two-sided p-value for "the ratio is 1"."""
    import numpy as np

    arrays = [np.asarray(x, dtype=float) for x in (a_num, a_den, b_num, b_den)]
    n = len(arrays[0])
    if n == 0 or any(len(x) != n for x in arrays):
        raise ValueError(f"paired ratio needs the same items: lengths {[len(x) for x in arrays]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(rounds, n))
    s = [x[idx].sum(axis=1) for x in arrays]
    samples = (s[0] / s[1]) / (s[2] / s[3])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    point = (arrays[0].sum() / arrays[1].sum()) / (arrays[2].sum() / arrays[3].sum())
    p = 2.0 * min(float(np.mean(samples <= 1.0)), float(np.mean(samples >= 1.0)))
    return {"ratio": float(point), "ci_low": float(low), "ci_high": float(high), "p_value": min(1.0, p), "n": n}


def _entry(num, den, n_total: int, item_key: str, rounds: int, seed: int) -> dict:
    value, low, high = ratio_ci(num, den, rounds=rounds, seed=seed)
    return {"value": value, "ci_low": low, "ci_high": high, "n_valid": len(num), "n_total": n_total,
            "item_key": item_key}


# ---------------------------------------------------------------- texts
def training_texts(run_dir) -> tuple[set[str], list[Path]]:
    """Every string in the experiment's prepared training data (None run dir → nothing), and the files read."""
    if run_dir is None:
        return set(), []
    import pyarrow.parquet as pq

    out: set[str] = set()
    files = [run_dir.prepare / f for f in TRAINING_FILES if (run_dir.prepare / f).is_file()]

    def walk(v):
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for path in files:
        for row in pq.read_table(path).to_pylist():
            walk(row)
    return out, files


def heldout(cfg: VocabConfig, run_dir) -> tuple[list[tuple[str, str]], int]:
    """(id, cut text) of the measurement texts, and how many held-out texts were dropped as training text."""
    from rutune.data.russian_text import heldout_items
    from rutune.data.vocab_bpe import VocabError
    from rutune.eval.errors import EvalError

    try:
        items = heldout_items(held_out_share=cfg.held_out_share, seed=cfg.split_seed)
    except VocabError as e:
        raise EvalError(f"eval vocab: {e}") from None
    seen, _ = training_texts(run_dir)
    kept = [(i, cut_text(t, cfg.max_chars)) for i, t in items if t not in seen]
    if not kept:
        raise EvalError("eval vocab: every held-out text also occurs in the prepared training data")
    return (kept[:cfg.limit] if cfg.limit else kept), len(items) - len(kept)


# ---------------------------------------------------------------- measuring
def text_row(model, tokenizer, item_id: str, text: str) -> dict:
    """One text's counts and NLL (bits) of its tokens after the end-of-text token."""
    from rutune.data.templates import IGNORE_INDEX
    from rutune.eval.nll import sequence_nll

    ids = tokenizer.encode(text, add_special_tokens=False)
    start = tokenizer.eos_token_id
    nll, n = sequence_nll(model, [start, *ids], [IGNORE_INDEX, *ids])
    bits = nll / math.log(2)
    return {"id": item_id, "chars": len(text), "words": len(text.split()), "tokens": len(ids), "bits": bits,
            "chars_per_token": len(text) / len(ids), "tokens_per_word": len(ids) / max(1, len(text.split())),
            "bits_per_char": bits / len(text), "scored_tokens": n}


def generation_rows(model, tokenizer, prompts: list[tuple[str, str]], *, max_new_tokens: int,
                    first_new_id: int | None) -> list[dict]:
    """Greedy answers one prompt at a time, each timed alone (after one untimed warm-up)."""
    import time

    import torch

    from rutune.data.vocab_metrics import cyrillic_letters, repeated_ngrams

    device = next(model.parameters()).device
    eos = [i for i in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
           if isinstance(i, int)]

    def answer(text: str):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        started, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        new = [t for t in out[0, ids.shape[1]:].tolist()]
        new = new[: next((k for k, t in enumerate(new) if t in eos), len(new))]
        return new, seconds, cpu_s

    answer(prompts[0][1][:40])  # warm-up: first-call allocations are not Russian generation speed
    rows = []
    for item_id, text in prompts:
        new, seconds, cpu_s = answer(text)
        answer_text = tokenizer.decode(new, skip_special_tokens=True)
        chars = len(answer_text)
        n_new = sum(1 for t in new if first_new_id is not None and t >= first_new_id)
        repeated, grams = repeated_ngrams(answer_text, 4)
        cyrillic, letters = cyrillic_letters(answer_text)
        # the answer itself, its repeated 4-grams and its Cyrillic letters, so a speed can be read against what
        # was generated (a loop, or code instead of Russian, is fast and useless)
        rows.append({"id": item_id, "text": answer_text, "generated_tokens": len(new), "chars": chars,
                     "seconds": seconds, "cpu_seconds": cpu_s, "chars_per_s": chars / seconds if seconds > 0 else None,
                     "new_tokens": n_new, "new_token_share": n_new / len(new) if new else None,
                     "repeated_4grams": repeated, "word_4grams": grams,
                     "repeat_4": repeated / grams if grams else None,
                     "cyrillic_letters": cyrillic, "letters": letters,
                     "cyrillic_share": cyrillic / letters if letters else None})
    return rows


def vocab_metrics(rows: list[dict], gen: list[dict], *, rounds: int, seed: int) -> dict:
    """The metrics block from item rows (ratios of sums with item-bootstrap CIs)."""
    n = len(rows)
    metrics = {
        "chars_per_token": _entry([r["chars"] for r in rows], [r["tokens"] for r in rows], n, "chars_per_token",
                                  rounds, seed),
        "tokens_per_word": _entry([r["tokens"] for r in rows], [r["words"] for r in rows], n, "tokens_per_word",
                                  rounds, seed),
        "bits_per_char": _entry([r["bits"] for r in rows], [r["chars"] for r in rows], n, "bits_per_char",
                                rounds, seed),
    }
    if gen:
        metrics["gen_chars_per_s"] = _entry([g["chars"] for g in gen], [g["seconds"] for g in gen], len(gen),
                                            "chars_per_s", rounds, seed)
        metrics["new_token_share"] = _entry([g["new_tokens"] for g in gen], [g["generated_tokens"] for g in gen],
                                            len(gen), "new_token_share", rounds, seed)
        if sum(g["word_4grams"] for g in gen):
            metrics["gen_repeat_4"] = _entry([g["repeated_4grams"] for g in gen], [g["word_4grams"] for g in gen],
                                             len(gen), "repeat_4", rounds, seed)
        if sum(g["letters"] for g in gen):
            metrics["gen_cyrillic_share"] = _entry([g["cyrillic_letters"] for g in gen], [g["letters"] for g in gen],
                                                   len(gen), "cyrillic_share", rounds, seed)
    return metrics


def run(req: EvalRequest) -> dict:
    import json
    import os

    import torch

    from rutune.data.vocab import check_vocab_pairing, extension_of
    from rutune.data.vocab_bpe import VocabError
    from rutune.eval.backends import make_backend
    from rutune.eval.errors import EvalError
    from rutune.rundir import write_json_atomic, write_text_atomic

    cfg = req.cfg
    items, excluded = heldout(cfg, req.run_dir)
    backend = make_backend(req.backend.model_copy(update={"kind": "hf"}), str(req.model_path))
    folder = Path(backend.model_path)
    try:
        if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
            check_vocab_pairing(folder, folder)
    except VocabError as e:
        raise EvalError(str(e)) from None
    model, tokenizer = backend.model, backend.tokenizer
    extension = extension_of(tokenizer)
    rows = [text_row(model, tokenizer, i, t) for i, t in items]
    prompts = [(i, cut_text(t, cfg.prompt_chars)) for i, t in items[:cfg.prompts]]
    gen = generation_rows(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                          first_new_id=extension["first_new_id"] if extension else None) if prompts else []
    req.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(req.out_dir / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(req.out_dir / "generation.jsonl",
                      "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gen))
    results = {"suite": "vocab", "model": req.model_label, "model_path": req.model_path,
               "metrics": vocab_metrics(rows, gen, rounds=req.rounds, seed=req.seed),
               "extra": {"texts": len(rows), "chars": sum(r["chars"] for r in rows), "excluded_training_texts":
                         excluded, "split": {"held_out_share": cfg.held_out_share, "seed": cfg.split_seed},
                         "vocab_size": len(tokenizer), "extension": extension,
                         "bits_context": "end-of-text token only",
                         "timing": {"prompts": len(gen), "max_new_tokens": cfg.max_new_tokens, "batch_size": 1,
                                    "greedy": True, "device": str(next(model.parameters()).device),
                                    "dtype": str(next(model.parameters()).dtype),
                                    "torch_threads": torch.get_num_threads(),
                                    "load_average": list(os.getloadavg())}}}
    annotate(results, {
        "chars_per_token": display("Chars/token", decimals=2, test="paired_bootstrap", order=60,
                                   item_key="chars_per_token"),
        "tokens_per_word": display("Tokens/word", decimals=2, direction="lower", test="paired_bootstrap", order=61,
                                   item_key="tokens_per_word"),
        "bits_per_char": display("Bits/char", decimals=3, direction="lower", test="paired_bootstrap", order=62,
                                 item_key="bits_per_char"),
        "gen_chars_per_s": display("Gen chars/s", decimals=1, test="paired_bootstrap", order=63,
                                   items_file="generation.jsonl", item_key="chars_per_s"),
        "new_token_share": display("New-token share", decimals=3, direction="none", order=64),
        "gen_repeat_4": display("Gen rep-4", decimals=3, direction="lower", order=65),
        "gen_cyrillic_share": display("Gen Cyrillic share", decimals=3, direction="none", order=66),
    })
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def inputs(cfg: VocabConfig, run_dir) -> list[str]:
    """The bundled samples (the texts) and the prepared training files (the exclusion)."""
    from rutune.data.russian_text import SAMPLES_DIR

    samples = sorted(SAMPLES_DIR.glob("*.jsonl"))
    prepared = [run_dir.prepare / f for f in TRAINING_FILES] if run_dir is not None else []
    return file_inputs(*samples, *prepared)


SUITE = Suite("vocab", VocabConfig, run, title="Russian chars/token, tokens/word, bits/char and generation speed.",
              summary=values_summary("vocab"), inputs=inputs, order=60)
