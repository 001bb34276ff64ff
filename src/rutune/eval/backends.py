"""The model seam every eval suite uses: `generate(requests)` and `loglikelihood(requests)`.

Backends: `hf` (transformers, default), `vllm` (extra, imported lazily), `openai` (any compatible server).
Suites depend only on these request/result types and `make_backend`, never on a backend's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """Either `messages` (chat; the backend applies the chat template when configured) or a raw `prompt`."""

    messages: tuple[dict, ...] | None = None
    prompt: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    n_tokens: int  # generated tokens in the model's own tokenizer
    finish_reason: str = "stop"  # "stop" | "length"


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float
    is_greedy: bool


class Backend(Protocol):
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]: ...


# Implementations and `make_backend(cfg: rutune.config_eval.BackendConfig, model_path: str) -> Backend` below.
