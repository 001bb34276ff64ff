"""Held-out Russian: mean NLL per assistant token on rows kept out of training, and the answers' Cyrillic share.

Rows come from `prepare/sft_holdout.parquet` (`data.sft.holdout_percent`). Each row is rendered with the model's
own chat template and labelled exactly as SFT labels it (`rutune.data.templates.tokenize_chat`: assistant content
plus end-of-turn), cut to its first `max_tokens` tokens. Per item: `nll_sum` (nats) over the trained tokens,
`n_tokens`, and `nll_per_token` = nll_sum / n_tokens. The headline metric is the mean of `nll_per_token` over
items (each conversation weighs the same, so the report's paired test over items matches it); the token-weighted
mean and its perplexity are in `extra`.

Items are keyed by source + a hash of the messages, so the same row pairs across models. Only the positions
that predict a trained token go through the output layer (`logits_to_keep` with indices), one row at a time:
no padding, so the number does not depend on batching.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from rutune.data.templates import IGNORE_INDEX, TemplateError, tokenize_chat
from rutune.eval.errors import EvalError
from rutune.items import ItemsLog
from rutune.eval.language import answer_prompt, cyrillic_answers
from rutune.stats import metric_entry
from rutune.rundir import file_hash, stable_hash, write_json_atomic


def load_holdout(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a holdout parquet as {id, source, messages}; EvalError names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: held-out rows not found; set data.sft.holdout_percent (e.g. 10) and run "
                        "`rutune prepare CONFIG`")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise EvalError(f"{path}: not a readable parquet file ({type(e).__name__}); rerun `rutune prepare CONFIG`")
    if "messages" not in table.column_names:
        raise EvalError(f"{path}: has no `messages` column; rerun `rutune prepare CONFIG`")
    rows = []
    for i, row in enumerate(table.to_pylist()):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"] or []]
        if not any(m["role"] == "assistant" for m in messages):
            raise EvalError(f"{path}: row {i} has no assistant turn to score")
        source = row.get("source") or "rows"
        rows.append({"id": f"{source}-{stable_hash(messages)}", "source": source, "messages": messages})
    if not rows:
        raise EvalError(f"{path}: 0 held-out rows; raise data.sft.holdout_percent and re-prepare")
    return rows[:limit] if limit else rows


def sequence_nll(model, input_ids: list[int], labels: list[int]) -> tuple[float, int]:
    """(Σ −log p(label_t | tokens_<t), number of trained tokens) for one labelled sequence, in nats."""
    import torch

    targets = [t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
    if not targets:
        return 0.0, 0
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    keep = torch.tensor([t - 1 for t in targets], dtype=torch.long, device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[0].float()
    gold = torch.tensor([labels[t] for t in targets], dtype=torch.long, device=device)
    nll = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
    return float(nll), len(targets)


def score_row(model, tokenizer, row: dict, max_tokens: int) -> dict:
    """One held-out item's NLL numbers (the row cut to `max_tokens` tokens the way SFT truncates)."""
    try:
        chat = tokenize_chat(tokenizer, row["messages"])
    except TemplateError as e:
        raise EvalError(f"held-out row {row['id']}: {e}") from None
    nll_sum, n_tokens = sequence_nll(model, chat.input_ids[:max_tokens], chat.labels[:max_tokens])
    return {"id": row["id"], "source": row["source"], "nll_sum": nll_sum if n_tokens else None, "n_tokens": n_tokens,
            "nll_per_token": nll_sum / n_tokens if n_tokens else None,
            "truncated": len(chat.input_ids) > max_tokens}


def nll_metrics(rows: list[dict], *, rounds: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, extra) of results.json from item rows (docs/results-format.md)."""
    scored = [r for r in rows if r.get("nll_per_token") is not None]
    per_item = [float(r["nll_per_token"]) for r in scored]
    metrics = {"nll_per_token": metric_entry(per_item, n_total=len(rows), item_key="nll_per_token", rounds=rounds,
                                             seed=seed)}
    total_nll = sum(float(r["nll_sum"]) for r in scored)
    total_tokens = sum(int(r["n_tokens"]) for r in scored)
    token_mean = total_nll / total_tokens if total_tokens else math.nan
    extra = {"unit": "nats per assistant token (lower is better)", "token_weighted_nll": token_mean,
             "perplexity": math.exp(token_mean) if total_tokens else math.nan, "n_tokens": total_tokens,
             "truncated_items": sum(1 for r in rows if r.get("truncated"))}
    for key in ("cyrillic_share", "own_cyrillic_share"):
        shares = [float(r[key]) for r in rows if r.get(key) is not None]
        if shares:
            metrics[key] = metric_entry(shares, n_total=len(rows), item_key=key, rounds=rounds, seed=seed)
    if "cyrillic_share" in metrics:
        extra["cyrillic_share_unit"] = ("Cyrillic letters / all letters of the answer; own_: of the words not copied "
                                        "from the prompt (higher is more Russian)")
    return metrics, extra


def run_nll(cfg, backend_cfg, model_path: str, holdout_parquet: str | Path, out_dir: str | Path, *, backend=None,
            seed: int = 0, model_label: str | None = None, rounds: int = 1000) -> dict:
    """Score one model on the held-out rows; items.jsonl grows batch by batch (resumable), then results.json.

    The scores need the weights, so the model always loads with transformers (`eval.backend`'s dtype, device,
    window and trust_remote_code apply; its kind and batch size do not).
    """
    rows = load_holdout(holdout_parquet, cfg.limit)
    fingerprint = {"suite": "nll", "model_path": str(model_path), "holdout": file_hash(holdout_parquet),
                   "max_tokens": cfg.max_tokens, "max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit,
                   "dtype": backend_cfg.dtype}
    log = ItemsLog(out_dir, fingerprint)
    todo = [r for r in rows if r["id"] not in log.done]
    if todo and backend is None:
        from rutune.eval.backends import make_backend

        backend = make_backend(backend_cfg.model_copy(update={"kind": "hf"}),
                               str(model_path))
    for start in range(0, len(todo), backend_cfg.batch_size):
        batch = todo[start:start + backend_cfg.batch_size]
        items = [score_row(backend.model, backend.tokenizer, r, cfg.max_tokens) for r in batch]
        if cfg.max_new_tokens:
            answers = cyrillic_answers(backend, [answer_prompt(r["messages"]) for r in batch],
                                       max_new_tokens=cfg.max_new_tokens)
            for item, answer in zip(items, answers):
                item.update(answer)
        log.append(items)
    ordered = log.ordered([r["id"] for r in rows])
    metrics, extra = nll_metrics(ordered, rounds=rounds, seed=seed)
    extra.update({"holdout": str(holdout_parquet), "max_tokens": cfg.max_tokens, "max_new_tokens": cfg.max_new_tokens,
                  "dtype": backend_cfg.dtype,
                  "sources": dict(sorted(Counter(r["source"] for r in rows).items()))})
    results = {"suite": "nll", "model": model_label or Path(str(model_path)).name, "model_path": str(model_path),
               "metrics": metrics, "extra": extra}
    write_json_atomic(Path(out_dir) / "results.json", results)
    return results


__all__ = ["load_holdout", "nll_metrics", "run_nll", "score_row", "sequence_nll"]
