"""Parity with TRL 1.16 on the real Qwen2.5 vocabulary: our labels == SFTTrainer(assistant_only_loss=True) labels.

TRL needs `{% generation %}` markers; it gets a copy of Qwen2.5's template whose only change is a marker pair
around `content + '<|im_end|>'` of assistant turns (the copy renders byte-identically, checked below). Our side
uses the unmarked template. Conversations: the bundled samples that hold chat message lists, plus synthetic
Russian chats (system prompts, 1–4 exchanges, replies with leading/trailing whitespace, newlines, code, emoji).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rutune.data import chat_spans
from rutune.data.templates import IGNORE_INDEX, render, tokenize_chats
from rutune.records import ROLES

SAMPLES = Path(__file__).resolve().parent.parent / "src" / "rutune" / "samples"

ORIGINAL_BRANCH = "{%- if (message.role == \"user\") or"
MARKED_BRANCH = (
    "{%- if message.role == \"assistant\" and not message.tool_calls %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message.content + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}\n    {%- elif (message.role == \"user\") or"
)


def marked_qwen_template(template: str) -> str:
    assert template.count(ORIGINAL_BRANCH) == 1
    return template.replace(ORIGINAL_BRANCH, MARKED_BRANCH)


SAMPLE_ROLES = {"bot": "assistant", "documents": "system"}  # saiga's "bot"; RAG documents as a second system turn


def _is_chat(obj) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                       for m in obj)


def _chat_lists(obj):
    """Every list of {role, content} dicts inside a sample row (preference rows: prompt + chosen)."""
    if isinstance(obj, dict) and _is_chat(obj.get("prompt")) and _is_chat(obj.get("chosen")):
        obj = obj["prompt"] + obj["chosen"]
    if _is_chat(obj):
        yield [{"role": SAMPLE_ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in obj]
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _chat_lists(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _chat_lists(value)


def sample_conversations(limit: int, per_file: int = 15) -> list[list[dict]]:
    """Chats with a user turn and an assistant turn from the bundled samples (those that exist; not `bad/`)."""
    found = []
    for path in sorted(SAMPLES.glob("*.jsonl")):
        taken = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            if taken >= per_file:
                break
            if not line.strip():
                continue
            for chat in _chat_lists(json.loads(line)):
                roles = [m["role"] for m in chat]
                if (set(roles) <= set(ROLES) and "assistant" in roles and "user" in roles
                        and all(isinstance(m["content"], str) and m["content"] for m in chat)):
                    found.append(chat)
                    taken += 1
    return found[:limit]


SYSTEMS = ["Ты — полезный ассистент. Отвечай по-русски.", "Отвечай кратко, одним предложением.",
           "Ты эксперт по истории России.\nИзбегай выдумок.", "You are a helpful assistant."]
QUESTIONS = ["Привет! Как дела?", "Сколько будет 17 × 23?", "Объясни, что такое фотосинтез.",
             "Напиши хайку про осень.", "Переведи на английский: «Мне нравится читать книги».",
             "Какая столица Австралии?", "Почему небо голубое?", "Дай совет, как выучить язык за год.",
             "Что такое рекурсия? Приведи пример на Python.", "Кто написал «Войну и мир»?"]
ANSWERS = ["Всё хорошо, спасибо! Чем могу помочь?", "17 × 23 = 391.",
           "Фотосинтез — это процесс, в котором растения превращают свет, воду и CO₂ в глюкозу и кислород.",
           "Листья шуршат,\nветер несёт холод —\nосень пришла.", "I like reading books.",
           "Канберра.", "Из-за рэлеевского рассеяния: короткие (синие) волны рассеиваются сильнее.",
           "1. Занимайтесь каждый день.\n2. Читайте и слушайте.\n\n3. Говорите с носителями 🙂",
           "Рекурсия — это вызов функцией самой себя:\n```python\ndef f(n):\n    return 1 if n < 2 else n * f(n - 1)\n```",
           "Лев Николаевич Толстой.", "  Ответ с пробелами по краям  ", "\nОтвет, начинающийся с перевода строки",
           "Да", "Нет.\n", "Ok"]


QUOTING = [  # messages that quote the template's own markers: the header fast path must step aside
    [{"role": "user", "content": "Что значит <|im_start|>assistant\n в шаблоне?"},
     {"role": "assistant", "content": "Это заголовок реплики ассистента."}],
    [{"role": "system", "content": "Будь точен."}, {"role": "user", "content": "Повтори: Да"},
     {"role": "assistant", "content": "Да"}, {"role": "user", "content": "Ещё раз"},
     {"role": "assistant", "content": "Да<|im_end|> — вот так"}],
]


def synthetic_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    chats = []
    for i in range(n):
        chat = [{"role": "system", "content": rng.choice(SYSTEMS)}] if i % 3 != 2 else []
        for _ in range(1 + i % 4):
            chat.append({"role": "user", "content": rng.choice(QUESTIONS)})
            chat.append({"role": "assistant", "content": rng.choice(ANSWERS)})
        chats.append(chat)
    return chats


@pytest.fixture(scope="module")
def conversations():
    from_samples = sample_conversations(limit=40)
    chats = from_samples + QUOTING + synthetic_conversations(max(30, 60 - len(from_samples)))
    assert len(chats) >= 50
    assert sum(1 for c in chats if c[0]["role"] == "system") >= 10
    assert sum(1 for c in chats if sum(m["role"] == "assistant" for m in c) >= 3) >= 10
    return chats


@pytest.fixture(scope="module")
def trl_rows(qwen_tokenizer, conversations, tmp_path_factory):
    return trl_labels(qwen_tokenizer, conversations, tmp_path_factory.mktemp("trl"))


def trl_labels(qwen_tokenizer, chats, tmp_path) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per chat as TRL's SFTTrainer prepares and collates them."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(2)
    tok = copy.deepcopy(qwen_tokenizer)
    tok.chat_template = marked_qwen_template(qwen_tokenizer.chat_template)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, max_length=None, report_to="none",
                     per_device_train_batch_size=8, use_cpu=True, shuffle_dataset=False, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"messages": c} for c in chats]))
    rows = [trainer.train_dataset[i] for i in range(len(chats))]
    out = []
    for at in range(0, len(rows), 8):
        batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[at:at + 8]])
        for ids, labels, keep in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(keep.sum())
            assert bool(keep[:n].all())  # right padding
            out.append((ids[:n].tolist(), labels[:n].tolist()))
    return out


def test_marked_template_renders_like_the_original(qwen_tokenizer, conversations):
    import copy

    marked = copy.deepcopy(qwen_tokenizer)
    marked.chat_template = marked_qwen_template(qwen_tokenizer.chat_template)
    for chat in conversations[:20]:
        assert render(marked, chat) == render(qwen_tokenizer, chat)


@pytest.mark.parametrize("path", ["header fast path", "prefix-diff path"])
def test_labels_equal_trl_assistant_only_loss(qwen_tokenizer, conversations, trl_rows, path, monkeypatch):
    if path == "prefix-diff path":
        monkeypatch.setattr(chat_spans, "_header_spans", lambda *a: None)
    ours = tokenize_chats(qwen_tokenizer, conversations)
    assert len(trl_rows) == len(ours) == len(conversations)
    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_total = 0
    for i, (row, (ids, labels)) in enumerate(zip(ours, trl_rows)):
        assert row.input_ids == ids, f"conversation {i}: input_ids differ"
        assert row.labels == labels, f"conversation {i}: labels differ"
        if not any("<|im_end|>" in m["content"] for m in conversations[i]):
            n_assistant = sum(m["role"] == "assistant" for m in conversations[i])
            assert sum(1 for x in row.labels if x == im_end) == n_assistant
        trained_total += sum(1 for x in row.labels if x != IGNORE_INDEX)
    assert trained_total > 1000  # the comparison covered real spans, not empty masks


def test_header_fast_path_is_taken_for_qwen_and_skipped_for_quotes(qwen_tokenizer, conversations):
    renderer = chat_spans.ChatRenderer(qwen_tokenizer)
    assert chat_spans._facts(renderer).header == "<|im_start|>assistant\n"
    assert chat_spans._facts(renderer).end_of_turn == "<|im_end|>"
    for chat in QUOTING:
        assert chat_spans._header_spans(chat_spans._facts(renderer), chat, renderer(chat)) is None
    for chat in conversations:
        full = renderer(chat)
        if chat not in QUOTING:
            assert chat_spans._header_spans(chat_spans._facts(renderer), chat, full) == \
                chat_spans._prefix_spans(renderer, chat, full)


def test_pair_invariants_on_qwen_vocabulary(qwen_tokenizer, conversations):
    """prompt_ids + chosen_ids is a prefix of the tokenized full chat; replies decode to content + <|im_end|>."""
    from rutune.data.templates import tokenize_chat, tokenize_pair

    im_end = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    clean = considered = 0
    for chat in conversations:
        last = max(k for k, m in enumerate(chat) if m["role"] == "assistant")
        if chat[last - 1]["role"] == "assistant":  # e.g. RAG samples: a relevant-ids turn, then the answer
            continue
        considered += 1
        prompt, chosen, rejected = chat[:last], chat[last]["content"], "Не знаю."
        pair = tokenize_pair(qwen_tokenizer, prompt, chosen, rejected)
        assert qwen_tokenizer.decode(pair.prompt_ids) == render(qwen_tokenizer, prompt, add_generation_prompt=True)
        assert qwen_tokenizer.decode(pair.chosen_ids) == chosen + "<|im_end|>"
        assert qwen_tokenizer.decode(pair.rejected_ids) == rejected + "<|im_end|>"
        assert pair.rejected_ids[-1] == im_end and pair.rejected_ids.count(im_end) == 1
        whole = tokenize_chat(qwen_tokenizer, chat[:last + 1])
        n = len(pair.prompt_ids) + len(pair.chosen_ids)
        if whole.input_ids[:n] == pair.prompt_ids + pair.chosen_ids:
            clean += 1
            assert whole.labels[len(pair.prompt_ids):n] == pair.chosen_ids
            assert whole.input_ids[n:] == qwen_tokenizer("\n", add_special_tokens=False)["input_ids"]
        else:  # BPE merged the header's "\n" with a reply that starts with whitespace
            assert chosen[:1].isspace()
    assert considered >= 50 and clean >= considered * 0.8
