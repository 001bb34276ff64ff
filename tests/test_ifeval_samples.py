"""The bundled ruIFEval sample: Russian prompts written for rutune, in ruIFEval's row schema."""

from __future__ import annotations

import json
import re

from rutune.eval.ifeval import INSTRUCTION_IDS, SAMPLE_PATH, check_row

LINES = [line for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
ROWS = [json.loads(line) for line in LINES]


def test_sample_has_at_least_60_rows_with_unique_keys():
    assert len(ROWS) == 66
    assert len({r["key"] for r in ROWS}) == len(ROWS)


def test_sample_covers_all_25_instruction_ids():
    used = {i for r in ROWS for i in r["instruction_id_list"]}
    assert used == set(INSTRUCTION_IDS)


def test_every_sample_row_validates_and_carries_only_applicable_keys():
    for number, raw in enumerate(ROWS, start=1):
        checked = check_row(raw, f"ruifeval.jsonl line {number}")
        assert checked == raw  # nothing to drop or convert: no nulls, ints already ints
        assert set(raw) == {"key", "prompt", "instruction_id_list", "kwargs"}


def test_sample_prompts_are_russian():
    for r in ROWS:
        letters = re.findall(r"[^\W\d_]", r["prompt"])
        assert sum("а" <= ch.lower() <= "я" or ch in "ёЁ" for ch in letters) / len(letters) > 0.8, r["key"]


def test_every_phrase_an_instruction_names_is_quoted_in_its_prompt():
    """Keywords, end phrases, first words, letters, markers and repeated requests appear in the prompt itself."""
    for r in ROWS:
        for kwargs in r["kwargs"]:
            for name, value in kwargs.items():
                if name in ("language", "relation", "let_relation", "capital_relation") or isinstance(value, int):
                    continue
                for phrase in value if isinstance(value, list) else [value]:
                    assert phrase in r["prompt"], (r["key"], name, phrase)
            if "prompt_to_repeat" in kwargs:
                assert r["prompt"].startswith(kwargs["prompt_to_repeat"]), r["key"]
