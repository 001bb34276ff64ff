"""SimPO step throughput: rutune (prefix-shared batches) vs TRL 1.16 CPO-SimPO, and vs a bare torch loop.

    .venv/bin/python bench/simpo.py [--shapes rag chat] [--pairs 32] [--batch 4] [--steps 4] [--rounds 2]

For each shape — `rag` (prompt 1–2k tokens, responses 50–200) and `chat` (prompt 32–256, responses 16–128) — the
same synthetic Russian pairs (same token ids: TRL tokenises the rendered prompt and `content<|im_end|>` replies, we
use `templates.tokenize_pair`) train the same tiny model with the same effective batch, β, γ and learning rate:

* `rutune`: `preference.build_trainer` (`RecipeTrainer` with the SimPO objective, `batching: prefix_shared`),
* `trl`:    `trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0)`,
* `bare`:   a plain torch loop (forward, SimPO loss, backward, clip, fused AdamW step — what the Trainer uses)
            on the same prefix-shared batches, collated outside the timer — the limit a Trainer-based recipe can
            approach (rutune's step includes its collation).

Each contender runs in its own process (so peak RSS is its own) with ONE torch thread (`BENCH_THREADS`), warms up
one step, then times `--steps` optimizer steps; `--rounds` repeats this, alternating rutune / TRL / bare, and pools
the steps. Pairs/s and the ratios use the median process CPU time per step: on a shared, overloaded machine wall
time mostly measures waiting, and with several threads CPU time also counts OpenMP spin-waits, but one thread's CPU
time is the work done (on an idle machine it equals wall time). The fastest wall-clock step is printed beside it.
The first step's loss is printed for each (same data order, same initial weights, so they must agree).
Prints pairs/CPU-s, ratios and peak RSS; the last line is `ratio: X` = the smaller of the two rutune/TRL ratios.
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

BETA, GAMMA, LR = 2.5, 1.375, 1e-4
KINDS = ("rutune", "trl", "bare")
SHAPES = {"rag": {"prompt": (1000, 2000), "response": (50, 200)},
          "chat": {"prompt": (32, 256), "response": (16, 128)}}
WORDS = ("привет мир модель ответ вопрос данные обучение текст язык русский пример задача решение город река "
         "книга время человек работа система документ поиск знание память число строка Москва столица").split()


def _text_of_tokens(tok, rng: random.Random, n_tokens: int) -> str:
    """Russian-looking text of about `n_tokens` tokens under `tok`."""
    words: list[str] = []
    per_word = max(1, len(tok(" ".join(WORDS[:8]), add_special_tokens=False)["input_ids"]) // 8)
    while True:
        words.extend(rng.choice(WORDS) for _ in range(max(1, (n_tokens - len(words) * per_word) // per_word)))
        if len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) >= n_tokens:
            return " ".join(words)


def make_pairs(tok, shape: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    spec = SHAPES[shape]
    rows = []
    for _ in range(n):
        prompt = [{"role": "system", "content": _text_of_tokens(tok, rng, rng.randint(*spec["prompt"]))},
                  {"role": "user", "content": _text_of_tokens(tok, rng, 12)}]
        rows.append({"prompt": prompt, "chosen": _text_of_tokens(tok, rng, rng.randint(*spec["response"])),
                     "rejected": _text_of_tokens(tok, rng, rng.randint(*spec["response"]))})
    return rows


class StepClock:
    """Wall and process CPU time of each optimizer step (a Trainer callback)."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []
        self._t = None

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class _Cb(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._t = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append((time.perf_counter() - clock._t[0], time.process_time() - clock._t[1]))

        return _Cb()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return model


def _tokenized(tok, rows):
    from rutune.data.templates import tokenize_pair

    out = []
    for r in rows:
        p = tokenize_pair(tok, r["prompt"], r["chosen"], r["rejected"])
        out.append({"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids})
    return out


def _args_common(out_dir: str, batch: int, steps: int) -> dict:
    return dict(output_dir=out_dir, learning_rate=LR, max_steps=steps + 1, per_device_train_batch_size=batch,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
                seed=42, data_seed=42, disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
                remove_unused_columns=False, max_grad_norm=1.0)


def worker_rutune(tok, model_dir, rows, batch, steps):
    from datasets import Dataset
    from transformers import TrainingArguments

    from rutune.train.recipes.preference import PreferenceStage
    from rutune.train.preference import build_trainer

    stage = PreferenceStage(recipe="preference", loss={"name": "simpo", "beta": BETA, "gamma": GAMMA},
                            batching="prefix_shared")
    data = Dataset.from_list(_tokenized(tok, rows))
    clock = StepClock()
    args = TrainingArguments(**_args_common(tempfile.mkdtemp(), batch, steps))
    trainer = build_trainer(_load(model_dir), tok, data, args, stage, callbacks=[clock.callback()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return clock.times, losses[0]


def worker_trl(tok, model_dir, rows, batch, steps):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    text_rows = [{"prompt": tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                  "chosen": r["chosen"] + "<|im_end|>", "rejected": r["rejected"] + "<|im_end|>"} for r in rows]
    clock = StepClock()
    common = _args_common(tempfile.mkdtemp(), batch, steps)
    # CPOConfig defaults to bf16 autocast even on CPU; both sides train in fp32 here
    args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=BETA, simpo_gamma=GAMMA, max_length=4096,
                     disable_dropout=True, bf16=False)
    trainer = CPOTrainer(model=_load(model_dir), args=args, train_dataset=Dataset.from_list(text_rows),
                         processing_class=tok, callbacks=[clock.callback()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return clock.times, losses[0]


def worker_bare(tok, model_dir, rows, batch, steps):
    import torch

    from rutune.train.collators import collate_prefix_shared
    from rutune.train.losses import sequence_logps, simpo_loss

    pairs = _tokenized(tok, rows)
    g = torch.Generator().manual_seed(42)
    order = torch.randperm(len(pairs), generator=g).tolist()
    model = _load(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # the Trainer's default optimizer
    times, first = [], None
    for k in range(0, batch * (steps + 1), batch):
        b = collate_prefix_shared([pairs[i] for i in order[k:k + batch]], pad_id=tok.pad_token_id)  # not timed
        t, c = time.perf_counter(), time.process_time()
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=b["position_ids"],
                    use_cache=False, logits_to_keep=b["logits_to_keep"])
        n = b["num_pairs"]
        lp = sequence_logps(out.logits, b["target_ids"], segment_ids=b["target_segment"], num_segments=2 * n)
        loss = simpo_loss(lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:], BETA, GAMMA).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - t, time.process_time() - c))
        first = loss.item() if first is None else first
    return times, first


def run_worker(kind: str, shape: str, n_pairs: int, batch: int, steps: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from rutune.models import tiny_model_path

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    model_dir = str(tiny_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = make_pairs(tok, shape, n_pairs)
    fn = {"rutune": worker_rutune, "trl": worker_trl, "bare": worker_bare}[kind]
    times, first_loss = fn(tok, model_dir, rows, batch, steps)
    return {"kind": kind, "shape": shape, "steps": times[1:],  # the first step warms up allocators and kernels
            "first_loss": first_loss, "peak_rss_mib": _peak_rss_mib()}


def summarise(kind: str, shape: str, runs: list[dict], batch: int) -> dict:
    """Pool the timed steps of all rounds: fastest and median wall time, median CPU time, max peak RSS."""
    wall = sorted(t for r in runs for t, _ in r["steps"])
    cpu = sorted(c for r in runs for _, c in r["steps"])
    return {"kind": kind, "shape": shape, "wall_min_s": wall[0], "wall_median_s": wall[len(wall) // 2],
            "cpu_median_s": cpu[len(cpu) // 2], "pairs_per_s": batch / cpu[len(cpu) // 2], "steps": len(wall),
            "first_loss": runs[0]["first_loss"], "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["rag", "chat"], choices=sorted(SHAPES))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per contender, run alternately")
    ap.add_argument("--worker", choices=["rutune", "trl", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_worker(a.worker, a.shape, a.pairs, a.batch, a.steps)))
        return

    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    results: dict[tuple[str, str], dict] = {}
    for shape in a.shapes:
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        for _ in range(a.rounds):  # alternate the contenders so drifting machine load hits each alike
            for kind in KINDS:
                cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape, "--pairs", str(a.pairs),
                       "--batch", str(a.batch), "--steps", str(a.steps)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{kind}/{shape} failed:\n{proc.stderr[-3000:]}")
                runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for kind in KINDS:
            res = results[(shape, kind)] = summarise(kind, shape, runs[kind], a.batch)
            print(f"{shape:5s} {kind:7s} {res['pairs_per_s']:7.2f} pairs/CPU-s  step CPU median {res['cpu_median_s']:.3f} s,"
                  f" wall min {res['wall_min_s']:.3f} s, median {res['wall_median_s']:.3f} s ({res['steps']} steps)  "
                  f"first loss {res['first_loss']:.6f}  peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    ratios = []
    for shape in a.shapes:
        ours, trl, bare = (results[(shape, k)] for k in KINDS)
        ratio = ours["pairs_per_s"] / trl["pairs_per_s"]
        ratios.append(ratio)
        print(f"{shape}: rutune/TRL pairs per CPU-s {ratio:.2f}x (fastest wall step {trl['wall_min_s'] / ours['wall_min_s']:.2f}x)"
              f" · rutune step / bare step CPU {ours['cpu_median_s'] / bare['cpu_median_s']:.3f}"
              f" (fastest wall {ours['wall_min_s'] / bare['wall_min_s']:.3f})"
              f" · first-loss |diff| vs TRL {abs(ours['first_loss'] - trl['first_loss']):.2e}"
              f" · peak RSS rutune {ours['peak_rss_mib']:.0f} MiB vs TRL {trl['peak_rss_mib']:.0f} MiB")
    print(f"ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
