"""ruIFEval checkers with hand-computed expectations: Russian rules, ruIFEval's quirks, loose scoring, the four
scores, and bad input (one IfevalError line naming the row)."""

from __future__ import annotations

import sys

import pytest

from rutune.eval.ifeval import (
    IfevalError,
    check_instruction,
    check_row,
    ifeval_scores,
    instruction_breakdown,
    loose_variants,
    score_response,
)
from rutune.eval.ifeval.russian import count_sentences, count_words, detect_language, lemmatize, word_tokens


def row(*pairs, key=7):
    """A one-prompt ruIFEval row from (id, kwargs) pairs."""
    return {"key": key, "prompt": "Задание", "instruction_id_list": [p[0] for p in pairs],
            "kwargs": [p[1] for p in pairs]}


def ok(iid, response, **kwargs):
    return check_instruction(iid, kwargs, response)


# --- text tools -------------------------------------------------------------------------------------------------

def test_lemmatize_blanks_latin_digits_and_ascii_punctuation_and_lemmatizes_the_rest():
    assert lemmatize("Я люблю Python и котов — 3 раза!") == "я любить и кот раз"


def test_lemmatize_leaves_words_glued_to_guillemets_or_ellipsis_unlemmatized():
    # «» and … are not blanked, so pymorphy sees "«тропинке»…" as one unknown token and returns it lower-cased.
    assert lemmatize("Ёжики бежали по «Тропинке»…") == "ёжик бежать по «тропинке»…"


def test_sentence_count_knows_russian_abbreviations_and_initials():
    assert count_sentences("Это было в 1999 г. в Москве. Потом мы уехали.") == 2
    assert count_sentences("А. С. Пушкин родился в Москве. Он великий поэт.") == 2
    assert count_sentences("Он пришёл в 10 ч. утра, т. к. спешил. Потом ушёл.") == 2
    assert count_sentences("Т.е. всё понятно. И т.д.") == 2


def test_sentence_count_does_not_split_on_bare_line_breaks():
    assert count_sentences("* пункт один\n* пункт два\n* пункт три") == 1
    assert count_sentences("Что?! Не может быть... Правда.") == 3


def test_word_count_splits_hyphenated_words_and_counts_digits():
    assert count_words("Санкт-Петербург основан в 1703 году.") == 6  # Санкт, Петербург, …, 1703, году


def test_word_tokens_keep_guillemets_apart_from_capital_words():
    assert word_tokens("ОЧЕНЬ ВАЖНО: «ВСЕ» на собрание!") == [
        "ОЧЕНЬ", "ВАЖНО", ":", "«", "ВСЕ", "»", "на", "собрание", "!"]


# --- Russian rules per checker ------------------------------------------------------------------------------------

def test_keywords_match_any_inflected_form_of_each_keyword():
    assert ok("keywords:existence", "Мы долго смотрели на звёзды и слушали реку.", keywords=["звезда", "слушать"])
    assert not ok("keywords:existence", "Мы долго смотрели на небо.", keywords=["звезда", "небо"])


def test_keyword_frequency_counts_lemmas_across_cases():
    text = "Кот спал. Коту снился сон. Котом гордились."  # кот, кот, кот (and "снился" ≠ кот)
    assert ok("keywords:frequency", text, keyword="кот", frequency=3, relation="at least")
    assert not ok("keywords:frequency", text, keyword="кот", frequency=3, relation="less than")


def test_forbidden_word_is_caught_in_any_inflected_form_but_not_inside_a_longer_word():
    assert not ok("keywords:forbidden_words", "Мы гуляли под дождём.", forbidden_words=["дождь"])
    assert ok("keywords:forbidden_words", "Мы гуляли под дождиком.", forbidden_words=["дождь"])


def test_letter_frequency_counts_a_cyrillic_letter_case_insensitively():
    text = "Кошка кормит котят."  # к: Кошка ×2, кормит ×1, котят ×1
    assert ok("keywords:letter_frequency", text, letter="К", let_frequency=4, let_relation="at least")
    assert not ok("keywords:letter_frequency", text, letter="к", let_frequency=4, let_relation="less than")


def test_constrained_response_needs_the_russian_option_with_an_em_dash():
    assert ok("detectable_format:constrained_response", "Подумав, скажу так. Мой ответ — нет.")
    assert not ok("detectable_format:constrained_response", "мой ответ — нет")
    assert not ok("detectable_format:constrained_response", "Мой ответ - нет")


