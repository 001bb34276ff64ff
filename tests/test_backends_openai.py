"""OpenAI backend against an in-process OpenAI-compatible server backed by the tiny model (httpx mock transport).

The server computes answers and prompt log-probs with transformers directly, so the test proves the backend's
request/response plumbing, offsets and concurrency limit — and parity with the hf backend.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.backend_openai import OpenAIBackend
from rutune.eval.backends import GenerationRequest, LoglikelihoodRequest, make_backend
from rutune.eval.errors import EvalError

torch.set_num_threads(2)


class TinyServer:
    """Answers /v1/chat/completions and /v1/completions (echo + logprobs) from the tiny model."""

    def __init__(self, hf, *, logprobs: str = "ok"):
        self.hf = hf
        self.logprobs = logprobs  # "ok" | "400" | "null"
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            body = json.loads(request.content)
            if request.url.path.endswith("/chat/completions"):
                return self._chat(body)
            if request.url.path.endswith("/completions"):
                return self._completions(body)
            return httpx.Response(404, json={"error": {"message": "not found"}})
        finally:
            self.in_flight -= 1

    def _usage(self, n):
        return {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}

    def _chat(self, body):
        req = GenerationRequest(messages=tuple(body["messages"]), max_new_tokens=body["max_tokens"])
        res = self.hf.generate([req])[0]
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": res.finish_reason}], "usage": self._usage(res.n_tokens)})

    def _completions(self, body):
        if not body.get("echo"):
            raise AssertionError("only echo requests expected here")
        if self.logprobs == "400":
            return httpx.Response(400, json={"error": {"message": "echo is not supported"}})
        tok = self.hf.tokenizer
        enc = tok(body["prompt"], add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(self.hf.model(torch.tensor([ids])).logits[0].float(), -1)
        nxt = int(lp[-1].argmax())
        tokens = tok.convert_ids_to_tokens(ids + [nxt])
        token_lps = [None] + [float(lp[k - 1, ids[k]]) for k in range(1, len(ids))] + [float(lp[-1, nxt])]
        tops = [None] + [{tok.convert_ids_to_tokens(int(lp[k - 1].argmax())): float(lp[k - 1].max())}
                         for k in range(1, len(ids) + 1)]
        offsets = [s for s, _ in enc["offset_mapping"]] + [len(body["prompt"])]
        logprobs = None if self.logprobs == "null" else {
            "tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
        return httpx.Response(200, json={
            "id": "x", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": body["prompt"] + tokens[-1], "logprobs": logprobs,
                         "finish_reason": "length"}], "usage": self._usage(1)})


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return make_backend(BackendConfig(), str(tiny_model_dir))


def client_for(server, concurrency=4, **kw):
    return OpenAIBackend("http://tiny.local/v1", "tiny", concurrency=concurrency,
                         http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(server)), **kw)


def test_generate_matches_hf_in_order_with_concurrency_limit(hf):
    server = TinyServer(hf)
    reqs = [GenerationRequest(prompt=p, max_new_tokens=4) for p in ("Привет", "Где кухня?", "1 2 3", "Ответ:", "да")]
    reqs = reqs * 3
    out = client_for(server, concurrency=3).generate(reqs)
    assert [r.text for r in out] == [r.text for r in hf.generate(reqs)]
    assert server.calls == len(reqs)
    assert server.max_in_flight == 3


def test_loglikelihood_matches_hf(hf):
    reqs = [LoglikelihoodRequest("Вопрос: где кухня?\nОтвет:", " " + x) for x in "ABCD"]
    reqs.append(LoglikelihoodRequest("Столица России — ", "Москва"))
    got = client_for(TinyServer(hf)).loglikelihood(reqs)
    want = hf.loglikelihood(reqs)
    for g, w in zip(got, want):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert g.is_greedy == w.is_greedy


@pytest.mark.parametrize("mode", ["400", "null"])
def test_server_without_prompt_logprobs_is_a_clear_error(hf, mode):
    with pytest.raises(EvalError, match="does not return prompt log-probs"):
        client_for(TinyServer(hf, logprobs=mode)).loglikelihood([LoglikelihoodRequest("Ответ:", " A")])


def test_config_errors(monkeypatch):
    with pytest.raises(EvalError, match="base_url"):
        make_backend(BackendConfig(kind="openai"), "m")
    monkeypatch.delenv("RUTUNE_TEST_KEY", raising=False)
    with pytest.raises(EvalError, match="RUTUNE_TEST_KEY is not set"):
        make_backend(BackendConfig(kind="openai", base_url="http://x/v1", api_key_env="RUTUNE_TEST_KEY"), "m")


def test_unreachable_server_is_a_clear_error():
    be = OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=0, timeout_s=2)
    with pytest.raises(EvalError, match="cannot reach"):
        be.generate([GenerationRequest(prompt="x", max_new_tokens=1)])


def test_run_sync_works_inside_a_running_event_loop():
    """A notebook already runs a loop: the sync entry points (openai backend, judge) still return or raise."""
    import asyncio

    from rutune.eval.backends import run_sync

    async def value():
        return 41 + 1

    async def fail():
        raise ValueError("boom")

    async def inside(coro):  # sync code called from inside a loop
        return run_sync(coro)

    assert run_sync(value()) == 42
    assert asyncio.run(inside(value())) == 42
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(inside(fail()))
