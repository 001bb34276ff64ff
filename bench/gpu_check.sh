#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): a Qwen2.5-0.5B-shaped random model in bf16, rutune side by side with TRL
# (SFT packed flash-attn varlen + SDPA, SimPO and DPO on padding-free packed pairs), lm-eval (ruMMLU scoring) and
# vLLM (generation tokens/s), with MFU and peak GPU memory. Sized for ≤ 10 minutes on one H100; killed at
# GPU_CHECK_TIMEOUT seconds (default 600). Exit 0 = all good, 1 = NaN or parity mismatch, 2 = no GPU / bad options,
# 124 = timed out.
#
#   bench/gpu_check.sh                                   # everything
#   bench/gpu_check.sh --sections sft,simpo --steps 6    # a part
#   bench/gpu_check.sh --vllm-python .venv-vllm/bin/python --json runs/gpu_check.json
#   bench/gpu_check.sh --smoke                           # CPU, tiny model: the code paths only (tests/test_gpu_check.py)
#
# Needs (GPU machine): the dev extra (TRL 1.16, lm-eval), optionally `pip install flash-attn` (SFT varlen row) and
# vLLM in its own venv (it pins an older transformers) passed as --vllm-python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PY" bench/gpu_check.py "$@"
