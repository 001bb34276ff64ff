"""HF backend: batching never changes results, log-likelihood equals a brute-force forward, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.backends import GenerationRequest, LoglikelihoodRequest, make_backend
from rutune.eval.errors import EvalError

torch.set_num_threads(2)

PROMPTS = ["Привет", "Где находится кухня? Ответ:", "Столица России — это город", "A B C D " * 6,
           "Расскажи коротко о погоде в Москве зимой, пожалуйста.", "1 2 3", "Ответ:", "да или нет?", "ёлка"]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return make_backend(BackendConfig(batch_size=8), str(tiny_model_dir))


def greedy_by_hand(model, ids: list[int], n: int, eos: list[int]) -> list[int]:
    """Unbatched, unpadded greedy decoding with a full forward per step: the reference for generate()."""
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        t = int(logits.argmax())
        if t in eos:
            break
        out.append(t)
    return out


def test_generate_matches_hand_greedy_and_batch_size(backend):
    reqs = [GenerationRequest(prompt=p, max_new_tokens=6) for p in PROMPTS]
    reqs += [GenerationRequest(messages=({"role": "user", "content": p},), max_new_tokens=5) for p in PROMPTS[:4]]
    backend.batch_size = 8
    batched = backend.generate(reqs)
    backend.batch_size = 1
    single = backend.generate(reqs)
    backend.batch_size = 8
    assert batched == single
    for r, res in zip(reqs, batched):
        ref = greedy_by_hand(backend.model, backend.prompt_ids(r), r.max_new_tokens, backend.eos_ids)
        assert res.text == backend.tokenizer.decode(ref, skip_special_tokens=True)
        assert res.n_tokens == len(ref)
        assert res.finish_reason == ("length" if len(ref) == r.max_new_tokens else "stop")


def test_chat_template_applied_by_default_and_switchable(backend, tiny_model_dir):
    r = GenerationRequest(prompt="Привет", max_new_tokens=2)
    assert backend.prompt_text(r).startswith("<|im_start|>system\n")
    assert backend.prompt_text(r).endswith("<|im_start|>user\nПривет<|im_end|>\n<|im_start|>assistant\n")
    plain = make_backend(BackendConfig(apply_chat_template=False), str(tiny_model_dir))
    assert plain.prompt_text(r) == "Привет"
    msgs = GenerationRequest(messages=({"role": "system", "content": "S"}, {"role": "user", "content": "U"}))
    assert plain.prompt_text(msgs) == "S\n\nU"


def test_stop_strings_cut_text_and_count_tokens(backend):
    free = backend.generate([GenerationRequest(prompt="Ответ:", max_new_tokens=6)])[0]
    assert len(free.text) >= 2
    stop = free.text[1:3]
    cut = backend.generate([GenerationRequest(prompt="Ответ:", max_new_tokens=6, stop=(stop,))])[0]
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert 1 <= cut.n_tokens <= free.n_tokens


def brute_loglikelihood(backend, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = backend.encode_pair(context, continuation)
    with torch.no_grad():
        lp = torch.log_softmax(backend.model(torch.tensor([ctx + cont])).logits[0].float(), -1)
    total = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
    greedy = all(int(lp[len(ctx) - 1 + k].argmax()) == t for k, t in enumerate(cont))
    return total, greedy


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_loglikelihood_equals_separate_forwards_at_any_batch_size(backend, packed):
    """Packed rows (per-sequence attention) and left-padded rows both give each request's own forward."""
    assert backend.packed  # the tiny model runs SDPA, so the default is the packed path
    reqs = [LoglikelihoodRequest(ctx, " " + letter) for ctx in PROMPTS[:5] for letter in "ABCD"]
    reqs += [LoglikelihoodRequest("Столица России — ", "Москва"), LoglikelihoodRequest("Вопрос ", "и ответ тут")]
    results = {}
    try:
        backend.packed = packed
        for bs in (1, 3, 8):
            backend.batch_size = bs
            results[bs] = backend.loglikelihood(reqs)
    finally:
        backend.batch_size, backend.packed = 8, True
    for r, a, b, c in zip(reqs, results[1], results[3], results[8]):
        ref, greedy = brute_loglikelihood(backend, r.context, r.continuation)
        assert a.logprob == pytest.approx(ref, abs=1e-4)
        assert b.logprob == pytest.approx(a.logprob, abs=1e-5) and c.logprob == pytest.approx(a.logprob, abs=1e-5)
        assert a.is_greedy == greedy == c.is_greedy


