"""Mixture semantics: percent of each source (upsampling above 100%), count, determinism."""

from collections import Counter

import pytest

from rutune.data.mixture import holdout_split, interleave, plan_source, target_rows


@pytest.mark.parametrize(
    "available,percent,expected",
    [(10, 60, 6), (7, 60, 4), (10, 100, 10), (10, 250, 25), (7, 250, 18), (10, 0, 0), (3, 33.4, 1), (0, 80, 0)],
)
def test_target_rows_is_share_of_each_source(available, percent, expected):
    # 7 rows at 250%: two whole passes (14) + round(7 * 0.5) = round(3.5) = 4 (banker's rounding) -> 18
    assert target_rows(available, percent=percent) == expected


def test_percent_above_100_repeats_every_row_then_samples_the_remainder():
    plan = plan_source("gm", 10, seed=1, percent=250)
    counts = Counter(plan.indices)
    assert plan.realised == 25
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # every row twice, half of them a third time
    assert plan.requested == "250%"


def test_percent_below_100_samples_without_replacement_and_is_seeded():
    a = plan_source("saiga", 100, seed=7, percent=60)
    b = plan_source("saiga", 100, seed=7, percent=60)
    c = plan_source("saiga", 100, seed=8, percent=60)
    assert a.indices == b.indices
    assert a.indices != c.indices
    assert len(set(a.indices)) == 60


def test_count_upsamples_when_larger_than_source():
    plan = plan_source("rag", 4, seed=0, count=10)
    assert Counter(Counter(plan.indices).values()) == {3: 2, 2: 2}
    assert plan.requested == "count 10"


def mixture_rows(sources: list[tuple[str, int, float]], *, seed: int) -> dict[str, list[int]]:
    """Plan a mixture as `prepare` does (one plan per source, then interleave): each source's rows, sorted."""
    plans = [plan_source(name, available, seed=seed, percent=percent) for name, available, percent in sources]
    rows: dict[str, list[int]] = {name: [] for name, _, _ in sources}
    for position, index in interleave(plans, seed=seed):
        rows[plans[position].source].append(index)
    return {name: sorted(indices) for name, indices in rows.items()}


def test_adding_a_source_does_not_change_which_rows_another_source_contributes():
    gm = ("gm", 50, 40)
    before = mixture_rows([gm], seed=3)
    # one source added ahead of gm (gm moves from position 0 to 1) and one after it: the list and positions change
    after = mixture_rows([("saiga", 50, 40), gm, ("rag", 20, 150)], seed=3)
    assert (len(before["gm"]), len(after["saiga"]), len(after["rag"])) == (20, 20, 30)  # really added, sized
    assert after["gm"] == before["gm"]
    # saiga now holds gm's old position with gm's size and percent; a seed keyed by position (or by the list)
    # rather than by the source's name would hand it gm's old rows
    assert after["saiga"] != before["gm"]


def test_interleave_keeps_every_planned_row():
    plans = [plan_source("a", 5, seed=0, percent=100), plan_source("b", 4, seed=0, percent=150)]
    order = interleave(plans, seed=0)
    assert Counter(p for p, _ in order) == {0: 5, 1: 6}
    assert order != sorted(order)


@pytest.mark.parametrize("kwargs", [{"percent": -1}, {"count": -2}, {}, {"percent": 5, "count": 3}])
def test_bad_sizes_are_rejected(kwargs):
    with pytest.raises(ValueError):
        target_rows(10, **kwargs)


def test_holdout_split_is_disjoint_and_sized():
    train, held = holdout_split(50, percent=10, seed=1, source="gm")
    assert len(held) == 5 and len(train) == 45 and not set(train) & set(held)
    assert holdout_split(50, percent=10, seed=1, source="gm") == (train, held)
