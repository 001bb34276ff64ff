"""Russian share, normalisation, exact and near dedup."""

import zlib

import pytest

from rutune.data.filters import Deduplicator, normalise, russian_share


def test_russian_share_counts_letters_only():
    assert russian_share("Привет, world!") == pytest.approx(6 / 11)
    assert russian_share("12345 !!!") == 0.0
    assert russian_share("Ёжик") == 1.0


def test_normalise():
    assert normalise("  Ёлка,   ЗЕЛЁНАЯ!? ") == "елка зеленая"


def test_exact_duplicates_after_normalisation():
    d = Deduplicator(near=False)
    assert d.check("Как приготовить борщ?") is None
    assert d.check("как приготовить  БОРЩ") == "duplicate_exact"
    assert d.check("Как приготовить щи?") is None


def test_exact_dedup_key_does_not_collide_like_crc32():
    # Two distinct normalised texts with equal crc32 (found by a birthday search): a 32-bit exact-dedup key
    # would drop the second as `duplicate_exact`.
    a, b = "жбеущ ашмма оыббк", "юфозл цувзо ехгдм"
    assert a != b and normalise(a) == a and normalise(b) == b
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    for near in (False, True):
        d = Deduplicator(near=near)
        assert d.check(a) is None
        assert d.check(b) is None
        assert d.check(a.upper()) == "duplicate_exact"


def test_near_duplicates_one_word_changed():
    d = Deduplicator(exact=True, near=True, threshold=0.7)
    base = ("Объясни, пожалуйста, подробно и с примерами, как работает фотосинтез у растений "
            "и почему листья зелёные, а осенью желтеют и опадают в средней полосе России")
    assert d.check(base) is None
    assert d.check(base.replace("подробно", "детально")) == "duplicate_near"
    assert d.check("Напиши стихотворение о зимнем лесе и снеге в стиле Пушкина, четыре строфы") is None


def test_near_dedup_off_keeps_reworded():
    d = Deduplicator(exact=True, near=False)
    base = "Объясни подробно как работает фотосинтез у растений и почему листья зелёные"
    assert d.check(base) is None
    assert d.check(base.replace("подробно", "детально")) is None


def test_near_dedup_of_bundled_samples_is_seed_independent():
    """The bundled rows planted as near duplicates are found whatever the seed; different questions are kept."""
    import json
    from rutune.data.sources import SAMPLES

    def first_user(row):
        for k in ("conversation", "messages"):
            if k in row:
                return next(m["content"] for m in row[k] if m["role"] == "user")

    expected = {"grandmaster_pro_max": {30: "duplicate_exact", 47: "duplicate_exact", 58: "duplicate_near",
                                        70: "duplicate_near"},
                "saiga_scored": {50: "duplicate_exact", 58: "duplicate_exact", 66: "duplicate_near",
                                 74: "duplicate_near"},
                "grounded_rag_ru_v2": {71: "duplicate_exact", 44: "duplicate_near"}}
    for name, want in expected.items():
        rows = [json.loads(l) for l in (SAMPLES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        for seed in range(5):
            d = Deduplicator(seed=seed)
            got = {i: r for i, row in enumerate(rows) if (r := d.check(first_user(row)))}
            assert got == want, (name, seed, got)
