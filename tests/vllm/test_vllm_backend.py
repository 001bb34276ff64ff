"""vLLM backend on the tiny model agrees with the hf backend: greedy text, log-likelihood, ruMMLU predictions.

Runs in `.venv-vllm` via `make test-vllm` (vLLM's CPU build wants its own transformers). The model folder comes
from RUTUNE_VLLM_MODEL (built by the main venv) or is built here; it is the tiny model widened to head_dim 64,
because vLLM's CPU attention has no kernel for the default head_dim 16.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.mmlu import MmluConfig
from rutune.eval.backends import GenerationRequest, LoglikelihoodRequest, make_backend

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def model_dir():
    path = os.environ.get("RUTUNE_VLLM_MODEL")
    if path:
        return path
    from rutune.models import tiny_model_path

    return str(tiny_model_path(hidden_size=128, num_heads=2, num_kv_heads=1))  # vLLM CPU needs head_dim >= 32


@pytest.fixture(scope="module")
def both(model_dir):
    hf = make_backend(BackendConfig(kind="hf", apply_chat_template=False), model_dir)
    vl = make_backend(BackendConfig(kind="vllm", apply_chat_template=False, max_length=2048,
                                    vllm_memory_utilization=0.1), model_dir)
    return hf, vl


def test_generate_matches_hf(both):
    hf, vl = both
    reqs = [GenerationRequest(prompt=p, max_new_tokens=8) for p in ("Привет", "Где кухня? Ответ:", "1 2 3 4")]
    assert [r.text for r in vl.generate(reqs)] == [r.text for r in hf.generate(reqs)]


def test_loglikelihood_matches_hf(both):
    hf, vl = both
    reqs = [LoglikelihoodRequest("Вопрос: где кухня?\nОтвет:", " " + x) for x in "ABCD"]
    reqs.append(LoglikelihoodRequest("Столица России — ", "Москва"))
    for a, b in zip(vl.loglikelihood(reqs), hf.loglikelihood(reqs)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert a.is_greedy == b.is_greedy


def test_mmlu_predictions_match_hf(both, tmp_path):
    from rutune.eval.mmlu import run_mmlu

    hf, vl = both
    cfg = MmluConfig(path=str(DATA / "rummlu_mera_mini.jsonl"), shots=1, bootstrap_rounds=50)
    a = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "hf", backend=hf)
    b = run_mmlu(cfg, BackendConfig(), "tiny", tmp_path / "vllm", backend=vl)
    assert a["metrics"]["accuracy"]["value"] == b["metrics"]["accuracy"]["value"]
    preds = [(tmp_path / d / "items.jsonl").read_text().count('"pred": "A"') for d in ("hf", "vllm")]
    assert preds[0] == preds[1]
