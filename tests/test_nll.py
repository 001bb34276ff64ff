"""Held-out NLL and Cyrillic share, checked by hand on the tiny model.

A model whose weights are all zero outputs logits of 0 everywhere, so every token costs exactly ln(vocab) nats:
the NLL of any row is ln(V) × (trained tokens), whatever the text. A random model is checked against a plain
full forward + log_softmax at the label positions (no `logits_to_keep`). The Cyrillic share is checked on fixed
answers with hand-counted letters.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.nll import NllConfig
from rutune.data.templates import IGNORE_INDEX, tokenize_chat
from rutune.eval.backends import GenerationResult
from rutune.eval.errors import EvalError
from rutune.items import read_items
from rutune.eval.language import answer_prompt, cyrillic_answers, own_cyrillic_share, own_words
from rutune.eval.nll import load_holdout, nll_metrics, run_nll, score_row, sequence_nll

torch.set_num_threads(2)

ROWS = [
    {"messages": [{"role": "user", "content": "Какая столица России?"},
                  {"role": "assistant", "content": "Москва."}], "source": "grandmaster_pro_max", "meta": "{}"},
    {"messages": [{"role": "system", "content": "Отвечай кратко."},
                  {"role": "user", "content": "Сколько будет 2+2?"},
                  {"role": "assistant", "content": "Четыре."},
                  {"role": "user", "content": "А 3+3?"},
                  {"role": "assistant", "content": "Шесть, это просто."}], "source": "saiga_scored", "meta": "{}"},
    {"messages": [{"role": "user", "content": "Переведи: cat"},
                  {"role": "assistant", "content": "Кошка"}], "source": "saiga_scored", "meta": "{}"},
]


def write_holdout(path, rows=ROWS):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class Backend:
    """The HF pieces `run_nll` reads (model, tokenizer) plus a scripted `generate`."""

    def __init__(self, model, tokenizer, answers=None):
        self.model, self.tokenizer = model, tokenizer
        self.answers = list(answers or [])
        self.requests = []

    def generate(self, requests):
        self.requests.extend(requests)
        return [GenerationResult(text=self.answers.pop(0), n_tokens=3) for _ in requests]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def zero_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def trained_count(tokenizer, messages, max_tokens=None):
    chat = tokenize_chat(tokenizer, messages)
    labels = chat.labels[:max_tokens] if max_tokens else chat.labels
    return sum(1 for x in labels[1:] if x != IGNORE_INDEX)


def test_uniform_model_costs_ln_vocab_per_trained_token(tiny, zero_model, tmp_path):
    _, tokenizer = tiny
    vocab = zero_model.config.vocab_size
    for row in load_holdout(write_holdout(tmp_path / "h.parquet")):
        item = score_row(zero_model, tokenizer, row, max_tokens=4096)
        chat = tokenize_chat(tokenizer, row["messages"])
        trained = [t for t, x in zip(chat.input_ids, chat.labels) if x != IGNORE_INDEX]
        # the trained tokens are exactly each reply + <|im_end|>
        replies = "".join(m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant")
        assert tokenizer.decode(trained) == replies
        assert item["n_tokens"] == len(trained)
        assert item["nll_sum"] == pytest.approx(len(trained) * math.log(vocab), rel=1e-6)
        assert item["nll_per_token"] == pytest.approx(math.log(vocab), rel=1e-6)
        assert item["truncated"] is False


def test_random_model_matches_a_full_forward(tiny):
    model, tokenizer = tiny
    chat = tokenize_chat(tokenizer, ROWS[1]["messages"])
    nll_sum, n_tokens = sequence_nll(model, chat.input_ids, chat.labels)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([chat.input_ids]), use_cache=False).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    by_hand = -sum(float(logp[t - 1, chat.labels[t]]) for t in range(1, len(chat.labels))
                   if chat.labels[t] != IGNORE_INDEX)
    assert n_tokens == trained_count(tokenizer, ROWS[1]["messages"])
    assert nll_sum == pytest.approx(by_hand, rel=1e-5)
    assert 0 < nll_sum / n_tokens < 2 * math.log(model.config.vocab_size)


def test_cut_rows_score_their_first_max_tokens(tiny, zero_model, tmp_path):
    _, tokenizer = tiny
    row = load_holdout(write_holdout(tmp_path / "h.parquet"))[1]
    full = tokenize_chat(tokenizer, row["messages"])
    first_reply = full.labels.index(next(x for x in full.labels if x != IGNORE_INDEX))
    cut = first_reply + 2  # two tokens of the first reply survive
    item = score_row(zero_model, tokenizer, row, max_tokens=cut)
    assert item["truncated"] is True and item["n_tokens"] == 2
    assert item["nll_sum"] == pytest.approx(2 * math.log(zero_model.config.vocab_size), rel=1e-6)
    nothing_left = score_row(zero_model, tokenizer, row, max_tokens=first_reply)
    assert nothing_left["n_tokens"] == 0 and nothing_left["nll_per_token"] is None


def test_metrics_by_hand():
    rows = [{"id": "a", "nll_sum": 6.0, "n_tokens": 3, "nll_per_token": 2.0, "cyrillic_share": 1.0},
            {"id": "b", "nll_sum": 4.0, "n_tokens": 1, "nll_per_token": 4.0, "cyrillic_share": 0.25},
            {"id": "c", "nll_sum": None, "n_tokens": 0, "nll_per_token": None, "truncated": True,
             "cyrillic_share": 0.0}]
    rows[0]["own_cyrillic_share"] = 0.0
    metrics, extra = nll_metrics(rows, rounds=200)
    nll = metrics["nll_per_token"]
    assert nll["value"] == 3.0  # items weigh the same: (2 + 4) / 2
    assert (nll["n_valid"], nll["n_total"], nll["item_key"]) == (2, 3, "nll_per_token")
    assert 2.0 <= nll["ci_low"] <= nll["ci_high"] <= 4.0
    assert extra["token_weighted_nll"] == 2.5  # (6 + 4) / (3 + 1)
    assert extra["perplexity"] == pytest.approx(math.exp(2.5))
    assert extra["n_tokens"] == 4 and extra["truncated_items"] == 1
    share = metrics["cyrillic_share"]
    assert share["value"] == pytest.approx(1.25 / 3) and (share["n_valid"], share["n_total"]) == (3, 3)
    own = metrics["own_cyrillic_share"]
    assert own["value"] == 0.0 and (own["n_valid"], own["n_total"]) == (1, 3)


def test_cyrillic_share_of_answers_by_hand():
    answers = ["Привет, мир!", "Hello мир", "", "12345 !!!", "Москва — столица России."]
    rows = cyrillic_answers(Backend(None, None, answers), [({"role": "user", "content": "?"},)] * 5,
                            max_new_tokens=8)
    # "Hello мир": 3 Cyrillic of 8 letters; no letters at all counts as 0
    assert [r["cyrillic_share"] for r in rows] == [1.0, 3 / 8, 0.0, 0.0, 1.0]
    assert [r["own_cyrillic_share"] for r in rows] == [1.0, 3 / 8, 0.0, 0.0, 1.0]  # the prompt "?" has no words
    assert [r["answer"] for r in rows] == answers


def test_own_share_leaves_out_words_copied_from_the_prompt():
    prompt = "Какое самое глубокое озеро в мире?"
    assert own_words("Какое самое глубокое озеро в мире?\n\nКакое самое глубо", prompt) == []
    assert own_cyrillic_share("Какое самое глубокое озеро в мире?\n\nКакое самое глубо", prompt) == 0.0
    assert own_words("Самое глубокое озеро — Байкал", prompt) == ["Байкал"]  # case-insensitive copies
    assert own_cyrillic_share("The deepest lake: Байкал", prompt) == pytest.approx(6 / 20)  # Байкал: 6 of 3+7+4+6 own letters
    # only the last word may be a cut-off echo; a prefix elsewhere is the answer's own word
    assert own_words("Глубо озеро", prompt) == ["Глубо"]
    assert own_cyrillic_share("", prompt) == 0.0


def test_answer_prompt_is_the_first_user_turn_without_system():
    assert answer_prompt(ROWS[1]["messages"]) == ({"role": "user", "content": "Сколько будет 2+2?"},)
    with pytest.raises(EvalError, match="no user turn"):
        answer_prompt([{"role": "assistant", "content": "x"}])


def test_run_nll_writes_items_results_and_resumes(tiny, zero_model, tmp_path):
    _, tokenizer = tiny
    holdout = write_holdout(tmp_path / "sft_holdout.parquet")
    cfg = NllConfig(max_new_tokens=5)
    backend = Backend(zero_model, tokenizer, ["Ответ", "Answer", "Да, да"])
    out = tmp_path / "eval" / "nll" / "base"
    results = run_nll(cfg, BackendConfig(batch_size=2), "zero", holdout, out, backend=backend, model_label="base")
    items = read_items(out / "items.jsonl")
    assert [i["source"] for i in items] == ["grandmaster_pro_max", "saiga_scored", "saiga_scored"]
    assert len({i["id"] for i in items}) == 3 and all(i["id"].startswith(i["source"] + "-") for i in items)
    assert [r.messages for r in backend.requests] == [answer_prompt(r["messages"]) for r in ROWS]
    assert all(r.max_new_tokens == 5 for r in backend.requests)
    ln_v = math.log(zero_model.config.vocab_size)
    assert all(i["nll_per_token"] == pytest.approx(ln_v, rel=1e-6) for i in items)
    assert [i["cyrillic_share"] for i in items] == [1.0, 0.0, 1.0]
    assert [i["own_cyrillic_share"] for i in items] == [1.0, 0.0, 1.0]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["suite"] == "nll" and on_disk["model"] == "base"
    assert on_disk["metrics"]["nll_per_token"]["value"] == pytest.approx(ln_v, rel=1e-6)
    assert on_disk["metrics"]["nll_per_token"]["item_key"] == "nll_per_token"
    assert on_disk["metrics"]["cyrillic_share"]["value"] == pytest.approx(2 / 3)
    assert on_disk["metrics"]["own_cyrillic_share"]["item_key"] == "own_cyrillic_share"
    assert on_disk["extra"]["sources"] == {"grandmaster_pro_max": 1, "saiga_scored": 2}
    # a rerun finds every item done: no model call, same numbers
    again = run_nll(cfg, BackendConfig(batch_size=2), "zero", holdout, out, backend=None, model_label="base")
    assert again["metrics"] == results["metrics"]
    # ids pair across models: another model's items carry the same ids in the same order
    other = run_nll(NllConfig(max_new_tokens=0), BackendConfig(), "tiny", holdout, tmp_path / "other",
                    backend=Backend(tiny[0], tokenizer))
    assert [i["id"] for i in read_items(tmp_path / "other" / "items.jsonl")] == [i["id"] for i in items]
    assert "cyrillic_share" not in other["metrics"]


def test_backend_config_reaches_the_model(tiny_model_dir, tmp_path):
    """`eval.backend.dtype` applies to the held-out NLL too: bf16 weights give (slightly) different NLLs."""
    holdout = write_holdout(tmp_path / "sft_holdout.parquet")
    cfg = NllConfig(max_new_tokens=0)
    nll = {}
    for dtype in ("float32", "bfloat16"):
        res = run_nll(cfg, BackendConfig(dtype=dtype, device="cpu"), str(tiny_model_dir), holdout, tmp_path / dtype)
        assert res["extra"]["dtype"] == dtype
        nll[dtype] = [i["nll_per_token"] for i in read_items(tmp_path / dtype / "items.jsonl")]
    assert nll["float32"] != nll["bfloat16"]
    assert nll["bfloat16"] == pytest.approx(nll["float32"], abs=0.1)


def test_missing_holdout_names_the_fix(tmp_path):
    with pytest.raises(EvalError, match=r"sft_holdout.parquet: held-out rows not found; set "
                                        r"data.sft.holdout_percent"):
        run_nll(NllConfig(), BackendConfig(), "tiny", tmp_path / "sft_holdout.parquet", tmp_path / "out")


def test_holdout_without_messages_or_replies(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"text": "x"}]), tmp_path / "a.parquet")
    with pytest.raises(EvalError, match=r"a.parquet: has no `messages` column"):
        load_holdout(tmp_path / "a.parquet")
    write_holdout(tmp_path / "b.parquet", [{"messages": [{"role": "user", "content": "Привет"}], "source": "s"}])
    with pytest.raises(EvalError, match=r"b.parquet: row 0 has no assistant turn"):
        load_holdout(tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_text("not parquet")
    with pytest.raises(EvalError, match=r"c.parquet: not a readable parquet file"):
        load_holdout(tmp_path / "c.parquet")


def test_limit_takes_the_first_rows(tmp_path):
    rows = load_holdout(write_holdout(tmp_path / "h.parquet"), limit=2)
    assert [r["source"] for r in rows] == ["grandmaster_pro_max", "saiga_scored"]