def test_case_checks_want_russian_text():
    assert ok("change_case:english_capital", "ЭТО ОЧЕНЬ ВАЖНЫЙ ДЕНЬ ДЛЯ НАШЕЙ КОМАНДЫ И ДЛЯ ВСЕХ БОЛЕЛЬЩИКОВ")
    assert not ok("change_case:english_capital", "Это очень важный день для нашей команды и для всех болельщиков")
    assert ok("change_case:english_lowercase", "мы любим гулять в парке. осенью там особенно красиво.")
    assert not ok("change_case:english_lowercase", "we love walking in the park, especially in the autumn.")


def test_all_capital_russian_is_lower_cased_before_language_detection():
    # The compressed fastText model reads these two as Macedonian when given them in capitals.
    assert detect_language("БЕРЕГИТЕ ВОДУ: ЗАКРЫВАЙТЕ КРАН, КОГДА ЧИСТИТЕ ЗУБЫ!") == "ru"
    assert ok("change_case:english_capital", "ПРОГРАММИРОВАНИЕ НА PYTHON ПОМОГАЕТ АВТОМАТИЗИРОВАТЬ РУТИННЫЕ ЗАДАЧИ.")


def test_missing_text_package_is_one_error_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "razdel", None)  # makes `import razdel` fail
    with pytest.raises(IfevalError, match=r"^sentence counting needs the razdel package \(pip install razdel\)$"):
        count_sentences("Текст, которого ещё не было в кэше.")


def test_capital_word_frequency_counts_cyrillic_capital_words():
    text = "ОЧЕНЬ ВАЖНО И СРОЧНО: приходите все."
    assert ok("change_case:capital_word_frequency", text, capital_frequency=4, capital_relation="at least")
    assert not ok("change_case:capital_word_frequency", text, capital_frequency=5, capital_relation="at least")


def test_response_language_is_detected_offline():
    text = "Gestern Abend sind wir lange am Fluss spazieren gegangen und haben über den Sommer gesprochen."
    assert ok("language:response_language", text, language="de")
    assert not ok("language:response_language", text, language="ru")


def test_sentence_relation_uses_the_russian_count():
    text = "Это было в 1999 г. в Москве. Потом мы уехали."  # 2 sentences
    assert ok("length_constraints:number_sentences", text, num_sentences=3, relation="less than")
    assert not ok("length_constraints:number_sentences", text, num_sentences=3, relation="at least")


def test_section_index_may_be_one_latin_letter_but_not_a_cyrillic_one_or_a_new_line():
    spl = {"section_spliter": "Раздел", "num_sections": 2}
    assert ok("detectable_format:multiple_sections", "Раздел A\nтекст\nРаздел B\nтекст", **spl)
    assert not ok("detectable_format:multiple_sections", "Раздел А\nтекст\nРаздел Б\nтекст", **spl)  # Cyrillic
    assert not ok("detectable_format:multiple_sections", "Раздел\n1 текст\nРаздел\n2 текст", **spl)


def test_nth_paragraph_first_word_counts_blank_pieces_in_the_index():
    kwargs = {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "однако"}
    assert ok("length_constraints:nth_paragraph_first_word", "Первый.\n\nОднако, второй.", **kwargs)
    # "\n\n\n\n" leaves a blank piece at index 1: two paragraphs, but the 2nd piece is blank.
    assert not ok("length_constraints:nth_paragraph_first_word", "Первый.\n\n\n\nОднако, второй.", **kwargs)


# --- ruIFEval's quirks, kept on purpose --------------------------------------------------------------------------

def test_quirk_latin_keyword_vanishes_so_existence_always_passes():
    assert ok("keywords:existence", "Никакого кода здесь нет.", keywords=["python", "java"])


def test_quirk_latin_forbidden_word_fails_any_response_with_russian_words():
    assert not ok("keywords:forbidden_words", "Ответ без этого слова.", forbidden_words=["json"])
    assert ok("keywords:forbidden_words", "Only English here 42", forbidden_words=["json"])  # lemmas: ""


def test_quirk_latin_keyword_frequency_counts_every_position():
    # lemma "" matches at each of the 4 positions of "кот" (3 letters + end).
    assert ok("keywords:frequency", "Кот.", keyword="python", frequency=4, relation="at least")
    assert not ok("keywords:frequency", "Кот.", keyword="python", frequency=5, relation="at least")


