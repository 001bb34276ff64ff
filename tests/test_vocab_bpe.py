"""Continued BPE merge learning (rutune.data.vocab_bpe): hand-derived merges, ids, filters, errors."""

from __future__ import annotations

import pytest

from rutune.data.vocab_bpe import (
    ExtensionSizeError,
    LearnedMerges,
    VocabError,
    append_merges,
    byte_to_symbol,
    check_extension_size,
    from_symbols,
    learn_merges,
    merge_ranks,
    segment,
    to_symbols,
)

LETTERS = {ch: i for i, ch in enumerate("bghnpsu")}  # b=0 g=1 h=2 n=3 p=4 s=5 u=6
WORDS = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}


def test_merges_learned_from_letters_match_the_hand_derivation_including_the_tie():
    # Pair counts, step by step (derived by hand):
    # 1: u·g = 10+5+5 = 20 (h·u 15, p·u 17, u·n 16, b·u 4, g·s 5)
    # 2: u·n = 12+4 = 16 (h·ug 15, p·u 12, p·ug 5, ug·s 5, b·u 4)
    # 3: h·ug = 10+5 = 15    4: p·un = 12
    # 5: tie at 5 between p·ug ("pug", 3 symbols) and hug·s ("hugs", 4): the shorter string wins
    learned = learn_merges(LETTERS, [], WORDS, 5, required_symbols=None)
    assert learned.merges == (("u", "g"), ("u", "n"), ("h", "ug"), ("p", "un"), ("p", "ug"))
    assert learned.new_tokens == ("ug", "un", "hug", "pun", "pug")
    assert learned.pair_counts == (20, 16, 15, 12, 5)
    assert learned.reused == 0
    assert learned.words == 5


def test_learning_stops_when_no_pair_is_left():
    learned = learn_merges(LETTERS, [], WORDS, 50, required_symbols=None)
    assert learned.merges[5:] == (("hug", "s"), ("b", "un"))
    assert len(learned.new_tokens) == 7


def test_min_count_stops_at_the_first_rarer_pair():
    learned = learn_merges(LETTERS, [], WORDS, 50, required_symbols=None, min_count=12)
    assert learned.new_tokens == ("ug", "un", "hug", "pun")


def test_existing_merges_fire_first_and_new_merges_continue_from_their_segmentation():
    vocab = {**LETTERS, "ug": 7}
    learned = learn_merges(vocab, [("u", "g")], WORDS, 2, required_symbols=None)
    # after the old merge: hug=[h,ug] pug=[p,ug] pun=[p,u,n] bun=[b,u,n] hugs=[h,ug,s]
    # u·n 16 beats h·ug 15; then h·ug 15
    assert learned.merges == (("u", "n"), ("h", "ug"))
    new_vocab, merges, added = append_merges(vocab, [("u", "g")], learned, 8)
    assert added == {"un": 8, "hug": 9}
    assert merges == [("u", "g"), ("u", "n"), ("h", "ug")]
    assert {t: new_vocab[t] for t in vocab} == vocab


def test_a_merge_whose_result_is_an_old_token_is_kept_but_adds_no_id():
    vocab = {**LETTERS, "ug": 7, "hug": 8}  # "hug" exists, yet no old merge builds it
    learned = learn_merges(vocab, [("u", "g")], WORDS, 2, required_symbols=None)
    assert learned.merges == (("u", "n"), ("h", "ug"), ("p", "un"))
    assert learned.new_tokens == ("un", "pun")
    assert learned.reused == 1
    _, _, added = append_merges(vocab, [("u", "g")], learned, 9)
    assert added == {"un": 9, "pun": 10}


def test_only_pairs_containing_a_required_symbol_are_merged():
    vocab = {"a": 0, "b": 1, "x": 2}
    learned = learn_merges(vocab, [], {"ab": 10, "xb": 3}, 5, required_symbols=frozenset("x"))
    assert learned.merges == (("x", "b"),)


def test_default_filter_ignores_words_without_a_cyrillic_lead_byte():
    vocab = {ch: i for i, ch in enumerate(sorted(set(to_symbols(" hello привет"))))}
    english = learn_merges(vocab, [], {to_symbols(" hello"): 100}, 5)
    assert english.merges == ()
    russian = learn_merges(vocab, [], {to_symbols("пп"): 3}, 1)
    assert russian.merges == (("Ð", "¿"),)  # п = D0 BF: the only pair, counted twice per word


