"""The 25 ruIFEval instruction ids, the kwargs each one takes, and the validation of a row against them.

A row is ruIFEval's JSON object: `key` (int), `prompt` (str), `instruction_id_list` (list of ids) and `kwargs`
(a list of the same length, one dict per instruction holding only the keys that apply). Hub copies of IFEval-style
data carry every key of every instruction with null values; nulls are treated as absent, as lm-eval does.
`check_row` turns a row into a validated copy or raises one `IfevalError` line naming the row and the problem.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import rutune.eval.ifeval.checks_format as fmt
import rutune.eval.ifeval.checks_text as txt
from rutune.eval.ifeval.errors import IfevalError

# Kinds of kwarg values: "count" non-negative int, "relation" one of checks_text.RELATIONS, "text" non-empty str,
# "keyword" non-empty str without a backslash (it becomes a regular expression after lemmatizing, which keeps
# backslashes and blanks every other ASCII regex character), "keywords" a non-empty list of those, "letter" one
# character, "language" an ISO 639 code, "pattern" a non-empty str that becomes part of a regular expression.
_COUNT, _RELATION, _TEXT, _KEYWORD, _KEYWORDS, _LETTER, _LANGUAGE, _PATTERN = (
    "count", "relation", "text", "keyword", "keywords", "letter", "language", "pattern")


@dataclass(frozen=True)
class Instruction:
    """One instruction id: its checker and the kwargs it takes (name → kind), all of them required."""

    checker: Callable[..., bool]
    params: Mapping[str, str]


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(txt.check_keywords_exist, {"keywords": _KEYWORDS}),
    "keywords:frequency": Instruction(
        txt.check_keyword_frequency, {"keyword": _KEYWORD, "frequency": _COUNT, "relation": _RELATION}),
    "keywords:forbidden_words": Instruction(txt.check_no_forbidden_words, {"forbidden_words": _KEYWORDS}),
    "keywords:letter_frequency": Instruction(
        txt.check_letter_frequency, {"letter": _LETTER, "let_frequency": _COUNT, "let_relation": _RELATION}),
    "language:response_language": Instruction(txt.check_response_language, {"language": _LANGUAGE}),
    "length_constraints:number_sentences": Instruction(
        txt.check_sentence_count, {"num_sentences": _COUNT, "relation": _RELATION}),
    "length_constraints:number_paragraphs": Instruction(fmt.check_paragraph_count, {"num_paragraphs": _COUNT}),
    "length_constraints:number_words": Instruction(
        txt.check_word_count, {"num_words": _COUNT, "relation": _RELATION}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        fmt.check_nth_paragraph_first_word, {"num_paragraphs": _COUNT, "nth_paragraph": _COUNT, "first_word": _TEXT}),
    "detectable_content:number_placeholders": Instruction(fmt.check_placeholders, {"num_placeholders": _COUNT}),
    "detectable_content:postscript": Instruction(fmt.check_postscript, {"postscript_marker": _PATTERN}),
    "detectable_format:number_bullet_lists": Instruction(fmt.check_bullet_count, {"num_bullets": _COUNT}),
    "detectable_format:constrained_response": Instruction(fmt.check_constrained_response, {}),
    "detectable_format:number_highlighted_sections": Instruction(fmt.check_highlights, {"num_highlights": _COUNT}),
    "detectable_format:multiple_sections": Instruction(
        fmt.check_sections, {"section_spliter": _PATTERN, "num_sections": _COUNT}),
    "detectable_format:json_format": Instruction(fmt.check_json, {}),
    "detectable_format:title": Instruction(fmt.check_title, {}),
    "combination:two_responses": Instruction(fmt.check_two_responses, {}),
    "combination:repeat_prompt": Instruction(fmt.check_repeats_prompt, {"prompt_to_repeat": _TEXT}),
    "startend:end_checker": Instruction(fmt.check_ending, {"end_phrase": _TEXT}),
    "startend:quotation": Instruction(fmt.check_quotation, {}),
    "change_case:capital_word_frequency": Instruction(
        txt.check_capital_word_frequency, {"capital_frequency": _COUNT, "capital_relation": _RELATION}),
    "change_case:english_capital": Instruction(txt.check_all_capitals_ru, {}),
    "change_case:english_lowercase": Instruction(txt.check_all_lowercase_ru, {}),
    "punctuation:no_comma": Instruction(txt.check_no_comma, {}),
}
INSTRUCTION_IDS = tuple(INSTRUCTIONS)
# Present upstream only as commented-out TODOs (IFEval, ruIFEval, lm-eval); never in any data.
_UNREGISTERED = ("keywords:key_sentences", "detectable_content:rephrase_paragraph", "detectable_format:rephrase",
                 "multi-turn:constrained_start")
_ROW_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


def suggest_id(name: str) -> str:
    """A " (did you mean 'x'?)" hint for an unknown id, or "" when nothing is close."""
    close = difflib.get_close_matches(name, INSTRUCTION_IDS, n=1, cutoff=0.6)
    if not close:
        tail = name.rsplit(":", 1)[-1]
        close = [i for i in INSTRUCTION_IDS if i.rsplit(":", 1)[-1] == tail]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _count(value, name: str, label: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IfevalError(f"{label}: {name} must be a non-negative integer, got {value!r}")
    return value


def _value(kind: str, value, name: str, label: str):
    """`value` checked (and, for counts, converted) for its kind; an IfevalError otherwise."""
    if kind == _COUNT:
        return _count(value, name, label)
    if kind == _RELATION:
        if value not in txt.RELATIONS:
            raise IfevalError(f"{label}: {name} must be 'less than' or 'at least', got {value!r}")
        return value
    if kind == _KEYWORDS:
        if not isinstance(value, (list, tuple)) or not value:
            raise IfevalError(f"{label}: {name} must be a non-empty list of strings, got {value!r}")
        return [_value(_KEYWORD, w, name, label) for w in value]
    if not isinstance(value, str) or not value.strip():
        raise IfevalError(f"{label}: {name} must be a non-empty string, got {value!r}")
    if kind == _KEYWORD and "\\" in value:
        raise IfevalError(f"{label}: {name} must not contain a backslash, got {value!r}")
    if kind == _LETTER and len(value) != 1:
        raise IfevalError(f"{label}: {name} must be exactly one character, got {value!r}")
    if kind == _LANGUAGE and not _LANGUAGE_CODE.fullmatch(value):
        raise IfevalError(f"{label}: {name} must be an ISO 639-1 code such as 'ru' or 'de', got {value!r}")
    return value


def _check_patterns(iid: str, kwargs: dict, label: str) -> None:
    """Reject markers and splitters that do not form a valid regular expression in their checker."""
    if iid == "detectable_content:postscript":
        name, pattern = "postscript_marker", r"\s*" + kwargs["postscript_marker"].strip().lower() + r".*$"
    elif iid == "detectable_format:multiple_sections":
        name, pattern = "section_spliter", r" ?" + kwargs["section_spliter"].strip() + r" ?(?:[0-9]|[a-zA-Z])"
    else:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise IfevalError(f"{label}: {name} {kwargs[name]!r} is not a valid regular expression ({e})") from None


def check_kwargs(instruction_id: str, kwargs, label: str) -> dict:
    """A validated copy of one instruction's kwargs (nulls dropped, counts as int); an IfevalError otherwise."""
    spec = INSTRUCTIONS.get(instruction_id) if isinstance(instruction_id, str) else None
    if spec is None:
        if instruction_id in _UNREGISTERED:
            raise IfevalError(f"{label}: instruction id {instruction_id!r} is not registered in IFEval or ruIFEval")
        raise IfevalError(f"{label}: unknown instruction id {instruction_id!r}{suggest_id(str(instruction_id))}")
    if not isinstance(kwargs, Mapping):
        raise IfevalError(f"{label}: kwargs must be an object, got {type(kwargs).__name__}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    takes = ", ".join(spec.params) or "no kwargs"
    unknown = sorted(set(given) - set(spec.params), key=str)
    if unknown:
        raise IfevalError(f"{label}: unexpected kwargs {unknown} for {instruction_id} (it takes: {takes})")
    missing = [p for p in spec.params if p not in given]
    if missing:
        raise IfevalError(f"{label}: missing kwargs {missing} for {instruction_id} (it takes: {takes})")
    clean = {name: _value(kind, given[name], name, label) for name, kind in spec.params.items()}
    if "nth_paragraph" in clean and not 1 <= clean["nth_paragraph"] <= clean["num_paragraphs"]:
        raise IfevalError(f"{label}: nth_paragraph must be between 1 and num_paragraphs "
                          f"({clean['num_paragraphs']}), got {clean['nth_paragraph']}")
    _check_patterns(instruction_id, clean, label)
    return clean


def check_row(row, where: str) -> dict:
    """A validated copy of a ruIFEval row (see the module docstring); `where` names it in any error."""
    if not isinstance(row, Mapping):
        raise IfevalError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    missing = [f for f in _ROW_FIELDS if f not in row]
    if missing:
        raise IfevalError(f"{where}: row lacks {missing} (a ruIFEval row has {', '.join(_ROW_FIELDS)})")
    key = row["key"]
    if isinstance(key, bool) or not isinstance(key, int):
        raise IfevalError(f"{where}: key must be an integer, got {key!r}")
    label = f"{where} (key {key})"
    prompt, ids, kwargs = row["prompt"], row["instruction_id_list"], row["kwargs"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise IfevalError(f"{label}: prompt must be a non-empty string, got {prompt!r:.60}")
    if not isinstance(ids, (list, tuple)) or not ids:
        raise IfevalError(f"{label}: instruction_id_list must be a non-empty list, got {ids!r:.60}")
    if not isinstance(kwargs, (list, tuple)):
        raise IfevalError(f"{label}: kwargs must be a list, got {kwargs!r:.60}")
    if len(kwargs) != len(ids):
        raise IfevalError(f"{label}: {len(ids)} instruction ids but {len(kwargs)} kwargs entries")
    checked = [check_kwargs(iid, kw, f"{label}, instruction {i + 1} ({iid})")
               for i, (iid, kw) in enumerate(zip(ids, kwargs))]
    return {"key": key, "prompt": prompt, "instruction_id_list": list(ids), "kwargs": checked}
