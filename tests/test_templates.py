"""Assistant-only masks, truncation and preference pairs on the tiny ChatML tokenizer and on other templates.

Expected masks are written by hand as (text, trained) segments of the rendered chat; each segment is tokenized
on its own and the pieces concatenated, which equals the full tokenization because ChatML's special tokens and
the "\\n" after each header are token boundaries in a byte-level BPE.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rutune.data.templates import (
    IGNORE_INDEX,
    TemplateError,
    load_tokenizer,
    render,
    template_hash,
    tokenize_chat,
    tokenize_chats,
    tokenize_pair,
)

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def expected(tok, segments):
    ids, labels = [], []
    for text, trained in segments:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def trained_spans(tok, ids, labels):
    """Decoded runs of consecutive trained tokens."""
    spans, run = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            run.append(i)
        elif run:
            spans.append(tok.decode(run))
            run = []
    if run:
        spans.append(tok.decode(run))
    return spans


SINGLE = [{"role": "user", "content": "Привет! Как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}]
WITH_SYSTEM = [{"role": "system", "content": "Ты — вежливый помощник."}] + SINGLE
MULTI = WITH_SYSTEM + [
    {"role": "user", "content": "Сколько будет 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "А 3*3?"},
    {"role": "assistant", "content": "Девять."},
]


def test_single_turn_mask_with_default_system_prompt(tok):
    out = tokenize_chat(tok, SINGLE)
    ids, labels = expected(tok, [
        (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nПривет! Как дела?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Хорошо, спасибо.<|im_end|>", True),
        ("\n", False),
    ])
    assert out.input_ids == ids
    assert out.labels == labels
    assert trained_spans(tok, out.input_ids, out.labels) == ["Хорошо, спасибо.<|im_end|>"]


def test_system_prompt_mask(tok):
    out = tokenize_chat(tok, WITH_SYSTEM)
    ids, labels = expected(tok, [
        ("<|im_start|>system\nТы — вежливый помощник.<|im_end|>\n<|im_start|>user\nПривет! Как дела?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Хорошо, спасибо.<|im_end|>", True),
        ("\n", False),
    ])
    assert (out.input_ids, out.labels) == (ids, labels)
    assert DEFAULT_SYSTEM not in tok.decode(out.input_ids)


def test_three_exchanges_mask(tok):
    out = tokenize_chat(tok, MULTI)
    ids, labels = expected(tok, [
        ("<|im_start|>system\nТы — вежливый помощник.<|im_end|>\n<|im_start|>user\nПривет! Как дела?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Хорошо, спасибо.<|im_end|>", True),
        ("\n<|im_start|>user\nСколько будет 2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>", True),
        ("\n<|im_start|>user\nА 3*3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Девять.<|im_end|>", True),
        ("\n", False),
    ])
    assert (out.input_ids, out.labels) == (ids, labels)
    assert trained_spans(tok, out.input_ids, out.labels) == ["Хорошо, спасибо.<|im_end|>", "4<|im_end|>",
                                                             "Девять.<|im_end|>"]
    im_end, newline = tok.convert_tokens_to_ids("<|im_end|>"), tok("\n", add_special_tokens=False)["input_ids"]
    assert out.input_ids.count(im_end) == 7  # system + 3 user + 3 assistant: one per turn, never duplicated
    assert sum(1 for x in out.labels if x == im_end) == 3
    for i, x in enumerate(out.input_ids):
        if x == im_end and out.labels[i] != IGNORE_INDEX:
            assert out.input_ids[i + 1:i + 2] == newline and out.labels[i + 1] == IGNORE_INDEX


def test_batched_equals_single_and_render_matches_transformers(tok):
    from rutune.records import Conversation, Message

    convs = [SINGLE, WITH_SYSTEM, MULTI]
    assert tokenize_chats(tok, convs) == [tokenize_chat(tok, c) for c in convs]
    record = Conversation(messages=tuple(Message(m["role"], m["content"]) for m in MULTI), source="test")
    assert tokenize_chats(tok, [record]) == [tokenize_chat(tok, MULTI)]
    for c in convs:
        assert render(tok, c) == tok.apply_chat_template(c, tokenize=False)
        assert render(tok, c[:-1], add_generation_prompt=True) == tok.apply_chat_template(
            c[:-1], tokenize=False, add_generation_prompt=True)


def test_piecewise_labels_for_slow_tokenizers_match_offsets(tok):
    """Slow tokenizers have no offsets: tokenizing piece by piece at span boundaries gives the same row here."""
    from rutune.data import chat_spans

    renderer = chat_spans.ChatRenderer(tok)
    full = renderer(MULTI)
    ids, labels = chat_spans.labels_by_pieces(tok, full, chat_spans.assistant_spans(renderer, MULTI, full))
    assert (ids, labels) == (tokenize_chat(tok, MULTI).input_ids, tokenize_chat(tok, MULTI).labels)


def test_truncation_drop_and_truncate_exact(tok):
    full = tokenize_chat(tok, MULTI)
    n = len(full.input_ids)
    assert tokenize_chat(tok, MULTI, max_tokens=n) == full
    counts: dict[str, int] = {}
    assert tokenize_chat(tok, MULTI, max_tokens=n - 1, counts=counts) is None
    cut = tokenize_chat(tok, MULTI, max_tokens=n - 5, overlength="truncate", counts=counts)
    assert len(cut.input_ids) == n - 5 == len(cut.labels)
    assert cut.input_ids == full.input_ids[:n - 5] and cut.labels == full.labels[:n - 5]
    # a cut before the first assistant token leaves nothing to train: dropped, not kept
    first_trained = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    assert tokenize_chat(tok, MULTI, max_tokens=first_trained, overlength="truncate", counts=counts) is None
    assert counts == {"dropped_overlength": 2, "truncated": 1, "kept": 1}
    rows = tokenize_chats(tok, [SINGLE, MULTI], max_tokens=n - 1)
    assert rows[0] is not None and rows[1] is None


def test_pair_invariants(tok):
    prompt = MULTI[:-1]
    pair = tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное")
    assert tok.decode(pair.chosen_ids) == "Девять.<|im_end|>"
    assert tok.decode(pair.rejected_ids) == "Восемь, наверное<|im_end|>"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for reply in (pair.chosen_ids, pair.rejected_ids):
        assert reply.count(im_end) == 1 and reply[-1] == im_end
    assert tok.decode(pair.prompt_ids) == render(tok, prompt, add_generation_prompt=True)
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")
    for reply, ids in (("Девять.", pair.chosen_ids), ("Восемь, наверное", pair.rejected_ids)):
        whole = tok(render(tok, prompt + [{"role": "assistant", "content": reply}]),
                    add_special_tokens=False)["input_ids"]
        assert whole[:len(pair.prompt_ids) + len(ids)] == pair.prompt_ids + ids
        assert whole[len(pair.prompt_ids) + len(ids):] == tok("\n", add_special_tokens=False)["input_ids"]
    # same reply tokens as the SFT labels of the same conversation
    sft = tokenize_chat(tok, prompt + [{"role": "assistant", "content": "Девять."}])
    assert [x for x in sft.labels if x != IGNORE_INDEX][-len(pair.chosen_ids):] == pair.chosen_ids


def test_pair_truncate_prompt_keeps_system_and_header(tok):
    prompt = MULTI[:-1]
    full = tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное")
    longest = max(len(full.chosen_ids), len(full.rejected_ids))
    total = len(full.prompt_ids) + longest
    assert tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное", max_tokens=total) == full
    counts: dict[str, int] = {}
    assert tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное", max_tokens=total - 1,
                         overlength="drop", counts=counts) is None
    system = tok(render(tok, prompt[:1]), add_special_tokens=False)["input_ids"]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    budget = total - 10
    cut = tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное", max_tokens=budget, counts=counts)
    assert len(cut.prompt_ids) + longest == budget
    assert (cut.chosen_ids, cut.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert cut.prompt_ids[:len(system)] == system
    assert cut.prompt_ids[-len(header):] == header
    keep = budget - longest - len(system) - len(header)
    assert cut.prompt_ids[len(system):-len(header)] == full.prompt_ids[-len(header) - keep:-len(header)]
    # too small for the system turn: only the newest tokens + header; too small for the header: dropped
    tight = tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное", max_tokens=longest + len(header) + 3)
    assert tight.prompt_ids == full.prompt_ids[-len(header) - 3:]
    assert tokenize_pair(tok, prompt, "Девять.", "Восемь, наверное", max_tokens=longest + len(header) - 1,
                         counts=counts) is None
    assert counts == {"dropped_overlength": 2, "truncated_prompt": 1, "kept": 1}


# ---------------------------------------------------------------- other templates

LLAMA3_STYLE = (
    "{{- bos_token }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Mistral-v3-like: the system prompt goes into the LAST user turn, so earlier renders are not prefixes of later ones.
MISTRAL_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- set last_user = namespace(i=-1) %}"
    "{%- for m in loop_messages %}{%- if m['role'] == 'user' %}{%- set last_user.i = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token }}"
    "{%- for m in loop_messages %}"
    "{%- if m['role'] == 'user' %}"
    "{%- if loop.index0 == last_user.i and system %}{{- '[INST] ' + system + '\\n\\n' + m['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + m['content'] + '[/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + m['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def _retemplated(tiny_model_dir, tmp_path, name, template, extra_tokens, bos, eos):
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "chat_template*"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_special_tokens({"additional_special_tokens": extra_tokens})
    tok.bos_token, tok.eos_token = bos, eos
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    return load_tokenizer(str(folder))


def test_llama3_style_template_trims_content(tiny_model_dir, tmp_path):
    tok = _retemplated(tiny_model_dir, tmp_path, "llama3", LLAMA3_STYLE,
                       ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                       "<|begin_of_text|>", "<|eot_id|>")
    chat = [{"role": "system", "content": "Отвечай кратко."}, {"role": "user", "content": "Столица России?"},
            {"role": "assistant", "content": "  Москва.\n"}, {"role": "user", "content": "А Франции?"},
            {"role": "assistant", "content": "Париж."}]
    out = tokenize_chat(tok, chat)
    assert "<|im_end|>" not in tok.decode(out.input_ids)
    ids, labels = expected(tok, [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nОтвечай кратко.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nСтолица России?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("Москва.<|eot_id|>", True),
        ("<|start_header_id|>user<|end_header_id|>\n\nА Франции?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("Париж.<|eot_id|>", True),
    ])
    assert (out.input_ids, out.labels) == (ids, labels)
    pair = tokenize_pair(tok, chat[:4], "Париж.", "Лион.")
    assert tok.decode(pair.chosen_ids) == "Париж.<|eot_id|>"
    assert tok.decode(pair.prompt_ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_mistral_style_template_with_moving_system_prompt(tiny_model_dir, tmp_path):
    tok = _retemplated(tiny_model_dir, tmp_path, "mistral", MISTRAL_STYLE, ["<s>", "</s>", "[INST]", "[/INST]"],
                       "<s>", "</s>")
    chat = [{"role": "system", "content": "Будь краток."}, {"role": "user", "content": "Привет"},
            {"role": "assistant", "content": "Привет!"}, {"role": "user", "content": "Как дела?"},
            {"role": "assistant", "content": "Хорошо."}]
    out = tokenize_chat(tok, chat)
    # The template writes " " + content: byte-level BPE merges that space into the reply's first token, and a
    # token overlapping the reply is trained (transformers' rule for generation masks), so the space is too.
    ids, labels = expected(tok, [
        ("<s>[INST] Привет[/INST]", False),
        (" Привет!</s>", True),
        ("[INST] Будь краток.\n\nКак дела?[/INST]", False),
        (" Хорошо.</s>", True),
    ])
    assert (out.input_ids, out.labels) == (ids, labels)
    assert trained_spans(tok, out.input_ids, out.labels) == [" Привет!</s>", " Хорошо.</s>"]
    pair = tokenize_pair(tok, chat[:4], "Хорошо.", "Плохо.")
    assert tok.decode(pair.prompt_ids) == "<s>[INST] Привет[/INST] Привет!</s>[INST] Будь краток.\n\nКак дела?[/INST]"
    assert tok.decode(pair.chosen_ids) == " Хорошо.</s>"


def test_template_hash_tracks_template(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    same = load_tokenizer(str(tiny_model_dir))
    assert template_hash(tok) == template_hash(same)
    same.chat_template = LLAMA3_STYLE
    assert template_hash(tok) != template_hash(same)


# ---------------------------------------------------------------- bad input

def test_tokenizer_without_chat_template_is_one_line_error(tiny_model_dir, tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "chat_template*"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TemplateError) as err:
        load_tokenizer(str(folder))
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "chat_template.jinja" in message
    with pytest.raises(TemplateError, match="cannot be loaded"):
        load_tokenizer(str(tmp_path / "missing"))


def test_bad_messages(tok):
    with pytest.raises(TemplateError, match=r"role 'bot' is not one of system, user, assistant"):
        tokenize_chat(tok, [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}])
    with pytest.raises(TemplateError, match="empty"):
        tokenize_chat(tok, [])
    with pytest.raises(TemplateError, match="empty"):
        tokenize_pair(tok, [], "a", "b")
    with pytest.raises(TemplateError, match="no assistant message"):
        tokenize_chat(tok, [{"role": "user", "content": "a"}])
    with pytest.raises(TemplateError, match="content must be text"):
        tokenize_chat(tok, [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}])
    with pytest.raises(TemplateError, match="ends with an assistant"):
        tokenize_pair(tok, SINGLE, "a", "b")
    with pytest.raises(TemplateError, match="overlength"):
        tokenize_chat(tok, SINGLE, max_tokens=3, overlength="cut")


def test_marked_chatml_copy_renders_the_same_text(tiny_model_dir):
    """The `{% generation %}` copy handed to TRL must render exactly what the tiny model's own template renders."""
    from rutune.models import chatml_template

    tok = load_tokenizer(str(tiny_model_dir))
    marked = load_tokenizer(str(tiny_model_dir))
    marked.chat_template = chatml_template(generation_markers=True)
    chats = [
        [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте!"}],
        [{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "А 3+3?"},
         {"role": "assistant", "content": "6"}],
    ]
    for chat in chats:
        for gen in (False, True):
            msgs = chat[:-1] if gen else chat
            assert render(marked, msgs, add_generation_prompt=gen) == render(tok, msgs, add_generation_prompt=gen)
    assert "{% generation %}" in marked.chat_template and "{% generation %}" not in tok.chat_template
