"""Bootstrap CIs, paired bootstrap and exact McNemar: values checked by hand; no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rutune.stats import bootstrap_ci, mcnemar, metric_entry, paired_bootstrap, stratified_bootstrap_ci


def test_bootstrap_ci_matches_normal_approximation_and_is_seeded():
    values = [0.0, 1.0] * 200  # mean 0.5, standard error 0.025
    low, high = bootstrap_ci(values, rounds=2000, seed=1)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    assert bootstrap_ci(values, rounds=500, seed=3) == bootstrap_ci(values, rounds=500, seed=3)
    assert bootstrap_ci([0.7] * 10) == (0.7, 0.7)
    assert all(np.isnan(bootstrap_ci([])))


def test_stratified_bootstrap_counts_empty_group_as_zero():
    low, high = stratified_bootstrap_ci([[1.0] * 5, [0.0, 1.0] * 50, []], rounds=400)
    # (1 + mean_b + 0) / 3 with mean_b in about 0.5 ± 0.1
    assert (1 + 0.38) / 3 < low < 0.5 < high < (1 + 0.62) / 3


def test_mcnemar_exact_by_hand():
    a = [1] * 5 + [0] * 0 + [1, 0] * 3
    b = [0] * 5 + [1, 0] * 3
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (5, 0) and r["p_value"] == pytest.approx(2 / 32)
    r = mcnemar([1] * 9 + [0], [0] * 9 + [1])  # n = 10, k = 1: 2·(1 + 10)/1024
    assert r["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar([1, 0], [1])


def test_paired_bootstrap():
    same = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1], rounds=200)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.7).astype(float)
    b = (rng.random(300) < 0.4).astype(float)
    r = paired_bootstrap(a, b, rounds=1000, seed=0)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert r["ci_low"] > 0.15 and r["p_value"] < 0.01


def test_metric_entry_shape():
    e = metric_entry([1, 0, 1, 1], n_total=5, item_key="correct", rounds=100)
    assert e["value"] == 0.75 and e["n_valid"] == 4 and e["n_total"] == 5 and e["item_key"] == "correct"


def test_importable_without_torch():
    code = "import sys, rutune.stats, rutune.items; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
