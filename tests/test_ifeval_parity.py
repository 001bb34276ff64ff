"""Parity of rutune's ruIFEval checkers with lm-eval 0.4.13's IFEval checkers, and the cases where they must differ.

Part 1 runs 127 (instruction, kwargs, response) cases on the 21 ids where ruIFEval's Russian rules and IFEval's
English rules coincide for the response given, and asserts that rutune, lm-eval and a hand-derived expectation all
agree; whole rows are also compared through lm-eval's `process_results` (strict and loose). Part 2 pins the
outcomes where ruIFEval's Russian rules make rutune and lm-eval disagree, with rutune's expected Russian outcome
derived by hand (and lm-eval's where it is deterministic).

Offline setup (no NLTK data can be downloaded here, and no PyPI package ships NLTK's `punkt_tab`):
- lm-eval's `instructions_util` calls `nltk.download("punkt_tab")` at import time when the data is missing; the
  fixture replaces `nltk.download` with a stub only while importing it.
- lm-eval's `capital_word_frequency` calls `nltk.word_tokenize`, which first splits sentences with the English
  Punkt model. The fixture gives NLTK an *untrained* `PunktSentenceTokenizer` instead (no abbreviation list, so it
  splits after every ". "), which splits at least as often as the English model. rutune tokenizes the whole text
  without a sentence split; agreement on the capital-word cases below backs rutune's claim that the split never
  changes how many tokens are all-capital.
- `length_constraints:number_sentences` needs a real Punkt model and is not compared here: ruIFEval counts with the
  Russian model, lm-eval with the English one (part 2 and test_ifeval_checkers pin rutune's Russian counts).
- `language:response_language`: lm-eval uses langdetect, seeded here (`DetectorFactory.seed = 0`) because it is
  random otherwise; rutune uses fastText lid.176. They are compared on long, unambiguous texts only.
"""

from __future__ import annotations

import pytest

from rutune.eval.ifeval import check_instruction, score_response

pytest.importorskip("langdetect")
pytest.importorskip("immutabledict")
nltk = pytest.importorskip("nltk")
pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lmeh():
    """lm-eval's IFEval modules, imported offline, with a stand-in Punkt sentence splitter (see module docstring)."""
    import langdetect
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    with pytest.MonkeyPatch.context() as mp:
        downloads = []
        mp.setattr(nltk, "download", lambda *a, **k: downloads.append(a) or False)
        from lm_eval.tasks.ifeval import instructions_registry, utils
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": PunktSentenceTokenizer())
        mp.setattr(langdetect.DetectorFactory, "seed", 0)
        yield instructions_registry.INSTRUCTION_DICT, utils


def lm_eval_check(registry, instruction_id: str, kwargs: dict, response: str) -> bool:
    """lm-eval's strict verdict for one instruction, built the way its utils.py builds it."""
    checker = registry[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v})
    return bool(response.strip() and checker.check_following(response))


RU = "Вчера вечером мы долго гуляли по набережной и обсуждали планы на лето, а потом пили чай у друзей."
DE = "Gestern Abend sind wir lange am Fluss spazieren gegangen und haben über unsere Pläne für den Sommer gesprochen."
FR = "Hier soir, nous nous sommes promenés longtemps au bord de la rivière et nous avons parlé de nos projets."
EN = "Yesterday evening we walked along the river for a long time and talked about our plans for the summer."
KO = "어제 저녁에 우리는 강가를 오랫동안 산책하면서 여름 계획에 대해 이야기를 나누었습니다."

W, S, P, NTH = ("length_constraints:number_words", "length_constraints:number_paragraphs",
                "detectable_content:number_placeholders", "length_constraints:nth_paragraph_first_word")
