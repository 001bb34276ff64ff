"""The `vocab` stage with `lora:` (embedding + LM head trained fully, LoRA on the other layers, merged on save) and
the stage manifest's text sources, on the tiny model.

One LoRA experiment is trained once per module; the resume test crashes a second copy of it inside training (an
exception from a callback, after checkpoint-2 is complete) and reruns it in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_vocab_stage import NEW_TOKENS, VOCAB, _embed, _tree, _weights

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
STAGE = {**VOCAB, "lora": LORA, "max_steps": 4, "save_steps": 2}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from rutune.config import parse_config
    from rutune.train.stages import run_training

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("vocab_lora")
    cfg = parse_config(_tree(root, "lv", [STAGE]))
    (ckpt,) = run_training(cfg, show_progress=False)
    return root, root / "lv", ckpt


def test_lora_checkpoint_is_a_plain_model_with_the_adapters_merged(lora_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, run, ckpt = lora_run
    assert not (ckpt / "adapter_config.json").exists() and not (ckpt / "adapter_model.safetensors").exists()
    final, base = _weights(ckpt), _weights(Path(tiny_model_dir))
    assert not [k for k in final if "lora" in k or "modules_to_save" in k or "base_layer" in k
                or "original_module" in k]
    assert set(final) == set(base)  # the same tensor names as the original checkpoint (tied head stored once)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype="float32")
    assert model.get_input_embeddings().weight.shape[0] == 4096 + NEW_TOKENS
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    init = _weights(run / "train" / "vocab" / "adapted" / "checkpoint")
    assert torch.equal(_embed(final)[:4096], _embed(base))  # freeze_old_rows: old rows bit-identical
    moved = (_embed(final)[4096:] - _embed(init)[4096:]).abs().sum(dim=1)
    assert int((moved > 0).sum()) >= NEW_TOKENS // 2
    other = [k for k in base if "embed_tokens" not in k and "lm_head" not in k]
    changed = [k for k in other if not torch.equal(final[k], base[k])]
    # the merged LoRA delta: every targeted projection moved (norms stay untouched), nothing became NaN
    assert any(k.endswith("q_proj.weight") for k in changed) and any(k.endswith("down_proj.weight") for k in changed)
    assert not [k for k in changed if "norm" in k]
    assert all(torch.isfinite(final[k]).all() for k in changed)
    ids = torch.tensor([[5, 4096, 4097, 17]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_lora_meta_records_what_trained(lora_run):
    _, _, ckpt = lora_run
    meta = json.loads((ckpt / "meta.json").read_text())
    trained = meta["trained"]
    assert trained["lora"] is True and trained["lora_parameters"] > 0 and trained["matrices"] == 1
    assert trained["rows_trained"] == NEW_TOKENS and meta["lora_merged"] is True
    assert meta["train"]["global_steps"] == 4


def test_stage_manifest_records_text_sources_with_licences(lora_run):
    _, run, _ = lora_run
    manifest = json.loads((run / "train" / "vocab" / "manifest.json").read_text())
    assert manifest["recipe"] == "vocab" and manifest["input_hash"]  # the common keys are still there
    (source,) = manifest["text_sources"]  # wordfreq off in this config
    assert source["name"] == "rutune-samples" and source["package"] == "rutune" and source["version"]
    assert "Apache-2.0" in source["licence"] and source["used"] > 0
    assert manifest["text_split"]["merge_documents"] > 0 and manifest["text_split"]["heldout_documents"] > 0
    assert manifest["vocab"]["first_new_id"] == 4096 and manifest["vocab"]["num_new_tokens"] == NEW_TOKENS


def test_other_recipes_manifests_have_no_text_sources(tmp_path):
    from rutune.train.recipes import RECIPES

    assert RECIPES.get("sft").manifest(None, None, tmp_path) == {}
    assert RECIPES.get("preference").manifest(None, None, tmp_path) == {}


def test_lora_vocab_stage_resumes_exactly_after_a_crash(lora_run, monkeypatch):
    from transformers import TrainerCallback

    import rutune.train.trainer as runtime
    from rutune.config import parse_config
    from rutune.train.stages import run_training

    root, _, ref_ckpt = lora_run
    cfg = parse_config(_tree(root, "lv_crash", [STAGE]))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("simulated crash")

    original = runtime.stage_callbacks
    monkeypatch.setattr(runtime, "stage_callbacks", lambda *a, **k: [*original(*a, **k), Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, show_progress=False)
    monkeypatch.setattr(runtime, "stage_callbacks", original)
    trainer_dir = root / "lv_crash" / "train" / "vocab" / "trainer"
    assert (trainer_dir / "checkpoint-2" / "COMPLETE").is_file()
    assert (trainer_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()  # adapters + embedding copy
    (ckpt,) = run_training(cfg, show_progress=False)
    ref, got = _weights(ref_ckpt), _weights(ckpt)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key


def test_lora_merge_on_save_false_is_a_config_error(tmp_path):
    from rutune.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(_tree(tmp_path, "bad", [{**STAGE, "lora": {**LORA, "merge_on_save": False}}]))
    assert "merge_on_save: false is not supported in a vocab stage" in str(err.value)
