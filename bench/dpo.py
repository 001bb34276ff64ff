"""DPO step throughput: rutune (cached reference, prefix-shared or packed batches) vs TRL 1.16 `DPOTrainer`.

    .venv/bin/python bench/dpo.py [--quick] [--shapes rag chat] [--batching packed] [--pairs 32] [--batch 4] ...

Same tiny model, same synthetic Russian pairs (bench/simpo.py's `rag`: prompt 1–2k tokens, and `chat` shapes), same
batch, β and learning rate, loss `sigmoid` (plain DPO), fp32, one torch thread per process:

* `rutune`:      `preference.build_trainer` with `loss: dpo`; the reference sums come from ONE no-grad pass over the
                 pairs before training (`reference.compute_reference`, what the stage caches on disk) — its time is
                 printed separately as the one-time reference pass; the steps run the policy forward only;
* `trl`:         `DPOTrainer` as a user runs it by default: a frozen copy of the model as reference, a reference
                 forward every step;
* `trl_pre`:     `DPOTrainer(precompute_ref_log_probs=True)`: TRL's own one-time reference pass, then policy-only
                 steps. For both TRL contenders the printed setup time is construction (tokenisation, reference
                 copy) + `train()` until the first step, so it includes TRL's pass wherever TRL runs it; rutune's
                 is the reference pass alone (its tokenisation is outside);
* `bare`:        a plain torch loop on the same collated batches with the same cached reference sums: forward,
                 per-pair sums, `dpo_sigmoid_loss`, backward, clip, fused AdamW step (the Trainer's optimizer) —
                 the floor any trainer pays. Goal: rutune's step ≤ 1.10× the bare step.

Each contender runs in its own process (peak RSS is its own), warms up one step, times `--steps` steps; `--rounds`
repeats this alternating the contenders. Pairs per CPU-second from the median per-step process CPU time (the machine
is shared; one thread's CPU time is the work done). Prints every ratio; the last line is `ratio: X` = rutune vs TRL
with a precomputed reference on RAG shapes. Goals (issue #13): ≥ 4× vs `trl` and ≥ 2.5× vs `trl_pre` on RAG shapes,
≥ 2× on chat; peak RSS ≤ TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simpo import LR, SHAPES, StepClock, _args_common, _load, _peak_rss_mib, _tokenized, make_pairs  # noqa: E402

BETA = 0.1
KINDS = ("rutune", "trl", "trl_pre", "bare")


def worker_rutune(tok, model_dir, rows, batch, steps, batching):
    from transformers import TrainingArguments

    from rutune.train.preference import build_trainer

    stage = _stage(batching)
    model = _load(model_dir)
    data, _, setup = _cached_reference(tok, model, rows, batch, batching)
    clock = StepClock()
    args = TrainingArguments(**_args_common(tempfile.mkdtemp(), batch, steps))
    trainer = build_trainer(model, tok, data, args, stage, callbacks=[clock.callback()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return clock.times, losses[0], setup


def _stage(batching):
    from rutune.train.recipes.preference import PreferenceStage

    return PreferenceStage(recipe="preference", loss={"name": "dpo", "beta": BETA}, batching=batching)


def _cached_reference(tok, model, rows, batch, batching):
    """The tokenised pairs with their reference sums (one no-grad pass, as the stage caches it) and the collator."""
    import torch
    from datasets import Dataset

    from rutune.train.preference import stage_collator
    from rutune.train.reference import compute_reference

    data = Dataset.from_list(_tokenized(tok, rows))
    if batching == "packed":
        from rutune.attention import PAIR_PACKED

        model.set_attn_implementation(PAIR_PACKED)
    collate = stage_collator(_stage(batching), tok)  # the stage's own: bool prefix-shared masks
    t, c = time.perf_counter(), time.process_time()
    ref = compute_reference(model, data, collate, batch_size=batch, batching=batching, device=torch.device("cpu"))
    setup = (time.perf_counter() - t, time.process_time() - c)
    data = data.add_column("ref_chosen", ref[:, 0].tolist()).add_column("ref_rejected", ref[:, 1].tolist())
    return data, collate, setup


def worker_bare(tok, model_dir, rows, batch, steps, batching):
    """Forward + loss + backward + clip + AdamW step, nothing else, on the batches rutune's trainer would see."""
    import torch

    from rutune.train.pref_batch import forward_logps
    from rutune.train.pref_losses import dpo_sigmoid_loss

    model = _load(model_dir)
    data, collate, setup = _cached_reference(tok, model, rows, batch, batching)
    g = torch.Generator().manual_seed(42)
    order = torch.randperm(len(data), generator=g).tolist()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    times, first = [], None
    for k in range(0, batch * (steps + 1), batch):
        b = collate([data[i % len(data)] for i in order[k % len(data):k % len(data) + batch]])  # not timed
        t, c = time.perf_counter(), time.process_time()
        _, lp = forward_logps(model, b, batching)
        n = int(b["num_pairs"])
        loss = dpo_sigmoid_loss(lp.sum[:n], lp.count[:n], lp.sum[n:2 * n], lp.count[n:2 * n], b["ref_chosen"],
                                b["ref_rejected"], beta=BETA).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - t, time.process_time() - c))
        first = loss.item() if first is None else first
    return times, first, setup


