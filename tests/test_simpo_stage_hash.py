"""A train stage's identity follows only its own prepared data block, and both recipes tokenise main-process-first.

Prepare records `content_hash` per block (`manifest["sft"]`, `manifest["preference"]`) and a whole-prepare
`input_hash` at the top, which changes when any data block does. An SFT stage must not rerun when only
`data.preference` changed, and a SimPO stage must not rerun when only `data.sft` changed.
"""

from __future__ import annotations

import contextlib

import pytest
from _sft_data import make_rows, write_prepared
from _simpo_data import make_pairs, simpo_config, write_pairs

from rutune.rundir import RunDir, read_manifest, write_json_atomic
from rutune.train import stage_io as runtime
from rutune.train.stages import stage_input_hash

SFT_STAGE = {"recipe": "sft", "name": "sft", "learning_rate": 1e-3, "max_steps": 2, "precision": "fp32"}


def _two_stage_config(tmp_path, **kw):
    """sft, then a simpo stage from base (so its hash depends on the preference data, not on the sft stage)."""
    return simpo_config(tmp_path, stages_before=[SFT_STAGE], stage={"init_from": "base"}, **kw)


def _manifest(run: RunDir, *, sft_hash: str, pref_hash: str, input_hash: str) -> None:
    """A prepare manifest laid out the way `run_prepare` writes it."""
    write_json_atomic(run.prepare / "manifest.json", {
        "input_hash": input_hash, "seed": 7, "experiment": "t",
        "sft": {"file": "sft.parquet", "rows": 3, "content_hash": sft_hash, "sources": []},
        "preference": {"file": "preference.parquet", "rows": 3, "content_hash": pref_hash, "sources": []},
    })


def _hashes(cfg, run):
    sft_stage, simpo_stage = cfg.train.stages
    return stage_input_hash(cfg, sft_stage, run), stage_input_hash(cfg, simpo_stage, run)


def test_each_stage_hashes_only_its_own_data_block(tmp_path):
    cfg = _two_stage_config(tmp_path)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    run.prepare.mkdir(parents=True)

    _manifest(run, sft_hash="sft-A", pref_hash="pref-A", input_hash="prepare-1")
    sft_1, simpo_1 = _hashes(cfg, run)
    assert runtime.data_hash(run, "sft") == "sft-A" and runtime.data_hash(run, "preference") == "pref-A"

    # Only the preference data changed (so did prepare's whole-config input_hash): SFT keeps its identity.
    _manifest(run, sft_hash="sft-A", pref_hash="pref-B", input_hash="prepare-2")
    sft_2, simpo_2 = _hashes(cfg, run)
    assert sft_2 == sft_1
    assert simpo_2 != simpo_1

    # Only the SFT data changed: the SimPO stage (from base) keeps its identity.
    _manifest(run, sft_hash="sft-B", pref_hash="pref-B", input_hash="prepare-3")
    sft_3, simpo_3 = _hashes(cfg, run)
    assert sft_3 != sft_2
    assert simpo_3 == simpo_2


def test_missing_block_or_manifest_has_no_data_hash(tmp_path):
    run = RunDir.for_experiment(tmp_path / "runs", "t")
    assert runtime.data_hash(run, "sft") is None  # no prepare folder at all
    run.prepare.mkdir(parents=True)
    write_json_atomic(run.prepare / "manifest.json", {"input_hash": "prepare-1", "sft": {"content_hash": "s"}})
    assert runtime.data_hash(run, "sft") == "s"
    assert runtime.data_hash(run, "preference") is None  # never the whole-prepare input_hash


def test_recipes_report_their_blocks_content_hash(tmp_path):
    from rutune.train.sft import sft_data
    from rutune.train.preference import preference_data

    run = RunDir.for_experiment(tmp_path / "runs", "t")
    write_prepared(run.root, make_rows(4), content_hash="sft-content")
    write_pairs(run.root, make_pairs(4), content_hash="pref-content")
    manifest = read_manifest(run.prepare)
    assert manifest["sft"]["content_hash"] == "sft-content"
    assert manifest["preference"]["content_hash"] == "pref-content"
    assert "content_hash" not in manifest  # prepare never writes it at the top level
    assert sft_data(run)[1] == "sft-content"
    assert preference_data(run)[1] == "pref-content"


