"""SFT throughput: rutune vs TRL 1.16 `SFTTrainer` (padded default, and `packing=True`), and vs a bare torch loop.

Same tiny Qwen2 model (vocab ~4k, and 32k), same long-tailed chat mix (80% short chats, 20% long RAG dialogs),
same learning rate and schedule, assistant-only loss everywhere. Each contender runs in its own process (so peak
RSS is its own) for `--steps` optimizer steps; the first `--warmup` steps are not timed.

Reported: trained (non-masked) tokens per second, step time, peak RSS, and the loss curve. Ratios printed:
rutune / TRL default, rutune / TRL packing, and rutune step time / bare-loop step time on the same packed batches
(the bare loop is forward + backward + AdamW step, nothing else; median of the step-by-step ratios, as both
see the same batches in the same order). Last line: `ratio: X` = the smaller of the two
TRL ratios at the smaller vocabulary.

    .venv/bin/python bench/sft.py                      # both vocab sizes
    .venv/bin/python bench/sft.py --vocab 4096 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rutune.models import chatml_template

WORDS = ("привет модель ответ вопрос данные обучение текст язык русский пример задача решение город река книга "
         "время человек работа система документ поиск знание память число строка москва казань волга история "
         "наука школа письмо закон право рынок цена").split()


def make_chats(n: int, seed: int = 0) -> list[list[dict]]:
    """80% short chats (10–90 words), 20% long RAG dialogs (a 300–900-word document in the system turn)."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    chats = []
    for i in range(n):
        if i % 5 == 4:
            chats.append([{"role": "system", "content": "Документы:\n" + text(300, 900)},
                          {"role": "user", "content": text(8, 20)}, {"role": "assistant", "content": text(20, 60)},
                          {"role": "user", "content": text(4, 12)}, {"role": "assistant", "content": text(10, 40)}])
        else:
            chats.append([{"role": "user", "content": text(4, 30)}, {"role": "assistant", "content": text(6, 60)}])
    rng.shuffle(chats)
    return chats


MARKED_TEMPLATE = chatml_template(generation_markers=True)  # what TRL's assistant_only_loss needs


def clock() -> float:
    """Wall time, or this process's CPU time (`--clock cpu`: steadier when other jobs share the cores)."""
    return time.process_time() if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter()


def _timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(clock())

    return StepTimer()


def _counting(collate, key="labels"):
    """Wrap a collator to record each batch's trained-token count (next-token targets that are not -100)."""
    counts = []

    def wrapped(features):
        batch = collate(features)
        if "shift_labels" in batch:
            counts.append(int(batch["shift_labels"].ne(-100).sum()))
        else:
            counts.append(int(batch[key][..., 1:].ne(-100).sum()))
        return batch

    return wrapped, counts


def _summary(name, timer_ends, counts, losses, warmup):
    ends = timer_ends
    timed = list(range(warmup, len(ends)))
    seconds = ends[-1] - ends[warmup - 1]
    tokens = sum(counts[i] for i in timed)
    return {"name": name, "tokens_per_s": tokens / seconds, "step_s": seconds / len(timed), "trained_tokens": tokens,
            "step_times": [ends[i] - ends[i - 1] for i in timed], "losses": [round(x, 4) for x in losses],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_rutune(model_dir, chats, steps, warmup, batch, lr, out):
    import datasets

    from rutune.train.recipes.sft import SftStage
    from rutune.data.templates import load_tokenizer, tokenize_chats
    from rutune.attention import PACKED_SDPA
    from rutune.train.collators import pack_sft
    from rutune.train.trainer import training_arguments
    from rutune.train.sft import build_trainer
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tok, chats)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", attn_implementation=PACKED_SDPA)
    stage = SftStage(recipe="sft", learning_rate=lr, per_device_batch_size=batch, max_steps=steps,
                     lr_scheduler="constant", warmup_ratio=0.0, precision="fp32")
    timer = _timer()
    trainer = build_trainer(model, tok, datasets.Dataset.from_list(rows),
                            training_arguments(stage, out, seed=1, save_strategy="no"), packing=True,
                            callbacks=[timer])
    collate, counts = _counting(pack_sft)
    trainer.data_collator = collate
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return _summary("rutune", timer.ends, counts, losses, warmup)


