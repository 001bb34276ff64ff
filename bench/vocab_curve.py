"""Bits/char on held-out Russian against training steps and CPU seconds: vocabulary adaptation → SFT vs SFT alone.

    .venv/bin/python bench/vocab_curve.py [--paths b a] [--vocab-steps 0 8 16 32] [--sft-steps 0 4 8 16]
        [--texts 80] [--max-chars 300] [--prompts 3] [--max-new-tokens 32] [--out runs/vocab_curve]
        [--vocab-lr 1e-2] [--vocab-batch 2] [--vocab-block 1024] [--freeze-old-rows] [--vocab-lora] [--label NAME]
        [--table-only]

What ran for docs/vocab.md: `make vocab-curve`.

Two paths on the model and data of two experiment configs (defaults: `configs/experiments/vocab_smollm2.yaml` and
`vocab_smollm2_base.yaml`, whose `rutune prepare` must have run — the prepared SFT parquet is read from their run
folders):

* (a) adapted: the `vocab` stage's extension + mean init (`vocab_stage.adapt`, timed), then embedding (+ tied LM
  head) training on the merge-side Russian blocks with the stage's settings, evaluated after each of
  `--vocab-steps`; then the config's LoRA SFT stage on the adapted model, evaluated after each of `--sft-steps`
  (0 excluded: it is the last vocab point);
* (b) original: the same LoRA SFT stage on the original model + tokenizer, evaluated after each of `--sft-steps`.

One training run per path and phase, evaluated in-process at the listed step counts; whatever the stage's
`lr_scheduler` (the config's SFT anneals with cosine over `max_steps`; its vocab stage is now constant after warmup,
docs/vocab.md) the learning rate here warms up linearly over `warmup_ratio` × the last step count and then stays
constant, so the point at step k is "k steps into a longer run", not a run that ended at k. Batches, loss,
gradient clipping and LoRA setup are the stages' own (`vocab_stage.text_blocks`/`freeze_all_but_embeddings`,
`sft.tokenized_dataset`, `collators.pack_sft`, `losses.sft_loss`, `model_setup.apply_lora`); optimiser = AdamW
(the Trainer's default) with the stage's learning rate and weight decay.

CPU seconds = process CPU time (user + sys, all threads, `time.process_time`) spent in training steps only, plus,
for (a), the extension + mean init; evaluation is excluded. Evaluation = the `vocab` suite's measurement on the
first `--texts` held-out texts left after removing texts that occur in the prepared SFT data (bits/char with an
item-bootstrap 95% CI; texts cut to `--max-chars` to keep the evaluation cheap), and `--prompts` greedy
generations of at most `--max-new-tokens` tokens (new-token share, chars/s; wall-clock, so read it against the
load average printed with each row). Path (a) trains without LoRA unless `--vocab-lora` is given, whatever the
config's vocab stage says; `--vocab-lora` trains the vocab phase the way the stage does with `lora:` (the vocab
stage's lora block, else the SFT stage's; both are r 16, alpha 32, all-linear in the configs). One torch thread
by default: see `--threads`. Each point's items and greedy answers go to `<out>/<label>/points.jsonl`; the table
at the end has every path recorded under `<out>` and, for each adapted point, the paired bits/char ratio against
the original-tokenizer point with the lowest bits/char among those with CPU seconds not above its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapted-config", default=str(ROOT / "configs/experiments/vocab_smollm2.yaml"))
    p.add_argument("--base-config", default=str(ROOT / "configs/experiments/vocab_smollm2_base.yaml"))
    p.add_argument("--paths", nargs="+", choices=["a", "b"], default=["a", "b"])
    p.add_argument("--vocab-steps", nargs="+", type=int, default=[0, 8, 16, 32])
    p.add_argument("--sft-steps", nargs="+", type=int, default=[0, 4, 8, 16])
    p.add_argument("--a-sft-steps", nargs="+", type=int, default=None,
                   help="SFT step points for path a (default: --sft-steps without 0)")
    p.add_argument("--texts", type=int, default=80)
    p.add_argument("--max-chars", type=int, default=300, help="each held-out text cut to this many characters")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "runs/vocab_curve"))
    p.add_argument("--label", default=None,
                   help="folder name of path a's run (default: `config` + the overrides, e.g. config-lr0.01-frozen)")
    p.add_argument("--vocab-lr", type=float, default=None, help="override the vocab stage's learning_rate")
    p.add_argument("--vocab-batch", type=int, default=None, help="override the vocab stage's per_device_batch_size")
    p.add_argument("--vocab-block", type=int, default=None,
                   help="override the vocab stage's max_tokens (training block length, tokens)")
    p.add_argument("--freeze-old-rows", action="store_true", help="train only the new rows (gradient mask)")
    p.add_argument("--vocab-lora", action="store_true",
                   help="LoRA (the vocab stage's lora block, else the SFT stage's) on the other layers in the vocab "
                        "phase")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on shared cores OpenMP barrier spinning made 2 threads ~3x slower)")
    p.add_argument("--table-only", action="store_true", help="print the table of what is recorded under --out")
    return p.parse_args(argv)


# ---------------------------------------------------------------- measuring
class Budget:
    """Process CPU seconds (and wall seconds) spent inside `with budget:` blocks."""

    def __init__(self, cpu: float = 0.0, wall: float = 0.0):
        self.cpu, self.wall = cpu, wall

    def __enter__(self):
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


def experiment_runs(*configs: str) -> list:
    """The run folders of these experiment configs (relative `output_root`s are under the repo root)."""
    from rutune.config import load_config
    from rutune.rundir import RunDir

    runs = []
    for c in configs:
        cfg = load_config(c)
        root = Path(cfg.output_root) if Path(cfg.output_root).is_absolute() else ROOT / cfg.output_root
        runs.append(RunDir.for_experiment(root, cfg.name))
    return runs


def held_out(texts: int, run_dirs, max_chars: int = 2000) -> list[tuple[str, str]]:
    """The suite's held-out items (split 0.25 / seed 0), minus texts in any of the runs' prepared data, each cut
    to `max_chars` at a space."""
    from rutune.data.russian_text import heldout_items
    from rutune.eval.suites.vocab import VocabConfig, cut_text, training_texts

    cfg = VocabConfig(limit=texts, max_chars=max_chars)
    seen: set[str] = set()
    for run in run_dirs:
        seen |= training_texts(run)[0]
    kept = [(i, cut_text(t, cfg.max_chars)) for i, t in heldout_items(held_out_share=cfg.held_out_share,
                                                                       seed=cfg.split_seed) if t not in seen]
    return kept[:texts]


def evaluate(model, tokenizer, items, args, first_new_id) -> tuple[list[dict], list[dict]]:
    from rutune.eval.suites.vocab import cut_text, generation_rows, text_row

    was_training = model.training
    model.eval()
    config = model.config  # training loads set use_cache False; generation must use the KV cache like a backend
    was_cached, config.use_cache = config.use_cache, True
    merged = hasattr(model, "merge_adapter")
    if merged:  # generation speed of the merged weights (what the saved checkpoint runs at)
        model.merge_adapter()
    try:
        rows = [text_row(model, tokenizer, i, t) for i, t in items]
        prompts = [(i, cut_text(t, 300)) for i, t in items[:args.prompts]]
        gen = generation_rows(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                              first_new_id=first_new_id) if prompts else []
    finally:
        if merged:
            model.unmerge_adapter()
        model.train(was_training)
        config.use_cache = was_cached
    return rows, gen


def record(log: Path, point: dict, rows, gen) -> dict:
    from rutune.eval.suites.vocab import vocab_metrics

    m = vocab_metrics(rows, gen, rounds=1000, seed=0)
    point = {**point, "bits_per_char": m["bits_per_char"], "chars_per_token": m["chars_per_token"]["value"],
             "new_token_share": m.get("new_token_share", {}).get("value"),
             "gen_chars_per_s": m.get("gen_chars_per_s", {}).get("value"),
             "gen_tokens": sum(g["generated_tokens"] for g in gen), "load_average": list(os.getloadavg()),
             "items": [{"id": r["id"], "bits": r["bits"], "chars": r["chars"]} for r in rows],
             "answers": [g["text"] for g in gen]}
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(point, ensure_ascii=False) + "\n")
    bpc = m["bits_per_char"]
    print(f"[{point['path']}] {point['phase']:>5} step {point['step']:>3}  cpu {point['cpu_s']:7.0f}s  "
          f"bits/char {bpc['value']:.3f} [{bpc['ci_low']:.3f}, {bpc['ci_high']:.3f}]  new-token share "
          f"{_fmt(point['new_token_share'])}  chars/s {_fmt(point['gen_chars_per_s'], 1)}  load "
          f"{point['load_average'][0]:.1f}", flush=True)
    for text in point["answers"]:  # what the speed was measured on: a loop is fast and useless
        print(f"    answer: {text[:120]!r}", flush=True)
    return point


def _fmt(x, d=3):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


# ---------------------------------------------------------------- training
def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps (step 0 → lr / warmup), then constant."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def train_points(model, batches, *, points, lr, warmup, weight_decay, max_grad_norm, budget, loss_fn, on_point,
                 start: int = 0):
    """AdamW steps over `batches()` (an iterator of inputs); `on_point(step)` outside the budget at each point."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    step = 0
    if step in points and step >= start:
        on_point(step, None)
    it = batches()
    while step < max(points):
        with budget:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, lr, warmup)
            loss = loss_fn(model, next(it))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        print(f"  step {step} loss {float(loss):.3f}  cpu {budget.cpu:.0f}s wall {budget.wall:.0f}s", flush=True)
        if step in points:
            on_point(step, float(loss))
    del opt