def test_quirk_splitter_with_a_latin_c_never_matches_cyrillic_text():
    text = "СЕКЦИЯ 1\nа\nСЕКЦИЯ 2\nб"
    assert not ok("detectable_format:multiple_sections", text, section_spliter="C\u0415КЦИЯ", num_sections=1)
    assert ok("detectable_format:multiple_sections", text, section_spliter="СЕКЦИЯ", num_sections=2)


def test_quirk_russian_quotes_fail_quotation_end_and_first_word_checks():
    assert not ok("startend:quotation", "«Весь ответ в кавычках»")
    assert not ok("startend:end_checker", "Скажу одно: «Удачи!»", end_phrase="Удачи!")
    assert ok("startend:end_checker", 'Скажу одно: "Удачи!"', end_phrase="Удачи!")
    assert not ok("length_constraints:nth_paragraph_first_word", "«Однако» да.", num_paragraphs=1, nth_paragraph=1,
                  first_word="однако")


def test_quirk_bold_span_counts_once_and_triple_star_span_twice():
    assert not ok("detectable_format:number_highlighted_sections", "**жирный**", num_highlights=2)
    assert ok("detectable_format:number_highlighted_sections", "***жирный курсив***", num_highlights=2)


# --- loose scoring ------------------------------------------------------------------------------------------------

def test_loose_variants_are_the_eight_ifeval_transforms_in_order():
    assert loose_variants("Вот:\n*Текст*\nПока") == (
        "Вот:\n*Текст*\nПока", "Вот:\nТекст\nПока", "*Текст*\nПока", "Вот:\n*Текст*", "*Текст*",
        "Текст\nПока", "Вот:\nТекст", "Текст")


def test_response_passing_only_after_removing_stars_is_loose_not_strict():
    s = score_response(row(("startend:end_checker", {"end_phrase": "Спасибо"})), "Ответ готов. **Спасибо**")
    assert (s["inst_strict"], s["inst_loose"], s["prompt_strict"], s["prompt_loose"]) == ([0], [1], 0, 1)


def test_response_passing_only_after_dropping_the_first_line_is_loose_not_strict():
    s = score_response(row(("startend:quotation", {})), 'Конечно! Вот ответ:\n"Москва — столица России"')
    assert (s["inst_strict"], s["inst_loose"]) == ([0], [1])


def test_each_instruction_picks_its_own_loose_variant():
    r = row(("startend:quotation", {}), ("startend:end_checker", {"end_phrase": "конец"}))
    s = score_response(r, 'Вот:\n"Текст конец"\nПодпись')
    # quotation passes with both lines dropped; the end phrase with the last line dropped (the '"' is stripped).
    assert (s["inst_strict"], s["inst_loose"], s["prompt_loose"]) == ([0, 0], [1, 1], 1)


def test_blank_response_follows_nothing_even_when_the_check_would_pass():
    s = score_response(row(("punctuation:no_comma", {})), " \n ")
    assert (s["inst_strict"], s["inst_loose"]) == ([0], [0])


def test_score_response_reports_id_ids_and_counts():
    r = row(("punctuation:no_comma", {}), ("detectable_format:title", {}), key=42)
    assert score_response(r, "<<Заголовок>>, текст с запятой") == {
        "id": "42", "instruction_ids": ["punctuation:no_comma", "detectable_format:title"], "n_instructions": 2,
        "inst_strict": [0, 1], "inst_loose": [0, 1], "prompt_strict": 0, "prompt_loose": 0}


# --- the four scores ------------------------------------------------------------------------------------------------

def tiny_scored():
    nc, ti, qu = ("punctuation:no_comma", {}), ("detectable_format:title", {}), ("startend:quotation", {})
    return [
        score_response(row(nc, qu, key=1), 'Ответ:\n"Без запятых"'),  # strict [1, 0], loose [1, 1]
        score_response(row(ti, key=2), "<<Заголовок>>"),  # strict [1], loose [1]
        score_response(row(nc, ti, qu, key=3), "Да, <<>>\n\"x\""),  # strict [0, 0, 0], loose [1, 0, 1]
    ]


def test_four_scores_on_a_hand_computed_set():
    scores = ifeval_scores(tiny_scored())
    assert scores == pytest.approx({"prompt_level_strict": 1 / 3, "prompt_level_loose": 2 / 3,
                                    "inst_level_strict": 2 / 6, "inst_level_loose": 5 / 6})


def test_instruction_level_is_a_micro_average_not_a_mean_of_prompts():
    # The mean of per-prompt shares would be (1/2 + 1 + 0) / 3 = 1/2; the micro-average is 2 of 6.
    assert ifeval_scores(tiny_scored())["inst_level_strict"] == pytest.approx(1 / 3)