def run_bare(model_dir, chats, steps, warmup, batch, lr, out):
    """The floor: rutune's own packed batches, forward + backward + AdamW step, no Trainer.

    The permutation is the one the Trainer's seeded sampler draws (generator seeded with the seed, randperm), so
    step i here and step i in `run_rutune` are the same batch; the identical loss curves confirm it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from rutune.data.templates import load_tokenizer, tokenize_chats
    from rutune.attention import PACKED_SDPA
    from rutune.train.collators import pack_sft
    from rutune.train.losses import sft_loss

    tok = load_tokenizer(model_dir)
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tok, chats)]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1)).tolist()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", attn_implementation=PACKED_SDPA)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ends, counts, losses = [], [], []
    keys = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
    for step in range(steps):
        idx = [order[(step * batch + j) % len(rows)] for j in range(batch)]
        b = pack_sft([rows[i] for i in idx])
        keep = b["shift_labels"].ne(-100)
        out_ = model(**{k: b[k] for k in keys}, use_cache=False, logits_to_keep=keep)
        loss = sft_loss(out_.logits, b["shift_labels"][keep], keep.sum())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ends.append(clock())
        counts.append(int(keep.sum()))
        losses.append(loss.item())
    return _summary("bare", ends, counts, losses, warmup)


def run_trl(model_dir, chats, steps, warmup, batch, lr, out, packing):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = MARKED_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    # packing=True: bins of 4096 tokens, 2 bins per step (~ the tokens of 8 mixed chats); padded: 8 chats per step
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=2 if packing else batch, max_steps=steps,
                       learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, assistant_only_loss=True,
                       packing=packing, max_length=4096, report_to="none", seed=1, logging_steps=1,
                       save_strategy="no", bf16=False, use_cpu=True, dataloader_pin_memory=False, disable_tqdm=True)
    timer = _timer()
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list([{"messages": c}
                                                                                           for c in chats]),
                         processing_class=tok, callbacks=[timer])
    collate, counts = _counting(trainer.data_collator)
    trainer.data_collator = collate
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return _summary("trl_packing" if packing else "trl_default", timer.ends, counts, losses, warmup)


def one(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    chats = make_chats(args.rows, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        common = (args.model_dir, chats, args.steps, args.warmup, args.batch, args.lr, Path(tmp))
        if args.one == "rutune":
            res = run_rutune(*common)
        elif args.one == "bare":
            res = run_bare(*common)
        else:
            res = run_trl(*common, packing=args.one == "trl_packing")
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="*", default=[4096, 32000])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time steps by process CPU time (use with --threads 1 on a busy machine)")
    p.add_argument("--one", choices=["rutune", "bare", "trl_default", "trl_packing"])
    p.add_argument("--model-dir")
    args = p.parse_args()
    if args.one:
        return one(args)

    from rutune.models import build_tiny_model, cache_root

    contenders = ["rutune", "bare", "trl_default", "trl_packing"]
    headline = None
    for vocab in args.vocab:
        model_dir = cache_root() / "bench" / f"tiny-v{vocab}"
        if not (model_dir / "config.json").exists():
            build_tiny_model(model_dir, seed=0, vocab_size=vocab)
        results = {}
        for name in contenders:
            cmd = [sys.executable, __file__, "--one", name, "--model-dir", str(model_dir), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch), "--rows", str(args.rows),
                   "--lr", str(args.lr), "--threads", str(args.threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
                   "BENCH_CLOCK": args.clock}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed at vocab {vocab}")
            results[name] = json.loads(line[len("RESULT "):])
        print(f"\n== vocab {vocab} (model embedding), batch {args.batch}, {args.steps} steps "
              f"({args.warmup} untimed), {args.threads} threads, {args.clock} clock")
        print(f"{'contender':<12} {'trained tok/s':>14} {'step s':>8} {'peak RSS MB':>12}  losses")
        for name in contenders:
            r = results[name]
            print(f"{name:<12} {r['tokens_per_s']:>14.0f} {r['step_s']:>8.3f} {r['peak_rss_mb']:>12.0f}  "
                  f"{r['losses'][:3]} … {r['losses'][-1]}")
        vs_default = results["rutune"]["tokens_per_s"] / results["trl_default"]["tokens_per_s"]
        vs_packing = results["rutune"]["tokens_per_s"] / results["trl_packing"]["tokens_per_s"]
        # rutune and the bare loop see the same batches in the same order (same seeded permutation), so compare
        # step by step and take the median: robust to other load on a shared machine
        per_step = sorted(a / b for a, b in zip(results["rutune"]["step_times"], results["bare"]["step_times"]))
        overhead = per_step[len(per_step) // 2]
        print(f"rutune / TRL default: {vs_default:.2f}x   rutune / TRL packing: {vs_packing:.2f}x   "
              f"rutune step / bare step: {overhead:.3f}")
        if headline is None:
            headline = min(vs_default, vs_packing)
    print(f"ratio: {headline:.2f}")


if __name__ == "__main__":
    main()
