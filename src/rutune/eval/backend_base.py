"""What every backend shares: its config (`eval.backend`), the request/result types, and prompt rendering.

The backend implementations (`backend_hf`, `backend_vllm`, `backend_openai`) import only this module; suites
import `rutune.eval.backends`, the interface module that holds the `Backend` protocol and the factory, so the
arrows run one way: backends → backend_* → backend_base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field

from rutune.eval.errors import EvalError
from rutune.schema import PositiveInt, Strict


class BackendConfig(Strict):
    """How to run a model: `hf` (transformers), `vllm` (extra) or `openai` (any compatible server)."""

    kind: Literal["hf", "vllm", "openai"] = "hf"
    batch_size: PositiveInt = 8
    apply_chat_template: bool = True
    max_length: PositiveInt | None = None  # null = the model's max_position_embeddings
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on a GPU
    device: str | None = None  # null = cuda when available, else cpu
    trust_remote_code: bool = False  # run a checkpoint's own modelling code (hf backend); off unless asked
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # openai: name of the env var holding the key (null = "EMPTY")
    served_model: str | None = None  # openai: model name on the server (null = the model path/label)
    concurrency: PositiveInt = 8
    vllm_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None  # vllm: share of GPU (CPU build: RAM)
    max_retries: Annotated[int, Field(strict=True, ge=0)] = 3
    timeout_s: Annotated[float, Field(gt=0)] = 300.0


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