def block_loss(model, ids):
    import torch

    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def sft_batch_loss(model, batch):
    from rutune.train.losses import sft_loss
    from rutune.train.sft import FORWARD_KEYS

    targets = batch["shift_labels"]
    keep = targets.ne(-100)
    out = model(**{k: batch[k] for k in FORWARD_KEYS if k in batch}, use_cache=False, logits_to_keep=keep)
    return sft_loss(out.logits, targets[keep], keep.sum().clamp(min=1))


def block_batches(blocks, batch, seed):
    import torch

    def gen():
        rng = random.Random(seed)
        while True:
            order = list(range(len(blocks)))
            rng.shuffle(order)
            for i in range(0, len(order) - batch + 1, batch):
                yield torch.tensor([blocks[j] for j in order[i:i + batch]], dtype=torch.long)
    return gen


def sft_batches(dataset, batch, seed):
    import torch

    from rutune.train.collators import pack_sft

    def gen():
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(dataset), generator=g).tolist()
            for i in range(0, len(order) - batch + 1, batch):
                yield pack_sft([{"input_ids": dataset[j]["input_ids"], "labels": dataset[j]["labels"]}
                                for j in order[i:i + batch]])
    return gen


def sft_phase(model, tokenizer, cfg, run, stage, *, points, budget, cache, on_point, start):
    from rutune.train.model_setup import apply_lora
    from rutune.train.sft import sft_data, tokenized_dataset

    parquet, data_hash = sft_data(run)
    dataset, _ = tokenized_dataset(tokenizer, parquet, data_hash=data_hash, max_tokens=cfg.data.sft.max_tokens,
                                   overlength=cfg.data.sft.overlength, cache_dir=cache)
    for p in model.parameters():
        p.requires_grad_(False)
    with budget:
        model = apply_lora(model, stage.lora, seed=cfg.seed)
    train_points(model, sft_batches(dataset, stage.per_device_batch_size, cfg.seed), points=points,
                 lr=stage.learning_rate, warmup=round(stage.warmup_ratio * max(points)),
                 weight_decay=stage.weight_decay, max_grad_norm=stage.max_grad_norm, budget=budget,
                 loss_fn=sft_batch_loss, on_point=lambda s, loss: on_point(model, s, loss), start=start)
    return model


