"""The ruBABILong generator: an independent solver re-derives every answer from the context text alone.

The solver knows only the surface grammar of facts (its own tables below), not the generator's state.
"""

from __future__ import annotations

import re

import pytest

from rutune.eval.babilong_gen import FORBIDDEN_IN_FILLER, generate_item, generate_items

ROOM_OF = {"кухню": "кухня", "спальню": "спальня", "ванную": "ванная", "коридор": "коридор", "сад": "сад",
           "офис": "офис"}
OBJECT_OF = {"яблоко": "яблоко", "мяч": "мяч", "книгу": "книга", "молоко": "молоко", "ключ": "ключ", "зонт": "зонт"}
TAKE = {"взял", "взяла", "забрал", "забрала", "подобрал", "подобрала", "схватил", "схватила"}
LEAVE = {"оставил", "оставила", "бросил", "бросила", "положил", "положила"}
MOVE = re.compile(r"^([А-ЯЁ][а-яё]+) [а-яё]+ (?:в|на) ([а-яё]+)$")
HANDLE = re.compile(r"^([А-ЯЁ][а-яё]+) ([а-яё]+) ([а-яё]+)$")


def facts_of(context: str) -> list[tuple]:
    out = []
    for sentence in re.split(r"(?<=\.)\s+|\n", context):
        s = sentence.rstrip(".")
        m = MOVE.match(s)
        if m and m.group(2) in ROOM_OF:
            out.append(("move", m.group(1), ROOM_OF[m.group(2)]))
            continue
        m = HANDLE.match(s)
        if m and m.group(3) in OBJECT_OF and m.group(2) in TAKE | LEAVE:
            out.append(("take" if m.group(2) in TAKE else "leave", m.group(1), OBJECT_OF[m.group(3)]))
    return out


def solve(context: str, question: str) -> str | None:
    subject = re.match(r"^Где ([а-яёА-ЯЁ]+)\?$", question).group(1)
    where, holder, lying = {}, {}, {}
    for kind, person, thing in facts_of(context):
        if kind == "move":
            where[person] = thing
        elif kind == "take":
            holder[thing] = person
            lying.pop(thing, None)
        else:
            holder.pop(thing, None)
            lying[thing] = where[person]
    if subject in where:
        return where[subject]
    if subject in holder:
        return where[holder[subject]]
    return lying.get(subject)


def solve_prompt(prompt: str) -> str:
    """Answer a filled rutune/LIBRA prompt: the question follows 'Вопрос: ', the context precedes it."""
    question = re.search(r"Вопрос: (.+?)\nОтвет:", prompt).group(1)
    return solve(prompt, question) or "не знаю"


def count_chars(text: str) -> int:
    return len(text) // 3


@pytest.mark.parametrize("task", ["qa1", "qa2"])
def test_solver_rederives_every_answer(task):
    items = generate_items(task, ["300", "1k", "2k"], 15, seed=3, count_tokens=count_chars)
    for item in items:
        assert solve(item["context"], item["input"]) == item["positive_outputs"][0], item["metadata"]["id"]
        assert len(facts_of(item["context"])) == len(item["metadata"]["facts"])
        assert item["positive_outputs"][0] not in item["negative_outputs"] and len(item["negative_outputs"]) == 5


def test_lengths_and_determinism(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for length, target in (("512", 512), ("2k", 2048), ("8k", 8192)):
        item = generate_item("qa2", length, 0, 7, count)
        n = count(item["context"])
        assert 0.95 * target <= n <= target, (length, n)
    assert generate_item("qa1", "1k", 2, 7, count) == generate_item("qa1", "1k", 2, 7, count)
    assert generate_item("qa1", "1k", 2, 7, count)["context"] != generate_item("qa1", "1k", 2, 8, count)["context"]


def test_lengths_with_qwen_tokenizer(qwen_tokenizer):
    count = lambda s: len(qwen_tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    item = generate_item("qa1", "4k", 0, 0, count)
    assert 0.95 * 4096 <= count(item["context"]) <= 4096
    assert solve(item["context"], item["input"]) == item["positive_outputs"][0]


def test_filler_is_varied_and_neutral():
    item = generate_item("qa1", "4k", 0, 1, count_chars)
    facts = set(item["metadata"]["facts"])
    filler = [s for s in re.split(r"(?<=\.) ", item["context"]) if s not in facts]
    assert len(filler) > 100
    assert len(set(filler)) / len(filler) > 0.9  # few repeats at 4k
    assert all(a != b for a, b in zip(filler, filler[1:]))
    text = " ".join(filler).lower()
    assert not [w for w in FORBIDDEN_IN_FILLER if w.lower() in text]
    positions = [item["context"].find(f) for f in item["metadata"]["facts"]]
    assert positions == sorted(positions) and min(positions) >= 0
    assert positions[-1] - positions[0] > len(item["context"]) // 10  # scattered, not bunched
