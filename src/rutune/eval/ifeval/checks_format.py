"""Checkers for the shape of a response: paragraphs, lists, highlights, sections, JSON, title, start and end.

Pure functions `check_*(response, **kwargs) -> bool`, each with IFEval's rule as Google Research wrote it and as
lm-eval 0.4.13 runs it, plus ruIFEval's Russian changes where it made any (the constrained-response options and
the section-splitter pattern). Kwargs are assumed validated (`registry.check_row`). Markers and splitters are
used as regular expressions, unescaped, as in IFEval ("P. S." lets "." match any character).
"""

from __future__ import annotations

import json
import re

# ruIFEval's translation of IFEval's "My answer is yes." / "... no." / "... maybe." (em dash, no final period).
CONSTRAINED_OPTIONS = ("Мой ответ — да", "Мой ответ — нет", "Мой ответ — возможно")
_FIRST_WORD_STOP = frozenset(".,?!'\"")


def check_paragraph_count(response: str, *, num_paragraphs: int) -> bool:
    """length_constraints:number_paragraphs — exactly N paragraphs separated by the markdown divider `***`.

    The text is split on `\\s?\\*\\*\\*\\s?`; a blank first or last piece is ignored, a blank inner piece fails.
    """
    pieces = re.split(r"\s?\*\*\*\s?", response)
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index in (0, len(pieces) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def check_nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    """length_constraints:nth_paragraph_first_word — N paragraphs split on a blank line; the n-th starts with a word.

    Paragraphs are the pieces of `response.split("\\n\\n")`; blank pieces are not counted but still occupy their
    index (IFEval indexes the raw pieces). The first whitespace token of the n-th piece, leading `'` then `"`
    removed, is cut at the first of `. , ? ! ' "` and lower-cased. Guillemets are not stripped («Слово» fails).
    """
    pieces = response.split("\n\n")
    count = sum(1 for piece in pieces if piece.strip())
    if nth_paragraph > count:
        return False
    paragraph = pieces[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    token = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    word = ""
    for ch in token:
        if ch in _FIRST_WORD_STOP:
            break
        word += ch.lower()
    return count == num_paragraphs and word == first_word.lower()


def check_placeholders(response: str, *, num_placeholders: int) -> bool:
    """detectable_content:number_placeholders — at least N square-bracket placeholders (`\\[.*?\\]`)."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def check_postscript(response: str, *, postscript_marker: str) -> bool:
    """detectable_content:postscript — some line (lower-cased) holds the postscript marker.

    "P.P.S" and "P.S." have IFEval's tolerant patterns (optional spaces); any other marker (ruIFEval also uses
    "P. S." and "P. P. S") is lower-cased and used as a regex, searched line by line.
    """
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


def check_bullet_count(response: str, *, num_bullets: int) -> bool:
    """detectable_format:number_bullet_lists — exactly N markdown bullets (`* item` or `- item` lines).

    Numbered lists do not count; a line starting with `**` (bold) is not a `*` bullet, but any line starting with
    `-` is one (a horizontal rule `---` too).
    """
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def check_constrained_response(response: str) -> bool:
    """detectable_format:constrained_response — contains one of ruIFEval's three Russian answer options.

    Substring test, case-sensitive, with the em dash: "мой ответ — да" (lower case) or "Мой ответ - да"
    (hyphen) do not count.
    """
    text = response.strip()
    return any(option in text for option in CONSTRAINED_OPTIONS)


def check_highlights(response: str, *, num_highlights: int) -> bool:
    """detectable_format:number_highlighted_sections — at least N non-blank `*...*` plus `**...**` spans.

    Both patterns are counted over the same text: `*a*` counts once, `**b**` once (its single-star matches are the
    blank `**` pairs), and `***c***` twice.
    """
    count = sum(1 for span in re.findall(r"\*[^\n\*]*\*", response) if span.strip("*").strip())
    count += sum(
        1 for span in re.findall(r"\*\*[^\n\*]*\*\*", response) if span.removeprefix("**").removesuffix("**").strip()
    )
    return count >= num_highlights


def check_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """detectable_format:multiple_sections — at least N section markers "SPLITTER X".

    ruIFEval's pattern ` ?SPLITTER ?` followed by one digit or one Latin letter (IFEval/lm-eval: `\\s?SPLITTER\\s?`
    and digits only), case-sensitive; the number of sections is the number of markers found.
    """
    pattern = r" ?" + section_spliter.strip() + r" ?(?:[0-9]|[a-zA-Z])"
    return len(re.split(pattern, response)) - 1 >= num_sections


def check_json(response: str) -> bool:
    """detectable_format:json_format — the whole response parses as JSON after removing a markdown code fence."""
    text = (
        response.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_title(response: str) -> bool:
    """detectable_format:title — a title in double angle brackets `<<...>>` on one line, not blank inside."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def check_two_responses(response: str) -> bool:
    """combination:two_responses — exactly two different non-blank answers separated by `******`.

    A blank piece between two separators fails; blank pieces at the very start or end are ignored.
    """
    pieces = response.split("******")
    answers = []
    for index, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece)
        elif index not in (0, len(pieces) - 1):
            return False
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


def check_repeats_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """combination:repeat_prompt — the stripped, lower-cased response starts with the stripped, lower-cased request."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def check_ending(response: str, *, end_phrase: str) -> bool:
    """startend:end_checker — the response, stripped of whitespace and ASCII `"`, ends with the phrase (any case).

    Only ASCII double quotes are stripped: a response ending in «…» after the phrase fails.
    """
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def check_quotation(response: str) -> bool:
    """startend:quotation — the stripped response is wrapped in ASCII double quotes (Russian «» do not count)."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'