def test_breakdown_gives_per_id_counts_and_shares():
    assert instruction_breakdown(tiny_scored()) == {
        "detectable_format:title": {"n": 2, "strict": 0.5, "loose": 0.5},
        "punctuation:no_comma": {"n": 2, "strict": 0.5, "loose": 1.0},
        "startend:quotation": {"n": 2, "strict": 0.0, "loose": 1.0},
    }


# --- bad input ------------------------------------------------------------------------------------------------------

BAD = [
    (row(("keywords:existance", {"keywords": ["кот"]})), "unknown instruction id 'keywords:existance' "
     "(did you mean 'keywords:existence'?)"),
    (row(("no_comma", {})), "unknown instruction id 'no_comma' (did you mean 'punctuation:no_comma'?)"),
    (row(("detectable_format:rephrase", {})), "is not registered in IFEval or ruIFEval"),
    (row(("keywords:existence", {"keywords": ["кот"], "frequency": 2})),
     "unexpected kwargs ['frequency'] for keywords:existence (it takes: keywords)"),
    (row(("keywords:frequency", {"keyword": "кот", "frequency": 2})),
     "missing kwargs ['relation'] for keywords:frequency (it takes: keyword, frequency, relation)"),
    (row(("length_constraints:number_words", {"num_words": "100", "relation": "at least"})),
     "num_words must be a non-negative integer, got '100'"),
    (row(("length_constraints:number_words", {"num_words": True, "relation": "at least"})),
     "num_words must be a non-negative integer, got True"),
    (row(("length_constraints:number_words", {"num_words": 10, "relation": "more than"})),
     "relation must be 'less than' or 'at least', got 'more than'"),
    (row(("keywords:letter_frequency", {"letter": "ab", "let_frequency": 2, "let_relation": "at least"})),
     "letter must be exactly one character, got 'ab'"),
    (row(("length_constraints:nth_paragraph_first_word",
          {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "и"})),
     "nth_paragraph must be between 1 and num_paragraphs (2), got 3"),
    (row(("detectable_content:postscript", {"postscript_marker": "P.S. ("})),
     "postscript_marker 'P.S. (' is not a valid regular expression"),
    (row(("keywords:existence", {"keywords": ["кот\\"]})), "keywords must not contain a backslash"),
    (row(("language:response_language", {"language": "Russian"})), "language must be an ISO 639-1 code"),
    ({**row(("punctuation:no_comma", {})), "kwargs": [{}, {}]}, "1 instruction ids but 2 kwargs entries"),
    ({**row(("punctuation:no_comma", {})), "key": "7"}, "key must be an integer, got '7'"),
    ({"key": 7, "prompt": "п"}, "row lacks ['instruction_id_list', 'kwargs']"),
    (["not", "a", "row"], "a row must be a JSON object, got list"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_row_is_one_error_line_naming_the_row(bad, message):
    with pytest.raises(IfevalError) as info:
        check_row(bad, "rows.jsonl line 3")
    text = str(info.value)
    assert text.startswith("rows.jsonl line 3") and message in text and "\n" not in text


def test_bad_instruction_error_names_key_and_instruction_position():
    with pytest.raises(IfevalError, match=r"^rows\.jsonl line 3 \(key 7\), instruction 2 \(no_comma\): "):
        check_row(row(("detectable_format:title", {}), ("no_comma", {})), "rows.jsonl line 3")


def test_null_kwargs_are_dropped_and_integral_floats_become_ints():
    hub_style = {"num_words": 300.0, "relation": "at least", "keywords": None, "letter": None}
    checked = check_row(row(("length_constraints:number_words", hub_style)), "hub row 0")
    assert checked["kwargs"] == [{"num_words": 300, "relation": "at least"}]
    assert type(checked["kwargs"][0]["num_words"]) is int


def test_score_response_rejects_a_non_string_response_naming_the_row():
    with pytest.raises(IfevalError, match=r"^ruIFEval row 7 \(key 7\): response must be a string, got NoneType$"):
        score_response(row(("punctuation:no_comma", {})), None)


def test_aggregating_nothing_or_foreign_items_is_an_error():
    with pytest.raises(IfevalError, match="no scored items"):
        ifeval_scores([])
    with pytest.raises(IfevalError, match=r"scored item 0 \(id 'x'\): not a score_response result"):
        ifeval_scores([{"id": "x", "prompt_strict": 1}])
