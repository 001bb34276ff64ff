"""Padding-free packing: exact layout, and no attention across sequence boundaries (loss and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from rutune.attention import PACKED_SDPA
from rutune.train.collators import pack_sft, pad_sft, shift_targets
from rutune.train.losses import sft_loss, token_nll_sum

torch.set_num_threads(2)


def test_shift_targets_and_pack_layout_by_hand():
    a = {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]}
    b = {"input_ids": [20, 21], "labels": [-100, 21]}
    assert shift_targets(a["labels"]) == [11, 12, -100]
    batch = pack_sft([a, b])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # position 2 (last of a) must not be trained to predict 20 (first of b)
    assert batch["shift_labels"].tolist() == [[11, 12, -100, 21, -100]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == 3 == batch["max_length_k"]
    assert "attention_mask" not in batch
    padded = pad_sft([a, b], pad_token_id=0)
    assert padded["input_ids"].tolist() == [[10, 11, 12], [20, 21, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["shift_labels"].tolist() == [[11, 12, -100], [21, -100, -100]]


def test_pack_boundaries_match_what_flash_attention_derives():
    """The kwargs we hand to flash-attention varlen are exactly what transformers computes from position_ids."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    feats = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (5, 1, 9, 3)]
    batch = pack_sft(feats)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert cu_q.tolist() == batch["cu_seq_lens_q"].tolist() == [0, 5, 6, 15, 18]
    assert int(max_q) == batch["max_length_q"] == 9


def test_sft_loss_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 1.0]])  # p(1)=3/4, p(0)=1/2, ignored
    targets = torch.tensor([1, 0, -100])
    expected = -(math.log(0.75) + math.log(0.5))
    assert token_nll_sum(logits, targets).item() == pytest.approx(expected, abs=1e-6)
    # normalised by the global count (here 4 trained tokens across the accumulated batch), not this micro-batch's 2
    assert sft_loss(logits, targets, 4).item() == pytest.approx(expected / 4, abs=1e-6)


def _chats():
    return [
        [{"role": "user", "content": "Привет, как дела?"}, {"role": "assistant", "content": "Хорошо, спасибо."}],
        [{"role": "system", "content": "Ты помощник. Документы: река Волга длиннее Дона."},
         {"role": "user", "content": "Какая река длиннее?"}, {"role": "assistant", "content": "Волга."},
         {"role": "user", "content": "А почему?"}, {"role": "assistant", "content": "Так сказано в документе."}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Назови город."}, {"role": "assistant", "content": "Москва, Казань и Тверь."}],
    ]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rutune.data.templates import load_tokenizer, tokenize_chats

    tok = load_tokenizer(str(tiny_model_dir))
    feats = [{"input_ids": r.input_ids, "labels": r.labels} for r in tokenize_chats(tok, _chats())]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype="float32")
    return model, feats


def _per_sequence_loss_and_grads(model, feats):
    """Reference: each sequence alone (plain SDPA, no packing), loss summed then divided by all trained tokens."""
    model.set_attn_implementation("sdpa")
    model.zero_grad()
    total = sum(sum(1 for t in shift_targets(f["labels"]) if t != -100) for f in feats)
    loss_sum = 0.0
    for f in feats:
        out = model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False)
        loss = token_nll_sum(out.logits[0], torch.tensor(shift_targets(f["labels"]))) / total
        loss.backward()
        loss_sum += loss.item()
    return loss_sum, {n: p.grad.clone() for n, p in model.named_parameters()}


def _packed_loss_and_grads(model, feats, attn: str):
    model.set_attn_implementation(attn)
    model.zero_grad()
    batch = pack_sft(feats)
    keep = batch["shift_labels"].ne(-100)
    kwargs = {k: batch[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                    "max_length_k")}
    out = model(**kwargs, use_cache=False, logits_to_keep=keep)
    loss = sft_loss(out.logits, batch["shift_labels"][keep], keep.sum())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attn", [PACKED_SDPA, "sdpa"])
def test_packed_loss_and_grads_equal_sequences_run_one_by_one(tiny, attn):
    """No cross-contamination: per-sequence SDPA (ours) and transformers' own packed mask both match to 1e-5."""
    model, feats = tiny
    model.train()
    ref_loss, ref_grads = _per_sequence_loss_and_grads(model, feats)
    loss, grads = _packed_loss_and_grads(model, feats, attn)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert ref_loss > 5  # a random-init model over a few-thousand vocabulary: ~ln(4096) = 8.3
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_live_cache_lets_packed_sequences_attend_across_the_boundary(tiny):
    """Why every packed forward passes use_cache=False: with a cache, transformers skips the packed-sequence mask."""
    model, feats = tiny
    model.eval()
    model.set_attn_implementation("sdpa")
    a, b = feats[0], feats[2]
    batch = pack_sft([a, b])
    n_a = len(a["input_ids"])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b["input_ids"]]), use_cache=False).logits[0]
        no_cache = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         use_cache=False).logits[0, n_a:]
        with_cache = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           use_cache=True).logits[0, n_a:]
    torch.testing.assert_close(no_cache, alone, atol=1e-5, rtol=1e-5)
    assert (with_cache - alone).abs().max().item() > 1e-3  # the second sequence saw the first


def test_flash_attention_is_selectable_for_packed_batches():
    from rutune.config import ModelConfig
    from rutune.train.sft import choose_attention

    assert choose_attention(ModelConfig(attn_implementation="flash_attention_2"), packing=True) == "flash_attention_2"
    assert choose_attention(ModelConfig(), packing=True) == PACKED_SDPA
    assert choose_attention(ModelConfig(attn_implementation="eager"), packing=True) == PACKED_SDPA
    assert choose_attention(ModelConfig(attn_implementation="eager"), packing=False) == "eager"
