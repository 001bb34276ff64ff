"""The model seam every eval suite uses: `generate(requests)` and `loglikelihood(requests)`.

Backends: `hf` (transformers, default), `vllm` (extra, imported lazily), `openai` (any compatible server).
Suites depend only on these request/result types and `make_backend`, never on a backend's internals.

Shared rules (all backends):
- Results come back in request order, whatever order the backend ran them in.
- `messages` requests get the model's chat template when `apply_chat_template` is on (the default); with it off
  the message contents are joined by a blank line. A `prompt` request is sent as one user message when the
  template is on, as raw text when it is off.
- Greedy decoding unless a request sets `temperature > 0`.
- Log-likelihood follows lm-eval's split: trailing whitespace of the context moves to the continuation, the pair
  is tokenised as one string, and the continuation is whatever tokens follow the context's own tokens.
"""

from __future__ import annotations

from typing import Protocol

from rutune.eval.backend_base import (BackendConfig, GenerationRequest, GenerationResult, LoglikelihoodRequest,
                                      LoglikelihoodResult, count_tokens, cut_at_stop, encode_pair, messages_of,
                                      plain_text_of, prompt_text, prompt_token_ids, render_chat, resolve_model,
                                      run_sync, split_pair)
from rutune.eval.errors import EvalError


class Backend(Protocol):
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...


def make_backend(cfg: BackendConfig, model_path: str) -> Backend:
    """The configured backend for one model. `model_path` may be `tiny`, a folder, a hub id or a served name."""
    if cfg.kind == "hf":
        from rutune.eval.backend_hf import HFBackend

        return HFBackend(model_path, batch_size=cfg.batch_size, apply_chat_template=cfg.apply_chat_template,
                         max_length=cfg.max_length, dtype=cfg.dtype, device=cfg.device,
                         trust_remote_code=cfg.trust_remote_code)
    if cfg.kind == "vllm":
        from rutune.eval.backend_vllm import VLLMBackend

        return VLLMBackend(model_path, apply_chat_template=cfg.apply_chat_template, max_length=cfg.max_length,
                           dtype=cfg.dtype, memory_utilization=cfg.vllm_memory_utilization)
    if cfg.kind == "openai":
        from rutune.eval.backend_openai import OpenAIBackend

        return OpenAIBackend.from_config(cfg, model_path)
    raise EvalError(f"eval.backend.kind: unknown backend {cfg.kind!r} (hf, vllm, openai)")


def __getattr__(name: str):
    """`from rutune.eval.backends import HFBackend` works without importing torch up front."""
    lazy = {"HFBackend": "rutune.eval.backend_hf", "VLLMBackend": "rutune.eval.backend_vllm",
            "OpenAIBackend": "rutune.eval.backend_openai"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)


__all__ = ["Backend", "BackendConfig", "GenerationRequest", "GenerationResult", "LoglikelihoodRequest",
           "LoglikelihoodResult", "count_tokens", "cut_at_stop", "encode_pair", "make_backend", "messages_of",
           "plain_text_of", "prompt_text", "prompt_token_ids", "render_chat", "resolve_model", "run_sync",
           "split_pair"]
