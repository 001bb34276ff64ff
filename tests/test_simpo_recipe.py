"""The simpo stage end to end on the tiny model: learning, metrics, LoRA, checkpointing, init_from, bad input."""

import json

import pytest

from _simpo_data import make_pairs, simpo_config, write_pairs
from rutune.config import ConfigError, parse_config
from rutune.train.recipes.preference import PreferenceStage
from rutune.rundir import RunDir
from rutune.train.errors import TrainError

METRIC_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
               "logps/rejected", "length/chosen", "length/rejected", "nll/chosen", "trained_tokens", "step"}


@pytest.fixture(autouse=True)
def _threads():
    import torch

    torch.set_num_threads(2)


def _run(cfg, rows=None, stage_index=-1):
    from rutune.train import preference as simpo

    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    if rows is not None:
        write_pairs(run.root, rows)
    stage = cfg.train.stages[stage_index]
    return run, simpo.run_stage(cfg, stage, run, show_progress=False)


def _metrics(run, stage="simpo"):
    path = run.train(stage) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_defaults_are_simpos_published_ones():
    stage = PreferenceStage(recipe="preference")
    loss = stage.loss
    assert (loss.name, loss.beta, loss.gamma, loss.sft_weight) == ("simpo", 2.5, 1.375, 0.0)
    assert loss.gamma / loss.beta == pytest.approx(0.55)  # SimPO's gamma_beta_ratio, Llama-3-8B-Instruct
    assert stage.learning_rate == 1e-6 and stage.warmup_ratio == 0.1 and stage.lr_scheduler == "cosine"
    assert stage.batching == "prefix_shared" and stage.init_from == "sft" and stage.name == "simpo"


@pytest.mark.parametrize("beta", [0, -1.0])
def test_non_positive_beta_is_a_config_error_at_its_loss_key(tmp_path, beta):
    with pytest.raises(ConfigError, match=r"train\.stages\.0\.loss\.beta"):
        simpo_config(tmp_path, stage={"beta": beta})


def test_unknown_objective_name_is_a_config_error_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.stages\.0\.loss: unknown name 'simp'; did you mean 'simpo'"):
        simpo_config(tmp_path, stage={"loss": {"name": "simp"}})


def test_a_loss_key_of_another_objective_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing: unknown key"):
        simpo_config(tmp_path, stage={"loss": {"name": "simpo", "label_smoothing": 0.1}})


