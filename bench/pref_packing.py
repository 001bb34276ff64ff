"""Preference batch layouts: padding-free multi-pair rows (`packed`) vs today's `prefix_shared` rows, CPU.

    .venv/bin/python bench/pref_packing.py [--quick] [--pairs-per-step 8] [--steps 4] [--prefix-batch 4]

1. Throughput. A long-tailed mix of synthetic pairs (random token ids): 80% chat (prompt 50–400 tokens, responses
   20–300), 20% RAG (prompt 2–8k tokens, responses 50–400). Every step trains the same pairs in both modes
   (forward, SimPO loss, backward; no optimizer, identical for both):
   * `packed`: `collate_packed_pairs`, all the step's pairs in one unpadded row, attention `PAIR_PACKED`;
   * `prefix_shared`: `collate_prefix_shared` micro-batches of `--prefix-batch` pairs (the recipe's
     per_device_train_batch_size; gradients accumulate over the step), SDPA with its dense 4D mask.
   Each mode runs in its own process (peak RSS is its own) with `--threads` torch threads, warms up on the first
   step, and reports pairs per CPU-second over the remaining steps (on a shared machine wall time measures
   waiting; one thread's CPU time is the work done) beside the wall time.
2. Memory vs row length: one pair (responses 200/200) with prompts of 2k, 4k, 8k, 16k tokens, one process per
   (mode, length); the peak RSS growth of collation + one forward+backward over the RSS before it (glibc told to
   mmap large blocks so RSS follows live memory). The exponent is the log-log slope of the growth above a
   64-token-prompt step (the length-independent part: logits, weight gradients) vs the tokens added to the row —
   ≈ 1 linear, → 2 once prefix_shared's dense mask (L²×4 bytes) outweighs the linear activations; the slope
   between the two longest rows is printed too.

`--quick` shrinks everything (RAG prompts 1–2k, 3 steps of 6 pairs, memory at 0.5–4k) to check the script runs;
real numbers need a quiet machine. The load average is printed before and after. Last line: `ratio: X` =
pairs/CPU-s packed ÷ pairs/CPU-s prefix_shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

BETA, GAMMA = 2.5, 1.375
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                   max_position_embeddings=32768)
MIX = {"chat": {"share": 0.8, "prompt": (50, 400), "response": (20, 300)},
       "rag": {"share": 0.2, "prompt": (2000, 8000), "response": (50, 400)}}
QUICK_RAG_PROMPT = (1000, 2000)
BASELINE_PROMPT = 64  # memory growth at this prompt length is the length-independent part, subtracted


def make_steps(n_steps: int, per_step: int, *, rag_prompt=None, seed: int = 0) -> list[list[dict]]:
    """`n_steps` lists of `per_step` pairs drawn from the long-tailed mix (the same lists for both modes)."""
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(5, 3000) for _ in range(n)]

    steps = []
    for _ in range(n_steps):
        pairs = []
        for _ in range(per_step):
            kind = MIX["rag"] if rng.random() < MIX["rag"]["share"] else MIX["chat"]
            prompt = rag_prompt if (rag_prompt and kind is MIX["rag"]) else kind["prompt"]
            pairs.append({"prompt_ids": ids(rng.randint(*prompt)), "chosen_ids": ids(rng.randint(*kind["response"])),
                          "rejected_ids": ids(rng.randint(*kind["response"]))})
        steps.append(pairs)
    return steps


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_model(mode: str):
    import torch
    from transformers import AutoModelForCausalLM

    from rutune.attention import PAIR_PACKED
    from rutune.models import tiny_model_path

    impl = PAIR_PACKED if mode == "packed" else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(**MODEL_SHAPE), dtype=torch.float32,
                                                 attn_implementation=impl)
    model.config.use_cache = False
    return model.train()


def _micro_batches(mode: str, pairs: list[dict], prefix_batch: int) -> list[dict]:
    from rutune.train.collators import collate_packed_pairs, collate_prefix_shared

    if mode == "packed":
        return [collate_packed_pairs(pairs)]
    return [collate_prefix_shared(pairs[i:i + prefix_batch], pad_id=0) for i in range(0, len(pairs), prefix_batch)]


def _forward_backward(model, batch: dict, total_pairs: int) -> float:
    """One micro-batch: forward, SimPO loss (scaled to its share of the step), backward; returns the loss."""
    from rutune.train.collators import PACKED_PAIRS_FORWARD_KEYS
    from rutune.train.losses import sequence_logps, simpo_loss

    keys = PACKED_PAIRS_FORWARD_KEYS if "pair_cu_seq_q" in batch else ("input_ids", "attention_mask", "position_ids")
    out = model(**{k: batch[k] for k in keys}, use_cache=False, logits_to_keep=batch["logits_to_keep"])
    n = batch["num_pairs"]
    lp = sequence_logps(out.logits, batch["target_ids"], segment_ids=batch["target_segment"], num_segments=2 * n)
    loss = simpo_loss(lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:], BETA, GAMMA).loss * (n / total_pairs)
    loss.backward()
    return loss.item()


def worker_throughput(mode: str, a) -> dict:
    rag = QUICK_RAG_PROMPT if a.quick else None
    steps = make_steps(a.steps, a.pairs_per_step, rag_prompt=rag)
    model = _load_model(mode)
    times, losses, tokens = [], [], []
    for pairs in steps:
        batches = _micro_batches(mode, pairs, a.prefix_batch)  # collation is not timed
        t, c = time.perf_counter(), time.process_time()
        losses.append(sum(_forward_backward(model, b, len(pairs)) for b in batches))
        times.append((time.perf_counter() - t, time.process_time() - c))
        model.zero_grad(set_to_none=True)
        tokens.append(sum(b["input_ids"].numel() for b in batches))
    timed = times[1:]  # the first step warms up allocators and kernels
    cpu = sum(c for _, c in timed)
    wall = sum(w for w, _ in timed)
    pairs = a.pairs_per_step * len(timed)
    return {"mode": mode, "pairs_per_cpu_s": pairs / cpu, "pairs_per_wall_s": pairs / wall, "cpu_s": cpu,
            "wall_s": wall, "step_losses": losses, "input_tokens_per_step": tokens,
            "peak_rss_mib": _peak_rss_mib()}


def worker_memory(mode: str, a) -> dict:
    rng = random.Random(1)
    pair = {"prompt_ids": [rng.randrange(5, 3000) for _ in range(a.prompt)],
            "chosen_ids": [rng.randrange(5, 3000) for _ in range(200)],
            "rejected_ids": [rng.randrange(5, 3000) for _ in range(200)]}
    small = {"prompt_ids": pair["prompt_ids"][:64], "chosen_ids": pair["chosen_ids"][:16],
             "rejected_ids": pair["rejected_ids"][:16]}
    model = _load_model(mode)
    _forward_backward(model, _micro_batches(mode, [small], 1)[0], 1)  # load kernels before the baseline
    model.zero_grad(set_to_none=True)
    before = _rss_mib()
    batch = _micro_batches(mode, [pair], 1)[0]  # inside the window: prefix_shared's mask is part of its cost
    _forward_backward(model, batch, 1)
    return {"mode": mode, "prompt": a.prompt, "row_tokens": batch["input_ids"].shape[1],
            "growth_mib": _peak_rss_mib() - before, "peak_rss_mib": _peak_rss_mib()}


def run_worker(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    return worker_throughput(a.mode, a) if a.worker == "throughput" else worker_memory(a.mode, a)


def _spawn(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y over log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-3)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sum((x - mx) ** 2 for x in lx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, not a measurement")
    ap.add_argument("--pairs-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="steps per mode, the first one untimed")
    ap.add_argument("--prefix-batch", type=int, default=4, help="pairs per prefix_shared micro-batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--rounds", type=int, default=1, help="throughput processes per mode, run alternately")
    ap.add_argument("--worker", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["packed", "prefix_shared"], help=argparse.SUPPRESS)
    ap.add_argument("--prompt", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.pairs_per_step, a.steps, a.prompts = min(a.pairs_per_step, 6), min(a.steps, 3), [512, 1024, 2048, 4096]
    if a.worker:
        print(json.dumps(run_worker(a)))
        return

    from rutune.models import tiny_model_path

    tiny_model_path(**MODEL_SHAPE)  # build once here, not in racing workers
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    common = ["--pairs-per-step", str(a.pairs_per_step), "--steps", str(a.steps), "--prefix-batch",
              str(a.prefix_batch), "--threads", str(a.threads)] + (["--quick"] if a.quick else [])
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"(cores {os.cpu_count()}, threads per worker {a.threads}, quick={a.quick})", flush=True)
    steps = make_steps(a.steps, a.pairs_per_step, rag_prompt=QUICK_RAG_PROMPT if a.quick else None)
    for i, pairs in enumerate(steps):
        prompts = sorted(len(p["prompt_ids"]) for p in pairs)
        print(f"step {i}{' (warm-up)' if i == 0 else ''}: {len(pairs)} pairs, prompts {prompts}, response tokens "
              f"{sum(len(p['chosen_ids']) + len(p['rejected_ids']) for p in pairs)}")

    results: dict[str, list[dict]] = {"packed": [], "prefix_shared": []}
    for _ in range(a.rounds):
        for mode in results:
            results[mode].append(_spawn(["--worker", "throughput", "--mode", mode, *common], env))
    speed = {}
    for mode, runs in results.items():
        speed[mode] = sum(r["pairs_per_cpu_s"] for r in runs) / len(runs)
        for r in runs:
            print(f"throughput {mode:13s} {r['pairs_per_cpu_s']:7.2f} pairs/CPU-s ({r['cpu_s']:.2f} CPU-s), "
                  f"{r['pairs_per_wall_s']:7.2f} pairs/wall-s ({r['wall_s']:.2f} s)  "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB"
                  f"  input tokens/step {r['input_tokens_per_step']}  step losses "
                  f"{' '.join(f'{x:.6f}' for x in r['step_losses'])}", flush=True)
    loss_diff = max(abs(x - y) for x, y in zip(results["packed"][0]["step_losses"],
                                               results["prefix_shared"][0]["step_losses"]))
    print(f"step losses max |packed - prefix_shared| = {loss_diff:.2e}")

    # Large blocks straight from mmap, returned on free: RSS then follows live memory instead of glibc's cache.
    mem_env = {**env, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    growth: dict[str, list[tuple[int, float]]] = {"packed": [], "prefix_shared": []}
    base: dict[str, float] = {}
    for prompt in [BASELINE_PROMPT, *a.prompts]:
        for mode in growth:
            r = _spawn(["--worker", "memory", "--mode", mode, "--prompt", str(prompt), *common], mem_env)
            if prompt == BASELINE_PROMPT:
                base[mode] = (r["row_tokens"], r["growth_mib"])
            else:
                growth[mode].append((r["row_tokens"], r["growth_mib"]))
            mask = r["row_tokens"] ** 2 * 4 / 2**20 if mode == "prefix_shared" else 0.0
            print(f"memory {mode:13s} prompt {prompt:6d}: row {r['row_tokens']:6d} tokens, step growth "
                  f"{r['growth_mib']:8.1f} MiB (dense mask alone {mask:.1f} MiB), peak RSS {r['peak_rss_mib']:.0f} MiB",
                  flush=True)
    for mode, points in growth.items():
        row0, mib0 = base[mode]
        xs, ys = [x - row0 for x, _ in points], [y - mib0 for _, y in points]
        print(f"memory exponent {mode}: {_slope(xs, ys):.2f} over all lengths, {_slope(xs[-2:], ys[-2:]):.2f} between "
              f"the two longest (log-log slope of the step growth above the {BASELINE_PROMPT}-token-prompt step — "
              f"{mib0:.1f} MiB: logits, weight gradients, allocator — vs the row tokens added to its {row0}); "
              f"raw growth vs row length {_slope([x for x, _ in points], [y for _, y in points]):.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"ratio: {speed['packed'] / speed['prefix_shared']:.2f}")


if __name__ == "__main__":
    main()
