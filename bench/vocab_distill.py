"""Does training on the original model's own answers make the adapted model write Russian with its new tokens?

    OMP_NUM_THREADS=1 .venv/bin/python bench/vocab_distill.py [--start runs/vocab_smollm2/train/vocab/checkpoint]
        [--teacher-prompts 128] [--answer-tokens 96] [--steps 4 8 16] [--lr 2e-3] [--batch 8]
        [--texts 80] [--max-chars 2000] [--prompts 12] [--max-new-tokens 48] [--out runs/vocab_distill]

The speed goal of docs/vocab.md needs a model that writes the same Russian as the original with fewer, longer
tokens. After the `vocab` stage the adapted model writes loops and uses old short tokens (new-token share
0.1-0.3), because ~50k tokens of text teach it little about answering. This bench tries sequence-level
self-distillation: the original model answers merge-side Russian texts (greedy, batched; never a held-out text),
the answers are re-tokenised by the adapted tokenizer, and the adapted model (the `vocab` stage's checkpoint) is
trained on them with the SFT stage's LoRA and loss (answer tokens only). The targets are then canonical
adapted-tokenizer encodings of what the original would say, which is what "the same answers, faster" means.

Measured at each of `--steps` with `bench/vocab_curve.py`'s evaluation (bits/char on held-out texts, greedy
new-token share, chars/s, the answers themselves); the original model is evaluated first in the same process, so its
chars/s is taken at the same load. CPU seconds: teacher generation + training steps (evaluation excluded), on top of
the start checkpoint's own training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import vocab_curve as curve  # noqa: E402  (the curve's evaluation, budget and training loop)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapted-config", default=str(ROOT / "configs/experiments/vocab_smollm2.yaml"))
    p.add_argument("--base-config", default=str(ROOT / "configs/experiments/vocab_smollm2_base.yaml"))
    p.add_argument("--start", default=str(ROOT / "runs/vocab_smollm2/train/vocab/checkpoint"))
    p.add_argument("--teacher-prompts", type=int, default=128)
    p.add_argument("--prompt-chars", type=int, default=300)
    p.add_argument("--answer-tokens", type=int, default=96, help="teacher answer length, original-tokenizer tokens")
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--steps", nargs="+", type=int, default=[4, 8, 16])
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--texts", type=int, default=80)
    p.add_argument("--max-chars", type=int, default=2000)
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", default=str(ROOT / "runs/vocab_distill"))
    p.add_argument("--label", default="distill")
    p.add_argument("--skip-original", action="store_true")
    return p.parse_args(argv)


def teacher_prompts(n: int, chars: int, seed: int, held_out_share: float, split_seed: int) -> list[str]:
    """`n` merge-side texts of at least 40 characters, cut to `chars` (never a held-out text)."""
    from rutune.data.russian_text import merge_side_texts
    from rutune.eval.suites.vocab import cut_text

    texts = sorted({cut_text(t, chars) for t in merge_side_texts(held_out_share=held_out_share, seed=split_seed)
                    if len(t) >= 40})
    random.Random(seed).shuffle(texts)
    return texts[:n]


def teacher_answers(model, tokenizer, prompts: list[str], args, cache: Path, budget) -> list[str]:
    """Greedy answers of the original model, cached in `cache` (one JSON line per prompt)."""
    from rutune.data.onpolicy import generate_batch

    done = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            done[row["prompt"]] = row["answer"]
    todo = [p for p in prompts if p not in done]
    for i in range(0, len(todo), args.gen_batch):
        chunk = todo[i:i + args.gen_batch]
        rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                  tokenize=False) for p in chunk]
        with budget:
            answers = generate_batch(model, tokenizer, rendered, args.answer_tokens)
        with cache.open("a", encoding="utf-8") as f:
            for p, a in zip(chunk, answers):
                done[p] = a
                f.write(json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n")
        print(f"  teacher {i + len(chunk)}/{len(todo)}  cpu {budget.cpu:.0f}s", flush=True)
    return [done[p] for p in prompts]


def examples(tokenizer, prompts: list[str], answers: list[str]) -> list[dict]:
    """Chat rows (user → assistant) in the adapted tokenizer, masked as the SFT stage masks them (answer + end)."""
    from rutune.data.templates import tokenize_chats

    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
             for p, a in zip(prompts, answers) if a.strip()]
    return [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tokenizer, chats)]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from rutune.config import load_config
    from rutune.models import resolve_model_path
    from rutune.train.model_setup import apply_lora
    from rutune.train.stage_io import load_stage_tokenizer

    torch.set_num_threads(1)
    cfg = load_config(args.adapted_config)
    vstage = next(s for s in cfg.train.stages if s.recipe == "vocab")
    sstage = next(s for s in cfg.train.stages if s.recipe == "sft")
    items = curve.held_out(args.texts, curve.experiment_runs(args.adapted_config, args.base_config), args.max_chars)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "points.jsonl"
    budget = curve.Budget()

    original_path = resolve_model_path(cfg.base_model.path)
    teacher_tok = AutoTokenizer.from_pretrained(original_path)
    teacher = curve.load(original_path)
    if not args.skip_original:
        rows, gen = curve.evaluate(teacher, teacher_tok, items, args, None)
        curve.record(log, {"path": "original-base", "phase": "base", "step": 0, "cpu_s": 0.0, "wall_s": 0.0}, rows,
                     gen)
    prompts = teacher_prompts(args.teacher_prompts, args.prompt_chars, cfg.seed, vstage.text.held_out_share,
                              vstage.text.seed)
    teacher.config.use_cache = True
    answers = teacher_answers(teacher.eval(), teacher_tok, prompts, args, out / "teacher.jsonl", budget)
    del teacher

    tokenizer = load_stage_tokenizer(args.start)
    first_new_id = json.loads((Path(args.start) / "rutune_vocab.json").read_text())["first_new_id"]
    data = examples(tokenizer, prompts, answers)
    print(f"{len(data)} distillation rows, {sum(len(r['input_ids']) for r in data)} tokens, "
          f"{sum(1 for r in data for t in r['labels'] if t >= first_new_id)} new-token targets", flush=True)
    model = curve.load(args.start)
    for p in model.parameters():
        p.requires_grad_(False)
    with budget:
        model = apply_lora(model, sstage.lora, seed=cfg.seed)

    def point(m, step, loss):
        rows, gen = curve.evaluate(m, tokenizer, items, args, first_new_id)
        curve.record(log, {"path": args.label, "phase": "distill", "step": step, "cpu_s": budget.cpu,
                           "wall_s": budget.wall, "train_loss": loss, "lr": args.lr, "batch": args.batch,
                           "teacher_prompts": len(data)}, rows, gen)

    curve.train_points(model, curve.sft_batches(data, args.batch, cfg.seed), points=[0, *sorted(set(args.steps))],
                       lr=args.lr, warmup=round(sstage.warmup_ratio * max(args.steps)), weight_decay=sstage.weight_decay,
                       max_grad_norm=sstage.max_grad_norm, budget=budget, loss_fn=curve.sft_batch_loss,
                       on_point=lambda s, loss: point(model, s, loss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
