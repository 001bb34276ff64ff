"""ruMMLU scoring speed: rutune's hf backend vs lm-eval 0.4.13's HF backend vs bare forward passes.

Same tiny model, same questions: synthetic 4-option questions with ~390-token prompts built from the
ruBABILong filler text, batch size 8. rutune and the limit take the best of `--repeats` interleaved runs
after a warm-up. Times are process CPU seconds on one thread, not wall time: on a shared machine wall time
mostly measures the neighbours, and a second thread adds OpenMP spin-waits to CPU time. The script checks
that rutune and lm-eval predict the same letter for every question, then prints questions/s and the ratios:

    rutune / lm-eval      goal ≥ 4× at a vocabulary of a few thousand, ≥ 10× at 32k
    rutune / bare limit   goal ≥ 0.9×  (the limit: one batched forward per question over the same
                          length-sorted, already tokenised prompts, last-position logits only)
    rutune / packed limit the same forwards in rutune's own layout (one unpadded row per batch,
                          per-sequence attention): what is left is tokenisation and bookkeeping

The last line is `ratio: X`: rutune / lm-eval questions/s at the first `--vocab` (rutune / limit with
`--skip-lm-eval`); peak RSS is printed before it.

Run:  .venv/bin/python bench/mmlu.py --questions 96 --vocab 4096 32768
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import torch


def synthetic_questions(n: int, seed: int = 0, sentences: int = 14):
    from rutune.eval.babilong_gen import filler_sentence
    from rutune.eval.mmlu_data import DOMAINS, Question

    rng = random.Random(seed)
    domains = DOMAINS[:10]
    out = []
    for i in range(n):
        text = " ".join(filler_sentence(rng) for _ in range(sentences)) + " Что из этого верно?"
        options = tuple(filler_sentence(rng) for _ in range(4))
        out.append(Question(id=f"bench-{i}", domain=domains[i % 10], question=text, options=options,
                            gold="ABCD"[rng.randrange(4)], subject="тема"))
    return out


def bench_rutune(backend, contexts):
    from rutune.eval.mmlu import score_questions

    t = time.process_time()
    rows = score_questions(backend, [(q, ctx, 0) for q, ctx in contexts])
    return time.process_time() - t, [r["pred"] for r in rows]


def bench_lm_eval(model_dir: Path, contexts, batch_size: int, repeats: int = 2):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(model_dir), batch_size=batch_size, device="cpu", dtype="float32")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, " " + letter), idx=j)
                for _, ctx in contexts for j, letter in enumerate("ABCD")]
    elapsed = float("inf")
    for _ in range(repeats):  # best of N, like rutune's
        t = time.process_time()
        results = lm.loglikelihood(requests, disable_tqdm=True)
        elapsed = min(elapsed, time.process_time() - t)
    preds = []
    for n in range(len(contexts)):
        lps = [results[4 * n + j][0] for j in range(4)]
        preds.append("ABCD"[max(range(4), key=lambda j: lps[j])])
    return elapsed, preds


@torch.inference_mode()
def bench_limit(backend, contexts, *, tokenise: bool = False, packed: bool = False):
    """One forward per question over the same length-sorted prompts; last-position logits only.

    `tokenise=True` adds one batched tokenisation of the prompts to the timed part (the least any
    scorer has to do besides the forwards). `packed=True` runs each batch the way rutune does (one
    unpadded row, per-sequence attention) instead of left-padded: the limit of rutune's own layout.
    """
    seqs = []
    for _, ctx in contexts:
        seqs.append(max((backend.encode_pair(ctx, " " + x)[0] + backend.encode_pair(ctx, " " + x)[1][:-1]
                         for x in "ABCD"), key=len))
    seqs.sort(key=len, reverse=True)
    t = time.process_time()
    if tokenise:
        backend.tokenizer([ctx for _, ctx in contexts], add_special_tokens=False)
    for start in range(0, len(seqs), backend.batch_size):
        batch = seqs[start:start + backend.batch_size]
        if packed:
            from rutune.eval.backend_hf import _Group

            backend._tail_logits([_Group(tokens=s, members=[]) for s in batch], [len(s) - 1 for s in batch])
            continue
        ids, mask, pos = backend._left_pad(batch)
        backend.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="1 keeps CPU time honest (no OpenMP spin-waits).")
    ap.add_argument("--repeats", type=int, default=3, help="Best of N interleaved runs (rutune and limit).")
    ap.add_argument("--skip-lm-eval", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rutune.eval.backend_hf import HFBackend
    from rutune.eval.mmlu import build_prompt
    from rutune.models import build_tiny_model

    questions = synthetic_questions(args.questions)
    contexts = [(q, build_prompt(q, [], "mera")) for q in questions]
    print(f"{len(questions)} questions, batch {args.batch_size}, {args.threads} threads")
    headline = None  # rutune / lm-eval (rutune / limit with --skip-lm-eval) at the first vocabulary
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            model_dir = build_tiny_model(Path(tmp) / f"v{vocab}", vocab_size=vocab)
            backend = HFBackend(str(model_dir), batch_size=args.batch_size)
            n_tokens = sum(len(backend.tokenizer(c)["input_ids"]) for _, c in contexts) / len(contexts)
            bench_rutune(backend, contexts)  # warm-up: every batch shape once
            t_ours, t_limit, t_limit_tok, t_packed = float("inf"), float("inf"), float("inf"), float("inf")
            for _ in range(args.repeats):  # interleaved, best of N: the machine is shared and noisy
                elapsed, ours = bench_rutune(backend, contexts)
                t_ours = min(t_ours, elapsed)
                t_limit = min(t_limit, bench_limit(backend, contexts))
                t_limit_tok = min(t_limit_tok, bench_limit(backend, contexts, tokenise=True))
                t_packed = min(t_packed, bench_limit(backend, contexts, packed=True))
            line = (f"vocab {vocab:>6}: prompt {n_tokens:.0f} tok | rutune {len(contexts) / t_ours:7.1f} q/s | "
                    f"limit {len(contexts) / t_limit:7.1f} q/s ({t_limit / t_ours:.2f}× of limit, "
                    f"{t_limit_tok / t_ours:.2f}× of limit+tokenise, {t_packed / t_ours:.2f}× of packed limit)")
            ratio = t_limit / t_ours
            if not args.skip_lm_eval:
                t_theirs, theirs = bench_lm_eval(model_dir, contexts, args.batch_size)
                ratio = t_theirs / t_ours
                same = sum(a == b for a, b in zip(ours, theirs))
                line += (f" | lm-eval {len(contexts) / t_theirs:6.1f} q/s | rutune/lm-eval {t_theirs / t_ours:5.1f}× "
                         f"| same predictions {same}/{len(contexts)}")
            print(line, flush=True)
            headline = ratio if headline is None else headline
    print(f"peak RSS (one process: model, rutune, lm-eval): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"ratio: {headline:.2f}")


if __name__ == "__main__":
    main()