PS, BUL, HL, SEC = ("detectable_content:postscript", "detectable_format:number_bullet_lists",
                    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections")
JS, TI, TWO, REP = ("detectable_format:json_format", "detectable_format:title", "combination:two_responses",
                    "combination:repeat_prompt")
END, QU, CAP, LET = ("startend:end_checker", "startend:quotation", "change_case:capital_word_frequency",
                     "keywords:letter_frequency")
KE, KF, KB, LANG, NC = ("keywords:existence", "keywords:frequency", "keywords:forbidden_words",
                        "language:response_language", "punctuation:no_comma")

# (instruction id, kwargs, response, expected verdict under both rule sets)
AGREE = [
    (NC, {}, "Привет мир", True),
    (NC, {}, "Привет, мир", False),
    (NC, {}, "Один，два", True),  # a full-width comma is not ","
    (NC, {}, "Запятых нет совсем.", True),
    (NC, {}, "a,b", False),
    (NC, {}, "Список: яблоки; груши", True),
    (W, {"num_words": 3, "relation": "at least"}, "Мы идём домой", True),
    (W, {"num_words": 3, "relation": "less than"}, "Мы идём домой", False),
    (W, {"num_words": 4, "relation": "less than"}, "Кот-обормот спит.", True),  # 3 words
    (W, {"num_words": 6, "relation": "at least"}, "В 2024 году было 366 дней", True),  # digits are words
    (W, {"num_words": 1, "relation": "at least"}, "— !", False),
    (W, {"num_words": 1, "relation": "at least"}, "ёжик", True),
    (S, {"num_paragraphs": 3}, "Первый\n***\nВторой\n***\nТретий", True),
    (S, {"num_paragraphs": 3}, "Первый *** Второй", False),
    (S, {"num_paragraphs": 2}, "***\nПервый\n***\nВторой\n***", True),  # blank ends ignored
    (S, {"num_paragraphs": 2}, "Первый\n***\n\n***\nВторой", False),  # blank inner piece
    (S, {"num_paragraphs": 1}, "Один абзац без разделителей", True),
    (S, {"num_paragraphs": 2}, "Абзац ** не разделитель\n***\nВторой", True),
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "однако"}, "Первый абзац.\n\nОднако второй.", True),
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "однако"}, 'Первый.\n\n"Однако, второй"', True),
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "первый"}, "Первый.\n\nВторой.\n\nТретий.", False),
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "однако"}, "Первый.\n\n\n\nОднако.", False),
    (NTH, {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "кот"}, "Кот-обормот гуляет.", False),
    (NTH, {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "кот"}, "Кот. Спит.", True),
    (NTH, {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "однако"}, "Первый.\n\n«Однако» второй.", False),
    (P, {"num_placeholders": 2}, "Адрес: [адрес], телефон: [телефон]", True),
    (P, {"num_placeholders": 3}, "Адрес: [адрес], телефон: [телефон]", False),
    (P, {"num_placeholders": 1}, "[]", True),
    (P, {"num_placeholders": 1}, "Нет заполнителей", False),
    (P, {"num_placeholders": 2}, "[а [б] в]", False),  # non-greedy: one match
    (P, {"num_placeholders": 1}, "[начало\nконец]", False),
    (PS, {"postscript_marker": "P.S."}, "Текст.\nP.S. Спасибо", True),
    (PS, {"postscript_marker": "P.S."}, "Текст.\np.s. спасибо", True),
    (PS, {"postscript_marker": "P.S."}, "Текст.\nPS спасибо", False),
    (PS, {"postscript_marker": "P.P.S"}, "Текст.\nP. P. S. Ещё", True),
    (PS, {"postscript_marker": "P.P.S"}, "Текст.\nP.S. Ещё", False),
    (PS, {"postscript_marker": "P. S."}, "Ответ.\nP. S. Пока", True),
    (PS, {"postscript_marker": "P.S."}, "Прочитай P.S. в конце", True),  # not anchored to a line start
    (PS, {"postscript_marker": "Примечание:"}, "Текст\nПРИМЕЧАНИЕ: важно", True),
    (BUL, {"num_bullets": 3}, "* один\n* два\n* три", True),
    (BUL, {"num_bullets": 3}, "* один\n* два", False),
    (BUL, {"num_bullets": 2}, "- один\n- два", True),
    (BUL, {"num_bullets": 2}, "1. один\n2. два", False),
    (BUL, {"num_bullets": 1}, "**Жирный**\n* пункт", True),
    (BUL, {"num_bullets": 2}, "* один\n---\n", True),  # a rule line counts as a "-" bullet
    (BUL, {"num_bullets": 1}, "Вступление\n  * вложенный пункт", True),
    (HL, {"num_highlights": 2}, "*раз* и *два*", True),
    (HL, {"num_highlights": 2}, "**раз** и текст", False),
    (HL, {"num_highlights": 1}, "* *", False),
    (HL, {"num_highlights": 2}, "***три***", True),
    (HL, {"num_highlights": 1}, "*много\nстрок*", False),
    (HL, {"num_highlights": 3}, "*a* *b* *c*", True),
    (SEC, {"section_spliter": "Раздел", "num_sections": 2}, "Раздел 1\nтекст\nРаздел 2\nтекст", True),
    (SEC, {"section_spliter": "Раздел", "num_sections": 3}, "Раздел 1\nтекст\nРаздел 2\nтекст", False),
    (SEC, {"section_spliter": "РАЗДЕЛ", "num_sections": 1}, "Раздел 1\nтекст\nРаздел 2", False),
    (SEC, {"section_spliter": "Раздел", "num_sections": 1}, "Раздел 10 и всё", True),
    (SEC, {"section_spliter": "Раздел", "num_sections": 2}, "Раздел1 а Раздел2 б", True),
    (SEC, {"section_spliter": "SECTION", "num_sections": 2}, "SECTION 1\nA\nSECTION 2\nB", True),
    (SEC, {"section_spliter": "Раздел", "num_sections": 1}, "Раздел первый", False),
    (JS, {}, '{"a": 1}', True),
    (JS, {}, '```json\n{"город": "Казань"}\n```', True),
    (JS, {}, "```\n[1, 2]\n```", True),
    (JS, {}, 'Вот JSON: {"a": 1}', False),
    (JS, {}, "{'a': 1}", False),
    (JS, {}, "  42  ", True),
    (JS, {}, "```JSON\n{}\n```", True),
    (TI, {}, "<<Весна>>\nтекст", True),
    (TI, {}, "<< >>", False),
    (TI, {}, "<<многострочный\nзаголовок>>", False),
    (TI, {}, "Без заголовка", False),
    (TI, {}, "<<<Тройные>>>", True),
    (TI, {}, "<<>>", False),
    (TWO, {}, "Ответ один\n******\nОтвет два", True),
    (TWO, {}, "Ответ\n******\nОтвет", False),
    (TWO, {}, "Один\n******\n\n******\nДва", False),
    (TWO, {}, "******\nОдин\n******\nДва\n******", True),
    (TWO, {}, "Один\n*****\nДва", False),
    (TWO, {}, "А\n******\nБ\n******\nВ", False),
    (REP, {"prompt_to_repeat": "Напиши историю."}, "Напиши историю. Жил-был кот.", True),
    (REP, {"prompt_to_repeat": "Напиши историю."}, "  напиши ИСТОРИЮ. Жил-был кот.", True),
    (REP, {"prompt_to_repeat": "Напиши историю."}, "Конечно! Напиши историю.", False),
    (REP, {"prompt_to_repeat": "Напиши историю."}, "Напиши историю", False),
    (REP, {"prompt_to_repeat": "  Опиши лес.  "}, "Опиши лес. Лес густой.", True),
    (END, {"end_phrase": "Удачи!"}, "Всё получится. Удачи!", True),
    (END, {"end_phrase": "Удачи!"}, "Всё получится. удачи!  ", True),
    (END, {"end_phrase": "Удачи!"}, '"Всё получится. Удачи!"', True),
    (END, {"end_phrase": "Удачи!"}, "Удачи! И пока.", False),
    (END, {"end_phrase": "Удачи!"}, "«Удачи!»", False),
    (END, {"end_phrase": "Есть вопросы?"}, "Текст.\nЕсть вопросы?\n", True),
    (QU, {}, '"Текст"', True),
    (QU, {}, "«Текст»", False),
    (QU, {}, '  "Текст"  ', True),
    (QU, {}, '"', False),
    (QU, {}, '"Текст', False),
    (QU, {}, '""', True),
    (CAP, {"capital_frequency": 2, "capital_relation": "at least"}, "ОЧЕНЬ ВАЖНО: приходите.", True),
    (CAP, {"capital_frequency": 3, "capital_relation": "at least"}, "ОЧЕНЬ ВАЖНО: приходите.", False),
    (CAP, {"capital_frequency": 2, "capital_relation": "less than"}, "Это ВАЖНО. Очень.", True),
    (CAP, {"capital_frequency": 1, "capital_relation": "at least"}, "Ну Т.Е. вот", True),
    (CAP, {"capital_frequency": 2, "capital_relation": "at least"}, "НЕ-А, НЕТ.", True),
    (CAP, {"capital_frequency": 4, "capital_relation": "at least"}, "DON'T STOP. ИДИ.", True),  # DO + N'T
    (CAP, {"capital_frequency": 1, "capital_relation": "less than"}, "123 456", True),
    (CAP, {"capital_frequency": 3, "capital_relation": "at least"}, "США. РФ. ЕС.", True),
    (CAP, {"capital_frequency": 3, "capital_relation": "at least"}, '"ВНИМАНИЕ," сказал он. "ВСЕ СЮДА."', True),
    (LET, {"letter": "a", "let_frequency": 3, "let_relation": "at least"}, "banana", True),
    (LET, {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "banana", False),
    (LET, {"letter": "A", "let_frequency": 3, "let_relation": "at least"}, "Aardvark", True),
    (LET, {"letter": "z", "let_frequency": 1, "let_relation": "less than"}, "Без латинских букв", True),
    (LET, {"letter": "e", "let_frequency": 1, "let_relation": "at least"}, "ёлка е", False),  # Cyrillic е
    (LET, {"letter": "n", "let_frequency": 3, "let_relation": "at least"}, "New NaN", True),
    (KE, {"keywords": ["кот"]}, "Мой кот спит.", True),
    (KE, {"keywords": ["собака", "кот"]}, "Кот и собака дружат.", True),
    (KE, {"keywords": ["кот"]}, "Пёс спит.", False),
    (KE, {"keywords": ["дом"]}, "Домик в деревне", True),  # substring search on both sides
    (KE, {"keywords": ["лес", "кот"]}, "Лес шумит.", False),
    (KF, {"keyword": "кот", "frequency": 2, "relation": "at least"}, "кот и кот", True),
    (KF, {"keyword": "кот", "frequency": 2, "relation": "less than"}, "кот и кот", False),
    (KF, {"keyword": "дом", "frequency": 1, "relation": "at least"}, "Дом стоит.", True),
    (KB, {"forbidden_words": ["кот"]}, "Пёс спит.", True),
    (KB, {"forbidden_words": ["кот"]}, "Кот спит.", False),
    (KB, {"forbidden_words": ["кот"]}, "Котлета вкусная.", True),
    (LANG, {"language": "de"}, DE, True),
    (LANG, {"language": "fr"}, FR, True),
    (LANG, {"language": "ru"}, RU, True),
    (LANG, {"language": "de"}, RU, False),
    (LANG, {"language": "en"}, EN, True),
    (LANG, {"language": "ko"}, KO, True),
]


