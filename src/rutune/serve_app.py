"""HTTP layer of `rutune serve`: OpenAI-compatible routes, request checks, OpenAI-style errors, SSE streams.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`, `POST /v1/completions` (with
`echo` + `logprobs`: prompt log-probs, what log-likelihood evals need), `GET /health` (no key). Bad requests get
`{"error": {"message", "type", "param", "code"}}` with a 4xx status, as OpenAI answers them.

This module defines what it needs from a generator (`TextGenerator`: `Sampling` in, `Step`s out,
`GenerationFailed` for a 500) and never imports `rutune.serve`, which implements it and imports this module
(`run_server` builds the app): one import arrow, serve → serve_app.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool

from rutune.data.templates import TemplateError, render

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_TOP_LOGPROBS = 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy endpoint


# ---------------------------------------------------------------- what the HTTP layer asks of a generator

@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Step:
    """A piece of streamed text; the last step of a generation carries `finish_reason` and the token count."""

    text: str
    finish_reason: str | None = None  # "stop" (end-of-turn token or stop string) | "length"
    n_tokens: int = 0  # generated tokens, without the end-of-turn token; up to the one completing a stop string
    token_ids: tuple[int, ...] = ()


class GenerationFailed(RuntimeError):
    """The model raised while generating (e.g. out of memory); the server answers 500."""


class TextGenerator(Protocol):
    """What `create_app` serves (`rutune.serve.Generator` is the one implementation).

    `checkpoint` carries `tokenizer`, `window` (prompt + completion tokens) and `has_chat_template`.
    """

    checkpoint: object

    def stream(self, prompt_ids: list[int], sampling: Sampling, cancel: threading.Event | None = None
               ) -> Iterator[Step]: ...

    def prompt_logprobs(self, ids: list[int], top_n: int) -> list[tuple[float | None, list[tuple[int, float]]]]: ...


class APIError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields we do not use (user, metadata, …)

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stream: bool | None = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class ChatRequest(_Request):
    messages: list[dict]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=0)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


# ---------------------------------------------------------------- request checks (pure)

def chat_messages(raw: list[dict]) -> list[dict]:
    """OpenAI chat messages as {role, content} text turns; `developer` counts as `system`, text parts are joined."""
    if not raw:
        raise APIError(400, "messages: empty; a chat needs at least one message", param="messages")
    out = []
    for i, m in enumerate(raw):
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise APIError(400, f"messages[{i}].role: {role!r} is not supported (system, developer, user, "
                           "assistant)", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            content = "\n".join(parts)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content: expected text", param=f"messages[{i}].content")
        out.append({"role": CHAT_ROLES[role], "content": content})
    return out


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


def completion_budget(requested: int | None, *, n_prompt: int, window: int, cap: int, default: int | None,
                      prompt_param: str) -> int:
    """Tokens to generate: `requested`, or the default (None = all the room left, up to the cap).

    Rejects, as vLLM does, a request whose prompt plus `max_tokens` exceeds the model's context, and any
    `max_tokens` above the server's cap.
    """
    room = window - n_prompt
    if room < (0 if requested == 0 else 1):
        raise APIError(400, f"{prompt_param}: the prompt has {n_prompt} tokens; this model's context is {window} "
                       "tokens", param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return max(0, min(cap, room, default if default is not None else room))
    if requested > cap:
        raise APIError(400, f"max_tokens: {requested} is above this server's limit of {cap}", param="max_tokens")
    if requested > room:
        raise APIError(400, f"max_tokens: {requested} does not fit; this model's context is {window} tokens and "
                       f"the prompt takes {n_prompt}, leaving {room}", param="max_tokens",
                       code="context_length_exceeded")
    return requested


def sampling_of(req: _Request, max_tokens: int) -> Sampling:
    if req.n not in (None, 1):
        raise APIError(400, f"n: {req.n} is not supported; this server returns one choice (n=1)", param="n")
    return Sampling(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                    top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=stop_strings(req.stop))


def text_offsets(tokenizer, text: str, ids: list[int]) -> list[int]:
    """Character offset where each token of `text` starts (a special token with no text: where it sits)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"] == ids:
            return [start for start, _ in enc["offset_mapping"]]
    return [len(tokenizer.decode(ids[:k])) for k in range(len(ids))]


