"""The `on_policy` preference source on the tiny model: exact pair counts, rejected = the model's own greedy answer,
the generation cache (zero generations on a rerun or in a second experiment, regenerated for other weights, a
torn line), the split by prompt (held-out prompts in neither the training pairs nor the SFT training rows), dropped
and counted pairs, and one-line errors naming the YAML key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
from sample_rows import gm_row, write_jsonl

from rutune.config import ConfigError, parse_config
from rutune.data import onpolicy
from rutune.data.prepare import prepare_hash, run_prepare
from rutune.data.sources import DataError

N_ROWS, HOLDOUT = 20, 25  # 20 distinct GM prompts; 25% of them (5) are SFT held-out rows
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with its matrices re-drawn larger (seeded): the embedded tiny model's greedy answer is only
    newlines, this one's differs by prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("noisy-tiny")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(out)
    return out


@pytest.fixture
def gm_file(tmp_path):
    return write_jsonl(tmp_path / "gm.jsonl", [gm_row(i) for i in range(N_ROWS)])


def tree(gm_file, root, *, name="t", base=None, **on_policy):
    src = {"name": "on_policy", "from": "grandmaster_pro_max", "percent": 100, "max_new_tokens": NEW_TOKENS,
           "batch_size": 4, **on_policy}
    return {"name": name, "seed": 5, "output_root": str(root), "base_model": {"path": str(base or "tiny")},
            "data": {"sft": {"holdout_percent": HOLDOUT, "sources": [
                        {"name": "grandmaster_pro_max", "path": str(gm_file), "percent": 100}]},
                     "preference": {"sources": [src]}}}


@pytest.fixture
def counter(monkeypatch):
    """Counts prompts sent to the model (every generation goes through `onpolicy.generate_batch`)."""
    calls = {"prompts": 0}
    real = onpolicy.generate_batch

    def counted(model, tokenizer, texts, max_new_tokens):
        calls["prompts"] += len(texts)
        return real(model, tokenizer, texts, max_new_tokens)

    monkeypatch.setattr(onpolicy, "generate_batch", counted)
    return calls


def pairs(root, name, file):
    return datasets.Dataset.from_parquet(str(root / name / "prepare" / file)).to_list()


def first_user(row, key):
    return next(m["content"] for m in row[key] if m["role"] == "user")


def test_pairs_counts_greedy_answers_split_and_cache(gm_file, tmp_path, model_dir, counter):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "runs"
    cfg = parse_config(tree(gm_file, root, base=model_dir))
    m = run_prepare(cfg)
    src = m["preference"]["sources"][0]
    # exact counts: 15 SFT training rows → 15 training pairs, 5 SFT held-out rows → 5 held-out pairs
    assert m["sft"]["rows"] == 15 and m["sft"]["holdout"]["rows"] == 5
    assert m["preference"]["rows"] == 15 and m["preference"]["holdout"]["rows"] == 5
    assert src["held_out"] == 5 and src["available"] == 15 and src["dropped"] == {}
    assert src["generation"]["generated"] == 20 and src["generation"]["from_cache"] == 0
    assert counter["prompts"] == 20

    train = pairs(root, "t", "preference.parquet")
    held = pairs(root, "t", "preference_holdout.parquet")
    sft_train = pairs(root, "t", "sft.parquet")
    sft_held = pairs(root, "t", "sft_holdout.parquet")
    # split by prompt: held-out pairs come from SFT held-out rows only, never from what SFT or the pairs train on
    held_prompts = {first_user(r, "prompt") for r in held}
    assert held_prompts == {first_user(r, "messages") for r in sft_held}
    assert not held_prompts & {first_user(r, "prompt") for r in train}
    assert not held_prompts & {first_user(r, "messages") for r in sft_train}
    assert all(json.loads(r["meta"])["sft_split"] == "holdout" for r in held)
    # chosen = the dataset's answer to that prompt
    answers = {first_user(r, "messages"): r["messages"][-1]["content"] for r in sft_train + sft_held}
    assert all(r["chosen"] == answers[first_user(r, "prompt")] for r in train + held)

    # rejected = the tiny model's own greedy answer: one direct, unbatched `generate` per prompt
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    stops = onpolicy.eos_ids(model, tok)
    for r in train + held:
        text = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, pad_token_id=stops[0], eos_token_id=stops)
        new = out[0, ids.shape[1]:].tolist()
        new = new[:next((j for j, t in enumerate(new) if t in stops), len(new))]
        assert r["rejected"] == tok.decode(new, skip_special_tokens=True).strip()

    # a forced rerun and a second experiment on the same output_root: zero generations
    before = counter["prompts"]
    again = run_prepare(cfg, force=True)
    other = run_prepare(parse_config(tree(gm_file, root, name="t2", base=model_dir)))
    assert counter["prompts"] == before
    for mm in (again, other):
        assert mm["preference"]["sources"][0]["generation"]["from_cache"] == 20
        assert mm["preference"]["sources"][0]["generation"]["generated"] == 0
    assert pairs(root, "t2", "preference.parquet") == train

    # other weights (a changed config file is enough): a new prepare identity, every prompt generated again
    changed = tmp_path / "tiny-changed"
    shutil.copytree(model_dir, changed)
    conf = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**conf, "rutune_test_marker": 1}))
    cfg3 = parse_config(tree(gm_file, root, name="t3", base=model_dir, model=str(changed)))
    assert prepare_hash(cfg3) != prepare_hash(parse_config(tree(gm_file, root, name="t3", base=model_dir)))
    m3 = run_prepare(cfg3)
    assert m3["preference"]["sources"][0]["generation"]["generated"] == 20
    assert counter["prompts"] == before + 20
    # other generation settings: another cache file, another identity
    assert onpolicy.cache_file(root, "w", 6) != onpolicy.cache_file(root, "w", 7)


def test_interrupted_cache_resumes(gm_file, tmp_path, model_dir, counter):
    root = tmp_path / "runs"
    cfg = parse_config(tree(gm_file, root, base=model_dir))
    m = run_prepare(cfg)
    cache = m["preference"]["sources"][0]["generation"]["cache"]
    lines = Path(cache).read_text(encoding="utf-8").splitlines()
    # keep 7 whole lines and a torn eighth (an interrupted append)
    with open(cache, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:7]) + "\n" + lines[7][:10])
    before = counter["prompts"]
    m2 = run_prepare(cfg, force=True)
    assert counter["prompts"] - before == 13
    assert m2["preference"]["sources"][0]["generation"]["from_cache"] == 7
    assert m2["preference"]["content_hash"] == m["preference"]["content_hash"]
    assert len(onpolicy.GenerationCache(Path(cache)).answers) == 20


def test_greedy_equal_to_chosen_and_overlaps_are_dropped_and_counted(tmp_path, monkeypatch):
    # every row shares one long (13+ words) answer, and the "model" answers one prompt with exactly its chosen text
    answer = "Это длинный ответ из тринадцати и более слов, который повторяется во всех строках набора данных."
    rows = [gm_row(i) for i in range(N_ROWS)]
    for r in rows:
        r["conversation"][1]["content"] = answer + f" Номер {r['cluster']}."
    gm = write_jsonl(tmp_path / "gm.jsonl", rows)

    def fake(model, tokenizer, texts, max_new_tokens):
        return [answer + " Номер 0." if "о Москве" in t else "Не знаю." for t in texts]

    monkeypatch.setattr(onpolicy, "generate_batch", fake)
    m = run_prepare(parse_config(tree(gm, tmp_path / "runs")))
    src = m["preference"]["sources"][0]
    # the 5 held-out rows all share 13-grams with SFT training text; gm_row(0) ("о Москве") is a training row
    assert src["dropped"] == {"overlaps_sft_train": 5, "greedy_equals_chosen": 1}
    assert src["held_out"] == 0 and src["available"] == 14 and src["generation"]["prompts"] == 15


def test_max_prompts_and_non_russian_answers(gm_file, tmp_path, model_dir):
    rows = [gm_row(i) for i in range(N_ROWS)]
    for r in rows[:4]:
        r["conversation"][1]["content"] = "An English answer only."
    gm = write_jsonl(tmp_path / "gm.jsonl", rows)
    root = tmp_path / "runs"
    m = run_prepare(parse_config(tree(gm, root, base=model_dir, max_prompts=6, chosen_max_tokens=3)))
    src = m["preference"]["sources"][0]
    assert src["dropped"] == {"answer_not_russian": 4, "max_prompts": 10}
    assert src["generation"]["prompts"] == 6 and src["available"] + src["held_out"] == 6
    # chosen_max_tokens: each chosen answer is the prefix of the dataset answer made of its first 3 tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    answers = {r["conversation"][0]["content"]: r["conversation"][1]["content"] for r in rows}
    got = pairs(root, "t", "preference.parquet") + pairs(root, "t", "preference_holdout.parquet")
    assert len(got) == 6
    for r in got:
        full = answers[first_user(r, "prompt")]
        assert full.startswith(r["chosen"]) and len(r["chosen"]) < len(full)
        assert len(tok(r["chosen"], add_special_tokens=False)["input_ids"]) <= 3


def test_bad_inputs_are_one_line_errors_naming_the_key(gm_file, tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(ConfigError) as e:
        parse_config(tree(gm_file, root, **{"from": "no_such_source"}))
    assert "data.preference.sources.0.from" in str(e.value) and "no_such_source" in str(e.value)

    t = tree(gm_file, root, **{"from": "saiga_scored"})
    with pytest.raises(DataError, match=r"^data\.preference\.sources\.0\.from \(on_policy\): saiga_scored is not a "
                                        r"source of data\.sft") as e:
        run_prepare(parse_config(t))
    assert "\n" not in str(e.value)

    with pytest.raises(DataError, match=r"^data\.preference\.sources\.0\.model \(on_policy\): /no/such/model"):
        run_prepare(parse_config(tree(gm_file, root, model="/no/such/model")))
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^data\.preference\.sources\.0\.model \(on_policy\): .*not_a_model.*"
                                        r"cannot be loaded") as e:
        run_prepare(parse_config(tree(gm_file, root, model=str(empty))))
    assert "\n" not in str(e.value)

    rows = [gm_row(i) for i in range(N_ROWS)]
    for r in rows:
        r["conversation"][1]["content"] = "Only English here."
    gm = write_jsonl(tmp_path / "en.jsonl", rows)
    with pytest.raises(DataError, match=r"^data\.preference\.sources\.0\.from \(on_policy\): no usable prompts .*"
                                        r"answer_not_russian 20"):
        run_prepare(parse_config(tree(gm, root)))

    with pytest.raises(ConfigError, match="path"):
        parse_config(tree(gm_file, root, path="x.jsonl"))
