"""`rutune serve` against the real `openai` client: uvicorn in a thread on a free loopback port.

The checkpoint is the tiny model with its weights re-drawn at a larger scale (std 0.3), so greedy answers are
varied Russian-and-byte soup (including half UTF-8 characters mid-stream) rather than one repeated token.
References come from `model.generate` and the tokenizer directly, never from the server's own code.
"""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest
import torch
import uvicorn
from typer.testing import CliRunner

from rutune.cli import app as cli_app
from rutune.eval.backend_base import BackendConfig
from rutune.data.templates import render
from rutune.eval.backend_openai import OpenAIBackend
from rutune.eval.backends import GenerationRequest, LoglikelihoodRequest, make_backend
from rutune.serve import (Detokenizer, Generator, ServeError, api_key_for, held_back, is_loopback,
                          load_checkpoint, startup_line)
from rutune.serve_app import create_app

torch.set_num_threads(2)

MODEL = "tiny-ru"
KEY = "s3cret-key-value"
CAP = 256
QUESTIONS = ["Привет", "Где кухня?", "Расскажи сказку о коте."]


@pytest.fixture(scope="module")
def ckpt_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("serve") / "ckpt"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def _start(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def served(ckpt_dir):
    """Two servers over one loaded checkpoint: open (no key) and keyed."""
    generator = Generator(load_checkpoint(str(ckpt_dir)))
    open_srv = _start(create_app(generator, model_name=MODEL, max_tokens_cap=CAP))
    keyed_srv = _start(create_app(generator, model_name=MODEL, api_key=KEY, max_tokens_cap=CAP))
    yield {"generator": generator, "url": open_srv[2], "keyed_url": keyed_srv[2]}
    for server, thread, _ in (open_srv, keyed_srv):
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served["url"], api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(served):
    """Greedy tokens straight from `model.generate` (cut at the end-of-turn token), per question."""
    ckpt = served["generator"].checkpoint
    tok, model = ckpt.tokenizer, ckpt.model
    out = {}
    for q in QUESTIONS:
        prompt = render(tok, [{"role": "user", "content": q}], add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                                 eos_token_id=ckpt.eos_ids, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        eos_at = next((k for k, t in enumerate(gen) if t in ckpt.eos_ids), None)
        tokens = gen if eos_at is None else gen[:eos_at]
        out[q] = {"prompt_ids": ids, "tokens": tokens, "text": tok.decode(tokens, skip_special_tokens=True),
                  "finish": "length" if eos_at is None else "stop"}
    return out


def chat(client, q, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], **kw)


def stream_text(client, q, **kw):
    chunks = list(chat(client, q, stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    return chunks, text, finish, usage


# ---------------------------------------------------------------- models and greedy parity

def test_models_list_and_retrieve(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_chat_greedy_equals_model_generate_and_usage_counts(client, reference):
    for q in QUESTIONS:
        ref = reference[q]
        r = chat(client, q, temperature=0, max_tokens=40)
        assert r.choices[0].message.content == ref["text"]
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].finish_reason == ref["finish"]
        assert r.usage.prompt_tokens == len(ref["prompt_ids"])
        assert r.usage.completion_tokens == len(ref["tokens"])
        assert r.usage.total_tokens == len(ref["prompt_ids"]) + len(ref["tokens"])
    assert any("\ufffd" in reference[q]["text"] or len(reference[q]["text"]) > 40 for q in QUESTIONS)


def test_stream_chunks_concatenate_to_the_same_text(client, reference):
    q = QUESTIONS[2]
    chunks, text, finish, usage = stream_text(client, q, temperature=0, max_tokens=40)
    assert text == reference[q]["text"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5  # really streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish == [reference[q]["finish"]]
    assert len(usage) == 1 and usage[0].completion_tokens == len(reference[q]["tokens"])
    assert usage[0].prompt_tokens == len(reference[q]["prompt_ids"])


def test_stream_ends_with_done(served):
    import httpx

    body = {"model": MODEL, "messages": [{"role": "user", "content": "Привет"}], "max_tokens": 5,
            "temperature": 0, "stream": True}
    lines = [ln for ln in httpx.post(served["url"] + "/chat/completions", json=body).text.split("\n") if ln]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)


def test_stop_strings_cut_text_and_count_tokens(client, reference, served):
    tok = served["generator"].checkpoint.tokenizer
    q = QUESTIONS[1]
    ref = reference[q]
    stop = ref["text"][20:23]
    assert stop and ref["text"].find(stop) >= 20
    want = ref["text"][: ref["text"].find(stop)]
    # tokens up to the one whose text completes the stop string
    n_want = next(k for k in range(1, len(ref["tokens"]) + 1)
                  if stop in tok.decode(ref["tokens"][:k], skip_special_tokens=True))
    r = chat(client, q, temperature=0, max_tokens=40, stop=[stop, "never-there"])
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == n_want
    _, text, finish, usage = stream_text(client, q, temperature=0, max_tokens=40, stop=stop)
    assert (text, finish, usage[0].completion_tokens) == (want, ["stop"], n_want)


def test_held_back_keeps_a_possible_stop_prefix():
    assert held_back("abc<|e", ("<|end|>",)) == 3
    assert held_back("abc", ("<|end|>",)) == 0
    assert held_back("ab", ("bx", "abz")) == 2


def _byte_token_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte (GPT-2's byte-to-character map), so each Cyrillic letter spans two tokens."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {b: chr(b) for b in visible}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return tok.convert_tokens_to_ids([chars[b] for b in text.encode("utf-8")])


def test_detokenizer_never_emits_half_characters(served):
    tok = served["generator"].checkpoint.tokenizer
    text = "Привет, мир! ёж"
    ids = _byte_token_ids(tok, text)
    assert len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text
    detok = Detokenizer(tok)
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[0] == "" and pieces[1] == "П"  # the first letter appears with its second byte


def test_seed_makes_sampling_repeatable(client):
    a = chat(client, "Привет", temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].message.content
    b = chat(client, "Привет", temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].message.content
    c = chat(client, "Привет", temperature=1.0, top_p=0.9, seed=8, max_tokens=12).choices[0].message.content
    assert a == b
    assert a != c


# ---------------------------------------------------------------- the eval backend against this server

def test_openai_backend_matches_hf_backend(served, ckpt_dir):
    hf = make_backend(BackendConfig(), str(ckpt_dir))
    remote = OpenAIBackend(served["url"], MODEL, concurrency=4)
    gens = [GenerationRequest(prompt=q, max_new_tokens=12) for q in QUESTIONS]
    got, want = remote.generate(gens), hf.generate(gens)
    assert [(g.text, g.n_tokens, g.finish_reason) for g in got] == [(w.text, w.n_tokens, w.finish_reason)
                                                                     for w in want]
    lls = [LoglikelihoodRequest("Вопрос: где кухня?\nОтвет:", " " + x) for x in "ABCD"]
    lls.append(LoglikelihoodRequest("Столица России — ", "Москва"))
    for g, w in zip(remote.loglikelihood(lls), hf.loglikelihood(lls)):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert g.is_greedy == w.is_greedy


def test_completions_echo_logprobs_by_hand(client, served):
    ckpt = served["generator"].checkpoint
    tok = ckpt.tokenizer
    prompt = "Где кухня? Ответ:"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0)
    lp = r.choices[0].logprobs
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(ckpt.model(torch.tensor([ids])).logits[0].float(), -1)
    assert r.choices[0].text == prompt
    assert lp.tokens == tok.convert_ids_to_tokens(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for k in range(1, len(ids)):
        assert lp.token_logprobs[k] == pytest.approx(float(logp[k - 1, ids[k]]), abs=1e-5)
        best = tok.convert_ids_to_tokens(int(logp[k - 1].argmax()))
        assert max(lp.top_logprobs[k].items(), key=lambda kv: kv[1])[0] == best
    assert "".join(prompt[a:b] for a, b in zip(lp.text_offset, lp.text_offset[1:] + [len(prompt)])) == prompt
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0


# ---------------------------------------------------------------- 4xx

def _status(fn):
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    return info.value.status_code, info.value.body


def test_bad_requests_get_openai_style_errors(client):
    msg = [{"role": "user", "content": "Привет"}]
    status, body = _status(lambda: client.chat.completions.create(model="gpt-4", messages=msg))
    assert (status, body["code"], body["param"], body["type"]) == (404, "model_not_found", "model",
                                                                  "invalid_request_error")
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=[]))
    assert (status, body["param"]) == (400, "messages")
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=msg, max_tokens=CAP + 1))
    assert (status, body["param"], body["type"]) == (400, "max_tokens", "invalid_request_error")
    assert str(CAP) in body["message"]
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=msg, max_tokens=10**7))
    assert status == 400 and body["param"] == "max_tokens"
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=msg, temperature=-1))
    assert (status, body["param"]) == (400, "temperature")
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "tool",
                                                                                        "content": "x"}]))
    assert (status, body["param"]) == (400, "messages[0].role")
    status, body = _status(lambda: client.chat.completions.create(model=MODEL, messages=msg, n=2))
    assert (status, body["param"]) == (400, "n")
    status, body = _status(lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=CAP + 1))
    assert (status, body["param"]) == (400, "max_tokens")


