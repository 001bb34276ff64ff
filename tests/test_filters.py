"""Russian share, normalisation, exact and near dedup."""

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


def test_near_duplicates_one_word_changed():
    d = Deduplicator(exact=True, near=True, threshold=0.7, ngram_words=3)
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
