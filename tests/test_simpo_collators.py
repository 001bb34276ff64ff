"""Prefix-shared preference batches: exact layout, and the same log-probs, loss and gradients as plain batches."""

import pytest
import torch

from rutune.models import tiny_model_path
from rutune.train.collators import collate_concat, collate_preference, collate_prefix_shared
from rutune.train.losses import sequence_logps, simpo_loss
from rutune.train.pref_batch import additive_mask

PAD = 0
PAIRS = [
    {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
    {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10]},
]


def test_prefix_shared_layout_is_exact():
    b = collate_prefix_shared(PAIRS, pad_id=PAD)
    # pair 0: prefix [1 2] | chosen branch [3 4] | rejected branch [3]; pair 1 is left-padded by two
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 3], [PAD, PAD, 7, 7, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 0, 0, 0, 1]]
    assert b["logits_to_keep"] == 3
    assert b["target_ids"].tolist() == [[4, 5, 6], [8, 9, 10]]
    # chosen of pair i = i, rejected of pair i = n + i
    assert b["target_segment"].tolist() == [[0, 0, 2], [1, 3, 3]]
    allowed = (b["attention_mask"][:, 0] == 0).int().tolist()
    assert allowed[0] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # rejected sees the prefix and itself, never the chosen branch
    ]
    assert allowed[1] == [
        [1, 0, 0, 0, 0],  # pads see only themselves (no all-blocked row)
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert b["attention_mask"].dtype == torch.float32
    assert b["attention_mask"].min().item() == torch.finfo(torch.float32).min


def test_concat_layout_is_exact():
    b = collate_concat(PAIRS, pad_id=PAD)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, PAD, PAD, PAD], [1, 2, 3, 6, PAD], [7, 9, 10, PAD, PAD]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert b["target_ids"][0].tolist() == [-100, -100, 4, 5, -100]
    assert b["target_segment"].tolist() == [[-1, -1, 0, 0, -1], [1, -1, -1, -1, -1], [-1, -1, 2, -1, -1],
                                            [3, 3, -1, -1, -1]]
    assert b["logits_to_keep"] == 0


def test_mask_dtype_and_dispatch():
    b = collate_preference(PAIRS, batching="prefix_shared", pad_id=PAD, mask_dtype=torch.bfloat16)
    assert b["attention_mask"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown preference batching"):
        collate_preference(PAIRS, batching="bogus", pad_id=PAD)
    with pytest.raises(ValueError, match="at least one token"):
        collate_prefix_shared([{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [2]}], pad_id=PAD)


def _random_pairs(seed: int, shapes):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, 3000, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shapes]


def _forward_loss(model, batch, **loss_kwargs):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False, logits_to_keep=batch["logits_to_keep"])
    n = batch["num_pairs"]
    lp = sequence_logps(out.logits, batch["target_ids"], segment_ids=batch["target_segment"], num_segments=2 * n)
    return lp, simpo_loss(lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:], **loss_kwargs)


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    path = tiny_model_path()
    return {impl: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=impl).eval()
            for impl in ("sdpa", "eager")}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_prefix_shared_equals_separate_forwards(models, impl):
    model = models[impl]
    pairs = _random_pairs(1, [(12, 5, 9), (30, 3, 1), (1, 7, 7), (4, 20, 2)])
    with torch.no_grad():
        lp, _ = _forward_loss(model, collate_prefix_shared(pairs, pad_id=PAD), beta=2.5, gamma=1.375)
        n = len(pairs)
        for i, p in enumerate(pairs):
            for role, offset in (("chosen_ids", 0), ("rejected_ids", n)):
                ids = torch.tensor([p["prompt_ids"] + p[role]])
                logits = model(ids, use_cache=False).logits[:, :-1]
                labels = ids[:, 1:].clone()
                labels[:, : len(p["prompt_ids"]) - 1] = -100
                alone = sequence_logps(logits, labels)
                assert lp.count[i + offset].item() == len(p[role])
                torch.testing.assert_close(lp.sum[i + offset], alone.sum[0], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_batching_modes_agree_on_loss_and_gradients(models, sft_weight):
    model = models["sdpa"]
    pairs = _random_pairs(2, [(40, 12, 30), (9, 25, 4), (70, 3, 3)])
    grads = {}
    losses = {}
    for name, collate in (("prefix", collate_prefix_shared), ("concat", collate_concat)):
        model.zero_grad()
        _, out = _forward_loss(model, collate(pairs, pad_id=PAD), beta=2.5, gamma=1.375, sft_weight=sft_weight)
        out.loss.backward()
        losses[name] = out.loss.item()
        grads[name] = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    assert losses["prefix"] == pytest.approx(losses["concat"], abs=1e-5)
    for k, g in grads["concat"].items():
        torch.testing.assert_close(grads["prefix"][k], g, atol=1e-4, rtol=1e-4, msg=k)
    assert any(g.abs().max() > 1e-3 for g in grads["concat"].values())  # gradients are not trivially zero


def test_bool_prefix_mask_is_exactly_the_attend_pattern_of_the_float_mask():
    f = collate_prefix_shared(PAIRS, pad_id=PAD)
    b = collate_prefix_shared(PAIRS, pad_id=PAD, mask_dtype=torch.bool)
    assert b["attention_mask"].dtype == torch.bool
    assert torch.equal(b["attention_mask"], f["attention_mask"] == 0)
    assert b["attention_mask"].element_size() * 4 == f["attention_mask"].element_size()
    for k in ("input_ids", "position_ids", "target_ids", "target_segment"):
        assert torch.equal(b[k], f[k])


def test_additive_mask_expands_bool_to_the_float_mask_in_the_model_dtype():
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(4, 2)
    model.get_input_embeddings = lambda: model.emb
    f = collate_prefix_shared(PAIRS, pad_id=PAD)["attention_mask"]
    b = collate_prefix_shared(PAIRS, pad_id=PAD, mask_dtype=torch.bool)["attention_mask"]
    assert torch.equal(additive_mask(b, model), f)
    assert additive_mask(f, model) is f  # already right: no copy
    model.emb.to(torch.bfloat16)
    got = additive_mask(b, model)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got == 0, b) and (got[~b] == torch.finfo(torch.bfloat16).min).all()
