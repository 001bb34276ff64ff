"""Word 13-gram overlap, tested on the real ru_llm_arena questions with planted overlaps."""

import json
import zlib
from pathlib import Path

import pytest

from rutune.data.filters import normalise
from conftest import benchdata_dir
from rutune.data.contamination import overlap
from rutune.eval.suites import SUITES


@pytest.fixture(scope="module")
def arena():
    bench = benchdata_dir()
    if bench is None:
        pytest.skip("shared/benchdata/ru_llm_arena not found beside the repo")
    arena_suite = SUITES.get("arena")
    return arena_suite.item_texts(arena_suite.config(questions=str(bench / "arena-hard-v0.1" / "question.jsonl")))


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


def test_the_check_uses_the_item_set_each_suite_is_configured_with(tmp_path):
    """`eval_sets: [arena]` means the arena suite's configured questions (here a local file), not a default set:
    the prepare stage checks the very items the suite scores, and its identity follows that file's content."""
    from rutune.config import parse_config
    from rutune.data.prepare import prepare_hash, run_prepare
    from rutune.pipeline import eval_set_inputs, eval_set_items

    chat = tmp_path / "chat.jsonl"
    copied = "Объясни подробно, как работает механизм внимания в трансформерах и зачем нужна маска причинности"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": copied}, {"role": "assistant",
                                                                                  "content": "Ответ."}]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": "a", "turns": [{"content": copied}]}, {"question_id": "b", "turns": [{"content": "Иное"}]}]
    questions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = parse_config({"name": "c", "output_root": str(tmp_path / "runs"),
                        "data": {"sft": {"sources": [{"name": "chat_messages", "path": str(chat), "percent": 100}]},
                                 "contamination": {"eval_sets": ["arena"]}},
                        "eval": {"arena": {"questions": str(questions)}}})
    manifest = run_prepare(cfg, eval_sets=eval_set_items(cfg))
    assert manifest["contamination"] == {"arena": "1/2 items share a 13-gram"}
    before = prepare_hash(cfg, eval_set_inputs(cfg))
    questions.write_text(questions.read_text(encoding="utf-8") + json.dumps({"question_id": "c", "turns": [
        {"content": "Третий"}]}) + "\n", encoding="utf-8")
    assert prepare_hash(cfg, eval_set_inputs(cfg)) != before  # an edited question file reruns prepare


def test_an_eval_set_must_be_a_configured_suite(tmp_path):
    from rutune.config import ConfigError, parse_config

    base = {"name": "c", "data": {"sft": {"sources": [{"name": "saiga_scored", "percent": 10}]},
                                  "contamination": {"eval_sets": ["arena", "rummlu"]}}}
    with pytest.raises(ConfigError) as e:
        parse_config(base)
    joined = "\n".join(e.value.problems)
    assert "eval_sets.0: suite arena is not configured in eval.arena" in joined
    assert "eval_sets.1: 'rummlu' is not a suite with items to check" in joined
