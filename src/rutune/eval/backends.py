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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from rutune.eval.errors import EvalError

if TYPE_CHECKING:
    from rutune.config_eval import BackendConfig


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


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation (lm-eval's convention)."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        return context[:-n_space], context[-n_space:] + continuation
    return context, continuation


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens), tokenised as one string (lm-eval's `_encode_pair`)."""
    if not context.strip():
        raise EvalError("log-likelihood request with an empty context")
    context, continuation = split_pair(context, continuation)
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:n_context], whole[n_context:]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def messages_of(request: GenerationRequest) -> list[dict]:
    if request.messages is not None:
        return [dict(m) for m in request.messages]
    if request.prompt is None:
        raise EvalError("a generation request needs `messages` or `prompt`")
    return [{"role": "user", "content": request.prompt}]


def plain_text_of(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    return "\n\n".join(str(m.get("content", "")) for m in request.messages or ())


def render_chat(tokenizer, messages, *, fix: str) -> str:
    """Messages through the tokenizer's chat template, ending with the assistant's generation prompt.

    A tokenizer without a template is an EvalError whose message ends with `fix` (the setting to change).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise EvalError(f"its tokenizer has no chat template, but the chat template is requested ({fix})")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def prompt_text(tokenizer, request: GenerationRequest, apply_chat_template: bool, model_path: str) -> str:
    """The exact text a local backend (hf, vllm) generates from."""
    if not apply_chat_template:
        return plain_text_of(request)
    try:
        return render_chat(tokenizer, messages_of(request), fix="set eval.backend.apply_chat_template: false")
    except EvalError as e:
        raise EvalError(f"model {model_path}: {e}") from None


def prompt_token_ids(tokenizer, request: GenerationRequest, apply_chat_template: bool, model_path: str) -> list[int]:
    """`prompt_text` tokenised: a rendered chat already holds its special tokens; plain text gets the
    tokenizer's own (e.g. BOS)."""
    text = prompt_text(tokenizer, request, apply_chat_template, model_path)
    return tokenizer(text, add_special_tokens=not apply_chat_template)["input_ids"]


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` without special tokens (ruBABILong's generator sizes its contexts with it)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def run_sync(coro):
    """Run a coroutine to completion from synchronous code, also when the caller already runs an event loop
    (a notebook): then it runs on a fresh loop in a worker thread."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def resolve_model(model_path: str) -> str:
    """`models.resolve_model_path` for the eval backends: a missing folder is an EvalError (one line)."""
    from rutune.models import ModelError, resolve_model_path

    try:
        return resolve_model_path(model_path)
    except ModelError as e:
        raise EvalError(str(e)) from None


def make_backend(cfg: "BackendConfig", model_path: str) -> Backend:
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
