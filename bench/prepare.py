"""Benchmark: prepare (adapters → filters → mixture) + rendering + assistant masks, vs a raw batched tokenizer.

    .venv/bin/python bench/prepare.py [--rows 100000] [--tokenizer tiny|PATH]

Builds N synthetic conversations in the four sources' hub schemas by recombining sentences of the bundled
samples (so first user turns are mostly distinct and dedup does real work), then times, each in its own
child process so peak RSS is per side:

* rutune: `run_prepare` on those files + `tokenize_chats` (render with the chat template, labels) over the
  prepared parquet in streaming batches;
* peer: `tokenizer(texts)` in batches over the same rendered texts (no masks, no mixture) — the floor.

Prints rows/s for both, peak RSS of each, and `ratio: X` (rutune rows/s over raw tokenizer rows/s; goal ≥ 0.5).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "rutune" / "samples"
BATCH = 1000


def _sentences() -> list[str]:
    out = []
    for path in sorted(SAMPLES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("conversation", "messages"):
                for m in row.get(key) or []:
                    if m.get("role") != "documents":
                        out += [s.strip() + "." for s in m["content"].split(".") if len(s.split()) > 3]
    return out or ["Пример предложения для синтетического диалога номер один."] * 10


def build_sources(root: Path, rows: int, seed: int = 0) -> dict[str, Path]:
    """Synthetic rows: 50% GrandMaster, 30% saiga_scored, 20% RAG, with a realistic long tail of lengths."""
    rng = random.Random(seed)
    sents = _sentences()

    def text(lo, hi):
        n = min(int(rng.paretovariate(1.2) * lo), hi)
        return " ".join(rng.choice(sents) for _ in range(max(1, n)))

    def question():
        # Two to four sentences: recombined, so first user turns are mostly distinct, as in real data.
        return " ".join(rng.choice(sents) for _ in range(rng.randint(2, 4)))

    def turns(k):
        msgs = []
        for _ in range(k):
            msgs += [{"role": "user", "content": question()}, {"role": "assistant", "content": text(3, 60)}]
        return msgs

    files = {}
    shares = {"grandmaster_pro_max": 0.5, "saiga_scored": 0.3, "grounded_rag_ru_v2": 0.2}
    for name, share in shares.items():
        path = root / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(int(rows * share)):
                k = 1 + (rng.random() < 0.3) * rng.randint(1, 3)
                if name == "grandmaster_pro_max":
                    row = {"conversation": turns(k), "prompt_lang": "ru", "answer_lang": "ru", "source": "s",
                           "prompt_tokens": 1, "answer_tokens": 1, "cluster": i}
                elif name == "saiga_scored":
                    msgs = turns(k)
                    for m in msgs:
                        m["role"] = "bot" if m["role"] == "assistant" else m["role"]
                    row = {"messages": msgs, "opus_score": rng.randint(6, 10), "is_bad_by_regex": False,
                           "language": "Russian"}
                else:
                    docs = [{"doc_id": d, "title": None, "content": text(5, 40)} for d in range(rng.randint(1, 4))]
                    row = {"type": "good", "conversation": [
                        {"role": "documents", "content": json.dumps(docs, ensure_ascii=False)},
                        {"role": "user", "content": question()},
                        {"role": "assistant", "content": '{"relevant_doc_ids": [0]}'},
                        {"role": "assistant", "content": text(2, 20)}]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        files[name] = path
    return files


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_rutune(root: str, tok_path: str, q) -> None:
    import datasets

    from rutune.config import parse_config
    from rutune.data.prepare import run_prepare
    from rutune.data.templates import load_tokenizer, tokenize_chats

    files = {p.stem: p for p in Path(root).glob("*.jsonl")}
    cfg = parse_config({"name": "bench", "output_root": str(Path(root) / "runs"), "data": {"sft": {
        "max_tokens": 100_000,
        "sources": [{"name": n, "path": str(p), "percent": 100} for n, p in sorted(files.items())]}}})
    tok = load_tokenizer(tok_path)
    t0 = time.perf_counter()
    manifest = run_prepare(cfg, force=True)
    t_prepare = time.perf_counter() - t0
    ds = datasets.Dataset.from_parquet(str(Path(root) / "runs" / "bench" / "prepare" / "sft.parquet"))
    n_tokens = 0
    texts_out = Path(root) / "rendered.jsonl"
    t1 = time.perf_counter()
    for start in range(0, len(ds), BATCH):
        batch = ds[start:start + BATCH]["messages"]
        for r in tokenize_chats(tok, batch):
            n_tokens += len(r.input_ids) if r else 0
    t_tok = time.perf_counter() - t1
    # The peer gets exactly the texts we rendered (rendering them again is not timed on our side).
    from rutune.data.templates import render

    with open(texts_out, "w", encoding="utf-8") as f:
        for start in range(0, len(ds), BATCH):
            for msgs in ds[start:start + BATCH]["messages"]:
                f.write(json.dumps(render(tok, msgs), ensure_ascii=False) + "\n")
    q.put({"rows": manifest["sft"]["rows"], "seconds": t_prepare + t_tok, "prepare_s": t_prepare,
           "tokenize_s": t_tok, "tokens": n_tokens, "peak_rss_mb": _peak_rss_mb(),
           "dropped": {s["source"]: s["dropped"] for s in manifest["sft"]["sources"]}})


def run_peer(root: str, tok_path: str, q) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    texts_path = Path(root) / "rendered.jsonl"
    t0 = time.perf_counter()
    rows = tokens = 0
    batch: list[str] = []
    with open(texts_path, encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == BATCH:
                tokens += sum(len(x) for x in tok(batch, add_special_tokens=False)["input_ids"])
                rows += len(batch)
                batch = []
    if batch:
        tokens += sum(len(x) for x in tok(batch, add_special_tokens=False)["input_ids"])
        rows += len(batch)
    q.put({"rows": rows, "seconds": time.perf_counter() - t0, "tokens": tokens, "peak_rss_mb": _peak_rss_mb()})


def _child(fn, *args) -> dict:
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--tokenizer", default="tiny")
    args = ap.parse_args()
    from rutune.models import resolve_model_path

    tok_path = resolve_model_path(args.tokenizer)
    with tempfile.TemporaryDirectory() as root:
        build_sources(Path(root), args.rows)
        ours = _child(run_rutune, root, tok_path)
        peer = _child(run_peer, root, tok_path)
    our_rate = ours["rows"] / ours["seconds"]
    peer_rate = peer["rows"] / peer["seconds"]
    print(f"rutune: {ours['rows']} rows in {ours['seconds']:.1f} s (prepare {ours['prepare_s']:.1f} s, render+masks "
          f"{ours['tokenize_s']:.1f} s) = {our_rate:.0f} rows/s, {ours['tokens']} tokens, "
          f"peak RSS {ours['peak_rss_mb']:.0f} MB; drops {ours['dropped']}")
    print(f"raw tokenizer(texts): {peer['rows']} rows in {peer['seconds']:.1f} s = {peer_rate:.0f} rows/s, "
          f"{peer['tokens']} tokens, peak RSS {peer['peak_rss_mb']:.0f} MB")
    print(f"ratio: {our_rate / peer_rate:.2f}")


if __name__ == "__main__":
    sys.exit(main())
