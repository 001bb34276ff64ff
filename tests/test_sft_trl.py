"""Peer parity: our SFT loss and gradients equal TRL 1.16 `SFTTrainer(assistant_only_loss=True)` to 1e-5.

Same tiny model, same rows, same batch. TRL needs `{% generation %}` markers in the template; we give it a marked
copy of the tiny model's ChatML template that trains exactly what ours trains (assistant content + `<|im_end|>`).
Both sides normalise by the trained tokens of the whole batch.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")

from rutune.models import chatml_template  # noqa: E402
from rutune.attention import PACKED_SDPA  # noqa: E402
from rutune.train.collators import pack_sft  # noqa: E402

torch.set_num_threads(2)

MARKED_TEMPLATE = chatml_template(generation_markers=True)  # what TRL's assistant_only_loss needs

ROWS = [
    [{"role": "user", "content": "Привет! Как дела?"}, {"role": "assistant", "content": "Отлично, спасибо."}],
    [{"role": "system", "content": "Отвечай кратко. Документ: столица России — Москва."},
     {"role": "user", "content": "Какая столица?"}, {"role": "assistant", "content": "Москва."},
     {"role": "user", "content": "А население?"}, {"role": "assistant", "content": "Около 13 миллионов человек."}],
    [{"role": "user", "content": "Сколько будет 7 * 8?"}, {"role": "assistant", "content": "56"}],
    [{"role": "user", "content": "Переведи: good morning"}, {"role": "assistant", "content": "Доброе утро"}],
]


def _trl_trainer(tiny_model_dir, out):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    trl_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    trl_tok.chat_template = MARKED_TEMPLATE
    trl_model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
                       lr_scheduler_type="constant", warmup_steps=0, assistant_only_loss=True, packing=False,
                       report_to="none", seed=3, logging_steps=1, save_strategy="no", max_length=None,
                       dataloader_pin_memory=False, disable_tqdm=True, bf16=False)
    dataset = datasets.Dataset.from_list([{"messages": m} for m in ROWS])
    return SFTTrainer(model=trl_model, args=config, train_dataset=dataset, processing_class=trl_tok)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return _trl_trainer(tiny_model_dir, tmp_path_factory.mktemp("trl"))


def _ours(tiny_model_dir):
    from rutune.data.templates import load_tokenizer, tokenize_chats

    tok = load_tokenizer(str(tiny_model_dir))
    return tok, [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tok, ROWS)]


def test_same_tokens_and_same_trained_positions_as_trl(setup, tiny_model_dir):
    trl_rows = setup.train_dataset
    _, feats = _ours(tiny_model_dir)
    for i, ours in enumerate(feats):
        assert trl_rows[i]["input_ids"] == ours["input_ids"], f"row {i}"
        assert trl_rows[i]["labels"] == ours["labels"], f"row {i}"


def test_first_step_loss_and_gradients_equal_trl(setup, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rutune.train.recipes.sft import SftStage
    from rutune.train.trainer import training_arguments
    from rutune.train.sft import build_trainer

    trl_trainer = setup
    trl_batch = next(iter(trl_trainer.get_train_dataloader()))
    n_items = int(trl_batch["labels"][..., 1:].ne(-100).sum())
    trl_model = trl_trainer.model
    trl_model.train()
    trl_model.zero_grad()
    trl_loss = trl_trainer.compute_loss(trl_model, dict(trl_batch), num_items_in_batch=torch.tensor(n_items))
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in trl_model.named_parameters()}

    tok, feats = _ours(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    model.set_attn_implementation(PACKED_SDPA)
    stage = SftStage(recipe="sft", per_device_batch_size=4, max_steps=1, learning_rate=1e-3, precision="fp32")
    ours = build_trainer(model, tok, None, training_arguments(stage, tmp_path, seed=3, save_strategy="no"),
                         packing=True)
    batch = pack_sft(feats)  # the same four sequences, packed into one row
    assert int(batch["shift_labels"].ne(-100).sum()) == n_items
    model.train()
    loss = ours.compute_loss(model, batch, num_items_in_batch=torch.tensor(n_items))
    loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert 7.5 < loss.item() < 9.5  # near ln(4096) = 8.32 for a random-init model
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_first_logged_training_loss_equals_trl(tiny_model_dir, tmp_path):
    """A full Trainer step on each side (same seed, same 4 rows, batch 4): the logged step-1 loss agrees."""
    from transformers import AutoModelForCausalLM

    from rutune.train.recipes.sft import SftStage
    from rutune.train.trainer import training_arguments
    from rutune.train.sft import build_trainer

    import datasets

    trl_trainer = _trl_trainer(tiny_model_dir, tmp_path / "trl")
    trl_trainer.train()
    trl_first = next(h["loss"] for h in trl_trainer.state.log_history if "loss" in h)

    tok, feats = _ours(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    model.set_attn_implementation(PACKED_SDPA)
    stage = SftStage(recipe="sft", per_device_batch_size=4, max_steps=1, learning_rate=1e-3, precision="fp32",
                     lr_scheduler="constant", warmup_ratio=0.0)
    ours = build_trainer(model, tok, datasets.Dataset.from_list(feats),
                         training_arguments(stage, tmp_path, seed=3, save_strategy="no"), packing=True)
    ours.train()
    our_first = next(h["loss"] for h in ours.state.log_history if "loss" in h)
    assert our_first == pytest.approx(trl_first, abs=1e-5)