def test_real_prepare_changing_only_preferences_keeps_the_sft_stage(tmp_path):
    """`run_prepare` on the bundled samples twice, only `data.preference` differing: the SFT stage is unchanged."""
    from rutune.config import parse_config
    from rutune.data.prepare import run_prepare

    def config(pref_percent):  # sources without a path read the bundled samples
        return parse_config({
            "name": "t", "output_root": str(tmp_path / "runs"), "seed": 7,
            "data": {"sft": {"sources": [{"name": "saiga_scored", "percent": 25}], "max_tokens": 512},
                     "preference": {"sources": [{"name": "saiga_preferences", "percent": pref_percent}],
                                    "max_tokens": 512}},
            "train": {"stages": [SFT_STAGE, {"recipe": "preference", "name": "simpo", "init_from": "base", "learning_rate": 1e-3}]}})

    cfg_a = config(100)
    run = RunDir.for_experiment(cfg_a.output_root, cfg_a.name)
    m_a = run_prepare(cfg_a)
    sft_a, simpo_a = _hashes(cfg_a, run)

    cfg_b = config(50)
    m_b = run_prepare(cfg_b)
    assert not m_b.get("skipped") and m_b["input_hash"] != m_a["input_hash"]  # prepare did rerun
    assert m_b["preference"]["rows"] < m_a["preference"]["rows"]
    assert m_b["sft"]["content_hash"] == m_a["sft"]["content_hash"]
    assert m_b["preference"]["content_hash"] != m_a["preference"]["content_hash"]
    sft_b, simpo_b = _hashes(cfg_b, run)
    assert sft_b == sft_a  # would retrain SFT if the whole-prepare input_hash were used
    assert simpo_b != simpo_a


@pytest.mark.parametrize("recipe", ["sft", "simpo"])
def test_tokenisation_runs_inside_main_process_first(tmp_path, tiny_model_dir, monkeypatch, recipe):
    """Under torchrun one process builds the Arrow cache while the others wait: the guard is in the shared
    `cached_tokenization`, so both recipes get it (and a single process, with no process group, still works)."""
    import accelerate

    from rutune.data.templates import load_tokenizer

    events = []
    real = accelerate.PartialState.main_process_first

    cache = tmp_path / "cache"

    def arrows():
        return len(list(cache.glob("*.arrow")))

    @contextlib.contextmanager
    def recording(self, *a, **k):
        with real(self, *a, **k):
            events.append(("enter", arrows()))
            yield
            events.append(("exit", arrows()))

    monkeypatch.setattr(accelerate.PartialState, "main_process_first", recording)
    tok = load_tokenizer(str(tiny_model_dir))
    run = RunDir.for_experiment(tmp_path / "runs", "t")
    if recipe == "sft":
        from rutune.train import sft

        parquet = write_prepared(run.root, make_rows(8))

        def tokenize():
            return sft.tokenized_dataset(tok, parquet, data_hash="d", max_tokens=512, overlength="drop",
                                         cache_dir=cache)
    else:
        from rutune.train import preference as simpo

        parquet = write_pairs(run.root, make_pairs(8))

        def tokenize():
            return simpo.tokenized_preferences(tok, parquet, data_hash="d", max_tokens=512, overlength="drop",
                                               cache_dir=cache)

    ds, counts = tokenize()
    assert events == [("enter", 0), ("exit", 1)] and len(ds) > 0  # the cache is written inside the guard
    assert list(cache.glob("*.counts.json"))
    again, counts_again = tokenize()  # the cached rerun (what the other processes do) reads the same counts
    assert counts_again == counts and len(again) == len(ds)
    assert events[2:] == [("enter", 1), ("exit", 1)]
