"""Word 13-gram overlap, tested on the real ru_llm_arena questions with planted overlaps."""

import json
import zlib
from pathlib import Path

import pytest

from rutune.data.filters import normalise
from rutune.data.contamination import eval_items, overlap, resolve_eval_set

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchdata" / "ru_llm_arena" / "arena-hard-v0.1" / "question.jsonl"


@pytest.fixture(scope="module")
def arena():
    if not BENCH.exists():
        pytest.skip(f"benchdata not found at {BENCH}")
    return eval_items(BENCH)


def test_planted_overlaps_are_found_and_nothing_else(arena):
    ids = sorted(arena)[:500]
    long_ids = [k for k in ids if len(arena[k].split()) >= 30][:3]
    assert len(long_ids) == 3
    words = arena[long_ids[0]].split()
    planted = [
        "Вот случайный диалог. " + " ".join(words[5:20]) + " и ещё немного текста.",  # 15 words copied: contaminated
        arena[long_ids[1]].upper().replace(",", " ;"),  # same words, different case/punctuation: contaminated
        " ".join(arena[long_ids[2]].split()[:12]),  # only 12 words: below n = 13, clean
        "Совершенно посторонний текст о приготовлении борща и выпечке пирогов.",
    ]
    hits = overlap(planted, arena, n=13)
    flagged = {k for k, v in hits.items() if v}
    assert flagged == {long_ids[0], long_ids[1]}
    copied = len(normalise(" ".join(words[5:20])).split())  # punctuation removal can split words
    assert copied >= 13 and hits[long_ids[0]] == copied - 13 + 1


def test_short_items_compare_as_whole():
    items = {"q": "Сколько будет два плюс два"}
    assert overlap(["я спросил: сколько будет два плюс два?"], items, n=13) == {"q": 1}
    assert overlap(["сколько будет три плюс два"], items, n=13) == {"q": 0}


def test_hash_collisions_do_not_flag_clean_items():
    # Two different 3-word n-grams with equal crc32 (found by a birthday search): with 32-bit n-gram hashes the
    # training text would flag the eval item although they share no words.
    item, train = "жбеущ ашмма оыббк", "юфозл цувзо ехгдм"
    assert zlib.crc32(item.encode()) == zlib.crc32(train.encode())
    assert overlap([train, "ещё одна строка " + train], {"q": item}, n=13) == {"q": 0}
    assert overlap([train, item.upper() + "!"], {"q": item}, n=13) == {"q": 1}


def test_eval_set_names_resolve(tmp_path):
    assert resolve_eval_set("rummlu").name == "rummlu_mera.jsonl"
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "Что такое LLM?"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert eval_items(resolve_eval_set(str(p))) == {"0": "Что такое LLM?"}
