"""The preference objectives beside SimPO, wired through the preference stage on the tiny model: config defaults and
bad input, the cached reference pass (counted, reused, invalidated, aligned with the pairs), ORPO's prompt targets,
and every batching mode."""

import json
import math

import pytest
import torch

from _simpo_data import make_pairs, simpo_config, write_pairs
from rutune.config import ConfigError
from rutune.rundir import RunDir
from rutune.train.errors import TrainError
from rutune.train.recipes.preference import PreferenceStage
from rutune.train.reference import PASSES


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def _config(tmp_path, loss, *, name="t", **stage):
    return simpo_config(tmp_path, stage={"name": loss["name"], "loss": loss, "logging_steps": 1, **stage}, name=name)


def _run(cfg, rows=None):
    from rutune.train import preference

    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    if rows is not None:
        write_pairs(run.root, rows)
    stage = cfg.train.stages[-1]
    return run, preference.run_stage(cfg, stage, run, show_progress=False)


def _metrics(run, stage):
    return [json.loads(line) for line in (run.train(stage) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("name, expected", [
    ("dpo", {"beta": 0.1, "label_smoothing": 0.0, "sft_weight": 0.0}),
    ("ipo", {"beta": 0.1}), ("hinge", {"beta": 0.1}), ("robust", {"beta": 0.1, "label_smoothing": 0.0}),
    ("apo_zero", {"beta": 0.1}), ("sigmoid_norm", {"beta": 0.1}), ("orpo", {"beta": 0.1}),
    ("smpo", {"beta": 1.2, "target_margin": 0.35, "chosen_sft_ratio": 0.8, "variant": "smooth_lower_bound"}),
])
def test_objective_defaults_are_the_reference_implementations(name, expected):
    loss = PreferenceStage(recipe="preference", loss={"name": name}).loss.model_dump()
    assert loss == {"name": name, **expected}


@pytest.mark.parametrize("loss, where", [
    ({"name": "dpo", "beta": 0}, r"train\.stages\.0\.loss\.beta"),
    ({"name": "dpo", "label_smoothing": 0.5}, r"train\.stages\.0\.loss\.label_smoothing"),
    ({"name": "robust", "label_smoothing": -0.1}, r"train\.stages\.0\.loss\.label_smoothing"),
    ({"name": "smpo", "chosen_sft_ratio": 1.5}, r"train\.stages\.0\.loss\.chosen_sft_ratio"),
    ({"name": "smpo", "variant": "smooth_double_bound"}, r"train\.stages\.0\.loss\.variant"),
    ({"name": "dpo", "label_smothing": 0.1}, r"label_smothing: unknown key.*did you mean `label_smoothing`"),
    ({"name": "dpp"}, r"unknown name 'dpp'; did you mean 'dpo'"),
])
def test_bad_objective_parameters_are_config_errors_at_their_key(tmp_path, loss, where):
    with pytest.raises(ConfigError, match=where):
        _config(tmp_path, loss)


def test_a_reference_for_a_reference_free_objective_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="objective 'smpo' uses no reference model"):
        _config(tmp_path, {"name": "smpo"}, reference="some/model")


def test_unresolvable_named_reference_is_one_line_error_before_the_stage_starts(tmp_path):
    from rutune.train.recipes import RECIPES

    cfg = _config(tmp_path, {"name": "dpo"}, reference=str(tmp_path / "missing-ref"))
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    write_pairs(run.root, make_pairs(8))
    with pytest.raises(TrainError, match=r"^train\.stages\.0\.reference: .*missing-ref.*needs a reference") as e:
        RECIPES.get("preference").check(cfg, cfg.train.stages[0], run)
    assert "\n" not in str(e.value)
    assert not run.train("dpo").exists()


# ---------------------------------------------------------------- reference pass
def test_dpo_reference_is_aligned_with_each_pair_in_every_batching_and_computed_once(tmp_path):
    """Policy = reference at step 1, so every pair's log-ratio is 0 and the DPO loss is exactly ln 2 — only if each
    pair gets its own reference sums (the sampler shuffles; a misaligned pair would move the loss). The three
    batchings share one cached pass (same pairs, same weights)."""
    rows = make_pairs(16)
    before = PASSES["computed"]
    first = {}
    for batching in ("prefix_shared", "concat", "packed"):
        cfg = _config(tmp_path, {"name": "dpo", "beta": 0.5}, name=f"dpo-{batching}", batching=batching,
                      max_steps=1)
        run, _ = _run(cfg, rows)
        m = _metrics(run, "dpo")
        first[batching] = m[0]
    assert PASSES["computed"] - before == 1
    for batching, row in first.items():
        # fp32 noise from another padding is ~1e-5 in a log-ratio; one misaligned pair moves the loss by ~0.1
        assert row["loss"] == pytest.approx(math.log(2), abs=2e-5), batching
        assert abs(row["rewards/margin"]) < 2e-5, batching
    assert len(list((tmp_path / "runs" / "_reference").glob("*.pt"))) == 1


def test_reference_cache_is_reused_by_a_rerun_and_recomputed_for_other_data_or_a_foreign_file(tmp_path):
    from rutune.train.reference import cache_file, load_cached

    cfg = _config(tmp_path, {"name": "ipo"}, max_steps=1)
    before = PASSES["computed"]
    run, _ = _run(cfg, make_pairs(8))
    assert PASSES["computed"] - before == 1
    (cached,) = (tmp_path / "runs" / "_reference").glob("*.pt")
    stamp = cached.stat().st_mtime_ns

    from rutune.train import preference  # a forced rerun of the stage: no second pass, the file untouched
    preference.run_stage(cfg, cfg.train.stages[0], run, show_progress=False)
    assert PASSES["computed"] - before == 1 and cached.stat().st_mtime_ns == stamp
    meta = json.loads((run.checkpoint("ipo") / "meta.json").read_text())
    assert meta["reference"]["reused"] is True and meta["reference"]["file"] == str(cached)

    other = _config(tmp_path, {"name": "ipo"}, max_steps=1, name="other-data")
    _run(other, make_pairs(8, seed=5))  # other pairs, same weights: another key, another pass
    assert PASSES["computed"] - before == 2
    assert len(list((tmp_path / "runs" / "_reference").glob("*.pt"))) == 2

    # a file whose stored key disagrees with its name (copied from other inputs) is not trusted
    key = cached.stem
    blob = torch.load(cached, weights_only=True)
    assert load_cached(cache_file(tmp_path / "runs", key), key, 8) is not None
    torch.save({**blob, "key": "something-else"}, cached)
    assert load_cached(cached, key, 8) is None
    assert load_cached(cache_file(tmp_path / "runs", key), key, 9) is None  # other pair count
    preference.run_stage(cfg, cfg.train.stages[0], run, show_progress=False)
    assert PASSES["computed"] - before == 3
    assert torch.load(cached, weights_only=True)["key"] == key


def test_weights_hash_follows_the_weight_files_content(tmp_path, tiny_model_dir):
    import shutil

    from rutune.train.reference import weights_hash

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    assert weights_hash(str(copy)) == weights_hash(str(tiny_model_dir))
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert weights_hash(str(copy)) != weights_hash(str(tiny_model_dir))


def test_lora_reference_equals_the_adapters_disabled_model(tmp_path, tiny_model_dir):
    """With non-zero adapters the LoRA model's own sums differ; the reference pass disables them and gives exactly
    the plain model's sums."""
    from types import SimpleNamespace

    from rutune.train.model_setup import apply_lora, load_stage_model
    from rutune.train.pref_batch import collate_pairs
    from rutune.train.reference import _run_pass, compute_reference
    from rutune.train.preference import tokenize_pairs
    from rutune.train.stage_io import load_stage_tokenizer
    import datasets

    tok = load_stage_tokenizer(str(tiny_model_dir))
    rows = make_pairs(6)
    pairs = tokenize_pairs(tok, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                           [r["rejected"] for r in rows], max_tokens=512, overlength="drop", counts={})
    ds = datasets.Dataset.from_dict({"prompt_ids": [p.prompt_ids for p in pairs],
                                     "chosen_ids": [p.chosen_ids for p in pairs],
                                     "rejected_ids": [p.rejected_ids for p in pairs]})
    collate = lambda f: collate_pairs(f, batching="prefix_shared", pad_id=tok.pad_token_id)  # noqa: E731
    plain = load_stage_model(str(tiny_model_dir))
    expected = compute_reference(plain, ds, collate, batch_size=4, batching="prefix_shared",
                                 device=torch.device("cpu"))
    lora = apply_lora(load_stage_model(str(tiny_model_dir)),
                      SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    enabled = compute_reference(lora, ds, collate, batch_size=4, batching="prefix_shared",
                                device=torch.device("cpu"))
    assert (enabled - expected).abs().max() > 1e-2  # the adapters do change the model
    stage = SimpleNamespace(reference=None, per_device_batch_size=4, batching="prefix_shared")
    args = SimpleNamespace(device=torch.device("cpu"))
    got = _run_pass(stage, lora, ds, collate, args, source=str(tiny_model_dir), attn=None, precision="fp32")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- ORPO prompt targets and batchings
def test_orpo_prompt_targets_count_every_prompt_token_but_the_first_in_every_layout(tiny_model_dir):
    from rutune.train.model_setup import load_stage_model
    from rutune.train.pref_batch import collate_pairs, forward_logps
    from rutune.attention import PAIR_PACKED

    pairs = [{"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10], "rejected_ids": [11]},
             {"prompt_ids": [12], "chosen_ids": [13, 14, 15], "rejected_ids": [16, 17]},
             {"prompt_ids": [18, 19, 20, 21, 22, 23, 24], "chosen_ids": [25], "rejected_ids": [26, 27, 28]}]
    model = load_stage_model(str(tiny_model_dir))
    sums = {}
    for batching in ("concat", "prefix_shared", "packed"):
        model.set_attn_implementation(PAIR_PACKED if batching == "packed" else "sdpa")
        batch = collate_pairs(pairs, batching=batching, pad_id=0, with_prompt=True)
        with torch.no_grad():
            _, lp = forward_logps(model, batch, batching, with_prompt=True)
        assert lp.count.tolist() == [2, 3, 1, 1, 2, 3, 3, 0, 6], batching
        sums[batching] = lp.sum
    torch.testing.assert_close(sums["prefix_shared"], sums["concat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(sums["packed"], sums["concat"], atol=1e-5, rtol=0)
    # the prompt segment of pair 0 is log p(6|5) + log p(7|5,6) + log p(8|5,6,7), a plain forward's
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0].log_softmax(-1)
    assert float(sums["concat"][6]) == pytest.approx(float(logits[[0, 1, 2], [6, 7, 8]].sum()), abs=1e-5)


def test_packed_trains_to_the_same_weights_as_concat_through_the_recipe(tmp_path):
    from safetensors.torch import load_file

    rows = make_pairs(16)
    weights, losses = {}, {}
    for batching in ("concat", "packed"):
        cfg = _config(tmp_path, {"name": "smpo"}, name=f"smpo-{batching}", batching=batching, max_steps=2)
        run, ckpt = _run(cfg, rows)
        losses[batching] = [r["loss"] for r in _metrics(run, "smpo")]
        weights[batching] = load_file(str(ckpt / "model.safetensors"))
    assert losses["packed"] == pytest.approx(losses["concat"], abs=1e-5)
    assert losses["concat"][0] != pytest.approx(losses["concat"][-1], abs=1e-3)  # it did train
    # Adam's per-step update is ~lr = 1e-3 whatever the gradient's size, so where a gradient is tiny the fp32 noise
    # between layouts can flip part of an update: measured ≤ 4e-5 (prefix_shared vs concat: 1e-5), far below 1e-3.
    for k, v in weights["concat"].items():
        torch.testing.assert_close(weights["packed"][k], v, atol=1e-4, rtol=1e-4, msg=k)


def test_packed_batching_forces_the_pair_packed_attention():
    from types import SimpleNamespace

    from rutune.attention import PAIR_PACKED
    from rutune.train.preference import choose_attention

    assert choose_attention(SimpleNamespace(attn_implementation="sdpa"), "packed") == PAIR_PACKED
    assert choose_attention(SimpleNamespace(attn_implementation="eager"), "packed") == PAIR_PACKED
    assert choose_attention(None, "packed") == PAIR_PACKED


def test_orpo_trains_with_its_nll_over_prompt_and_chosen(tmp_path):
    cfg = _config(tmp_path, {"name": "orpo", "beta": 0.2}, name="orpo", max_steps=1)
    run, _ = _run(cfg, make_pairs(8))
    row = _metrics(run, "orpo")[0]
    assert {"extra/nll", "extra/log_odds", "rewards/accuracy"} <= row.keys()
    assert row["loss"] > row["extra/nll"] > 0  # loss = NLL + β·(−log σ(ℓ_or)) with a positive second term


def test_dpo_with_lora_and_gradient_accumulation_starts_at_ln2_and_learns(tmp_path):
    """LoRA's reference is the adapters-disabled model = the starting point (B = 0), so step 1 is exactly ln 2; with
    2 micro-batches accumulated the margin then grows."""
    cfg = _config(tmp_path, {"name": "dpo", "beta": 0.5}, name="dpo-lora", max_steps=4, per_device_batch_size=2,
                  gradient_accumulation_steps=2, batching="packed",
                  lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    run, _ = _run(cfg, make_pairs(16))
    rows = _metrics(run, "dpo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[-1]["rewards/margin"] > 1e-3 and rows[-1]["loss"] < math.log(2)


def test_a_named_reference_models_weights_are_part_of_the_stage_identity(tmp_path, tiny_model_dir):
    """Changing the weights of a named reference reruns the stage (its cached log-probs would be stale)."""
    import shutil

    from rutune.train.stages import stage_input_hash

    ref = tmp_path / "ref"
    shutil.copytree(tiny_model_dir, ref)
    cfg = _config(tmp_path, {"name": "dpo"}, reference=str(ref))
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    before = stage_input_hash(cfg, cfg.train.stages[0], run)
    assert stage_input_hash(cfg, cfg.train.stages[0], run) == before
    weights = next(ref.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    assert stage_input_hash(cfg, cfg.train.stages[0], run) != before