def test_malformed_json_is_a_400(served):
    import httpx

    r = httpx.post(served["url"] + "/chat/completions", content=b'{"model": "tiny-ru", "messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and "not valid JSON" in r.json()["error"]["message"]


def test_checkpoint_without_chat_template(served):
    import copy
    import dataclasses

    ckpt = served["generator"].checkpoint
    bare = copy.deepcopy(ckpt.tokenizer)
    bare.chat_template = None
    server, thread, url = _start(create_app(Generator(dataclasses.replace(ckpt, tokenizer=bare)), model_name=MODEL))
    try:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        status, body = _status(lambda: c.chat.completions.create(model=MODEL, max_tokens=3,
                                                                 messages=[{"role": "user", "content": "Привет"}]))
        assert status == 400 and "no chat template" in body["message"]
        r = c.completions.create(model=MODEL, prompt="Привет", max_tokens=3, temperature=0)
        assert r.usage.completion_tokens == 3 and r.usage.prompt_tokens == len(bare("Привет")["input_ids"])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_prompt_plus_max_tokens_beyond_the_window_is_rejected(served):
    ckpt = served["generator"].checkpoint
    app = create_app(served["generator"], model_name=MODEL)  # cap = the window (4096)
    server, thread, url = _start(app)
    try:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        n_prompt = len(ckpt.tokenizer("Ответ:", add_special_tokens=False)["input_ids"])
        status, body = _status(lambda: c.completions.create(model=MODEL, prompt="Ответ:", echo=True,
                                                            max_tokens=ckpt.window - n_prompt + 1))
        assert (status, body["code"]) == (400, "context_length_exceeded")
        assert f"leaving {ckpt.window - n_prompt}" in body["message"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---------------------------------------------------------------- keys and hosts

def test_key_required_when_configured(served):
    import httpx

    msg = [{"role": "user", "content": "Привет"}]
    body = {"model": MODEL, "messages": msg, "max_tokens": 2}
    missing = httpx.post(served["keyed_url"] + "/chat/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(served["keyed_url"] + "/models").status_code == 401
    wrong = openai.OpenAI(base_url=served["keyed_url"], api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(**body)
    assert info.value.status_code == 401 and KEY not in str(info.value.body)
    ok = openai.OpenAI(base_url=served["keyed_url"], api_key=KEY, max_retries=0)
    assert ok.chat.completions.create(**body).usage.completion_tokens == 2
    assert httpx.get(served["keyed_url"].removesuffix("/v1") + "/health").status_code == 200


def test_loopback_and_key_policy():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "::", "example.org"))
    assert api_key_for("127.0.0.1", "K", {}) is None
    assert api_key_for("127.0.0.1", "K", {"K": "abc"}) == "abc"
    assert api_key_for("0.0.0.0", "K", {"K": "abc"}) == "abc"
    with pytest.raises(ServeError, match="set the environment variable K"):
        api_key_for("0.0.0.0", "K", {})
    line = startup_line(model_name="m", checkpoint="/c", host="0.0.0.0", port=8000, api_key_env="K",
                        key_required=True)
    assert "$K" in line and "abc" not in line and "http://0.0.0.0:8000/v1" in line


def test_cli_refuses_a_public_host_without_a_key(monkeypatch, ckpt_dir):
    monkeypatch.delenv("RUTUNE_TEST_SERVE_KEY", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", str(ckpt_dir), "--host", "0.0.0.0",
                                          "--api-key-env", "RUTUNE_TEST_SERVE_KEY"])
    assert result.exit_code == 2
    out = result.output.strip()
    assert len(out.splitlines()) == 1 and "RUTUNE_TEST_SERVE_KEY" in out and "Traceback" not in out


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "not found" in result.output
