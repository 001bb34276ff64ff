"""Russian text sources (wordfreq + bundled samples), the merge/held-out split, and tokenizer metrics."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from rutune.data.russian_text import (
    PER_WORDS,
    Document,
    is_russian,
    russian_text,
    sample_documents,
    split_documents,
    wordfreq_counts,
)
from rutune.data.vocab_bpe import TextSourceError, VocabError
from rutune.data.vocab_metrics import (chars_per_token, cyrillic_letters, new_token_share, pooled_share,
                                       repeated_ngrams, tokenizer_stats, tokens_per_word)


@pytest.fixture(scope="module")
def text():
    return russian_text(n_words=2000)


def test_held_out_and_merge_text_share_no_document_and_no_text(text):
    assert text.merge_documents and text.heldout_documents
    assert not set(text.merge_documents) & set(text.heldout_documents)
    docs = sample_documents()
    assert len(text.merge_documents) + len(text.heldout_documents) == len(docs)
    held_docs = {d.ref: d for d in docs if d.ref in set(text.heldout_documents)}
    held_texts = {t for d in held_docs.values() for t in d.texts}
    assert not held_texts & set(text.merge_counts)
    assert set(text.heldout_texts) <= held_texts
    assert all(is_russian(t) for t in text.heldout_texts)


def test_documents_with_the_same_first_message_land_on_the_same_side():
    docs = [Document("a", 0, ("Привет  Мир", "x")), Document("b", 7, ("привет мир", "y"))]
    docs += [Document("c", i, (f"текст номер {i}",)) for i in range(200)]
    merge, held = split_documents(docs, held_out_share=0.3, seed=1)
    sides = {d.ref: ("held" if d in held else "merge") for d in docs}
    assert sides["a:0"] == sides["b:7"]
    again_merge, again_held = split_documents(list(reversed(docs)), held_out_share=0.3, seed=1)
    assert {d.ref for d in again_held} == {d.ref for d in held}
    assert {d.ref for d in again_merge} == {d.ref for d in merge}


def test_manifest_lists_sources_with_licences_and_the_split(text):
    record = text.manifest()
    names = [s["name"] for s in record["sources"]]
    assert names == ["wordfreq-ru", "rutune-samples"]
    wordfreq, samples = record["sources"]
    assert wordfreq["package"] == "wordfreq" and wordfreq["version"] == "3.1.1"
    assert "CC-BY-SA-4.0" in wordfreq["licence"] and "Apache-2.0" in wordfreq["licence"]
    assert samples["licence"].startswith("Apache-2.0")
    assert samples["used"] == len(record["merge_documents"])
    assert record["settings"]["n_words"] == 2000
    assert record["heldout_chars"] == sum(len(t) for t in text.heldout_texts) > 10_000


def test_wordfreq_counts_are_frequency_per_100m_words_split_by_case():
    import wordfreq

    counts = wordfreq_counts(50, capitalized_share=0.1)
    total = round(wordfreq.word_frequency("что", "ru", wordlist="large") * PER_WORDS)
    assert counts["Что"] == round(total * 0.1)
    assert counts["что"] == total - round(total * 0.1)
    assert all(w.lower() in wordfreq.top_n_list("ru", 50, wordlist="large") for w in counts)


def test_merge_counts_hold_word_forms_and_sample_texts_with_their_weights(text):
    import wordfreq

    total = round(wordfreq.word_frequency("что", "ru", wordlist="large") * PER_WORDS)
    lower = total - round(total * 0.1)
    assert text.merge_counts[" что"] == round(lower * 0.9)
    assert text.merge_counts["что"] == lower - round(lower * 0.9)
    doc = next(d for d in sample_documents() if d.ref == text.merge_documents[0])
    assert text.merge_counts[doc.texts[0]] % 100 == 0


def test_is_russian_counts_cyrillic_letters_only():
    assert is_russian("Привет, world!")  # 6 of 11 letters
    assert not is_russian("Hello, мир")  # 3 of 8
    assert not is_russian("12345 !!!")


def test_missing_or_empty_text_sources_raise_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(TextSourceError, match=r"^text source samples: no \*\.jsonl files in .*$"):
        sample_documents(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"meta": 1}\n')
    with pytest.raises(TextSourceError, match=r"has no message texts$"):
        sample_documents(tmp_path)
    with pytest.raises(TextSourceError, match=r"^text source wordfreq: n_words 0 must be a positive integer$"):
        wordfreq_counts(0)
    with pytest.raises(TextSourceError, match=r"^held_out_share 1.0: must be strictly between 0 and 1$"):
        split_documents(sample_documents(), held_out_share=1.0)
    with pytest.raises(TextSourceError, match=r"nothing to learn merges from"):
        russian_text(use_wordfreq=False, sample_weight=0)
    monkeypatch.setitem(sys.modules, "wordfreq", None)
    with pytest.raises(TextSourceError, match=r"^text source wordfreq: package not installed; run: pip install"):
        wordfreq_counts(10)


class _SpaceTokenizer:
    """One token per whitespace word; ids are word lengths (a stand-in whose counts are easy to derive)."""

    def encode(self, text, add_special_tokens=False):
        return [len(w) for w in text.split()]


def test_chars_per_token_and_tokens_per_word_match_hand_counts():
    tok = _SpaceTokenizer()
    texts = ["ab cd", "efg"]  # 8 chars, 3 tokens, 3 words
    assert chars_per_token(tok, texts) == 8 / 3
    assert tokens_per_word(tok, texts) == 1.0
    ids_object = SimpleNamespace(encode=lambda t, add_special_tokens=False: SimpleNamespace(ids=list(t)))
    assert chars_per_token(ids_object, ["абв", "г"]) == 1.0
    assert tokenizer_stats(tok, texts) == {"texts": 2, "chars": 8, "words": 3, "tokens": 3,
                                           "chars_per_token": 8 / 3, "tokens_per_word": 1.0}


def test_repeated_ngrams_counts_4grams_minus_distinct_ones_by_hand():
    # 12 words → 9 word 4-grams; a 4-word loop has 4 distinct ones (a b c d, b c d a, c d a b, d a b c) → 5 repeated
    assert repeated_ngrams("a b c d a b c d a b c d") == (5, 9)
    assert repeated_ngrams("Мама мыла раму, папа читал газету.") == (0, 3)  # prose: every 4-gram new
    assert repeated_ngrams("**Бите** — 1. **Бите** — 1. **Бите** — 1.") == (3, 6)  # punctuation stays in words
    assert repeated_ngrams("три слова всего") == (0, 0)  # fewer than 4 words: no 4-grams
    assert repeated_ngrams("x x x", n=1) == (2, 3)
    with pytest.raises(VocabError, match=r"^repeated_ngrams: n must be >= 1, got 0$"):
        repeated_ngrams("a b", n=0)


def test_cyrillic_letters_counts_cyrillic_among_letters_only():
    assert cyrillic_letters("Ёжик, 2 ежа!") == (7, 7)  # digits, spaces, punctuation are not letters; ё counts
    assert cyrillic_letters("def f(x): return 'да'") == (2, 13)  # d e f f x r e t u r n + д а
    assert cyrillic_letters("123 — !") == (0, 0)


def test_pooled_share_weighs_answers_by_size_not_one_vote_each():
    loop, prose = "a b c d a b c d a b c d", "один два три четыре пять"  # 5 of 9 repeated; 0 of 2
    assert pooled_share([loop, prose], repeated_ngrams) == 5 / 11  # a mean of the two ratios would be 5/18
    assert pooled_share([prose, "def f(x)"], cyrillic_letters) == 20 / 25  # 20 Cyrillic letters, 5 Latin
    assert pooled_share(["три слова всего"], repeated_ngrams) is None and pooled_share([], cyrillic_letters) is None


def test_new_token_share_counts_ids_at_or_above_the_first_new_id():
    assert new_token_share([1, 4096, 5000, 2], 4096) == 0.5
    assert new_token_share([4095], 4096) == 0.0


def test_metrics_reject_empty_input_with_one_line_errors():
    with pytest.raises(VocabError, match=r"^new_token_share: no generated ids$"):
        new_token_share([], 10)
    with pytest.raises(VocabError, match=r"^chars_per_token: no non-empty texts to measure$"):
        chars_per_token(_SpaceTokenizer(), ["", ""])
    with pytest.raises(VocabError, match=r"^tokens_per_word: expected a list of texts, got one string$"):
        tokens_per_word(_SpaceTokenizer(), "один текст")
