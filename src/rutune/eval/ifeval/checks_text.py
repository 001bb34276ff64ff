"""Checkers for what the words of a response are: keywords, letters, language, length, letter case, commas.

Each checker is a pure function `check_*(response, **kwargs) -> bool` with ruIFEval's behaviour: IFEval's rule
(Google Research `instruction_following_eval`, mirrored by lm-eval) plus ruIFEval's Russian changes, which are
called out per function. Kwargs are assumed already validated (`registry.check_row`); the functions do not
re-check types. Regex-valued kwargs (keywords) are used as regular expressions, unescaped, as in IFEval.
"""

from __future__ import annotations

import re

from rutune.eval.ifeval.russian import count_sentences, count_words, detect_language, lemmatize, word_tokens

LESS_THAN = "less than"
AT_LEAST = "at least"
RELATIONS = (LESS_THAN, AT_LEAST)


def compare(count: int, relation: str, threshold: int) -> bool:
    """IFEval's two relations: "less than" is strict `<`, "at least" is `>=`."""
    return count < threshold if relation == LESS_THAN else count >= threshold


def check_keywords_exist(response: str, *, keywords: list[str]) -> bool:
    """keywords:existence — every keyword's lemma is found (case-insensitive regex search) in the response's lemmas.

    ruIFEval: both sides go through `lemmatize`, so "котами" satisfies "кот". A keyword made only of Latin
    letters or digits lemmatizes to "" and is then trivially found.
    """
    text = lemmatize(response)
    return all(re.search(lemmatize(k), text, flags=re.IGNORECASE) for k in keywords)


def check_keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """keywords:frequency — number of (non-overlapping, case-insensitive) matches of the keyword's lemma vs relation.

    ruIFEval lemmatizes both sides. A Latin keyword's lemma is "", which matches at every position of the
    lemmatized response (len + 1 matches).
    """
    count = len(re.findall(lemmatize(keyword.strip()), lemmatize(response), flags=re.IGNORECASE))
    return compare(count, relation, frequency)


def check_no_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """keywords:forbidden_words — no forbidden word's lemma occurs between word boundaries in the response's lemmas.

    ruIFEval quirk: a Latin forbidden word lemmatizes to "", the pattern becomes `\\b\\b`, which matches any
    response that keeps a word character after lemmatizing — so such an instruction (almost) always fails.
    """
    text = lemmatize(response)
    return not any(re.search(r"\b" + lemmatize(w) + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words)


def check_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """keywords:letter_frequency — occurrences of the (lower-cased) character in the lower-cased response.

    Any single character counts, Cyrillic included (lm-eval swaps a non a–z letter for a random Latin one).
    """
    target = letter.strip().lower()
    count = sum(1 for ch in response.lower() if ch == target)
    return compare(count, let_relation, let_frequency)


def check_response_language(response: str, *, language: str) -> bool:
    """language:response_language — the detected language of the whole response is `language` (ISO 639-1)."""
    return detect_language(response) == language


def check_sentence_count(response: str, *, num_sentences: int, relation: str) -> bool:
    """length_constraints:number_sentences — Russian sentence count vs relation (ruIFEval: Russian Punkt)."""
    return compare(count_sentences(response), relation, num_sentences)


def check_word_count(response: str, *, num_words: int, relation: str) -> bool:
    """length_constraints:number_words — number of `\\w+` runs vs relation."""
    return compare(count_words(response), relation, num_words)


def check_capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """change_case:capital_word_frequency — number of word tokens that are all-capital (`str.isupper`) vs relation.

    `isupper` is Unicode-aware, so "МОСКВА" counts; a hyphenated word is one token; "НЕ-А" too.
    """
    count = sum(1 for token in word_tokens(response) if token.isupper())
    return compare(count, capital_relation, capital_frequency)


def check_all_capitals_ru(response: str) -> bool:
    """change_case:english_capital — the response is all upper case and detected as Russian.

    The id keeps IFEval's name; ruIFEval changed the target language from "en" to "ru".
    """
    return response.isupper() and detect_language(response) == "ru"


def check_all_lowercase_ru(response: str) -> bool:
    """change_case:english_lowercase — the response is all lower case and detected as Russian (ruIFEval: "ru")."""
    return response.islower() and detect_language(response) == "ru"


def check_no_comma(response: str) -> bool:
    """punctuation:no_comma — no ASCII comma anywhere (other commas such as "，" are allowed, as in IFEval)."""
    return "," not in response