def load(path: str):
    import rutune.attention  # noqa: F401  (registers the packed attention)
    from rutune.attention import PACKED_SDPA
    from rutune.train.model_setup import load_stage_model

    return load_stage_model(path, None, from_base=False, attn_implementation=PACKED_SDPA)


def run_original(args, items, out: Path):
    from rutune.config import load_config
    from rutune.models import resolve_model_path
    from rutune.rundir import RunDir
    from rutune.train.stage_io import load_stage_tokenizer

    cfg = load_config(args.base_config)
    stage = next(s for s in cfg.train.stages if s.recipe == "sft")
    run = RunDir.for_experiment(ROOT / cfg.output_root if not Path(cfg.output_root).is_absolute()
                                else cfg.output_root, cfg.name)
    folder = out / "original"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "points.jsonl"
    log.unlink(missing_ok=True)
    base = resolve_model_path(cfg.base_model.path)
    tokenizer = load_stage_tokenizer(base)
    model = load(base)
    budget = Budget()

    def point(m, step, loss):
        rows, gen = evaluate(m, tokenizer, items, args, None)
        record(log, {"path": "original", "phase": "sft", "step": step, "vocab_steps": 0, "sft_steps": step,
                     "cpu_s": budget.cpu, "wall_s": budget.wall, "train_loss": loss}, rows, gen)

    sft_phase(model, tokenizer, cfg, run, stage, points=sorted(set(args.sft_steps)), budget=budget,
              cache=folder / "cache", on_point=point, start=0)