# ---------------------------------------------------------------- responses

def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def collect(steps: Iterator[Step]) -> tuple[str, Step]:
    """All text of a generation and its last step (finish reason, token count)."""
    parts, last = [], None
    for step in steps:
        parts.append(step.text)
        last = step
    assert last is not None and last.finish_reason is not None
    return "".join(parts), last


def stream_events(steps: Iterator[Step], *, head: dict, choice, include_usage: bool, n_prompt: int,
                  first: dict | None = None) -> Iterator[str]:
    """SSE lines: an optional opening choice, one chunk per piece of text, the finish chunk, usage, [DONE]."""
    extra = {"usage": None} if include_usage else {}
    if first is not None:
        yield sse({**head, "choices": [first], **extra})
    try:
        for step in steps:
            if step.text:
                yield sse({**head, "choices": [choice(step.text, None)], **extra})
            if step.finish_reason is not None:
                yield sse({**head, "choices": [choice("", step.finish_reason)], **extra})
                if include_usage:
                    yield sse({**head, "choices": [], "usage": usage(n_prompt, step.n_tokens)})
    except GenerationFailed as e:
        yield sse(APIError(500, str(e), kind="server_error").body())
    yield "data: [DONE]\n\n"


def sse_response(generator: TextGenerator, ids: list[int], sampling: Sampling, **events) -> StreamingResponse:
    """Stream `stream_events` from a worker thread; a client that goes away cancels generation at the next token."""
    cancel = threading.Event()
    lines = stream_events(generator.stream(ids, sampling, cancel), n_prompt=len(ids), **events)

    async def body():
        try:
            async for line in iterate_in_threadpool(lines):
                yield line
        finally:
            cancel.set()

    return StreamingResponse(body(), media_type="text/event-stream")


# ---------------------------------------------------------------- the app