def test_loss_parameters_are_validated_in_the_config_model_not_at_train_time():
    """One place validates: building a stage with beta 0 in code fails in pydantic, before any trainer."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="beta"):
        PreferenceStage(recipe="preference", loss={"name": "simpo", "beta": 0.0})


@pytest.mark.parametrize("batching", ["prefix_shared", "concat"])
def test_short_training_separates_pairs_and_logs_metrics(tmp_path, batching):
    cfg = simpo_config(tmp_path, stage={"max_steps": 16, "batching": batching, "logging_steps": 4})
    run, ckpt = _run(cfg, make_pairs(48))
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert METRIC_KEYS <= rows[0].keys()
    gamma = cfg.train.stages[0].loss.gamma
    assert rows[0]["rewards/margin"] < gamma
    assert rows[-1]["rewards/accuracy"] >= 0.9
    assert rows[-1]["rewards/margin"] > gamma
    assert rows[-1]["loss"] < rows[0]["loss"]
    last = rows[-1]
    assert last["rewards/margin"] == pytest.approx(last["rewards/chosen"] - last["rewards/rejected"], abs=1e-4)
    assert last["rewards/chosen"] == pytest.approx(cfg.train.stages[0].loss.beta * last["logps/chosen"], rel=1e-4)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["recipe"] == "preference" and meta["objective"]["name"] == "simpo"
    assert meta["objective"]["gamma"] / meta["objective"]["beta"] == pytest.approx(0.55)
    assert meta["data_rows"]["kept"] == 48
    assert (run.train("simpo") / "loss.png").stat().st_size > 1000
    assert (ckpt / "model.safetensors").exists()


def test_both_batchings_train_to_the_same_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    weights = {}
    for batching in ("prefix_shared", "concat"):
        cfg = simpo_config(tmp_path / batching, stage={"max_steps": 3, "batching": batching})
        _, ckpt = _run(cfg, make_pairs(16))
        weights[batching] = load_file(str(ckpt / "model.safetensors"))
    for k, w in weights["concat"].items():
        torch.testing.assert_close(weights["prefix_shared"][k], w, atol=2e-5, rtol=1e-4, msg=k)


def test_lora_and_gradient_checkpointing(tmp_path):
    import torch
    from safetensors.torch import load_file

    from rutune.models import tiny_model_path

    merged = {}
    for checkpointing in (True, False):
        cfg = simpo_config(tmp_path / str(checkpointing), stage={
            "max_steps": 4, "gradient_checkpointing": checkpointing, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
        _, ckpt = _run(cfg, make_pairs(16))
        meta = json.loads((ckpt / "meta.json").read_text())
        assert meta["lora"] and meta["lora_merged"]
        merged[checkpointing] = load_file(str(ckpt / "model.safetensors"))
    base = load_file(str(tiny_model_path() / "model.safetensors"))
    changed = [k for k in base if "proj" in k and not torch.equal(base[k], merged[True][k])]
    assert changed, "merged LoRA weights equal the base model"
    assert all(torch.equal(base[k], merged[True][k]) for k in base if "norm" in k)  # LoRA: linear layers only
    for k, w in merged[False].items():  # recomputing activations does not change the result
        torch.testing.assert_close(merged[True][k], w, atol=1e-6, rtol=1e-5, msg=k)


def test_init_from_an_sft_stage_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from rutune.models import build_tiny_model, tiny_model_path

    sft = {"recipe": "sft", "name": "sft", "init_from": "base"}
    cfg = simpo_config(tmp_path, stages_before=[sft], stage={"init_from": "sft", "max_steps": 2})
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    sft_ckpt = run.checkpoint("sft")
    build_tiny_model(sft_ckpt, seed=123)  # stands in for a trained SFT checkpoint: different weights from base
    from_sft = load_file(str(sft_ckpt / "model.safetensors"))
    _, ckpt = _run(cfg, make_pairs(8))
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["init_path"] == str(sft_ckpt)
    out = load_file(str(ckpt / "model.safetensors"))
    base = load_file(str(tiny_model_path() / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"  # norms start at 1 in both; projections differ by seed
    # two small steps move weights a little: closer to the SFT start than to the base model
    assert (out[key] - from_sft[key]).abs().max() < (out[key] - base[key]).abs().max()


def test_init_from_missing_stage_checkpoint_is_one_line_error(tmp_path):
    sft = {"recipe": "sft", "name": "sft", "init_from": "base"}
    cfg = simpo_config(tmp_path, stages_before=[sft], stage={"init_from": "sft"})
    with pytest.raises(TrainError, match="run `rutune train CONFIG --stage sft` first"):
        _run(cfg, make_pairs(4))


def test_bad_pairs_are_counted_and_over_budget_pairs_follow_overlength(tmp_path):
    from rutune.models import tiny_model_path
    from rutune.train.preference import tokenize_pairs
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    long_prompt = [{"role": "system", "content": "документ " * 300}, {"role": "user", "content": "вопрос"}]
    prompts = [[{"role": "user", "content": "привет"}]] * 3 + [long_prompt]
    chosen = ["ответ", "  ", "тот же", "короткий ответ"]
    rejected = ["другой", "нет", "тот же", "плохой ответ"]
    for overlength, expect in (("truncate_prompt", {"truncated_prompt": 1, "kept": 2}),
                               ("drop", {"dropped_overlength": 1, "kept": 1})):
        counts = {}
        kept = tokenize_pairs(tok, prompts, chosen, rejected, max_tokens=64, overlength=overlength, counts=counts)
        assert counts == {"dropped_empty_response": 1, "dropped_identical": 1, **expect}
        assert len(kept) == expect["kept"]
        assert all(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 64 for p in kept)


def test_prompt_ending_with_assistant_names_file_and_row(tmp_path):
    rows = make_pairs(3, long_every=0)
    rows[2]["prompt"] = rows[2]["prompt"] + [{"role": "assistant", "content": "уже ответил"}]
    cfg = simpo_config(tmp_path)
    with pytest.raises(TrainError, match=r"preference\.parquet row 2: prompt: ends with an assistant message"):
        _run(cfg, rows)


def test_missing_or_unusable_data_are_one_line_errors(tmp_path):
    cfg = simpo_config(tmp_path)
    with pytest.raises(TrainError, match="prepared preference data not found"):
        _run(cfg)
    rows = make_pairs(2)
    for r in rows:
        r["rejected"] = r["chosen"]
    with pytest.raises(TrainError, match="no usable pair among 2 rows .*dropped_identical 2"):
        _run(cfg, rows)


def test_prefix_shared_refuses_flash_attention(tmp_path):
    cfg = simpo_config(tmp_path, base_model={"path": "tiny", "attn_implementation": "flash_attention_2"})
    with pytest.raises(TrainError, match="batching: concat"):
        _run(cfg, make_pairs(2))


@pytest.mark.slow
def test_bundled_saiga_pairs_through_prepare_and_simpo(tmp_path):
    """The bundled saiga_preferences sample (hub schema) → prepare → simpo: the tiny model learns to rank them."""
    from rutune.data.prepare import run_prepare
    from rutune.train import preference as simpo

    cfg = parse_config({
        "name": "b", "output_root": str(tmp_path), "seed": 7,
        "data": {"preference": {"sources": [{"name": "saiga_preferences", "percent": 100}], "max_tokens": 1024}},
        "train": {"stages": [{"recipe": "preference", "init_from": "base", "learning_rate": 2e-3, "max_steps": 24,
                              "per_device_batch_size": 8, "warmup_ratio": 0.0, "lr_scheduler": "constant",
                              "save_steps": 1000, "precision": "fp32", "logging_steps": 3}]}})
    run_prepare(cfg)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    simpo.run_stage(cfg, cfg.train.stages[0], run, show_progress=False)
    rows = _metrics(run)
    gamma = cfg.train.stages[0].loss.gamma
    assert rows[0]["rewards/margin"] < gamma
    assert rows[-1]["rewards/accuracy"] >= 0.9 and rows[-1]["rewards/margin"] > gamma
    counts = json.loads((run.train("simpo") / "data_counts.json").read_text())
    assert counts["kept"] > 40  # the prepare stage's filters leave ~51 of the 72 rows
