"""Extending real tokenizers (tiny, Qwen2.5): old ids and specials unchanged, Russian shorter, exact round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import qwen_tokenizer_dir
from rutune.data.russian_text import russian_text
from rutune.data.vocab import (
    VOCAB_RECORD,
    check_supported,
    effective_tokenizer_json,
    extend_tokenizer_dir,
    extend_tokenizer_json,
    max_id_in_use,
    merges_of,
    pretoken_counts,
    word_forms,
)
from rutune.data.vocab_bpe import UnsupportedTokenizerError, VocabError, to_symbols

NEW_TOKENS = 300
NON_RUSSIAN = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x: int) -> dict:\n    return {'a': [1, 2, 3]}  # comment\n",
    "0123456789 3.14159 -42 1e10 2024-05-17",
    "Emoji 😀🎉👍🏽 and symbols © ° ± € ∑ «» — … ",
    "Ünïcödé façade naïve 中文 日本語 한국어",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|im_start|><|im_end|>",
]
MIXED = "Вопрос: what is 2+2? Ответ — «четыре», т.е. 4. Ёжик съел 3 яблока 🍎 в 10:30.\nНовая строка\tтаб"


@pytest.fixture(scope="module")
def text():
    return russian_text(n_words=3000)


@pytest.fixture(scope="module", params=["tiny", "qwen2.5"])
def extended(request, text, tmp_path_factory):
    """(source folder, extended folder, report, old tokenizer, new tokenizer, expected first new id, base json)."""
    from transformers import AutoTokenizer

    if request.param == "tiny":
        src, first = request.getfixturevalue("tiny_model_dir"), 4096
    else:
        src, first = qwen_tokenizer_dir(), 151665
        if src is None:
            pytest.skip("shared/tokenizers/qwen2.5 not found beside the repo")
    out = tmp_path_factory.mktemp(f"ext-{request.param}") / "tokenizer"
    old = AutoTokenizer.from_pretrained(str(src))
    report = extend_tokenizer_dir(src, out, text.merge_counts, NEW_TOKENS, source_tokenizer=old)
    base, _ = effective_tokenizer_json(src, old)
    return Path(src), out, report, old, AutoTokenizer.from_pretrained(str(out)), first, base


def test_non_russian_text_and_chat_markers_keep_their_exact_ids(extended):
    _, _, _, old, new, _, _ = extended
    for s in NON_RUSSIAN:
        assert new.encode(s, add_special_tokens=False) == old.encode(s, add_special_tokens=False), s


def test_a_rendered_chat_template_keeps_its_ids_and_special_token_positions(extended):
    _, _, _, old, new, _, _ = extended
    english = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 2+2?"},
               {"role": "assistant", "content": "4."}]
    rendered = old.apply_chat_template(english, tokenize=False)
    assert new.apply_chat_template(english, tokenize=False) == rendered
    assert new.encode(rendered, add_special_tokens=False) == old.encode(rendered, add_special_tokens=False)
    russian = [{"role": "user", "content": "Привет! Как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}]
    specials = set(old.all_special_ids)
    old_ids = old.apply_chat_template(russian, tokenize=True, return_dict=False)
    new_ids = new.apply_chat_template(russian, tokenize=True, return_dict=False)
    assert [i for i in new_ids if i in specials] == [i for i in old_ids if i in specials]
    assert len(new_ids) < len(old_ids)


def test_special_tokens_keep_ids_and_strings(extended):
    _, _, _, old, new, _, _ = extended
    assert {i: t.content for i, t in new.added_tokens_decoder.items()} == \
        {i: t.content for i, t in old.added_tokens_decoder.items()}
    assert new.all_special_tokens == old.all_special_tokens
    assert new.all_special_ids == old.all_special_ids
    assert (new.eos_token, new.eos_token_id, new.pad_token_id) == (old.eos_token, old.eos_token_id, old.pad_token_id)
    assert new.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == old.convert_tokens_to_ids(
        ["<|im_start|>", "<|im_end|>"])


def test_new_ids_start_after_the_largest_old_id_and_are_contiguous(extended):
    src, out, report, old, new, first, base = extended
    assert max_id_in_use(base) + 1 == first == report.first_new_id
    assert report.num_new_tokens == NEW_TOKENS
    assert len(new) == len(old) + NEW_TOKENS == first + NEW_TOKENS
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert sorted(i for i in vocab.values() if i >= first) == list(range(first, first + NEW_TOKENS))
    assert all(vocab[t] == i for t, i in base["model"]["vocab"].items())


def test_new_merges_are_appended_after_all_old_merges(extended):
    _, out, report, _, _, _, base = extended
    old_merges = merges_of(base)
    new_merges = merges_of(json.loads((out / "tokenizer.json").read_text()))
    assert new_merges[:len(old_merges)] == old_merges
    assert len(new_merges) == len(old_merges) + report.num_new_merges
    assert all(("Ð" in a + b or "Ñ" in a + b) for a, b in new_merges[len(old_merges):])


def test_held_out_russian_gets_fewer_tokens_and_no_text_gets_more(extended, text):
    _, _, _, old, new, _, _ = extended
    before = [len(old.encode(t, add_special_tokens=False)) for t in text.heldout_texts]
    after = [len(new.encode(t, add_special_tokens=False)) for t in text.heldout_texts]
    assert all(a <= b for a, b in zip(after, before))
    assert sum(after) < sum(before)


def test_decoding_round_trips_russian_and_mixed_text_exactly(extended, text):
    _, _, _, _, new, _, _ = extended
    for s in [*text.heldout_texts[:40], MIXED, *NON_RUSSIAN[:5]]:
        assert new.decode(new.encode(s, add_special_tokens=False)) == s


def test_extended_folder_carries_chat_template_and_a_record(extended):
    _, out, report, old, new, _, _ = extended
    assert new.chat_template == old.chat_template
    record = json.loads((out / VOCAB_RECORD).read_text())
    assert record["first_new_id"] == report.first_new_id
    assert len(record["new_tokens"]) == NEW_TOKENS
    assert type(new).__name__ == record["tokenizer_class"] == type(old).__name__


def test_pretoken_counts_split_text_like_the_tokenizer(tiny_model_dir):
    tok, _ = effective_tokenizer_json(tiny_model_dir)
    counts = pretoken_counts(tok, {"Привет, мир": 2, " мир": 3})
    assert counts == {to_symbols("Привет"): 2, to_symbols(","): 2, to_symbols(" мир"): 5}
    assert word_forms({"слово": 10, "да": 1}) == {" слово": 9, "слово": 1, " да": 1}


def test_non_byte_level_tokenizers_are_not_supported_yet():
    with pytest.raises(UnsupportedTokenizerError, match=r"^tokenizer: model type 'Unigram' \(need BPE\) is not "
                                                        r"supported yet \(only byte-level BPE\)$"):
        check_supported({"model": {"type": "Unigram"}})
    spm = {"model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []},
           "pre_tokenizer": {"type": "Metaspace"}, "decoder": {"type": "Metaspace"}}
    with pytest.raises(UnsupportedTokenizerError, match="byte_fallback"):
        extend_tokenizer_json(spm, {"слово": 1}, 10)
    no_byte_level = {"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Whitespace"},
                     "decoder": {"type": "ByteLevel"}}
    with pytest.raises(UnsupportedTokenizerError, match="no ByteLevel pre-tokenizer is not supported yet"):
        check_supported(no_byte_level)


def test_bad_inputs_to_the_file_level_extension_raise_one_line_errors(tiny_model_dir, tmp_path):
    with pytest.raises(VocabError, match=r"^tokenizer folder .*missing: not found$"):
        extend_tokenizer_dir(tmp_path / "missing", tmp_path / "out", {"слово": 1}, 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VocabError, match=r"no tokenizer.json"):
        extend_tokenizer_dir(tmp_path / "empty", tmp_path / "out", {"слово": 1}, 5)
    with pytest.raises(VocabError, match=r"extension size 0: must be at least 1 new token"):
        extend_tokenizer_dir(tiny_model_dir, tmp_path / "out", {"слово": 1}, 0)
    with pytest.raises(VocabError, match=r"extension size 40961: more than 40960 new tokens"):
        extend_tokenizer_dir(tiny_model_dir, tmp_path / "out", {"слово": 1}, 40961)
    with pytest.raises(VocabError, match=r"no text to learn merges from") as err:
        extend_tokenizer_dir(tiny_model_dir, tmp_path / "out", {"": 3}, 5)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
