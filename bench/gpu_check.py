"""One GPU check, side by side with the peers, on a Qwen2.5-0.5B-shaped random model in bf16 (run: bench/gpu_check.sh).

Sections (each contender on a fresh copy of the same weights, the same batches in the same order):

* `sft`   rutune packed rows (`collators.pack_sft` + `losses.sft_loss`), attention flash-attention-2 varlen (when
          `flash_attn` is installed) and rutune's per-sequence SDPA, vs TRL 1.16 `SFTTrainer` (its collator and
          `compute_loss`, padded, SDPA).
* `simpo` rutune padding-free packed pairs (`collate_packed_pairs`, attention `PAIR_PACKED_VARLEN`: torch's flash
          varlen) + `simpo_loss`, vs TRL `CPOTrainer(loss_type="simpo")` (`get_batch_loss_metrics`).
* `dpo`   the same packed pairs + `pref_losses.dpo_sigmoid_loss` against a second random model as reference (its
          sums computed once, as the recipe caches them), vs TRL `DPOTrainer` (`precompute_ref_log_probs` columns).
* `mmlu`  ruMMLU-style 4-option scoring: rutune's HF backend vs lm-eval 0.4's HFLM, same prompts: questions/s and
          the share of identical predictions.
* `vllm`  vLLM generation tokens/s (greedy, fixed length) beside `model.generate` of transformers.

A training step is collate → forward (bf16 autocast over fp32 weights, what `bf16: true` does) → loss → backward →
AdamW step; the first `--warmup` steps are not timed. Printed per contender: tokens/s (input tokens), seconds/step,
MFU (6·N + 12·layers·hidden·mean context FLOPs per token ÷ `--peak-tflops`), peak GPU memory, first → last loss.

Exit status: 0 all good; 1 a NaN/inf loss or a parity mismatch (first-step losses on identical batches: |Δ| ≤
`--pair-tol` for pair losses, ≤ `--sft-rtol` × loss for SFT; MMLU agreement ≥ `--agree`); 2 no GPU or bad options.
The tolerances are first guesses for bf16 (layouts reduce in different orders): confirm them on the first run.
`--smoke` runs the same code on CPU with the 2-layer tiny model in fp32 (no flash, no vLLM): the test of this file.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                  num_kv_heads=2, max_position_embeddings=32768)
TINY = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            max_position_embeddings=8192)
SECTIONS = ("sft", "simpo", "dpo", "mmlu", "vllm")
WORDS = ("привет мир модель ответ вопрос данные обучение текст язык русский пример задача решение город река книга "
         "время человек работа система документ поиск знание память число строка").split()
BETA_SIMPO, GAMMA_SIMPO, BETA_DPO = 2.5, 1.375, 0.1


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, default=8, help="training steps per contender (incl. warm-up)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sft-seqs", type=int, default=16, help="chats per SFT step")
    ap.add_argument("--pairs", type=int, default=8, help="preference pairs per step")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--gen-prompts", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--sft-rtol", type=float, default=1e-2)
    ap.add_argument("--pair-tol", type=float, default=3e-2)
    ap.add_argument("--agree", type=float, default=0.97)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--vllm-python", default=sys.executable, help="python of a venv with vllm (it pins transformers)")
    ap.add_argument("--model-dir", help="reuse a model folder built by an earlier run")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, fp32: checks the code paths only")
    ap.add_argument("--cpu-bf16", action="store_true", help="with --smoke: bf16 autocast on CPU, like the GPU run")
    args = ap.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.steps <= args.warmup:
        ap.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


class Check:
    """Device, precision and the results: rows per contender, parity lines, failures (→ exit 1)."""

    def __init__(self, args):
        import torch

        self.args, self.torch = args, torch
        self.cuda = not args.smoke
        self.device = "cuda" if self.cuda else "cpu"
        self.rows: list[dict] = []
        self.failures: list[str] = []

    def amp(self):
        if self.cuda or self.args.cpu_bf16:
            return self.torch.autocast(self.device, dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def fresh(self):
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def finite(self, where: str, losses: list[float]) -> None:
        bad = [x for x in losses if not x == x or abs(x) == float("inf")]
        if bad:
            self.failures.append(f"{where}: non-finite loss {bad[0]}")

    def parity(self, what: str, ours: float, theirs: float, tol: float) -> None:
        ok = abs(ours - theirs) <= tol
        print(f"  parity {what}: {ours:.5f} vs {theirs:.5f}  |Δ| {abs(ours - theirs):.2e} ≤ {tol:.1e}  "
              f"{'ok' if ok else 'MISMATCH'}", flush=True)
        if not ok:
            self.failures.append(f"{what}: {ours:.5f} vs {theirs:.5f} (tolerance {tol:.1e})")

    def row(self, section: str, contender: str, **values) -> None:
        self.rows.append({"section": section, "contender": contender, **values})
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"  {section:5} {contender:28} {shown}", flush=True)


def load(check: Check, model_dir: str, attn: str | None, seed: int = 0):
    from transformers import AutoModelForCausalLM

    import rutune.attention  # noqa: F401  registers rutune's attention functions

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=check.torch.float32, attn_implementation=attn)
    if seed:  # the DPO reference: the same weights plus seeded noise, so reference ≠ policy and βΔ ≠ 0
        gen = check.torch.Generator().manual_seed(seed)
        with check.torch.no_grad():
            for p in model.parameters():
                p.add_(check.torch.randn(p.shape, generator=gen) * 0.02)
    model.config.use_cache = False
    return model.to(check.device).train()


def flops_per_token(model, mean_context: float) -> float:
    cfg = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and p.dim() > 1)
    if cfg.tie_word_embeddings:
        matmul += model.get_input_embeddings().weight.numel()  # the LM head is a matmul with the tied matrix
    return 6 * matmul + 12 * cfg.num_hidden_layers * cfg.hidden_size * mean_context


def train(check: Check, section: str, contender: str, model, step, batches, *, tokens, context):
    """Run `step(model, batch) -> loss tensor` + backward + AdamW over `batches`; report speed, memory, losses."""
    torch = check.torch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    losses, times = [], []
    for batch in batches:
        check.sync()
        start = time.perf_counter()
        with check.amp():
            loss = step(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        check.sync()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    timed = times[check.args.warmup:]
    n_tok = sum(tokens[check.args.warmup:])
    tok_s = n_tok / sum(timed)
    mfu = tok_s * flops_per_token(model, context) / (check.args.peak_tflops * 1e12)
    check.finite(f"{section}/{contender}", losses)
    check.row(section, contender, tok_s=tok_s, step_s=sum(timed) / len(timed), mfu=mfu, peak_gib=check.peak_gib(),
              loss=f"{losses[0]:.4f}→{losses[-1]:.4f}")
    return losses


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ---------------------------------------------------------------- SFT
def sft_section(check: Check, model_dir: str, tok) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rutune.attention import PACKED_SDPA
    from rutune.data.templates import tokenize_chats
    from rutune.train.collators import pack_sft
    from rutune.train.losses import sft_loss

    a, rng = check.args, random.Random(0)
    scale = 1 if a.smoke else 8
    chats = [[{"role": "user", "content": text(rng, rng.randint(5, 40) * scale)},
              {"role": "assistant", "content": text(rng, rng.randint(5, 60) * scale)}] for _ in range(a.steps * a.sft_seqs)]
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tok, chats)]
    groups = [rows[i * a.sft_seqs:(i + 1) * a.sft_seqs] for i in range(a.steps)]
    tokens = [sum(len(r["input_ids"]) for r in g) for g in groups]
    context = sum(len(r["input_ids"]) ** 2 / 2 for r in rows) / sum(len(r["input_ids"]) for r in rows)
    dev = check.device

    def ours(model, b):
        keep = b["shift_labels"].ne(-100)
        fwd = {k: v.to(dev) if hasattr(v, "to") else v for k, v in b.items() if k not in ("labels", "shift_labels")}
        out = model(**fwd, use_cache=False, logits_to_keep=keep.to(dev))
        return sft_loss(out.logits, b["shift_labels"][keep].to(dev), keep.sum().to(dev))

    first = {}
    attns = [("rutune packed SDPA", PACKED_SDPA)]
    if check.cuda:
        try:
            import flash_attn  # noqa: F401

            attns.insert(0, ("rutune packed flash-attn varlen", "flash_attention_2"))
        except ImportError:
            print("  sft   flash-attn not installed (pip install flash-attn): varlen row skipped", flush=True)
    for name, attn in attns:
        check.fresh()
        model = load(check, model_dir, attn)
        first[name] = train(check, "sft", name, model, ours, [pack_sft(g) for g in groups], tokens=tokens,
                            context=context)[0]
        del model
    check.fresh()
    model = load(check, model_dir, "sdpa")
    masks = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]  # prepared rows, our labels
    cfg = SFTConfig(output_dir=tempfile.mkdtemp(), bf16=check.cuda, use_cpu=not check.cuda,
                    report_to=[], dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
                    per_device_train_batch_size=a.sft_seqs)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(masks), processing_class=tok)
    collate = trainer.data_collator

    def theirs(model, b):
        return trainer.compute_loss(model, {k: v.to(dev) for k, v in b.items()})

    batches = [collate(masks[i * a.sft_seqs:(i + 1) * a.sft_seqs]) for i in range(a.steps)]
    padded = [int(b["input_ids"].numel()) for b in batches]
    first["trl"] = train(check, "sft", "TRL SFTTrainer (padded)", model, theirs, batches, tokens=tokens,
                         context=context)[0]
    print(f"  sft   TRL padded rows hold {sum(padded) / sum(tokens):.2f}× the real tokens", flush=True)
    del model, trainer
    for name in first:
        if name != "trl":
            check.parity(f"sft first loss {name} vs TRL", first[name], first["trl"], a.sft_rtol * abs(first["trl"]))


# ---------------------------------------------------------------- preference pairs
def make_pairs(tok, n: int, smoke: bool):
    from rutune.data.templates import tokenize_pair

    rng, scale = random.Random(1), 1 if smoke else 10
    texts, ids = [], []
    for _ in range(n):
        prompt = [{"role": "user", "content": text(rng, rng.randint(5, 60) * scale)}]
        chosen, rejected = text(rng, rng.randint(3, 30) * scale), text(rng, rng.randint(3, 30) * scale)
        texts.append({"prompt": tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                      "chosen": chosen + "<|im_end|>", "rejected": rejected + "<|im_end|>"})
        p = tokenize_pair(tok, prompt, chosen, rejected)
        ids.append({"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids})
    return texts, ids


def packed_sums(check: Check, model, b):
    """Per-pair (chosen sums, chosen counts, rejected sums, rejected counts) from one packed-pairs row."""
    from rutune.train.collators import PACKED_PAIRS_FORWARD_KEYS
    from rutune.train.losses import sequence_logps

    dev = check.device
    fwd = {k: b[k].to(dev) if hasattr(b[k], "to") else b[k] for k in PACKED_PAIRS_FORWARD_KEYS}
    out = model(**fwd, use_cache=False, logits_to_keep=b["logits_to_keep"].to(dev))
    n = len(b["pair_cu_seq_q"]) // 2
    lp = sequence_logps(out.logits, b["target_ids"].to(dev), segment_ids=b["target_segment"].to(dev),
                        num_segments=2 * n)
    return lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:]


def pair_section(check: Check, model_dir: str, tok, objective: str) -> None:
    import torch
    from datasets import Dataset

    from rutune.attention import PAIR_PACKED, PAIR_PACKED_VARLEN
    from rutune.train.collators import collate_packed_pairs
    from rutune.train.losses import simpo_loss
    from rutune.train.pref_losses import dpo_sigmoid_loss

    a = check.args
    texts, ids = make_pairs(tok, a.steps * a.pairs, a.smoke)
    groups = [list(range(i * a.pairs, (i + 1) * a.pairs)) for i in range(a.steps)]
    packed = [collate_packed_pairs([ids[j] for j in g]) for g in groups]
    tokens = [int(b["input_ids"].numel()) for b in packed]
    context = sum(len(p["prompt_ids"]) + (len(p["chosen_ids"]) + len(p["rejected_ids"])) / 2 for p in ids) / len(ids)
    attn = PAIR_PACKED_VARLEN if check.cuda else PAIR_PACKED
    refs = None
    if objective == "dpo":  # reference sums computed once, as the recipe caches them
        check.fresh()
        ref = load(check, model_dir, attn, seed=1).eval()
        with torch.no_grad(), check.amp():
            refs = [tuple(x.float().cpu() for x in packed_sums(check, ref, b)[0::2]) for b in packed]
        del ref

    def ours(model, b, i=[0]):  # noqa: B006  the step index, for the reference sums of this batch
        cs, cn, rs, rn = packed_sums(check, model, b)
        k, i[0] = i[0], i[0] + 1
        if objective == "simpo":
            return simpo_loss(cs.float(), cn, rs.float(), rn, BETA_SIMPO, GAMMA_SIMPO).loss
        rc, rr = (x.to(check.device) for x in refs[k % len(refs)])
        return dpo_sigmoid_loss(cs.float(), cn, rs.float(), rn, rc, rr, beta=BETA_DPO).loss

    check.fresh()
    model = load(check, model_dir, attn)
    first_ours = train(check, objective, f"rutune packed pairs ({attn})", model, ours, packed, tokens=tokens,
                       context=context)[0]
    del model
    check.fresh()
    model = load(check, model_dir, "sdpa")
    common = dict(output_dir=tempfile.mkdtemp(), bf16=check.cuda, use_cpu=not check.cuda, report_to=[],
                  disable_dropout=True, per_device_train_batch_size=a.pairs)
    dev = check.device
    if objective == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, beta=BETA_SIMPO, simpo_gamma=GAMMA_SIMPO,
                         max_length=32768)  # None would mean TRL's 512-token default
        trainer = CPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(texts), processing_class=tok)
        ds = trainer.train_dataset
        batches = [trainer.data_collator([ds[j] for j in g]) for g in groups]

        def theirs(model, b):
            return trainer.get_batch_loss_metrics(model, {k: v.to(dev) if hasattr(v, "to") else v
                                                          for k, v in b.items()})[0]
    else:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=BETA_DPO, loss_type=["sigmoid"], max_length=None,
                         precompute_ref_log_probs=True, gradient_checkpointing=False)
        dummy = Dataset.from_list([{"prompt": "a b", "chosen": " c", "rejected": " d"}])
        trainer = DPOTrainer(model=model, args=args, train_dataset=dummy, processing_class=tok)
        batches = [trainer.data_collator([{**ids[j], "ref_chosen_logps": float(refs[k][0][n]),
                                           "ref_rejected_logps": float(refs[k][1][n])} for n, j in enumerate(g)])
                   for k, g in enumerate(groups)]

        def theirs(model, b):
            return trainer.compute_loss(model, {k: v.to(dev) if hasattr(v, "to") else v for k, v in b.items()})

    peer = "TRL CPOTrainer simpo" if objective == "simpo" else "TRL DPOTrainer sigmoid"
    first_theirs = train(check, objective, f"{peer} (padded)", model, theirs, batches, tokens=tokens,
                         context=context)[0]
    del model, trainer
    check.parity(f"{objective} first loss rutune vs TRL", first_ours, first_theirs, a.pair_tol)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible (torch {torch.__version__}: torch.cuda.is_available() is False). "
              "This check needs one GPU (sized for an H100, ≤ 10 min); nothing was run. "
              "`--smoke` runs its code paths on CPU with a tiny model.", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from gpu_check_eval import mmlu_section, vllm_section

    from rutune.models import build_tiny_model

    check = Check(args)
    torch.manual_seed(0)
    if "vllm" in args.sections and (args.smoke or args.vllm_python == sys.executable
                                    and importlib.util.find_spec("vllm") is None):
        print("  vllm  skipped: --smoke, or no vllm here (pass --vllm-python of a venv with vllm)", flush=True)
        args.sections.remove("vllm")
    shape = TINY if args.smoke else QWEN25_05B
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(build_tiny_model(Path(tmp) / "model", **shape))
        tok = AutoTokenizer.from_pretrained(model_dir)
        name = torch.cuda.get_device_name() if check.cuda else "CPU (smoke)"
        print(f"gpu_check on {name}: model {shape}, sections {','.join(args.sections)}", flush=True)
        started = time.perf_counter()
        for section in args.sections:  # a section that crashes is a failure; the others still run
            try:
                if section == "sft":
                    sft_section(check, model_dir, tok)
                elif section in ("simpo", "dpo"):
                    pair_section(check, model_dir, tok, section)
                elif section == "mmlu":
                    mmlu_section(check, model_dir)
                else:
                    vllm_section(check, model_dir, tok)
            except Exception as e:  # noqa: BLE001  reported, and the exit status says so
                traceback.print_exc()
                check.failures.append(f"{section}: crashed with {type(e).__name__}: {str(e)[:300]}")
        print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": check.rows, "failures": check.failures}, indent=1))
    for failure in check.failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("gpu_check: " + ("FAILED" if check.failures else "OK"), flush=True)
    return 1 if check.failures else 0


if __name__ == "__main__":
    sys.exit(main())