def worker_trl(tok, model_dir, rows, batch, steps, precompute):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    text_rows = [{"prompt": tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                  "chosen": r["chosen"] + "<|im_end|>", "rejected": r["rejected"] + "<|im_end|>"} for r in rows]
    clock = StepClock()
    stamps = {}

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stamps.setdefault("first", (time.perf_counter(), time.process_time()))

    args = DPOConfig(**_args_common(tempfile.mkdtemp(), batch, steps), loss_type=["sigmoid"], beta=BETA,
                     max_length=None, precompute_ref_log_probs=precompute, bf16=False, disable_dropout=True)
    model = _load(model_dir)
    t, c = time.perf_counter(), time.process_time()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(text_rows),
                         processing_class=tok, callbacks=[FirstStep(), clock.callback()])
    trainer.train()
    # construction (tokenisation, the reference copy) + train() until the first step (TRL's reference pass)
    setup = (stamps["first"][0] - t, stamps["first"][1] - c)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return clock.times, losses[0], setup


def run_worker(kind, shape, n_pairs, batch, steps, batching) -> dict:
    import torch
    from transformers import AutoTokenizer

    from rutune.models import tiny_model_path

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model_dir = str(tiny_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = make_pairs(tok, shape, n_pairs)
    if kind == "rutune":
        times, first, setup = worker_rutune(tok, model_dir, rows, batch, steps, batching)
    elif kind == "bare":
        times, first, setup = worker_bare(tok, model_dir, rows, batch, steps, batching)
    else:
        times, first, setup = worker_trl(tok, model_dir, rows, batch, steps, precompute=kind == "trl_pre")
    return {"kind": kind, "shape": shape, "steps": times[1:], "first_loss": first, "setup_wall_s": setup[0],
            "setup_cpu_s": setup[1], "peak_rss_mib": _peak_rss_mib()}


def summarise(runs: list[dict], batch: int) -> dict:
    cpu = sorted(c for r in runs for _, c in r["steps"])
    wall = sorted(t for r in runs for t, _ in r["steps"])
    return {"cpu_median_s": cpu[len(cpu) // 2], "wall_min_s": wall[0], "pairs_per_s": batch / cpu[len(cpu) // 2],
            "steps": len(cpu), "first_loss": runs[0]["first_loss"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "setup_cpu_s": min(r["setup_cpu_s"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="check the script runs: 8 pairs, batch 2, 2 steps, 1 round")
    ap.add_argument("--shapes", nargs="+", default=["rag", "chat"], choices=sorted(SHAPES))
    ap.add_argument("--batching", default="prefix_shared", choices=["prefix_shared", "packed"])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.batch, a.steps, a.rounds = 8, 2, 2, 1
    if a.worker:
        print(json.dumps(run_worker(a.worker, a.shape, a.pairs, a.batch, a.steps, a.batching)))
        return
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    results = {}
    for shape in a.shapes:
        runs = {k: [] for k in KINDS}
        for _ in range(a.rounds):
            for kind in KINDS:
                cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape, "--pairs", str(a.pairs),
                       "--batch", str(a.batch), "--steps", str(a.steps), "--batching", a.batching]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{kind}/{shape} failed:\n{proc.stderr[-3000:]}")
                runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for kind in KINDS:
            res = results[(shape, kind)] = summarise(runs[kind], a.batch)
            label = f"rutune/{a.batching}" if kind == "rutune" else kind
            print(f"{shape:5s} {label:21s} {res['pairs_per_s']:7.2f} pairs/CPU-s  step CPU median "
                  f"{res['cpu_median_s']:.3f} s, wall min {res['wall_min_s']:.3f} s ({res['steps']} steps)  "
                  f"one-time reference pass / setup CPU {res['setup_cpu_s']:.2f} s  first loss "
                  f"{res['first_loss']:.6f}  peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    final = None
    for shape in a.shapes:
        ours, trl, pre, bare = (results[(shape, k)] for k in KINDS)
        r_default, r_pre = ours["pairs_per_s"] / trl["pairs_per_s"], ours["pairs_per_s"] / pre["pairs_per_s"]
        print(f"{shape}: rutune/TRL default (reference forward every step) {r_default:.2f}x · rutune/TRL "
              f"precompute_ref_log_probs {r_pre:.2f}x · first-loss |diff| vs TRL "
              f"{abs(ours['first_loss'] - trl['first_loss']):.2e} · peak RSS rutune {ours['peak_rss_mib']:.0f} MiB, "
              f"TRL {trl['peak_rss_mib']:.0f} MiB, TRL precompute {pre['peak_rss_mib']:.0f} MiB")
        print(f"{shape}: rutune step / bare step CPU {ours['cpu_median_s'] / bare['cpu_median_s']:.3f} (goal ≤ 1.10; "
              f"fastest wall {ours['wall_min_s'] / bare['wall_min_s']:.3f}) · first-loss |diff| vs bare "
              f"{abs(ours['first_loss'] - bare['first_loss']):.2e}")
        if shape == "rag":
            final = r_pre
    print(f"ratio: {final if final is not None else r_pre:.2f}")


if __name__ == "__main__":
    main()