def test_parity_set_is_large_and_covers_21_ids_with_both_verdicts():
    assert len(AGREE) == 127
    ids = {case[0] for case in AGREE}
    assert len(ids) == 21
    for iid in ids - {LANG}:  # every id but language has both a passing and a failing case
        assert {case[3] for case in AGREE if case[0] == iid} == {True, False}, iid


@pytest.mark.parametrize("instruction_id, kwargs, response, expected", AGREE,
                         ids=[f"{c[0].split(':')[1]}-{i}" for i, c in enumerate(AGREE)])
def test_rutune_lm_eval_and_hand_expectation_agree(lmeh, instruction_id, kwargs, response, expected):
    registry, _ = lmeh
    assert lm_eval_check(registry, instruction_id, kwargs, response) is expected
    assert check_instruction(instruction_id, kwargs, response) is expected


# Whole rows through lm-eval's process_results: strict and loose, prompt and instruction level.
ROWS = [
    ({"key": 1, "prompt": "п", "instruction_id_list": [NC, TI], "kwargs": [{}, {}]},
     "Вот ответ:\n<<Заголовок>>\nТекст без запятых"),
    ({"key": 2, "prompt": "п", "instruction_id_list": [QU], "kwargs": [{}]},
     'Конечно, вот:\n"Цитата"'),  # loose: dropping the first line makes it quoted
    ({"key": 3, "prompt": "п", "instruction_id_list": [JS, NC], "kwargs": [{}, {}]},
     'Держите JSON:\n{"a": 1}\nГотово, удачи'),  # loose: JSON with both lines dropped, no comma without the last
    ({"key": 4, "prompt": "п", "instruction_id_list": [HL], "kwargs": [{"num_highlights": 1}]},
     "Просто текст"),
    ({"key": 5, "prompt": "п", "instruction_id_list": [END, W],
      "kwargs": [{"end_phrase": "Конец."}, {"num_words": 3, "relation": "at least"}]},
     "Раз два три. Конец.\n**Подпись**"),  # loose: last line dropped
    ({"key": 6, "prompt": "п", "instruction_id_list": [BUL, END],
      "kwargs": [{"num_bullets": 2}, {"end_phrase": "Спасибо за внимание"}]},
     "**Итог**\n* один\n* два *Спасибо за внимание*"),  # loose: the end phrase once "*" is removed
    ({"key": 7, "prompt": "п", "instruction_id_list": [TWO, PS],
      "kwargs": [{}, {"postscript_marker": "P.S."}]},
     "Первый\n******\nВторой\nP.S. всё"),
    ({"key": 8, "prompt": "п", "instruction_id_list": [NC], "kwargs": [{}]}, "   "),  # blank: fails both ways
]