def test_trailing_space_moves_to_continuation(backend):
    a, b = backend.loglikelihood([LoglikelihoodRequest("Ответ: ", "A"), LoglikelihoodRequest("Ответ:", " A")])
    assert a.logprob == pytest.approx(b.logprob, abs=1e-6)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(EvalError, match="folder not found"):
        make_backend(BackendConfig(), str(tmp_path / "nope"))


def test_tokenizer_without_chat_template(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bare))
    tok.chat_template = None
    for f in bare.glob("chat_template*"):
        f.unlink()
    tok.save_pretrained(str(bare))
    be = make_backend(BackendConfig(), str(bare))
    with pytest.raises(EvalError, match="no chat template"):
        be.generate([GenerationRequest(prompt="Привет", max_new_tokens=2)])
    plain = make_backend(BackendConfig(apply_chat_template=False), str(bare))
    assert plain.generate([GenerationRequest(prompt="Привет", max_new_tokens=2)])[0].n_tokens <= 2


def test_prompt_longer_than_window_is_an_error(tiny_model_dir):
    be = make_backend(BackendConfig(max_length=16, apply_chat_template=False), str(tiny_model_dir))
    with pytest.raises(EvalError, match="window is 16"):
        be.generate([GenerationRequest(prompt="Привет " * 40, max_new_tokens=2)])
    with pytest.raises(EvalError, match="window is 16"):
        be.loglikelihood([LoglikelihoodRequest("Привет " * 40, " A")])


def test_vllm_backend_without_vllm_is_a_clear_error(tiny_model_dir):
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin not in (None, "namespace"):
        pytest.skip("vLLM is installed here")
    with pytest.raises(EvalError, match="needs vLLM"):
        make_backend(BackendConfig(kind="vllm"), str(tiny_model_dir))


def random_pairs(n: int, seed: int = 0) -> list[LoglikelihoodRequest]:
    import random

    from rutune.eval.babilong_gen import filler_sentence

    rng = random.Random(seed)
    ends = ["Ответ:", "Ответ: ", "x^2?", "1234", "слово", "слово ", "\n", "A)", "«тест»", "ёжик", " ", "don't"]
    conts = [" A", " B", "A", "Москва", " 42", "123", "\nD", " «да»", "ё", ".", "  x", "'s", "t"]
    return [LoglikelihoodRequest(" ".join(filler_sentence(rng) for _ in range(rng.randint(1, 8))) + rng.choice(ends),
                                 rng.choice(conts)) for _ in range(n)]


def test_fast_pair_tokenisation_equals_joint_tokenisation(backend, qwen_tokenizer):
    """The tail-only re-tokenisation gives exactly lm-eval's split, for the tiny and the real Qwen vocabulary."""
    from rutune.eval.backends import encode_pair

    reqs = random_pairs(300)
    chat = [{"role": "user", "content": "Вопрос?\nA) да\nB) нет"}]
    tiny = backend.tokenizer
    for tok in (tiny, qwen_tokenizer):  # chat-rendered contexts: special tokens inside the context
        rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        reqs += [LoglikelihoodRequest(rendered + "Ответ:", " " + x) for x in "AB"]
    try:
        for tok in (tiny, qwen_tokenizer):
            backend.tokenizer = tok
            fast = backend._encode_pairs(reqs)
            assert fast == [encode_pair(tok, r.context, r.continuation) for r in reqs]
    finally:
        backend.tokenizer = tiny


def test_prefix_chain_shares_one_forward_with_a_small_vocabulary(tmp_path):
    """At a 300-token vocabulary some letters are "Ġ"+"X": the chain still costs one forward per context."""
    from rutune.models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "small", vocab_size=300)
    be = make_backend(BackendConfig(batch_size=4, apply_chat_template=False), str(model_dir))
    split = [len(be.tokenizer(" " + x, add_special_tokens=False)["input_ids"]) for x in "ABCD"]
    assert max(split) == 2, split  # the case this test is about
    contexts = [p + "\nОтвет:" for p in PROMPTS[:6]]
    reqs = [LoglikelihoodRequest(c, " " + x) for c in contexts for x in "ABCD"]
    be.n_forward_rows = 0
    got = be.loglikelihood(reqs)
    assert be.n_forward_rows == len(contexts)
    for r, g in zip(reqs, got):
        ref, greedy = brute_loglikelihood(be, r.context, r.continuation)
        assert g.logprob == pytest.approx(ref, abs=1e-4) and g.is_greedy == greedy
