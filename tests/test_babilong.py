"""ruBABILong: LIBRA's metric and its normalised variant, aggregation, loaders, templates, window policy, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.babilong import BabilongConfig
from rutune.eval.babilong import (babilong_metrics, libra_score, load_rows, load_templates, normalised_score,
                                  run_babilong)
from rutune.eval.backends import GenerationResult, make_backend
from rutune.eval.errors import EvalError

torch.set_num_threads(2)
LIBRA_CONFIG = Path(__file__).resolve().parents[2] / "shared" / "benchdata" / "libra" / "datasets_config.json"
ROOMS = ["кухня", "спальня", "ванная", "коридор", "сад", "офис"]


def neg(gold):
    return [r for r in ROOMS if r != gold]


def test_libra_score_raw():
    assert libra_score("кухня", ["кухня"], neg("кухня")) == 1.0
    assert libra_score("Кухня", ["кухня"], neg("кухня")) == 0.0  # case-sensitive, as LIBRA
    assert libra_score("на кухне", ["кухня"], neg("кухня")) == 0.0
    assert libra_score("в саду", ["сад"], neg("сад")) == 1.0
    assert libra_score("рассада", ["сад"], neg("сад")) == 1.0  # LIBRA's false hit inside a word
    assert libra_score("кухня или сад", ["кухня"], neg("кухня")) == pytest.approx(1 - 1 / 5)
    assert libra_score("кухня, сад, офис", ["кухня"], neg("кухня")) == pytest.approx(1 - 2 / 5)
    assert libra_score(" ".join(ROOMS), ["кухня"], neg("кухня")) == 0.0  # every location listed
    assert libra_score("сад офис", ["кухня"], neg("кухня")) == 0.0  # floor at 0
    assert libra_score("ответ: спальня", ["кухня", "спальня"], []) == 1.0  # max over positives


def test_normalised_score():
    assert normalised_score("Кухня.", ["кухня"], neg("кухня"), lemmatise=False) == 1.0
    assert normalised_score("рассада", ["сад"], neg("сад"), lemmatise=False) == 0.0  # whole words only
    assert normalised_score("ЁЛКА", ["елка"], [], lemmatise=False) == 1.0
    assert normalised_score("на кухне", ["кухня"], neg("кухня"), lemmatise=False) == 0.0
    assert normalised_score("Кухня, сад!", ["кухня"], neg("кухня"), lemmatise=False) == pytest.approx(0.8)


def test_normalised_score_with_lemmas():
    assert normalised_score("На кухне.", ["кухня"], neg("кухня")) == 1.0
    assert normalised_score("в ванной", ["ванная"], neg("ванная")) == 1.0
    assert normalised_score("в спальне, потом в саду", ["спальня"], neg("спальня")) == pytest.approx(0.8)


def test_lemmatised_metric_refuses_to_run_without_its_lemmatiser(monkeypatch, tmp_path):
    """No silent fallback to unlemmatised words: lemmas asked for + pymorphy3 not importable = one EvalError line,
    raised before any model is loaded; `lemmatise: false` still scores."""
    import sys

    from rutune.eval import babilong

    babilong._morph.cache_clear()
    monkeypatch.setitem(sys.modules, "pymorphy3", None)  # `import pymorphy3` now raises ImportError
    try:
        pattern = r"^eval.babilong.lemmatise: the lemmatiser .* cannot load \(ModuleNotFoundError"
        with pytest.raises(EvalError, match=pattern) as e:
            normalised_score("на кухне", ["кухня"], neg("кухня"))
        assert "\n" not in str(e.value) and "lemmatise: false" in str(e.value)
        assert normalised_score("Кухня!", ["кухня"], neg("кухня"), lemmatise=False) == 1.0
        with pytest.raises(EvalError, match="cannot load"):
            run_babilong(BabilongConfig(tasks=["qa1"], lengths=["256"], samples_per_length=1), BackendConfig(),
                         str(tmp_path / "no-model-needed"), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    finally:
        babilong._morph.cache_clear()


def row(task, length, score, i, norm=None):
    return {"id": f"{task}-{length}-{i}", "task": task, "length": length, "score": score,
            "score_norm": score if norm is None else norm}


def test_aggregation_missing_lengths_count_as_zero():
    rows = [row("qa1", "1k", s, i) for i, s in enumerate([1, 0, 1, 1])]
    rows += [row("qa1", "2k", s, i) for i, s in enumerate([0.8, 0.2])]
    rows += [{**row("qa1", "4k", None, 0), "skipped": "too long"}]
    rows += [row("qa2", "1k", 1.0, 0), row("qa2", "2k", 0.0, 0), row("qa2", "4k", 0.5, 0)]
    metrics, extra = babilong_metrics(rows, ["qa1", "qa2"], ["1k", "2k", "4k"], rounds=200)
    assert metrics["qa1"]["value"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert metrics["qa2"]["value"] == pytest.approx(0.5)
    assert metrics["total"]["value"] == pytest.approx(((0.75 + 0.5) / 3 + 0.5) / 2)
    assert metrics["micro"]["value"] == pytest.approx((3 + 1.0 + 1.5) / 9)
    assert metrics["micro"]["item_key"] == "score" and metrics["qa1"]["item_key"] is None
    assert metrics["qa1"]["n_valid"] == 6 and metrics["qa1"]["n_total"] == 7
    assert extra["missing_lengths"] == {"qa1": ["4k"], "qa2": []}
    assert extra["per_length"]["qa1"]["1k"]["mean"] == 0.75 and extra["skipped"] == 1
    assert metrics["qa1"]["ci_low"] <= metrics["qa1"]["value"] <= metrics["qa1"]["ci_high"]


def test_task_file_libra_and_default():
    ours, source = load_templates(None)
    assert source == "rutune" and "{context}" in ours["qa1"] and "{input}" in ours["qa2"]
    if not LIBRA_CONFIG.exists():
        pytest.skip("LIBRA's datasets_config.json not found beside the repo")
    libra, source = load_templates(str(LIBRA_CONFIG))
    assert libra["qa1"].startswith("Я даю тебе контекст с фактами о местоположении разных людей.")
    assert libra["qa2"].endswith("Ответь на вопрос одним словом.\nВопрос: {input}\nОтвет:")


def test_task_file_errors(tmp_path):
    with pytest.raises(EvalError, match="file not found"):
        load_templates(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ru_babilong_qa1": {"instruction": "нет полей"}}))
    with pytest.raises(EvalError, match=r"ru_babilong_qa1.instruction must contain \{context\}"):
        load_templates(str(bad))


def libra_rows(n=3, length="1k"):
    return [{"length": length, "context": f"Иван пошёл в сад. Текст {i}.", "input": "Где Иван?",
             "positive_outputs": ["сад"], "negative_outputs": neg("сад"), "metadata": {"id": f"r{i}",
                                                                                       "source_path": None}}
            for i in range(n)]


def test_local_loader_and_bad_rows(tmp_path):
    path = tmp_path / "ru_babilong_qa1.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in libra_rows()))
    rows = load_rows(str(tmp_path), "qa1", None)
    assert len(rows) == 3 and rows[0]["positive_outputs"] == ["сад"]
    with pytest.raises(EvalError, match="no data for ru_babilong_qa2"):
        load_rows(str(tmp_path), "qa2", None)
    empty = libra_rows(2)
    empty[1]["context"] = "  "
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in empty))
    with pytest.raises(EvalError, match=r"bad.jsonl:2: empty context"):
        load_rows(str(bad), "qa1", None)
    with pytest.raises(EvalError, match="file not found"):
        load_rows(str(tmp_path / "x.jsonl"), "qa1", None)


class Oracle:
    """A backend that answers from the facts in the prompt (via the tests' solver) and counts calls.

    Token counting and the window come from the tiny model's tokenizer, so window policy is real.
    """

    def __init__(self, hf, solve):
        self.hf, self.solve, self.calls, self.fail_on = hf, solve, 0, None
        self.tokenizer, self.max_length, self.batch_size = hf.tokenizer, hf.max_length, 4
        self.prompt_ids, self.count_tokens = hf.prompt_ids, hf.count_tokens

    def generate(self, requests):
        self.calls += 1
        if self.fail_on == self.calls:
            raise KeyboardInterrupt
        return [GenerationResult(text=self.solve(r.prompt), n_tokens=1) for r in requests]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return make_backend(BackendConfig(apply_chat_template=False), str(tiny_model_dir))


def test_run_with_oracle_scores_one_and_resumes(hf, tmp_path):
    from test_babilong_generator import solve_prompt

    cfg = BabilongConfig(lengths=["256", "1k"], samples_per_length=4)
    full = run_babilong(cfg, BackendConfig(), "tiny", tmp_path / "a", backend=Oracle(hf, solve_prompt))
    assert full["metrics"]["total"]["value"] == 1.0 and full["metrics"]["total_norm"]["value"] == 1.0
    flaky = Oracle(hf, solve_prompt)
    flaky.fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        run_babilong(cfg, BackendConfig(), "tiny", tmp_path / "b", backend=flaky)
    done = len((tmp_path / "b" / "items.jsonl").read_text().splitlines())
    assert done == 8
    again = Oracle(hf, solve_prompt)
    resumed = run_babilong(cfg, BackendConfig(), "tiny", tmp_path / "b", backend=again)
    assert again.calls == 1  # only the 8 unfinished items, in one chunk
    assert resumed["metrics"] == full["metrics"]


def test_overlength_skipped_or_middle_truncated(hf, tmp_path):
    from test_babilong_generator import solve_prompt

    small = Oracle(hf, solve_prompt)
    small.max_length = 700
    cfg = BabilongConfig(tasks=["qa1"], lengths=["256", "1k"], samples_per_length=2)
    res = run_babilong(cfg, BackendConfig(), "tiny", tmp_path / "skip", backend=small)
    rows = [json.loads(x) for x in (tmp_path / "skip" / "items.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("skipped")]
    assert len(skipped) == 2 and all(r["length"] == "1k" and r["score"] is None for r in skipped)
    assert res["extra"]["missing_lengths"] == {"qa1": ["1k"]}
    assert res["metrics"]["qa1"]["value"] == pytest.approx(0.5)  # 1.0 at 256, missing 1k counts 0
    cut = BabilongConfig(tasks=["qa1"], lengths=["1k"], samples_per_length=2, overlength="middle_truncate")
    run_babilong(cut, BackendConfig(), "tiny", tmp_path / "cut", backend=small)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "items.jsonl").read_text().splitlines()]
    assert all(r["truncated_tokens"] > 0 and r["prompt_tokens"] + 16 <= 700 for r in rows)


def test_real_model_generation_runs_and_records(hf, tmp_path):
    cfg = BabilongConfig(tasks=["qa2"], lengths=["256"], samples_per_length=2)
    res = run_babilong(cfg, BackendConfig(), "tiny", tmp_path, backend=hf)
    rows = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(isinstance(r["output"], str) and r["prompt_tokens"] > 256 for r in rows)
    assert res["extra"]["templates"] == "rutune" and res["metrics"]["qa2"]["n_total"] == 2


def test_hub_code_path_on_a_local_repo(tmp_path, monkeypatch):
    """The real `load_dataset(repo, "ru_babilong_qa1", split="test")` call, on a repo laid out like the hub's."""
    import datasets

    from rutune.eval.babilong import load_hub_rows

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")

    repo = tmp_path / "LIBRA"
    (repo / "ru_babilong_qa1").mkdir(parents=True)
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: ru_babilong_qa1\n  data_files:\n"
                                    "  - split: test\n    path: ru_babilong_qa1/test.jsonl\n---\n")
    (repo / "ru_babilong_qa1" / "test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in libra_rows(2, "4k")))
    rows = load_hub_rows(str(repo), "qa1", None)
    assert [r["metadata"]["id"] for r in rows] == ["r0", "r1"] and rows[0]["length"] == "4k"
    with pytest.raises(EvalError, match="cannot load"):
        load_hub_rows(str(tmp_path / "absent-repo"), "qa1", None)


def test_libra_hub_id_loads_the_pinned_revision(monkeypatch):
    import datasets

    from rutune.eval import babilong

    seen = []

    def fake_load(name, config, split=None, revision=None):
        seen.append((name, config, split, revision))
        return libra_rows(1, "4k")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    babilong.load_hub_rows("ai-forever/LIBRA", "qa2", None)
    babilong.load_hub_rows("ai-forever/LIBRA", "qa1", "abc123")
    babilong.load_hub_rows("someone/LIBRA-copy", "qa1", None)
    assert seen == [("ai-forever/LIBRA", "ru_babilong_qa2", "test", "55cd1f153a2eab82464bf862097877555501c8d8"),
                    ("ai-forever/LIBRA", "ru_babilong_qa1", "test", "abc123"),
                    ("someone/LIBRA-copy", "ru_babilong_qa1", "test", None)]
