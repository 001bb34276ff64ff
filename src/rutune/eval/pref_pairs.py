"""Held-out preference pairs: does the model's length-normalised log-prob prefer the chosen reply?

Per pair, each reply is scored after the prompt, both rendered with the model's own chat template by
`rutune.data.templates.tokenize_pair` (reply = assistant content + end-of-turn, what preference training scores):
M = Σ log p(reply tokens | prompt, earlier reply tokens) / |reply|. Item values: `correct` = 1 when M_chosen >
M_rejected (0/1, so two models are compared with McNemar's test), `margin` = M_chosen − M_rejected (nats per token;
paired bootstrap). Each reply is one unpadded forward (`eval.nll.sequence_nll`), so the numbers do not depend on
batching. Pairs whose replies are identical or empty are skipped and counted (`extra.skipped`).

Pairs come from `prepare/preference_holdout.parquet` (`data.preference.holdout_percent`) or a parquet/jsonl file with
`prompt` (a message list, or a string = one user turn), `chosen`, `rejected`. Items are keyed by source + a hash of
the pair, so they pair across models.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rutune.data.templates import IGNORE_INDEX, TemplateError, tokenize_pair
from rutune.eval.errors import EvalError
from rutune.eval.nll import sequence_nll
from rutune.items import ItemsLog
from rutune.rundir import file_hash, stable_hash, write_json_atomic
from rutune.stats import metric_entry


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        return [{"role": m.get("role"), "content": m.get("content")} for m in value]
    raise EvalError(f"{where}: `prompt` must be a message list or a string")


def load_pairs(path: str | Path, limit: int | None = None) -> tuple[list[dict], Counter]:
    """Rows as {id, source, prompt, chosen, rejected} and the skipped counts; EvalError names the file and row."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: preference pairs not found; set data.preference.holdout_percent (e.g. 10) and run "
                        "`rutune prepare CONFIG`, or give eval.preference.pairs")
    try:
        if path.suffix == ".jsonl":
            raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            import pyarrow.parquet as pq

            raw = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise EvalError(f"{path}: not a readable parquet/jsonl file of pairs ({type(e).__name__}: {e})") from None
    rows, skipped = [], Counter()
    for i, row in enumerate(raw):
        where = f"{path} row {i}"
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise EvalError(f"{where}: missing {', '.join(missing)}")
        chosen, rejected = row["chosen"], row["rejected"]
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise EvalError(f"{where}: chosen and rejected must be text")
        if not chosen.strip() or not rejected.strip():
            skipped["empty_response"] += 1
            continue
        if chosen == rejected:
            skipped["identical"] += 1
            continue
        prompt = _prompt(row["prompt"], where)
        source = row.get("source") or "pairs"
        rows.append({"id": f"{source}-{stable_hash([prompt, chosen, rejected])}", "source": source,
                     "prompt": prompt, "chosen": chosen, "rejected": rejected, "row": i})
    if not rows:
        raise EvalError(f"{path}: no usable pair among {len(raw)} rows ({dict(skipped) or 'empty file'})")
    return (rows[:limit] if limit else rows), skipped


def score_pair(model, tokenizer, row: dict, max_tokens: int) -> dict | None:
    """One item: the two replies' mean log-probs, `margin` and `correct`; None when the pair is over budget."""
    try:
        pair = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], max_tokens=max_tokens,
                             overlength="truncate_prompt")
    except TemplateError as e:
        raise EvalError(f"preference pair {row['id']}: {str(e).splitlines()[0]}") from None
    if pair is None:
        return None
    means = []
    for reply in (pair.chosen_ids, pair.rejected_ids):
        ids = list(pair.prompt_ids) + list(reply)
        nll, n = sequence_nll(model, ids, [IGNORE_INDEX] * len(pair.prompt_ids) + list(reply))
        means.append(-nll / n)
    margin = means[0] - means[1]
    return {"id": row["id"], "source": row["source"], "logp_chosen": means[0], "logp_rejected": means[1],
            "margin": margin, "correct": int(margin > 0), "chosen_tokens": len(pair.chosen_ids),
            "rejected_tokens": len(pair.rejected_ids)}


def run_pairs(cfg, backend_cfg, model_path: str, pairs_path: str | Path, out_dir: str | Path, *, backend=None,
              seed: int = 0, model_label: str | None = None, rounds: int = 1000) -> dict:
    """Score one model on the pairs; items.jsonl grows batch by batch (resumable), then results.json (unannotated:
    the suite adds the display blocks)."""
    rows, skipped = load_pairs(pairs_path, cfg.limit)
    fingerprint = {"suite": "preference", "model_path": str(model_path), "pairs": file_hash(pairs_path),
                   "max_tokens": cfg.max_tokens, "limit": cfg.limit, "dtype": backend_cfg.dtype}
    log = ItemsLog(out_dir, fingerprint)
    todo = [r for r in rows if r["id"] not in log.done]
    if todo and backend is None:
        from rutune.eval.backends import make_backend

        backend = make_backend(backend_cfg.model_copy(update={"kind": "hf"}), str(model_path))
    for start in range(0, len(todo), backend_cfg.batch_size):
        batch = todo[start:start + backend_cfg.batch_size]
        items = []
        for r in batch:
            item = score_pair(backend.model, backend.tokenizer, r, cfg.max_tokens)
            items.append(item or {"id": r["id"], "source": r["source"], "over_budget": True})
        log.append(items)
    ordered = log.ordered([r["id"] for r in rows])
    scored = [r for r in ordered if r.get("margin") is not None]
    metrics = {
        "pref_accuracy": metric_entry([r["correct"] for r in scored], n_total=len(rows), item_key="correct",
                                      rounds=rounds, seed=seed),
        "pref_margin": metric_entry([r["margin"] for r in scored], n_total=len(rows), item_key="margin",
                                    rounds=rounds, seed=seed),
    }
    extra = {"pairs": str(pairs_path), "max_tokens": cfg.max_tokens, "dtype": backend_cfg.dtype,
             "skipped": {**dict(skipped), "over_budget": len(ordered) - len(scored)},
             "unit": "accuracy: share of pairs with mean log-prob(chosen) > mean log-prob(rejected); margin: their "
                     "difference in nats per token",
             "sources": dict(sorted(Counter(r["source"] for r in rows).items()))}
    results = {"suite": "preference", "model": model_label or Path(str(model_path)).name,
               "model_path": str(model_path), "metrics": metrics, "extra": extra}
    write_json_atomic(Path(out_dir) / "results.json", results)
    return results


__all__ = ["load_pairs", "run_pairs", "score_pair"]