def create_app(generator: TextGenerator, *, model_name: str, api_key: str | None = None,
               max_tokens_cap: int | None = None) -> FastAPI:
    """The FastAPI app serving `generator`'s checkpoint as `model_name`; `api_key` None = no key checked."""
    ckpt = generator.checkpoint
    tok = ckpt.tokenizer
    cap = min(max_tokens_cap or ckpt.window, ckpt.window)
    created = int(time.time())
    app = FastAPI(title="rutune serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return JSONResponse(APIError(400, f"the request body is not valid JSON ({err.get('ctx', {}).get('error')}"
                                         f" at character {err['loc'][-1]})").body(), status_code=400)
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param or 'body'}: {err.get('msg')}", param=param).body(),
                            status_code=400)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key; send it as `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{model_name}`",
                           param="model", code="model_not_found")

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "rutune",
                "max_model_len": ckpt.window}

    keyed = [Depends(check_key)]

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=keyed)
    def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=keyed)
    def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions", dependencies=keyed)
    def chat_completions(req: ChatRequest):
        check_model(req.model)
        messages = chat_messages(req.messages)
        if req.logprobs:
            raise APIError(400, "logprobs: not supported on chat completions; use /v1/completions with echo and "
                           "logprobs", param="logprobs")
        if not ckpt.has_chat_template:
            raise APIError(400, "this checkpoint has no chat template; use /v1/completions", param="messages")
        try:
            prompt = render(tok, messages, add_generation_prompt=True)
        except TemplateError as e:
            raise APIError(400, f"messages: {e}", param="messages") from None
        ids = tok(prompt, add_special_tokens=False)["input_ids"]  # the rendered chat holds its special tokens
        budget = completion_budget(req.max_completion_tokens or req.max_tokens, n_prompt=len(ids),
                                   window=ckpt.window, cap=cap, default=None, prompt_param="messages")
        sampling = sampling_of(req, budget)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
        if req.stream:
            def choice(text, finish):
                return {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None,
                        "finish_reason": finish}

            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}
            return sse_response(generator, ids, sampling, head={**head, "object": "chat.completion.chunk"},
                                choice=choice, first=first,
                                include_usage=bool((req.stream_options or {}).get("include_usage")))
        text, last = _collect(generator.stream(ids, sampling))
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": last.finish_reason}],
                "usage": usage(len(ids), last.n_tokens)}

    @app.post("/v1/completions", dependencies=keyed)
    def completions(req: CompletionRequest):
        check_model(req.model)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: {len(prompt)} prompts in one request; send one", param="prompt")
            prompt = prompt[0]
        if req.stream and req.logprobs is not None:
            raise APIError(400, "logprobs: not supported with stream", param="logprobs")
        if req.max_tokens == 0 and not req.echo:
            raise APIError(400, "max_tokens: 0 generates nothing; use it with echo", param="max_tokens")
        # Scoring (echo) tokenises like lm-eval and the hf backend: no special tokens added; generation adds them.
        ids = tok(prompt, add_special_tokens=not req.echo)["input_ids"]
        if not ids:
            raise APIError(400, "prompt: empty", param="prompt")
        budget = completion_budget(req.max_tokens, n_prompt=len(ids), window=ckpt.window, cap=cap,
                                   default=COMPLETIONS_DEFAULT_MAX_TOKENS, prompt_param="prompt")
        sampling = sampling_of(req, budget)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        if req.stream:
            def choice(text, finish):
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

            first = choice(prompt, None) if req.echo else None
            return sse_response(generator, ids, sampling, head=head, choice=choice, first=first,
                                include_usage=bool((req.stream_options or {}).get("include_usage")))
        text, last = _collect(generator.stream(ids, sampling))
        logprobs = None
        if req.logprobs is not None:
            logprobs = _logprobs(generator, prompt, ids, list(last.token_ids[:last.n_tokens]), top_n=req.logprobs,
                                 echo=bool(req.echo))
        return {**head, "choices": [{"index": 0, "text": (prompt if req.echo else "") + text, "logprobs": logprobs,
                                     "finish_reason": last.finish_reason}],
                "usage": usage(len(ids), last.n_tokens)}

    return app


def _collect(steps: Iterator[Step]) -> tuple[str, Step]:
    try:
        return collect(steps)
    except GenerationFailed as e:
        raise APIError(500, str(e), kind="server_error") from None


def _logprobs(generator: TextGenerator, prompt: str, prompt_ids: list[int], generated: list[int], *, top_n: int,
              echo: bool) -> dict:
    """The legacy completions `logprobs` object over prompt (when echoed) and generated tokens.

    Token strings are the vocabulary's own (e.g. `Ġword`), so they are unique and `top_logprobs` keys compare
    exactly with `tokens`; `text_offset` counts characters into prompt + completion.
    """
    tok = generator.checkpoint.tokenizer
    full = prompt_ids + generated
    scored = generator.prompt_logprobs(full, top_n)
    names = tok.convert_ids_to_tokens(full)
    offsets = text_offsets(tok, prompt, prompt_ids) if echo else [0] * len(prompt_ids)
    offsets += [len(prompt) + len(tok.decode(generated[:k], skip_special_tokens=True)) for k in range(len(generated))]
    tops = []
    for k, (lp, top) in enumerate(scored):
        if lp is None:
            tops.append(None)
            continue
        entry = {tok.convert_ids_to_tokens(i): v for i, v in top}
        entry.setdefault(names[k], lp)
        tops.append(entry)
    start = 0 if echo else len(prompt_ids)
    return {"tokens": names[start:], "token_logprobs": [lp for lp, _ in scored][start:], "top_logprobs": tops[start:],
            "text_offset": offsets[start:]}
