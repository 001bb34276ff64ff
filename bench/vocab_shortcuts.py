"""Two cheaper ways to train new-token rows than a full embedding step, measured on SmolLM2 (docs/vocab.md).

    .venv/bin/python bench/vocab_shortcuts.py head-fit [--blocks 64] [--epochs 4] [--lr 1e-2]
    .venv/bin/python bench/vocab_shortcuts.py distill  [--layers 4] [--steps 20] [--batch 16] [--lr 2e-3]

A full embedding step of the `vocab` stage costs as much as an SFT step on CPU (~21 CPU-s for 2,040 tokens), because
the gradient of the input rows passes through all 30 layers. Both methods start from the mean-initialised adapted
checkpoint that `bench/vocab_curve.py` builds (`<out>/adapted/checkpoint`). They untie the LM head (a copy of the
tied matrix) so that input and output rows can be trained apart:

* `head-fit`: one no-grad forward over `--blocks` × 256-token blocks of merge-side text (the stage's training text)
  caches the final hidden states. The NEW output rows (old rows frozen) are then fitted by full-softmax NLL on those
  states: a convex problem. The old rows' log-sum-exp is computed once, so an epoch costs 8,000 rows, not 57,152.
* `distill`: the NEW input rows (the head stays at its mean init) are trained so that the residual stream after the
  first `--layers` decoder layers, at every boundary that the new and old tokenisations share, matches what the
  same layers give on the old tokenisation of the same text: MSE / teacher energy. The backward goes through
  `--layers` layers only. Every new-token boundary is an old-token boundary, because new merges only join old
  tokens.

Each method is evaluated like `bench/vocab_curve.py`: bits/char on the same 80 held-out 300-character texts, and 3
greedy generations of ≤ 32 tokens (new-token share, chars/s). It prints the training CPU seconds; one torch thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vocab_curve as vc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=["head-fit", "distill"])
    p.add_argument("--checkpoint", default=str(ROOT / "runs/vocab_curve/adapted/checkpoint"),
                   help="mean-initialised adapted checkpoint (bench/vocab_curve.py builds it)")
    p.add_argument("--blocks", type=int, default=64, help="head-fit: 256-token blocks of training text")
    p.add_argument("--epochs", type=int, default=4, help="head-fit: passes over the cached states")
    p.add_argument("--rows-per-batch", type=int, default=4096, help="head-fit: positions per optimiser step")
    p.add_argument("--layers", type=int, default=4, help="distill: decoder layers matched (and back-propagated)")
    p.add_argument("--steps", type=int, default=20, help="distill: optimiser steps")
    p.add_argument("--batch", type=int, default=16, help="distill: texts (≤ 600 chars) per step")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (head-fit 1e-2, distill 2e-3)")
    p.add_argument("--texts", type=int, default=80)
    p.add_argument("--prompts", type=int, default=3)
    return p.parse_args(argv)


def untie(model):
    """A separate LM head initialised as a copy of the tied matrix (what an untied adapted checkpoint would save)."""
    import torch

    weight = model.get_input_embeddings().weight
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(weight.detach().clone())
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return head


def head_fit(model, tokenizer, first_new_id, args):
    """Fit the new head rows on cached final hidden states; returns training CPU seconds."""
    import torch

    from rutune.data.russian_text import merge_side_texts
    from rutune.train.vocab_stage import text_blocks

    head = untie(model)
    blocks = text_blocks(tokenizer, merge_side_texts(held_out_share=0.25, seed=0), 256)
    random.Random(0).shuffle(blocks)
    blocks = blocks[:args.blocks]
    started = time.process_time()
    model.eval()
    feats, targets = [], []
    with torch.no_grad():
        for i in range(0, len(blocks), 8):
            ids = torch.tensor(blocks[i:i + 8])
            h = model.model(input_ids=ids).last_hidden_state  # after the final norm: what the head sees
            feats.append(h[:, :-1].reshape(-1, h.shape[-1]))
            targets.append(ids[:, 1:].reshape(-1))
        x_all, y_all = torch.cat(feats), torch.cat(targets)
        old_logits = x_all @ head.weight[:first_new_id].T
        lse_old = torch.logsumexp(old_logits, dim=1)
        is_new = y_all >= first_new_id
        old_target = old_logits.gather(1, y_all.clamp(max=first_new_id - 1)[:, None])[:, 0]
        del old_logits
    print(f"cached {len(y_all)} positions ({is_new.float().mean():.2f} with a new-token target), "
          f"cpu {time.process_time() - started:.0f}s", flush=True)
    rows = torch.nn.Parameter(head.weight.detach()[first_new_id:].clone())
    opt = torch.optim.Adam([rows], lr=args.lr or 1e-2)
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        total = 0.0
        for s in range(0, len(order), args.rows_per_batch):
            idx = order[s:s + args.rows_per_batch]
            logits = x_all[idx] @ rows.T
            lse = torch.logaddexp(lse_old[idx], torch.logsumexp(logits, 1))
            new_target = logits.gather(1, (y_all[idx] - first_new_id).clamp(min=0)[:, None])[:, 0]
            loss = (lse - torch.where(is_new[idx], new_target, old_target[idx])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: training NLL {total / len(y_all):.3f} nats/token, "
              f"cpu {time.process_time() - started:.0f}s", flush=True)
    with torch.no_grad():
        head.weight[first_new_id:] = rows
    return time.process_time() - started


def _chunks(texts, max_chars=600):
    out = []
    for t in texts:
        while t:
            c = t[:max_chars]
            if len(t) > max_chars and " " in c:
                c = c[:c.rfind(" ")]
            out.append(c)
            t = t[len(c):].lstrip()
    random.Random(0).shuffle(out)
    return out


def _aligned(old_tok, new_tok, text):
    """(old ids, new ids, old position of each new token's last byte): byte ends of the two tokenisations."""
    o = old_tok.encode(text, add_special_tokens=False)
    n = new_tok.encode(text, add_special_tokens=False)
    ends = lambda tok, ids: itertools.accumulate(len(s) for s in tok.convert_ids_to_tokens(ids))  # noqa: E731
    where = {e: i for i, e in enumerate(ends(old_tok, o))}
    return o, n, [where[e] for e in ends(new_tok, n)]


def distill(model, tokenizer, old_tokenizer, first_new_id, args, on_eval):
    """Match the first `--layers` layers' residual stream; returns training CPU seconds."""
    import torch

    from rutune.data.russian_text import merge_side_texts

    untie(model)
    emb = model.get_input_embeddings()
    layers = model.model.layers
    short = torch.nn.ModuleList(list(layers)[:args.layers])

    def states(ids_list):
        width = max(len(x) for x in ids_list)
        ids = torch.full((len(ids_list), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(ids_list), width), dtype=torch.long)
        for r, x in enumerate(ids_list):
            ids[r, :len(x)], mask[r, :len(x)] = torch.tensor(x), 1
        model.model.layers = short
        try:
            return model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        finally:
            model.model.layers = layers

    for p in model.parameters():
        p.requires_grad_(False)
    emb.weight.requires_grad_(True)
    opt = torch.optim.Adam([emb.weight], lr=args.lr or 2e-3)
    chunks = _chunks(merge_side_texts(held_out_share=0.25, seed=0))
    spent, k = 0.0, 0
    for step in range(args.steps):
        started = time.process_time()
        batch = [_aligned(old_tokenizer, tokenizer, chunks[(k + j) % len(chunks)]) for j in range(args.batch)]
        k += args.batch
        with torch.no_grad():
            teacher = states([b[0] for b in batch])
        student = states([b[1] for b in batch])
        err = sum(((student[r, :len(n)] - teacher[r, al]) ** 2).sum() for r, (_, n, al) in enumerate(batch))
        energy = sum((teacher[r, al] ** 2).sum() for r, (_, _, al) in enumerate(batch))
        loss = err / energy
        opt.zero_grad()
        loss.backward()
        emb.weight.grad[:first_new_id] = 0  # old rows keep their values (Adam state stays zero for them)
        opt.step()
        spent += time.process_time() - started
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step + 1}: relative MSE {loss.item():.4f}, cpu {spent:.0f}s", flush=True)
        if (step + 1) % 20 == 0 and step + 1 < args.steps:
            on_eval(f"step {step + 1}, cpu {spent:.0f}s")
    return spent


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from rutune.eval.suites.vocab import vocab_metrics
    from rutune.real_models import resolve_real_model
    from rutune.rundir import RunDir
    from rutune.train.stage_io import load_stage_tokenizer

    tokenizer = load_stage_tokenizer(args.checkpoint)
    first_new_id = json.loads((Path(args.checkpoint) / "rutune_vocab.json").read_text())["first_new_id"]
    model = vc.load(args.checkpoint)
    runs = [RunDir.for_experiment(ROOT / "runs", n) for n in ("vocab_smollm2", "vocab_smollm2_base")]
    items = vc.held_out(args.texts, runs, 300)
    ev_args = argparse.Namespace(prompts=args.prompts, max_new_tokens=32)

    def evaluate(tag):
        rows, gen = vc.evaluate(model, tokenizer, items, ev_args, first_new_id)
        m = vocab_metrics(rows, gen, rounds=1000, seed=0)
        b = m["bits_per_char"]
        print(f"{tag}: bits/char {b['value']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}], new-token share "
              f"{m['new_token_share']['value']:.3f}, chars/s {m['gen_chars_per_s']['value']:.1f}", flush=True)

    evaluate("mean init")
    if args.method == "head-fit":
        spent = head_fit(model, tokenizer, first_new_id, args)
    else:
        old = load_stage_tokenizer(resolve_real_model("smollm2-135m-instruct"))
        spent = distill(model, tokenizer, old, first_new_id, args, evaluate)
    evaluate(f"{args.method}, training cpu {spent:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
