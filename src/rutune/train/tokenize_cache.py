"""Tokenised datasets cached as Arrow beside the run, once per (data, tokenizer + chat template, length policy)."""

from __future__ import annotations

from pathlib import Path

from rutune.rundir import read_json, write_json_atomic


def cached_tokenization(tokenizer, parquet: Path, tokenize_batch, *, kind: str, data_hash: str | None,
                        max_tokens: int, overlength: str, cache_dir: Path, with_indices: bool = False):
    """Tokenise a prepared parquet once per (data, tokenizer+template, length policy) with `datasets.map`, on the
    main process first (the other processes of a distributed run then load its Arrow cache).

    `tokenize_batch(batch[, indices], counts=…)` fills `counts` (kept / truncated / dropped…); the counts of the run
    that built the Arrow cache are stored beside it, so a cached rerun reports the same numbers. Returns
    (raw dataset, tokenised dataset, counts).
    """
    import functools

    import datasets
    from accelerate import PartialState

    from rutune.data.templates import template_hash
    from rutune.rundir import file_hash, stable_hash

    key = stable_hash({"data": data_hash or file_hash(parquet), "template": template_hash(tokenizer),
                       "max_tokens": max_tokens, "overlength": overlength, "v": 1})
    arrow = cache_dir / f"{kind}-{key}.arrow"
    counts_path = cache_dir / f"{kind}-{key}.counts.json"
    # Under torchrun the main process builds the cache while the others wait, then they read it. PartialState
    # starts the process group from the environment if the Trainer has not yet (one process: no-op, no barrier).
    with PartialState().main_process_first():
        cache_dir.mkdir(parents=True, exist_ok=True)
        raw = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(cache_dir / "hf"))
        counts: dict[str, int] = {}
        was_cached = arrow.exists() and counts_path.exists()
        ds = raw.map(functools.partial(tokenize_batch, counts=counts), batched=True, batch_size=1000,
                     with_indices=with_indices, remove_columns=raw.column_names, cache_file_name=str(arrow),
                     load_from_cache_file=was_cached, new_fingerprint=key, desc=f"tokenize {kind}")
        if was_cached:
            counts = read_json(counts_path)
        else:
            write_json_atomic(counts_path, counts)
    return raw, ds, counts
