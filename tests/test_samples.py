"""The bundled samples through the shipped demo config: exact counts the sample NOTES files document."""

import json
from pathlib import Path

import pytest

from rutune.config import load_config
from rutune.data.prepare import run_prepare
from rutune.data.sources import SAMPLES, SOURCES

DEMO = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "demo.yaml"


@pytest.mark.parametrize("name", [s.name for s in SOURCES if s.hub_id])
def test_every_hub_source_ships_a_sample_with_its_columns_and_enough_rows(name):
    """Iterates the source registry: a new hub source without a bundled sample in its schema fails here."""
    source = SOURCES.get(name)
    rows = [json.loads(l) for l in source.sample.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 60
    assert all(source.columns <= set(r) for r in rows)


def test_mini_rummlu_shape():
    rows = [json.loads(l) for l in (SAMPLES / "rummlu_mera.jsonl").read_text(encoding="utf-8").splitlines()]
    domains = {r["meta"]["domain"] for r in rows}
    assert len(rows) >= 40 and len(domains) >= 8
    assert {r["outputs"] for r in rows} == set("ABCD")
    assert all(set(r["inputs"]) >= {"text", "option_a", "option_b", "option_c", "option_d", "subject"} for r in rows)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(DEMO, [f"output_root={out}", "data.preference.sources.0.length_ratio_drop_probability=1.0",
                             "data.contamination.eval_sets=[]"])
    return run_prepare(cfg)


def test_demo_prepare_counts(manifest):
    gm, saiga, rag = manifest["sft"]["sources"]
    assert (gm["rows_read"], gm["after_filters"]) == (79, 70)
    assert gm["dropped"] == {"prompt_lang": 5, "duplicate_exact": 2, "duplicate_near": 2}
    assert (saiga["rows_read"], saiga["after_filters"]) == (80, 58)
    assert saiga["dropped"] == {"min_score": 10, "is_bad_by_regex": 4, "language": 4, "duplicate_exact": 2,
                                "duplicate_near": 2}
    assert rag["dropped"] == {"duplicate_exact": 1, "duplicate_near": 1} and rag["after_filters"] == 76
    # 10% held out per source, then percent of what remains: 100% of 63, 60% of 52, 150% of 68.
    assert [s["held_out"] for s in (gm, saiga, rag)] == [7, 6, 8]
    assert [s["realised"] for s in (gm, saiga, rag)] == [63, round(52 * 0.6), 68 + 34]
    assert manifest["sft"]["rows"] == 63 + 31 + 102
    pref = manifest["preference"]["sources"][0]
    assert pref["dropped"] == {"sonnet_approved": 6, "is_bad_by_regex": 4, "length_ratio": 10, "duplicate_exact": 2}
    assert manifest["preference"]["rows"] == 50