def run_adapted(args, items, out: Path, label: str):
    from rutune.config import load_config
    from rutune.data.russian_text import merge_side_texts
    from rutune.models import resolve_model_path
    from rutune.rundir import RunDir
    from rutune.train.stage_io import load_stage_tokenizer
    from rutune.train.vocab_stage import adapt, freeze_all_but_embeddings, lora_with_embeddings, text_blocks

    cfg = load_config(args.adapted_config)
    vstage = next(s for s in cfg.train.stages if s.recipe == "vocab")
    sstage = next(s for s in cfg.train.stages if s.recipe == "sft")
    run = RunDir.for_experiment(ROOT / cfg.output_root if not Path(cfg.output_root).is_absolute()
                                else cfg.output_root, cfg.name)
    folder = out / label
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "points.jsonl"
    log.unlink(missing_ok=True)
    # the extension + mean init, timed once and reused by later runs (same key → same folder)
    adapt_record = out / "adapted.cpu.json"
    budget = Budget()
    with budget:
        adapted, rec = adapt(vstage, resolve_model_path(cfg.base_model.path), out / "adapted")
    if adapt_record.is_file():
        spent = json.loads(adapt_record.read_text())
        budget = Budget(spent["cpu_s"], spent["wall_s"])
    else:
        adapt_record.write_text(json.dumps({"cpu_s": budget.cpu, "wall_s": budget.wall}))
    print(f"extension + mean init: cpu {budget.cpu:.0f}s wall {budget.wall:.0f}s", flush=True)
    first_new_id = rec["extension"]["first_new_id"]
    tokenizer = load_stage_tokenizer(str(adapted))
    model = load(str(adapted))
    lr = args.vocab_lr or vstage.learning_rate
    batch = args.vocab_batch or vstage.per_device_batch_size
    block_tokens = args.vocab_block or vstage.max_tokens
    vocab_points = sorted(set(args.vocab_steps))
    settings = {"vocab_lr": lr, "vocab_batch": batch, "freeze_old_rows": args.freeze_old_rows,
                "vocab_lora": args.vocab_lora, "max_tokens": block_tokens, "sft_lr": sstage.learning_rate,
                "sft_batch": sstage.per_device_batch_size}
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    if args.vocab_lora:  # what the stage does with `lora:` (its own lora block, else the SFT stage's)
        model, _ = lora_with_embeddings(model, vstage.lora or sstage.lora, first_new_id=first_new_id,
                                        freeze_old_rows=args.freeze_old_rows, seed=cfg.seed)
    else:
        freeze_all_but_embeddings(model, first_new_id=first_new_id, freeze_old_rows=args.freeze_old_rows)

    def vpoint(m, step, loss):
        rows, gen = evaluate(m, tokenizer, items, args, first_new_id)
        record(log, {"path": label, "phase": "vocab", "step": step, "vocab_steps": step, "sft_steps": 0,
                     "cpu_s": budget.cpu, "wall_s": budget.wall, "train_loss": loss, **settings}, rows, gen)

    texts = merge_side_texts(held_out_share=vstage.text.held_out_share, seed=vstage.text.seed)
    blocks = text_blocks(tokenizer, texts, block_tokens)
    train_points(model, block_batches(blocks, batch, cfg.seed), points=vocab_points, lr=lr,
                 warmup=round(vstage.warmup_ratio * max(vocab_points)), weight_decay=vstage.weight_decay,
                 max_grad_norm=vstage.max_grad_norm, budget=budget, loss_fn=block_loss,
                 on_point=lambda s, loss: vpoint(model, s, loss))
    if args.vocab_lora:
        model = model.merge_and_unload()
    sft_points = sorted(set(args.a_sft_steps if args.a_sft_steps is not None else [s for s in args.sft_steps if s]))
    if not sft_points:
        return
    vsteps = max(vocab_points)

    def spoint(m, step, loss):
        rows, gen = evaluate(m, tokenizer, items, args, first_new_id)
        record(log, {"path": label, "phase": "sft", "step": step, "vocab_steps": vsteps, "sft_steps": step,
                     "cpu_s": budget.cpu, "wall_s": budget.wall, "train_loss": loss, **settings}, rows, gen)

    sft_phase(model, tokenizer, cfg, run, sstage, points=[0, *sft_points], budget=budget, cache=folder / "cache",
              on_point=spoint, start=1)


