"""bench/gpu_check.sh on a machine without a GPU: it refuses clearly, its options are checked, its failure rules
(NaN, parity) turn into exit 1, and `--smoke` runs every section but vLLM on CPU with the tiny model.

The GPU-only paths (flash-attention varlen, `PAIR_PACKED_VARLEN`, bf16 autocast, CUDA memory, vLLM) are not run
here; the first GPU run is their test (docs/scaling.md, "GPU check").
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str, timeout: int = 120):
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "TRL_EXPERIMENTAL_SILENCE": "1"}
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_exits_2_saying_why_and_runs_nothing():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run")
    done = _run("--sections", "sft,dpo", "--steps", "4")
    assert done.returncode == 2
    assert "no CUDA GPU visible" in done.stderr and "nothing was run" in done.stderr
    assert "gpu_check on" not in done.stdout  # refused before building the 0.5B model


def test_bad_options_exit_2_before_anything_runs():
    done = _run("--sections", "sft,rlhf")
    assert done.returncode == 2 and "unknown section(s) rlhf" in done.stderr
    done = _run("--steps", "2", "--warmup", "2")
    assert done.returncode == 2 and "--steps (2) must exceed --warmup (2)" in done.stderr


def test_a_nan_loss_and_a_parity_miss_are_failures():
    gc = _module()
    check = gc.Check(gc.parse_args(["--smoke"]))
    check.finite("sft/x", [2.0, 1.5])
    check.parity("within", 1.0, 1.0 + 9e-3, 1e-2)
    assert check.failures == []
    check.finite("sft/x", [2.0, float("nan")])
    check.parity("outside", 1.0, 1.02, 1e-2)
    assert len(check.failures) == 2 and "non-finite" in check.failures[0] and "outside" in check.failures[1]


def test_flops_per_token_counts_the_tied_head_once_and_attention():
    """6·N (matmul weights; the tied LM head is the embedding matrix used once as a matmul) + 12·L·d·context."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    gc = _module()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    # per layer: q 8×8, k 8×4, v 8×4, o 8×8, mlp 3×8×16 = 64+32+32+64+384 = 576; head 100×8 = 800
    assert gc.flops_per_token(model, 0) == 6 * (2 * 576 + 800)
    assert gc.flops_per_token(model, 10) - gc.flops_per_token(model, 0) == 12 * 2 * 8 * 10


@pytest.mark.slow
def test_smoke_runs_every_cpu_section_and_a_zero_tolerance_fails_it(tmp_path):
    out = tmp_path / "check.json"
    done = _run("--smoke", "--steps", "2", "--warmup", "1", "--sft-seqs", "4", "--pairs", "3", "--questions", "8",
                "--json", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("gpu_check: OK")
    rows = json.loads(out.read_text())["rows"]
    assert {(r["section"], r["contender"].split()[0]) for r in rows} == {
        (s, c) for s in ("sft", "simpo", "dpo") for c in ("rutune", "TRL")} | {("mmlu", "rutune"), ("mmlu", "lm-eval")}
    # identical batches, fp32: rutune and the peers agree far inside the bf16 tolerances
    lines = [line for line in done.stdout.splitlines() if "parity" in line]
    assert len(lines) == 4 and all(line.endswith("ok") for line in lines)
    strict = _run("--smoke", "--sections", "dpo", "--steps", "2", "--warmup", "1", "--pairs", "3", "--pair-tol", "0",
                  timeout=600)
    assert strict.returncode == 1 and "MISMATCH" in strict.stdout and "FAIL dpo first loss" in strict.stderr
