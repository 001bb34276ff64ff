"""The `preference` eval suite: hand-computed share of pairs won and mean margin on the tiny model, CIs, skipped
pairs, bad input, and a McNemar / paired-bootstrap mark in the report against the base."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.errors import EvalError
from rutune.eval.pref_pairs import load_pairs, run_pairs
from rutune.eval.suites import EvalRequest, SUITES
from rutune.eval.suites.preference import PreferenceConfig

torch.set_num_threads(2)

PAIRS = [
    {"prompt": [{"role": "user", "content": "Какая столица России?"}], "chosen": "Москва.", "rejected": "Лондон, да.",
     "source": "saiga_preferences"},
    {"prompt": [{"role": "system", "content": "Кратко."}, {"role": "user", "content": "2+2?"}],
     "chosen": "Четыре", "rejected": "xyz 123 ### qwerty", "source": "saiga_preferences"},
    {"prompt": [{"role": "user", "content": "Переведи: cat"}], "chosen": "Кошка", "rejected": "Собака или кот",
     "source": "saiga_preferences"},
    {"prompt": [{"role": "user", "content": "Привет"}], "chosen": "Привет!", "rejected": "Привет!",
     "source": "saiga_preferences"},  # identical: skipped and counted
]


class Backend:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def _write(path, rows=PAIRS):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _mean_logp(model, tokenizer, messages, reply):
    """By hand: render prompt (+ generation header) and prompt+reply with the template, one full forward, the mean of
    log p over the reply's tokens (assistant content + <|im_end|>)."""
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = prompt_text + reply + "<|im_end|>"
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert ids[: len(p_ids)] == p_ids
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    vals = [float(logp[t - 1, ids[t]]) for t in range(len(p_ids), len(ids))]
    return sum(vals) / len(vals)


def test_share_won_and_margin_equal_a_hand_computation(tiny, tmp_path):
    model, tokenizer = tiny
    res = run_pairs(PreferenceConfig(), BackendConfig(batch_size=2), "tiny", _write(tmp_path / "p.parquet"),
                    tmp_path / "out", backend=Backend(model, tokenizer), model_label="base", rounds=200)
    margins = [_mean_logp(model, tokenizer, r["prompt"], r["chosen"])
               - _mean_logp(model, tokenizer, r["prompt"], r["rejected"]) for r in PAIRS[:3]]
    items = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert [i["margin"] for i in items] == pytest.approx(margins, abs=1e-5)
    assert [i["correct"] for i in items] == [int(m > 0) for m in margins]
    acc, margin = res["metrics"]["pref_accuracy"], res["metrics"]["pref_margin"]
    assert acc["value"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert margin["value"] == pytest.approx(sum(margins) / 3, abs=1e-5)
    assert margin["ci_low"] <= margin["value"] <= margin["ci_high"] and margin["ci_low"] < margin["ci_high"]
    assert acc["n_valid"] == 3 and acc["n_total"] == 3
    assert res["extra"]["skipped"] == {"identical": 1, "over_budget": 0}


def test_suite_annotates_mcnemar_and_bootstrap_columns_and_the_report_tests_them(tiny, tmp_path):
    """Base and a perturbed model through the suite contract into a run folder; the report's table marks both
    columns with their paired test against the base."""
    from transformers import AutoModelForCausalLM

    from rutune.report.collect import read_run
    from rutune.report.table import build_table
    from rutune.rundir import RunDir

    model, tokenizer = tiny
    pairs = _write(tmp_path / "p.parquet", [{**r, "chosen": f"{r['chosen']} {k}", "rejected": f"{r['rejected']} {k}"}
                                            for k in range(3) for r in PAIRS[:3]])
    other = AutoModelForCausalLM.from_config(model.config).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p, q in zip(other.parameters(), model.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    suite = SUITES.get("preference")
    run = RunDir(tmp_path / "run")
    import rutune.eval.pref_pairs as impl

    for label, m in (("base", model), ("dpo", other)):
        backend = Backend(m, tokenizer)
        original = impl.run_pairs

        def with_backend(*a, _b=backend, **k):
            return original(*a, backend=_b, **k)

        impl.run_pairs = with_backend
        try:
            res = suite.run(EvalRequest(cfg=PreferenceConfig(pairs=str(pairs)), backend=BackendConfig(),
                                        model_path=label, model_label=label,
                                        out_dir=run.root / "eval" / "preference" / label, rounds=200, run_dir=run))
        finally:
            impl.run_pairs = original
        assert res["metrics"]["pref_accuracy"]["display"]["test"] == "mcnemar"
        assert res["metrics"]["pref_margin"]["display"]["test"] == "paired_bootstrap"
    table = build_table([read_run(run.root)], rounds=200)
    row = next(r for r in table.rows if r.model == "dpo")
    assert row.cells["preference.pref_accuracy"].test == "mcnemar"
    assert row.cells["preference.pref_margin"].test == "paired_bootstrap"
    assert row.cells["preference.pref_margin"].n_pairs == 9
    assert "Pref. pairs won" in [c.title for c in table.columns]


def test_jsonl_string_prompts_and_bad_input(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Привет", "chosen": "Да", "rejected": "Нет"},
        {"prompt": "Ещё", "chosen": " ", "rejected": "Нет"}]), encoding="utf-8")
    rows, skipped = load_pairs(path)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Привет"}] and skipped == {"empty_response": 1}
    with pytest.raises(EvalError, match=r"preference_holdout\.parquet: preference pairs not found; set "
                                        r"data\.preference\.holdout_percent"):
        load_pairs(tmp_path / "preference_holdout.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}), encoding="utf-8")
    with pytest.raises(EvalError, match=r"bad\.jsonl row 0: missing rejected"):
        load_pairs(bad)
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "x", "chosen": "y", "rejected": "y"}), encoding="utf-8")
    with pytest.raises(EvalError, match=r"no usable pair among 1 rows \(\{'identical': 1\}\)"):
        load_pairs(same)


def test_null_pairs_mean_the_experiments_preference_holdout(tmp_path):
    from rutune.eval.suites.preference import pairs_path
    from rutune.rundir import RunDir

    assert pairs_path(PreferenceConfig(), RunDir(tmp_path)) == RunDir(tmp_path).prepare / "preference_holdout.parquet"
    with pytest.raises(EvalError, match="give --pairs"):
        pairs_path(PreferenceConfig(), None)