@pytest.mark.parametrize("row, response", ROWS, ids=[str(r[0]["key"]) for r in ROWS])
def test_row_scores_match_lm_eval_process_results(lmeh, row, response):
    _, utils = lmeh
    theirs = utils.process_results(row, [response])
    ours = score_response(row, response)
    assert ours["prompt_strict"] == int(theirs["prompt_level_strict_acc"])
    assert ours["prompt_loose"] == int(theirs["prompt_level_loose_acc"])
    assert ours["inst_strict"] == [int(x) for x in theirs["inst_level_strict_acc"]]
    assert ours["inst_loose"] == [int(x) for x in theirs["inst_level_loose_acc"]]


def test_row_parity_set_exercises_loose_rescues(lmeh):
    rescued = [score_response(r, resp) for r, resp in ROWS]
    assert sum(s["prompt_loose"] - s["prompt_strict"] for s in rescued) == 4  # rows 2, 3, 5 and 6


# Part 2 — where ruIFEval's Russian rules make the verdicts differ. (id, kwargs, response, rutune, lm-eval or None
# when lm-eval is random.)
DIFFER = [
    # Lemmas: inflected forms match in ruIFEval only.
    (KE, {"keywords": ["кошка"]}, "Я видел двух кошек.", True, False),
    (KE, {"keywords": ["бежать"]}, "Они бежали быстро.", True, False),
    (KF, {"keyword": "звезда", "frequency": 3, "relation": "at least"}, "Звезды, звёзд, звездой.", True, False),
    (KB, {"forbidden_words": ["солнце"]}, "Грелись на солнышке и солнцем.", False, True),
    # Constrained response: Russian options.
    ("detectable_format:constrained_response", {}, "Мой ответ — да", True, False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", False, True),
    # Case checks want Russian, lm-eval wants English.
    ("change_case:english_capital", {}, "ВСЕ ДОЛЖНЫ ПРИЙТИ НА СОБРАНИЕ В ПЯТНИЦУ К ДЕСЯТИ УТРА.", True, False),
    ("change_case:english_capital", {}, "EVERYONE MUST COME TO THE MEETING ON FRIDAY AT TEN IN THE MORNING.",
     False, True),
    ("change_case:english_lowercase", {}, "кошка спала на подоконнике, а за окном шёл мелкий дождь.", True, False),
    # Letter frequency: ruIFEval counts the Cyrillic letter; lm-eval swaps it for a random Latin letter.
    (LET, {"letter": "к", "let_frequency": 3, "let_relation": "at least"}, "Кошка кормит котят.", True, None),
    # Section marker with a Latin-letter index: ruIFEval only.
    (SEC, {"section_spliter": "Раздел", "num_sections": 2}, "Раздел A\nтекст\nРаздел B\nтекст", True, False),
]


@pytest.mark.parametrize("instruction_id, kwargs, response, ours, theirs", DIFFER,
                         ids=[f"{c[0].split(':')[1]}-{i}" for i, c in enumerate(DIFFER)])
def test_russian_rules_give_the_ruifeval_verdict(lmeh, instruction_id, kwargs, response, ours, theirs):
    registry, _ = lmeh
    assert check_instruction(instruction_id, kwargs, response) is ours
    if theirs is not None:
        assert lm_eval_check(registry, instruction_id, kwargs, response) is theirs