def test_ties_do_not_depend_on_dict_order():
    words = {"ab": 4, "cd": 4, "ef": 4}
    vocab = {ch: i for i, ch in enumerate("abcdef")}
    forward = learn_merges(vocab, [], words, 3, required_symbols=None)
    backward = learn_merges(vocab, [], dict(reversed(list(words.items()))), 3, required_symbols=None)
    assert forward.merges == backward.merges == (("a", "b"), ("c", "d"), ("e", "f"))


def test_segment_applies_the_lowest_rank_first_and_the_leftmost_on_a_tie():
    ranks = merge_ranks([("a", "a"), ("b", "c"), ("ab", "c")])
    assert segment("aaa", ranks) == ("aa", "a")
    assert segment("abc", ranks) == ("a", "bc")  # (b,c) rank 1 fires; (ab,c) never forms
    assert segment("abc", ranks, vocab={"abc": 9}, ignore_merges=True) == ("abc",)


def test_segment_agrees_with_the_tokenizers_library_on_the_tiny_tokenizer(tiny_model_dir):
    from rutune.data.vocab import effective_tokenizer_json, merges_of
    from tokenizers import Tokenizer
    import json

    tok, _ = effective_tokenizer_json(tiny_model_dir)
    backend = Tokenizer.from_str(json.dumps(tok))
    ranks = merge_ranks(merges_of(tok))
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю. The quick brown fox 12345 ёлка!"
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    assert len(pieces) == 24  # Qwen regex: 15 words, ",", ".", " ", 5 single digits, "!"
    for piece in pieces:
        assert list(segment(piece, ranks)) == [t.value for t in backend.model.tokenize(piece)]


def test_byte_level_alphabet_maps_space_newline_and_cyrillic_like_gpt2():
    table = byte_to_symbol()
    assert len(set(table.values())) == 256
    assert table[0x20] == "Ġ" and table[0x0A] == "Ċ" and table[0x41] == "A"
    assert to_symbols(" привет") == "ĠÐ¿ÑĢÐ¸Ð²ÐµÑĤ"
    assert from_symbols(to_symbols("ёЁ 😀")) == "ёЁ 😀".encode()


def test_append_merges_gives_contiguous_ids_after_first_new_id():
    learned = LearnedMerges(merges=(("a", "b"), ("ab", "c")), new_tokens=("ab", "abc"), pair_counts=(2, 1),
                            reused=0, words=1)
    vocab, merges, added = append_merges({"a": 0, "b": 1, "c": 2}, [("x", "y")], learned, 10)
    assert added == {"ab": 10, "abc": 11}
    assert merges == [("x", "y"), ("a", "b"), ("ab", "c")]
    assert vocab == {"a": 0, "b": 1, "c": 2, "ab": 10, "abc": 11}


@pytest.mark.parametrize("size, vocab_size, message", [
    (0, 100, "extension size 0: must be at least 1 new token"),
    (-5, 100, "extension size -5: must be at least 1 new token"),
    (1001, 100, "extension size 1001: more than 1000 new tokens"),
    (1_000_001, 10**7, "extension size 1000001: more than 1000000 new tokens"),
    (2.5, 100, "extension size 2.5: must be an integer number of new tokens"),
])
def test_bad_extension_sizes_raise_one_line_errors(size, vocab_size, message):
    with pytest.raises(ExtensionSizeError) as err:
        check_extension_size(size, vocab_size)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bad_word_input_raises_one_line_errors():
    with pytest.raises(VocabError, match=r"^word 'hx': symbol 'x' is not in the vocabulary$"):
        learn_merges(LETTERS, [], {"hx": 2}, 1, required_symbols=None)
    with pytest.raises(VocabError, match=r"^word 'hug': count -1 is not a non-negative integer$"):
        learn_merges(LETTERS, [], {"hug": -1}, 1, required_symbols=None)
    with pytest.raises(VocabError, match=r"^first new id 3: not above the largest vocabulary id 6$"):
        append_merges(LETTERS, [], LearnedMerges((), (), (), 0, 0), 3)
