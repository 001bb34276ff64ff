"""`openai` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, `rutune serve`).

Uses the official `openai` async client; at most `concurrency` requests are in flight (an asyncio semaphore);
the client retries transient failures `max_retries` times. Chat requests go to `/chat/completions`, raw prompts
(with the chat template off) to `/completions`. Log-likelihood needs prompt log-probs, which only the
completions endpoint can return (`echo=True, logprobs=1`); a server without them gets a clear error.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from rutune.eval.backend_base import (GenerationRequest, GenerationResult, LoglikelihoodRequest, LoglikelihoodResult,
                                  cut_at_stop, messages_of, plain_text_of, run_sync, split_pair)
from rutune.eval.errors import EvalError

if TYPE_CHECKING:
    from rutune.eval.backend_base import BackendConfig


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", concurrency: int = 8,
                 apply_chat_template: bool = True, max_retries: int = 3, timeout_s: float = 300.0,
                 http_client_factory=None):
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.apply_chat_template = apply_chat_template
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.http_client_factory = http_client_factory  # tests: an httpx.AsyncClient with a mock transport

    @classmethod
    def from_config(cls, cfg: "BackendConfig", model_path: str) -> "OpenAIBackend":
        if not cfg.base_url:
            raise EvalError("eval.backend.base_url: the openai backend needs the server's base URL (…/v1)")
        api_key = "EMPTY"
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env, "")
            if not api_key:
                raise EvalError(f"eval.backend.api_key_env: environment variable {cfg.api_key_env} is not set")
        return cls(cfg.base_url, cfg.served_model or model_path, api_key=api_key, concurrency=cfg.concurrency,
                   apply_chat_template=cfg.apply_chat_template, max_retries=cfg.max_retries,
                   timeout_s=cfg.timeout_s)

    def _client(self):
        import openai

        kwargs = {}
        if self.http_client_factory is not None:
            kwargs["http_client"] = self.http_client_factory()
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=self.max_retries,
                                  timeout=self.timeout_s, **kwargs)

    async def _gather(self, fn, items):
        client = self._client()
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(item):
            async with semaphore:
                return await fn(client, item)

        try:
            return await asyncio.gather(*(one(x) for x in items))
        finally:
            await client.close()

    # ------------------------------------------------------------------ generate
    async def _generate_one(self, client, request: GenerationRequest) -> GenerationResult:
        import openai

        stop = list(request.stop) or None
        try:
            if self.apply_chat_template:
                resp = await client.chat.completions.create(
                    model=self.model, messages=messages_of(request), max_tokens=request.max_new_tokens,
                    temperature=request.temperature, stop=stop)
                choice = resp.choices[0]
                text = choice.message.content or ""
            else:
                resp = await client.completions.create(
                    model=self.model, prompt=plain_text_of(request), max_tokens=request.max_new_tokens,
                    temperature=request.temperature, stop=stop)
                choice = resp.choices[0]
                text = choice.text or ""
        except openai.APIConnectionError as e:
            raise EvalError(f"openai backend: cannot reach {self.base_url} ({e})") from None
        except openai.NotFoundError as e:
            raise EvalError(f"openai backend: {self.base_url} has no such endpoint or model {self.model!r} "
                            f"({e.status_code}); base_url must end in /v1") from None
        text, hit_stop = cut_at_stop(text, request.stop)
        n_tokens = resp.usage.completion_tokens if resp.usage else 0
        finish = "length" if choice.finish_reason == "length" and not hit_stop else "stop"
        return GenerationResult(text=text, n_tokens=int(n_tokens), finish_reason=finish)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return run_sync(self._gather(self._generate_one, requests))

    # ------------------------------------------------------------------ log-likelihood
    def _no_logprobs(self, why: str) -> EvalError:
        return EvalError(f"openai backend: {self.base_url} does not return prompt log-probs on /completions "
                         f"(echo=True, logprobs=1): {why}. Log-likelihood suites (ruMMLU) need a server that "
                         "offers them (vLLM, SGLang) or the hf / vllm backend")

    async def _loglikelihood_one(self, client, request: LoglikelihoodRequest) -> LoglikelihoodResult:
        import openai

        context, continuation = split_pair(request.context, request.continuation)
        try:
            resp = await client.completions.create(model=self.model, prompt=context + continuation, max_tokens=1,
                                                   temperature=0.0, echo=True, logprobs=1)
        except openai.APIConnectionError as e:
            raise EvalError(f"openai backend: cannot reach {self.base_url} ({e})") from None
        except (openai.BadRequestError, openai.NotFoundError, openai.UnprocessableEntityError) as e:
            raise self._no_logprobs(f"HTTP {e.status_code}") from None
        lp = resp.choices[0].logprobs if resp.choices else None
        if lp is None or not lp.token_logprobs or lp.text_offset is None:
            raise self._no_logprobs("the response carries no prompt log-probs")
        total, greedy, seen = 0.0, True, False
        end = len(context) + len(continuation)
        tops = lp.top_logprobs or [None] * len(lp.tokens)
        for token, logprob, offset, top in zip(lp.tokens, lp.token_logprobs, lp.text_offset, tops):
            if offset < len(context) or offset >= end:  # context tokens, or the one generated token
                continue
            if logprob is None:
                raise self._no_logprobs("a continuation token has no log-prob")
            seen = True
            total += float(logprob)
            if top:
                greedy = greedy and max(top.items(), key=lambda kv: kv[1])[0] == token
        if not seen:
            raise self._no_logprobs("no prompt token falls in the continuation (echo ignored?)")
        return LoglikelihoodResult(logprob=total, is_greedy=greedy)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        return run_sync(self._gather(self._loglikelihood_one, requests))
