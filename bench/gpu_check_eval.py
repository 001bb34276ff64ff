"""The evaluation sections of bench/gpu_check.py: ruMMLU scoring vs lm-eval, and generation tokens/s of vLLM.

Run as a script (`python bench/gpu_check_eval.py MODEL PROMPTS TOKENS`) it is the vLLM worker: vLLM pins an older
transformers, so it usually lives in its own venv (`--vllm-python`) and needs nothing of rutune.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

WORDS = ("привет мир модель ответ вопрос данные обучение текст язык русский пример задача решение город река книга "
         "время человек работа система документ поиск знание память число строка").split()


def mmlu_section(check, model_dir: str) -> None:
    """ruMMLU-style scoring of `--questions` synthetic questions: rutune's HF backend vs lm-eval's HFLM."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from mmlu import synthetic_questions

    from rutune.eval.backend_hf import HFBackend
    from rutune.eval.mmlu import build_prompt, score_questions

    dtype = "bfloat16" if check.cuda else "float32"
    questions = synthetic_questions(check.args.questions)
    contexts = [(q, build_prompt(q, [], "mera")) for q in questions]
    check.fresh()
    backend = HFBackend(model_dir, batch_size=8, dtype=dtype, device=check.device)
    score_questions(backend, [(q, c, 0) for q, c in contexts[:8]])  # warm-up
    check.sync()
    start = time.perf_counter()
    ours = [r["pred"] for r in score_questions(backend, [(q, c, 0) for q, c in contexts])]
    check.sync()
    t_ours = time.perf_counter() - start
    check.row("mmlu", "rutune HF backend", q_s=len(contexts) / t_ours, peak_gib=check.peak_gib())
    del backend
    check.fresh()
    lm = HFLM(pretrained=model_dir, batch_size=8, device=check.device, dtype=dtype)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, " " + letter), idx=j)
                for _, ctx in contexts for j, letter in enumerate("ABCD")]
    start = time.perf_counter()
    res = lm.loglikelihood(requests, disable_tqdm=True)
    check.sync()
    t_lm = time.perf_counter() - start
    theirs = ["ABCD"[max(range(4), key=lambda j: res[4 * n + j][0])] for n in range(len(contexts))]
    check.row("mmlu", "lm-eval HFLM", q_s=len(contexts) / t_lm, peak_gib=check.peak_gib())
    del lm
    same = sum(x == y for x, y in zip(ours, theirs)) / len(contexts)
    check.parity("mmlu identical predictions (share)", same, 1.0, 1.0 - check.args.agree)


def vllm_worker(model: str, n_prompts: int, n_tokens: int) -> None:
    """In the vLLM venv: greedy fixed-length generation, prints one JSON line (tokens, seconds)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="bfloat16", enforce_eager=True, gpu_memory_utilization=0.5, seed=0)
    prompts = [" ".join(WORDS[i % len(WORDS):] + WORDS[:i % len(WORDS)]) for i in range(n_prompts)]
    params = SamplingParams(max_tokens=n_tokens, min_tokens=n_tokens, ignore_eos=True, temperature=0.0)
    llm.generate(prompts[:2], params)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "seconds": seconds}))


def vllm_section(check, model_dir: str, tok) -> None:
    """Greedy fixed-length generation of `--gen-prompts` prompts: transformers' generate, then vLLM (subprocess)."""
    import torch
    from gpu_check import load

    a = check.args
    check.fresh()
    model = load(check, model_dir, "sdpa").eval().to(torch.bfloat16)
    tok.padding_side = "left"
    prompts = [" ".join(WORDS[i % len(WORDS):] + WORDS[:i % len(WORDS)]) for i in range(a.gen_prompts)]
    enc = tok(prompts, return_tensors="pt", padding=True).to(check.device)
    with torch.no_grad():
        start = time.perf_counter()
        model.generate(**enc, max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, do_sample=False,
                       pad_token_id=tok.pad_token_id)
        check.sync()
    check.row("vllm", "transformers generate", tok_s=a.gen_prompts * a.gen_tokens / (time.perf_counter() - start),
              peak_gib=check.peak_gib())
    del model
    check.fresh()
    done = subprocess.run([a.vllm_python, __file__, model_dir, str(a.gen_prompts),
                           str(a.gen_tokens)], capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        check.failures.append(f"vllm worker failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
        return
    got = json.loads(done.stdout.strip().splitlines()[-1])
    check.row("vllm", "vLLM (enforce_eager)", tok_s=got["tokens"] / got["seconds"])


if __name__ == "__main__":
    vllm_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
