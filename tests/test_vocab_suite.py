"""The `vocab` eval suite: its numbers recomputed by hand on the tiny model, the pairing refusal, the exclusions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rutune.data.vocab_metrics import cyrillic_letters, repeated_ngrams
from rutune.eval.suites.vocab import VocabConfig, cut_text, paired_ratio, ratio_ci, text_row

COUNTS = {" привет": 50, " приветствую": 40, " мир": 30, " миру": 20, " спасибо": 25, " здравствуйте": 10}


@pytest.fixture(scope="module")
def adapted(tiny_model_dir, tmp_path_factory):
    from rutune.data.vocab import extend_tokenizer_dir
    from rutune.train.embedding_init import adapt_checkpoint

    root = tmp_path_factory.mktemp("suite")
    extend_tokenizer_dir(tiny_model_dir, root / "tok", COUNTS, 8)
    adapt_checkpoint(tiny_model_dir, root / "tok", root / "ckpt")
    return root / "ckpt"


def _run(model_path, out: Path, run_dir=None, **cfg):
    from rutune.eval.backend_base import BackendConfig
    from rutune.eval.suites import EvalRequest
    from rutune.eval.suites.vocab import run

    torch.set_num_threads(2)
    req = EvalRequest(cfg=VocabConfig(**{"limit": 6, "prompts": 2, "max_new_tokens": 6, **cfg}),
                      backend=BackendConfig(), model_path=str(model_path), model_label="m", out_dir=out,
                      rounds=200, run_dir=run_dir)
    return run(req)


def test_bits_per_char_is_the_hand_summed_nll_of_every_text_token_after_eos(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32").eval()
    text = "Привет, мир! Как дела?"
    ids = tok.encode(text, add_special_tokens=False)
    seq = torch.tensor([[tok.eos_token_id, *ids]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=seq).logits[0].double(), dim=-1)
    nats = -sum(float(logp[t, ids[t]]) for t in range(len(ids)))  # position t predicts token t+1 of seq
    row = text_row(model, tok, "x", text)
    assert row["tokens"] == row["scored_tokens"] == len(ids)
    assert row["bits"] == pytest.approx(nats / math.log(2), rel=1e-5)
    assert row["bits_per_char"] == pytest.approx(nats / math.log(2) / len(text), rel=1e-5)
    assert row["chars_per_token"] == len(text) / len(ids) and row["words"] == 4


def test_ratio_ci_is_a_ratio_of_sums_not_a_mean_of_ratios():
    value, low, high = ratio_ci([10, 30], [10, 5], rounds=500)
    assert value == pytest.approx(40 / 15)  # a mean of per-item ratios would be (1 + 6) / 2 = 3.5
    assert 1.0 - 1e-9 <= low <= value <= high <= 6.0 + 1e-9


def test_paired_ratio_of_identical_models_is_one_and_of_a_halved_numerator_is_one_half():
    num, den = [3.0, 5.0, 7.0, 2.0], [1.0, 2.0, 3.0, 1.0]
    same = paired_ratio(num, den, num, den, rounds=300)
    assert same["ratio"] == 1.0 and same["ci_low"] == same["ci_high"] == 1.0 and same["p_value"] == 1.0
    half = paired_ratio([x / 2 for x in num], den, num, den, rounds=300)
    assert half["ratio"] == pytest.approx(0.5) and half["ci_high"] == pytest.approx(0.5) and half["p_value"] == 0.0


def test_cut_text_cuts_at_a_space_and_leaves_short_text_alone():
    assert cut_text("короткий текст", 100) == "короткий текст"
    assert cut_text("один два три четыре", 12) == "один два"
    assert cut_text("оченьдлинноеслово", 5) == "очень"


def test_suite_results_match_its_items_and_carry_display_blocks(tiny_model_dir, adapted, tmp_path):
    from rutune.items import read_items

    base = _run(tiny_model_dir, tmp_path / "base")
    items = read_items(tmp_path / "base" / "items.jsonl")
    gen = read_items(tmp_path / "base" / "generation.jsonl")
    m = base["metrics"]
    assert len(items) == 6 and len(gen) == 2
    assert m["chars_per_token"]["value"] == pytest.approx(sum(r["chars"] for r in items) / sum(r["tokens"] for r in items))
    assert m["bits_per_char"]["value"] == pytest.approx(sum(r["bits"] for r in items) / sum(r["chars"] for r in items))
    assert m["gen_chars_per_s"]["value"] == pytest.approx(sum(g["chars"] for g in gen) / sum(g["seconds"] for g in gen))
    assert [len(g["text"]) for g in gen] == [g["chars"] for g in gen]  # the answer is kept, and it is what was counted
    assert [(g["repeated_4grams"], g["word_4grams"]) for g in gen] == [repeated_ngrams(g["text"]) for g in gen]
    if sum(g["word_4grams"] for g in gen):
        assert m["gen_repeat_4"]["value"] == pytest.approx(
            sum(g["repeated_4grams"] for g in gen) / sum(g["word_4grams"] for g in gen))
        assert m["gen_repeat_4"]["display"]["direction"] == "lower"
    assert [(g["cyrillic_letters"], g["letters"]) for g in gen] == [cyrillic_letters(g["text"]) for g in gen]
    assert m["new_token_share"]["value"] == 0.0 and base["extra"]["extension"] is None
    assert m["bits_per_char"]["display"]["direction"] == "lower"
    assert m["gen_chars_per_s"]["display"]["items_file"] == "generation.jsonl"
    new = _run(adapted, tmp_path / "adapted")
    new_items = read_items(tmp_path / "adapted" / "items.jsonl")
    assert [r["id"] for r in new_items] == [r["id"] for r in items]  # same texts pair by id
    assert [r["chars"] for r in new_items] == [r["chars"] for r in items]
    assert sum(r["tokens"] for r in new_items) <= sum(r["tokens"] for r in items)
    assert new["extra"]["extension"]["first_new_id"] == 4096 and new["extra"]["vocab_size"] == 4104


def test_gen_rep4_and_cyrillic_share_pool_the_answers_counts():
    # the tiny model's 6-token answers have no words, so the suite test above cannot see these two aggregates
    from rutune.eval.suites.vocab import vocab_metrics

    rows = [{"chars": 10, "tokens": 5, "words": 2, "bits": 20.0}]
    gen = [{"chars": 23, "seconds": 1.0, "new_tokens": 0, "generated_tokens": 12, "repeated_4grams": 5,
            "word_4grams": 9, "cyrillic_letters": 0, "letters": 12},  # "a b c d a b c d a b c d"
           {"chars": 24, "seconds": 1.0, "new_tokens": 3, "generated_tokens": 6, "repeated_4grams": 0,
            "word_4grams": 2, "cyrillic_letters": 20, "letters": 20}]  # "один два три четыре пять"
    m = vocab_metrics(rows, gen, rounds=50, seed=0)
    assert m["gen_repeat_4"]["value"] == pytest.approx(5 / 11) and m["gen_repeat_4"]["item_key"] == "repeat_4"
    assert m["gen_cyrillic_share"]["value"] == pytest.approx(20 / 32)
    no_words = [{**g, "repeated_4grams": 0, "word_4grams": 0, "letters": 0, "cyrillic_letters": 0} for g in gen]
    assert "gen_repeat_4" not in vocab_metrics(rows, no_words, rounds=50, seed=0)  # 0/0 is left out, not 0


def test_held_out_texts_that_are_training_texts_are_excluded(tiny_model_dir, tmp_path):
    import datasets

    from rutune.data.russian_text import heldout_items
    from rutune.eval.suites.vocab import heldout
    from rutune.rundir import RunDir

    first_id, first_text = heldout_items()[0]
    run_dir = RunDir.for_experiment(tmp_path, "x")
    run_dir.prepare.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": "вопрос"}, {"role": "assistant", "content": first_text}]}]
    datasets.Dataset.from_list(rows).to_parquet(str(run_dir.prepare / "sft.parquet"))
    kept, excluded = heldout(VocabConfig(), run_dir)
    assert excluded >= 1 and first_id not in {i for i, _ in kept}
    assert len(kept) + excluded == len(heldout_items())


def test_adapted_weights_with_the_old_tokenizer_are_an_eval_error(tiny_model_dir, adapted, tmp_path):
    from rutune.eval.errors import EvalError

    mixed = tmp_path / "mixed"
    shutil.copytree(adapted, mixed)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(Path(tiny_model_dir) / name, mixed / name)
    with pytest.raises(EvalError) as err:
        _run(mixed, tmp_path / "out", prompts=0)
    assert "was adapted to tokenizer" in str(err.value) and "\n" not in str(err.value)
    assert not json.dumps(str(err.value)).count("Traceback")


def test_compare_prints_paired_ratios_of_two_runs_computed_from_their_items(tmp_path):
    from typer.testing import CliRunner

    from rutune.cli import app

    def write(run, model, items, gen):
        folder = tmp_path / run / "eval" / "vocab" / model
        folder.mkdir(parents=True)
        (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
        (folder / "generation.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gen))

    ids = ["a", "b", "c"]
    items = lambda tokens, bits: [{"id": i, "chars": 100, "tokens": t, "bits": b} for i, t, b in zip(ids, tokens, bits)]
    gen = lambda chars, text: [{"id": i, "chars": c, "seconds": 2.0, "text": text} for i, c in zip(ids, chars)]
    write("orig", "base", items([80, 80, 80], [300, 300, 300]), gen([40, 40, 40], "один два три четыре пять"))
    write("orig", "sft", items([80, 80, 80], [200, 220, 240]), [{"id": i, "chars": 40, "seconds": 2.0} for i in ids])
    write("adapt", "sft", items([40, 40, 40], [210, 231, 252]), gen([100, 100, 100], "a b c d a b c d a b c d"))
    (tmp_path / "adapt" / "train_cpu.txt").write_text("100.5 9.5\n")
    done = CliRunner().invoke(app, ["vocab", "compare", str(tmp_path / "orig"), str(tmp_path / "adapt"),
                                    "--rounds", "200"])
    assert done.exit_code == 0, done.output
    out = json.loads((tmp_path / "adapt" / "vocab_compare.json").read_text())
    assert out["chars_per_token_vs_base"]["ratio"] == pytest.approx(2.0)  # 100/40 over 100/80
    assert out["gen_chars_per_s_vs_base"]["ratio"] == pytest.approx(2.5)
    assert out["bits_per_char_vs_same_sft"]["ratio"] == pytest.approx(1.05)  # 693/660
    assert out["train_cpu_seconds"] == {"original": None, "adapted": 110.0}
    # 3 answers × (5 repeated of 9) for the loop, 0 of 2 for the base; answers without text (older runs): None
    assert out["gen_repeat_4"] == {"original base": 0.0, "original sft": None, "adapted sft": round(5 / 9, 4)}
    assert out["gen_cyrillic_share"] == {"original base": 1.0, "original sft": None, "adapted sft": 0.0}
