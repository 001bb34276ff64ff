"""The `vocab` recipe on the tiny model: extension → mean init → embedding training → SFT on the adapted model.

One experiment (vocab stage with old rows frozen, then an `sft` stage with `init_from: vocab`) is trained once per
module; the tests read what it left. Resume after SIGKILL is the slow test at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _sft_data import make_rows, write_prepared

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 24
VOCAB = {"recipe": "vocab", "new_tokens": NEW_TOKENS, "text": {"use_wordfreq": False}, "max_tokens": 64,
         "max_steps": 3, "per_device_batch_size": 2, "save_steps": 2, "precision": "fp32", "learning_rate": 0.05,
         "warmup_ratio": 0.0, "lr_scheduler": "constant", "freeze_old_rows": True}
SFT = {"recipe": "sft", "init_from": "vocab", "max_steps": 2, "per_device_batch_size": 4, "precision": "fp32",
       "save_steps": 100}


def _tree(root: Path, name: str, stages: list[dict]) -> dict:
    return {"name": name, "seed": 3, "output_root": str(root),
            "data": {"sft": {"sources": [{"name": "chat_messages", "path": "unused.jsonl", "percent": 100}],
                             "max_tokens": 256}},
            "train": {"stages": stages}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rutune.config import parse_config
    from rutune.train.stages import run_training

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("vocab_stage")
    cfg = parse_config(_tree(root, "v", [VOCAB, SFT]))
    write_prepared(root / "v", make_rows(12, seed=1))
    vocab_ckpt, sft_ckpt = run_training(cfg, show_progress=False)
    return root / "v", vocab_ckpt, sft_ckpt


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _embed(weights: dict) -> torch.Tensor:
    return next(v for k, v in weights.items() if k.endswith("embed_tokens.weight"))


def test_new_rows_train_while_frozen_old_rows_and_other_layers_stay_bit_identical(trained, tiny_model_dir):
    run, vocab_ckpt, _ = trained
    base, init, final = (_weights(Path(tiny_model_dir)), _weights(run / "train" / "vocab" / "adapted" / "checkpoint"),
                         _weights(vocab_ckpt))
    assert _embed(final).shape[0] == 4096 + NEW_TOKENS
    assert torch.equal(_embed(final)[:4096], _embed(base))  # old rows frozen by the gradient mask
    moved = (_embed(final)[4096:] - _embed(init)[4096:]).abs().sum(dim=1)
    assert int((moved > 0).sum()) >= NEW_TOKENS // 2  # the new rows seen in the training blocks moved
    for key, value in base.items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert torch.equal(final[key], value), key  # everything else frozen


def test_checkpoint_carries_adapted_tokenizer_and_pairing_record(trained):
    from transformers import AutoTokenizer

    from rutune.data.vocab import VOCAB_RECORD, check_vocab_pairing, extension_of

    _, vocab_ckpt, sft_ckpt = trained
    tok = AutoTokenizer.from_pretrained(str(vocab_ckpt))
    assert len(tok) == 4096 + NEW_TOKENS and tok.convert_tokens_to_ids("<|im_end|>") < 4096
    assert extension_of(tok)["first_new_id"] == 4096
    assert (vocab_ckpt / VOCAB_RECORD).is_file()
    check_vocab_pairing(vocab_ckpt, vocab_ckpt)
    # the SFT stage after it trained on, and saved, the adapted tokenizer (the extension record survives a save)
    sft_tok = AutoTokenizer.from_pretrained(str(sft_ckpt))
    assert len(sft_tok) == 4096 + NEW_TOKENS and extension_of(sft_tok)["num_new_tokens"] == NEW_TOKENS
    assert json.loads((sft_ckpt / "config.json").read_text())["vocab_size"] == 4096 + NEW_TOKENS


def test_meta_records_text_sources_with_licences_and_the_extension(trained):
    from rutune.data.russian_text import heldout_items, merge_side_texts

    _, vocab_ckpt, _ = trained
    meta = json.loads((vocab_ckpt / "meta.json").read_text())
    sources = {s["name"]: s for s in meta["text"]["sources"]}
    assert set(sources) == {"rutune-samples"}  # wordfreq off in this config
    assert "Apache-2.0" in sources["rutune-samples"]["licence"]
    assert meta["extension"]["num_new_tokens"] == NEW_TOKENS and meta["extension"]["first_new_id"] == 4096
    assert meta["trained"]["rows_trained"] == NEW_TOKENS and meta["train"]["global_steps"] == 3
    held = {t for _, t in heldout_items()}
    assert not held & set(merge_side_texts())  # training text never includes a held-out text
    assert set(meta["text"]["heldout_documents"]).isdisjoint(meta["text"]["merge_documents"])


def test_sft_masks_on_the_adapted_tokenizer_equal_trl(trained):
    pytest.importorskip("trl")
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rutune.data.templates import load_tokenizer, tokenize_chats
    from rutune.models import chatml_template

    _, vocab_ckpt, _ = trained
    tok = load_tokenizer(str(vocab_ckpt))
    new_words = [tok.decode([i]).strip() for i in range(4096, 4096 + NEW_TOKENS)]  # text the new tokens build
    chats = [r["messages"] for r in make_rows(8, seed=4)] + [
        [{"role": "user", "content": "Скажи: " + " ".join(new_words[:8])},
         {"role": "assistant", "content": " ".join(new_words[8:])}],
        [{"role": "system", "content": "Отвечай кратко."}, {"role": "user", "content": new_words[0]},
         {"role": "assistant", "content": new_words[1] + "!"}, {"role": "user", "content": "Ещё"},
         {"role": "assistant", "content": " " + new_words[2] + " "}]]
    ours = tokenize_chats(tok, chats)
    trl_tok = AutoTokenizer.from_pretrained(str(vocab_ckpt))
    trl_tok.chat_template = chatml_template(generation_markers=True)
    model = AutoModelForCausalLM.from_pretrained(str(vocab_ckpt), dtype="float32")
    args = SFTConfig(output_dir=str(vocab_ckpt.parent / "trl"), assistant_only_loss=True, max_length=None,
                     report_to="none", per_device_train_batch_size=4, use_cpu=True, shuffle_dataset=False,
                     packing=False, save_strategy="no")
    trainer = SFTTrainer(model=model, args=args, processing_class=trl_tok,
                         train_dataset=datasets.Dataset.from_list([{"messages": c} for c in chats]))
    new_ids = 0
    for i, row in enumerate(ours):
        theirs = trainer.data_collator([{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")}])
        assert row.input_ids == theirs["input_ids"][0].tolist(), f"chat {i}: input_ids differ"
        assert row.labels == theirs["labels"][0].tolist(), f"chat {i}: labels differ"
        new_ids += sum(1 for t in row.input_ids if t >= 4096)
    assert new_ids > 0  # the comparison covered new tokens, not only old ones


def test_freeze_mask_zeroes_old_row_gradients_and_unfrozen_trains_every_row(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rutune.train.vocab_stage import freeze_all_but_embeddings

    for frozen in (True, False):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
        info = freeze_all_but_embeddings(model, first_new_id=4000, freeze_old_rows=frozen)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == ["model.embed_tokens.weight"]  # tied head: one matrix
        ids = torch.tensor([[5, 4001, 4002, 17, 4090]])
        model(input_ids=ids, labels=ids).loss.backward()
        grad = model.get_input_embeddings().weight.grad
        assert bool(grad[4001].abs().sum() > 0)
        assert bool(grad[5].abs().sum() == 0) == frozen and bool(grad[:4000].abs().sum() == 0) == frozen
        assert info["rows_trained"] == (96 if frozen else 4096)


def test_text_blocks_join_texts_with_eos_and_drop_the_partial_tail(tiny_model_dir):
    from transformers import AutoTokenizer

    from rutune.train.vocab_stage import text_blocks

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    texts = ["привет мир", "ответ на вопрос", "книга"]
    stream = [t for x in texts for t in [*tok.encode(x, add_special_tokens=False), tok.eos_token_id]]
    blocks = text_blocks(tok, texts, 4)
    assert blocks == [stream[i:i + 4] for i in range(0, len(stream) - 3, 4)]
    assert all(len(b) == 4 for b in blocks) and sum(map(len, blocks)) == len(stream) // 4 * 4


@pytest.mark.parametrize("stage,needle", [
    ({"new_tokens": 0}, "positive number of new tokens"),
    ({"new_tokens": 2_000_000}, "not a sane extension"),
    ({"freeze_old_rows": True, "weight_decay": 0.01}, "weight_decay: 0"),
    ({"lora": {"r": 4, "merge_on_save": False}}, "merge_on_save: false is not supported in a vocab stage"),
    ({"lora": {"r": 4}, "train_embeddings": False}, "trains nothing"),
])
def test_bad_stage_settings_are_config_errors(tmp_path, stage, needle):
    from rutune.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(_tree(tmp_path, "bad", [{"recipe": "vocab", **stage}]))
    assert needle in str(err.value)


def test_empty_text_source_fails_before_the_stage_folder_exists(tmp_path):
    from rutune.config import parse_config
    from rutune.train.errors import TrainError
    from rutune.train.stages import run_training

    cfg = parse_config(_tree(tmp_path, "empty", [{**VOCAB, "text": {"use_wordfreq": False, "sample_weight": 0}}]))
    with pytest.raises(TrainError, match="nothing to learn merges from"):
        run_training(cfg, show_progress=False)
    assert not (tmp_path / "empty" / "train" / "vocab").exists()


def test_adapted_weights_with_the_old_tokenizer_are_refused_in_one_line(trained, tiny_model_dir, tmp_path):
    import shutil

    from rutune.train.errors import TrainError
    from rutune.train.stage_io import load_stage_tokenizer

    _, vocab_ckpt, _ = trained
    mixed = tmp_path / "mixed"
    shutil.copytree(vocab_ckpt, mixed)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(Path(tiny_model_dir) / name, mixed / name)
    with pytest.raises(TrainError) as err:
        load_stage_tokenizer(str(mixed))
    assert "was adapted to tokenizer" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_sigkill_during_vocab_training_then_rerun_gives_bit_identical_weights(tmp_path):
    import yaml

    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    stage = {**VOCAB, "max_steps": 6, "freeze_old_rows": False}
    runs = {}
    for name, kill in (("ref", None), ("killed", "save:4")):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(_tree(tmp_path / "runs", name, [stage])))
        if kill:
            died = subprocess.run([sys.executable, str(HERE / "_sft_kill.py"), str(config), kill], env=env,
                                  capture_output=True, text=True, timeout=600)
            assert died.returncode != 0
        done = subprocess.run([sys.executable, "-m", "rutune.cli", "train", str(config)], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        if kill:
            assert "resuming train/vocab from checkpoint-2" in done.stderr
        runs[name] = _weights(tmp_path / "runs" / name / "train" / "vocab" / "checkpoint")
    assert runs["ref"].keys() == runs["killed"].keys()
    for key in runs["ref"]:
        assert torch.equal(runs["ref"][key], runs["killed"][key]), key


def test_cli_extend_writes_tokenizer_and_checkpoint_and_rejects_a_zero_size(tmp_path):
    from typer.testing import CliRunner

    from rutune.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["vocab", "extend", "--model", "tiny", "--out", str(tmp_path / "x"),
                               "--new-tokens", "16", "--no-wordfreq"])
    assert done.exit_code == 0, done.output
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["first_new_id"] == 4096 and line["new_tokens"] == 16 and line["vocab_size"] == 4112
    assert line["chars_per_token"][1] >= line["chars_per_token"][0]
    assert (tmp_path / "x" / "checkpoint" / "model.safetensors").is_file()
    bad = runner.invoke(app, ["vocab", "extend", "--model", "tiny", "--out", str(tmp_path / "y"),
                              "--new-tokens", "0", "--no-wordfreq"])
    assert bad.exit_code == 2 and "error:" in bad.output and not (tmp_path / "y" / "tokenizer").exists()
