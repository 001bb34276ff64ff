"""Long-context cost per ruBABILong item on the tiny model: seconds and peak RSS at 1k … 32k tokens.

Each length runs in a fresh process (so peak RSS is that item's), on a tiny model whose
`max_position_embeddings` is raised to fit 32k plus the instruction. One generated QA1 item per length,
greedy, 16 new tokens, hf backend, no chat template. Prints per-length numbers (CPU seconds on one thread: the machine is shared) and the growth exponents
between neighbouring lengths (time ∝ L^a, extra memory ∝ L^b). Goal: b ≤ 1 (memory at most linear) and
32k inside 24 GiB. The last line is `ratio: X`: peak RSS at the longest length as a fraction of 24 GiB.

Run:  .venv/bin/python bench/longctx.py --lengths 1k 2k 4k 8k 16k 32k
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(model_dir: str, length: str, threads: int) -> None:
    import psutil
    import torch

    torch.set_num_threads(threads)
    from rutune.eval.babilong import DEFAULT_TEMPLATES, fill
    from rutune.eval.babilong_gen import generate_item
    from rutune.eval.backend_hf import HFBackend
    from rutune.eval.backends import GenerationRequest

    backend = HFBackend(model_dir, batch_size=1, apply_chat_template=False)
    item = generate_item("qa1", length, 0, 0, backend.count_tokens)
    prompt = fill(DEFAULT_TEMPLATES["qa1"], item["context"], item["input"])
    n_tokens = len(backend.prompt_ids(GenerationRequest(prompt=prompt)))
    backend.generate([GenerationRequest(prompt=prompt[:200], max_new_tokens=2)])  # warm-up: kernels, caches
    base_mib = psutil.Process().memory_info().rss / 2**20
    t, cpu = time.perf_counter(), time.process_time()
    out = backend.generate([GenerationRequest(prompt=prompt, max_new_tokens=16)])[0]
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"length": length, "tokens": n_tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak_mib,
                      "base_mib": base_mib, "new_tokens": out.n_tokens}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", nargs="+", default=["1k", "2k", "4k", "8k", "16k", "32k"])
    ap.add_argument("--threads", type=int, default=1, help="1 keeps CPU time honest (no OpenMP spin-waits).")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "LENGTH"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.threads)
        return
    from rutune.eval.babilong_gen import parse_length
    from rutune.models import build_tiny_model

    window = max(parse_length(x) for x in args.lengths) + 1024
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny-long", max_position_embeddings=window)
        rows = []
        for length in args.lengths:
            proc = subprocess.run([sys.executable, __file__, "--child", str(model_dir), length,
                                   "--threads", str(args.threads)], capture_output=True, text=True,
                                  env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            if proc.returncode != 0:
                print(f"{length}: failed\n{proc.stderr[-2000:]}")
                break
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["extra_mib"] = row["peak_mib"] - row["base_mib"]
            rows.append(row)
            print(f"{length:>4}: {row['tokens']:>6} prompt tokens | {row['cpu_seconds']:7.2f} CPU s ({row['seconds']:.2f} wall) | peak RSS "
                  f"{row['peak_mib']:7.0f} MiB (+{row['extra_mib']:.0f} MiB over the loaded model)", flush=True)
    print("growth exponents between neighbouring lengths (CPU time, extra memory):")
    for a, b in zip(rows, rows[1:]):
        ratio = math.log(b["tokens"] / a["tokens"])
        t_exp = math.log(b["cpu_seconds"] / a["cpu_seconds"]) / ratio
        m_exp = math.log(max(b["extra_mib"], 1) / max(a["extra_mib"], 1)) / ratio
        print(f"  {a['length']:>4} → {b['length']:<4}: time L^{t_exp:.2f}, memory L^{m_exp:.2f}")
    if rows:
        print(f"peak RSS at {rows[-1]['length']}: {rows[-1]['peak_mib']:.0f} MiB")
        print(f"ratio: {rows[-1]['peak_mib'] / (24 * 1024):.3f}")


if __name__ == "__main__":
    main()