# ---------------------------------------------------------------- the table
def table(out: Path) -> str:
    """The markdown table of every run's points; rep-4 and Cyrillic are the answers' repeated word 4-grams and
    Cyrillic letters (`rutune.data.vocab_metrics`), so a speed reads against what was generated."""
    from rutune.data.vocab_metrics import cyrillic_letters, pooled_share, repeated_ngrams
    from rutune.eval.suites.vocab import paired_ratio

    runs = {p.parent.name: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            for p in sorted(out.glob("*/points.jsonl"))}
    orig = sorted(runs.pop("original", []), key=lambda r: r["cpu_s"])
    header = ("| path | vocab steps | SFT steps | train CPU s | bits/char [95% CI] | vs original (paired) | "
              "new-token share | gen chars/s | rep-4 | Cyrillic | load |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]

    def vs(point):
        if not orig:
            return "—"
        # The original's best point within the same CPU budget: SFT at a constant lr gets worse after its
        # best step, and a user with that budget would stop there, so the last point would flatter us.
        ref = [o for o in orig if o["cpu_s"] <= point["cpu_s"]] or orig[:1]
        ref = min(ref, key=lambda o: o["bits_per_char"]["value"])
        by_id = {i["id"]: i for i in ref["items"]}
        mine = [i for i in point["items"] if i["id"] in by_id]
        r = paired_ratio([i["bits"] for i in mine], [i["chars"] for i in mine],
                         [by_id[i["id"]]["bits"] for i in mine], [by_id[i["id"]]["chars"] for i in mine],
                         rounds=2000, seed=0)
        p = "< 0.001" if r["p_value"] < 0.001 else f"{r['p_value']:.3f}"
        return f"{r['ratio']:.3f}× [{r['ci_low']:.3f}, {r['ci_high']:.3f}] p {p} (vs SFT {ref['sft_steps']})"

    def row(name, p, compare=True):
        b = p["bits_per_char"]
        return (f"| {name} | {p['vocab_steps']} | {p['sft_steps']} | {p['cpu_s']:.0f} | {b['value']:.3f} "
                f"[{b['ci_low']:.3f}, {b['ci_high']:.3f}] | {vs(p) if compare else '—'} | "
                f"{_fmt(p['new_token_share'])} | {_fmt(p['gen_chars_per_s'], 1)} | "
                # points recorded before answers were kept have none: —
                f"{_fmt(pooled_share(p.get('answers', []), repeated_ngrams), 2)} | "
                f"{_fmt(pooled_share(p.get('answers', []), cyrillic_letters), 2)} | "
                f"{p['load_average'][0]:.1f} |")

    for p in orig:
        lines.append(row("original", p, compare=False))
    for name, points in runs.items():
        for p in points:
            lines.append(row(name, p))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.table_only:
        print(table(out))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    items = held_out(args.texts, experiment_runs(args.adapted_config, args.base_config), args.max_chars)
    print(f"held-out: {len(items)} texts, {sum(len(t) for _, t in items)} chars; load {os.getloadavg()}",
          flush=True)
    label = args.label or "config" + (f"-lr{args.vocab_lr:g}" if args.vocab_lr else "") + (
        "-frozen" if args.freeze_old_rows else "") + ("-lora" if args.vocab_lora else "") + (
        f"-b{args.vocab_batch}" if args.vocab_batch else "") + (
        f"-block{args.vocab_block}" if args.vocab_block else "")
    started = time.perf_counter(), time.process_time()
    if "b" in args.paths:
        run_original(args, items, out)
    if "a" in args.paths:
        run_adapted(args, items, out, label)
    print(f"total: wall {time.perf_counter() - started[0]:.0f}s cpu {time.process_time() - started[1]:.0f}s; "
          f"load {os.getloadavg()}", flush=True)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
