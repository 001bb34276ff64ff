"""Padding-free multi-pair preference rows (`collate_packed_pairs` + `attention.PAIR_PACKED`).

Layout by hand; per-pair log-prob sums, SimPO loss and gradients equal to the plain concat batches; pairs never see
each other; a no-grad (reference-model) forward gives the same sums; no tensor spans the row in both dimensions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from rutune import attention
from rutune.attention import PAIR_PACKED, PAIR_PACKED_VARLEN, context_causal_attention
from rutune.train.collators import PACKED_PAIRS_FORWARD_KEYS, collate_concat, collate_packed_pairs, \
    collate_prefix_shared
from rutune.train.losses import sequence_logps, simpo_loss

torch.set_num_threads(2)
PAD = 0
HAND_PAIRS = [
    {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]},
    {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [9, 10]},
]


def _allowed(batch) -> list[list[int]]:
    """The dense attention pattern the segment metadata means (bottom-right causal per segment); for hand checks."""
    length = batch["input_ids"].shape[1]
    allowed = [[0] * length for _ in range(length)]
    cu_q, cu_k = batch["pair_cu_seq_q"].tolist(), batch["pair_cu_seq_k"].tolist()
    index = batch["pair_key_index"].tolist()
    for s in range(len(cu_q) - 1):
        queries, keys = range(cu_q[s], cu_q[s + 1]), index[cu_k[s]:cu_k[s + 1]]
        shift = len(keys) - len(queries)
        for i, row in enumerate(queries):
            for j, key in enumerate(keys):
                allowed[row][key] = int(j <= i + shift)
    return allowed


def test_two_pair_layout_by_hand():
    b = collate_packed_pairs(HAND_PAIRS)
    # pair 0: prefix [1 2] | chosen branch [3 4] | rejected branch [3]; pair 1 (one-token prompt): [7] | [7 9]
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 3, 7, 7, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 0, 1]]
    # query segments: A0 = rows 0-3 (prefix+chosen), B0 = row 4, A1 = row 5, B1 = rows 6-7
    assert b["pair_cu_seq_q"].tolist() == [0, 4, 5, 6, 8] and b["pair_cu_seq_q"].dtype == torch.int32
    # keys: A0 its rows; B0 prefix rows 0,1 then itself; A1 itself; B1 (empty prefix) itself
    assert b["pair_key_index"].tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 7]
    assert b["pair_cu_seq_k"].tolist() == [0, 4, 7, 8, 10] and b["pair_cu_seq_k"].dtype == torch.int32
    assert (b["pair_max_length_q"], b["pair_max_length_k"]) == (4, 4)
    assert b["logits_to_keep"].tolist() == [2, 3, 4, 5, 6, 7]
    assert b["target_ids"].tolist() == [[4, 5, 6, 8, 9, 10]]
    assert b["target_segment"].tolist() == [[0, 0, 2, 1, 3, 3]]  # chosen of pair i = i, rejected = n + i
    assert b["num_pairs"] == 2
    assert "attention_mask" not in b
    assert _allowed(b) == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # rejected: the prefix and itself, never the chosen branch
        [0, 0, 0, 0, 0, 1, 0, 0],  # pair 1 sees nothing of pair 0
        [0, 0, 0, 0, 0, 0, 1, 0],  # pair 1's rejected branch never sees its chosen branch (row 5)
        [0, 0, 0, 0, 0, 0, 1, 1],
    ]
    # the same pattern as the prefix-shared layout's dense mask for pair 0 (rows 0-4 there)
    dense = (collate_prefix_shared(HAND_PAIRS[:1], pad_id=PAD)["attention_mask"][0, 0] == 0).int().tolist()
    assert [row[:5] for row in _allowed(b)[:5]] == dense


def test_collator_rejects_empty_batches_and_responses():
    with pytest.raises(ValueError, match="empty preference batch"):
        collate_packed_pairs([])
    with pytest.raises(ValueError, match="at least one token"):
        collate_packed_pairs([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": []}])


def _random_pairs(seed: int, shapes):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, 3000, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in shapes]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    def load(impl):
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                    attn_implementation=impl).eval()

    return {"packed": load(PAIR_PACKED), "sdpa": load("sdpa")}


def _logps(model, batch):
    if "pair_cu_seq_q" in batch:
        forward = {k: batch[k] for k in PACKED_PAIRS_FORWARD_KEYS}
    else:
        forward = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    out = model(**forward, use_cache=False, logits_to_keep=batch["logits_to_keep"])
    return sequence_logps(out.logits, batch["target_ids"], segment_ids=batch["target_segment"],
                          num_segments=2 * batch["num_pairs"])


SHAPES = {
    "very_different_lengths": [(300, 5, 40), (2, 60, 1), (1, 3, 9), (120, 30, 30), (17, 1, 80)],
    "single_pair": [(45, 12, 7)],
    "one_token_responses": [(30, 1, 1), (1, 1, 1), (8, 1, 4)],
}


@pytest.mark.parametrize("case", sorted(SHAPES))
def test_packed_logps_equal_concat(models, case):
    pairs = _random_pairs(3, SHAPES[case])
    with torch.no_grad():
        packed = _logps(models["packed"], collate_packed_pairs(pairs))
        concat = _logps(models["sdpa"], collate_concat(pairs, pad_id=PAD))
    assert packed.count.tolist() == concat.count.tolist() == [c for _, c, _ in SHAPES[case]] + [
        r for _, _, r in SHAPES[case]]
    torch.testing.assert_close(packed.sum, concat.sum, atol=1e-5, rtol=1e-6)


def test_packed_loss_and_gradients_equal_concat(models):
    sft_weight = 0.7  # SimPO term plus CPO's chosen-NLL term: both paths of the loss carry gradient
    pairs = _random_pairs(4, [(150, 12, 30), (9, 25, 4), (1, 3, 3), (60, 1, 20)])
    grads, losses = {}, {}
    for name, model, batch in (("packed", models["packed"], collate_packed_pairs(pairs)),
                               ("concat", models["sdpa"], collate_concat(pairs, pad_id=PAD))):
        model.zero_grad()
        lp = _logps(model, batch)
        n = batch["num_pairs"]
        out = simpo_loss(lp.sum[:n], lp.count[:n], lp.sum[n:], lp.count[n:], 2.5, 1.375, sft_weight=sft_weight)
        out.loss.backward()
        losses[name] = out.loss.item()
        grads[name] = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
    assert losses["packed"] == pytest.approx(losses["concat"], abs=1e-5)
    for k, g in grads["concat"].items():
        torch.testing.assert_close(grads["packed"][k], g, atol=1e-4, rtol=1e-4, msg=k)
    assert any(g.abs().max() > 1e-3 for g in grads["concat"].values())  # gradients are not trivially zero


def test_bf16_autocast_runs_and_stays_close_to_concat(models):
    """Under CPU autocast RoPE leaves q/k in fp32 while v is bf16; the split-KV kernel casts as SDPA's autocast does."""
    pairs = _random_pairs(11, [(90, 25, 4), (1, 5, 1)])
    sums = {}
    for name, model, batch in (("packed", models["packed"], collate_packed_pairs(pairs)),
                               ("concat", models["sdpa"], collate_concat(pairs, pad_id=PAD))):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = _logps(model, batch)
        lp.sum.sum().backward()  # the bf16 backward runs too
        model.zero_grad()
        sums[name] = lp.sum.detach()
    torch.testing.assert_close(sums["packed"], sums["concat"], atol=0.05, rtol=1e-3)


def test_pairs_never_see_each_other_or_the_other_branch(models):
    pairs = _random_pairs(5, [(40, 10, 12), (25, 8, 6), (30, 5, 9)])
    other_pairs = _random_pairs(6, [(40, 10, 12), (25, 8, 6), (30, 5, 9)])  # same lengths, other tokens
    changed_later_pair = [pairs[0], other_pairs[1], pairs[2]]
    changed_rejected = [{**pairs[0], "rejected_ids": other_pairs[0]["rejected_ids"]}, pairs[1], pairs[2]]
    with torch.no_grad():
        base = _logps(models["packed"], collate_packed_pairs(pairs))
        later = _logps(models["packed"], collate_packed_pairs(changed_later_pair))
        rejected = _logps(models["packed"], collate_packed_pairs(changed_rejected))
    n = 3
    assert torch.equal(later.sum[[0, 2]], base.sum[[0, 2]])  # both branches of pairs 1 and 3, bit for bit
    assert torch.equal(later.sum[[n, n + 2]], base.sum[[n, n + 2]])
    assert not torch.equal(later.sum[1], base.sum[1])  # the changed pair did change
    assert torch.equal(rejected.sum[0], base.sum[0])  # pair 1's chosen ignores its own rejected branch
    assert not torch.equal(rejected.sum[n], base.sum[n])


def test_reference_forward_without_grad_gives_identical_sums(models):
    """DPO-style objectives score the same batch with a frozen reference: a no-grad forward must match exactly."""
    model = models["packed"]
    batch = collate_packed_pairs(_random_pairs(7, [(80, 20, 9), (3, 4, 30), (1, 1, 2)]))
    model.train()  # the policy's forward (attention dropout is 0 in this config)
    try:
        policy = _logps(model, batch)
    finally:
        model.eval()
    with torch.no_grad():
        reference = _logps(model, batch)
    assert policy.sum.requires_grad and not reference.sum.requires_grad
    assert torch.equal(policy.sum.detach(), reference.sum)
    assert torch.equal(policy.count, reference.count)


def _reference_context_causal(q, k_ctx, v_ctx, k_own, v_own):
    m, c = q.shape[2], k_ctx.shape[2]
    allowed = torch.ones(m, c + m, dtype=torch.bool).tril(c)  # bottom-right causal
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, torch.cat([k_ctx, k_own], 2), torch.cat([v_ctx, v_own], 2),
                                              attn_mask=allowed)


@pytest.mark.parametrize("split_kernel", [True, False], ids=["cpu_split_kv", "lower_right_bias_fallback"])
def test_context_causal_attention_matches_masked_reference(monkeypatch, split_kernel):
    if not split_kernel:
        monkeypatch.setattr(attention, "_CPU_FLASH", None)
    g = torch.Generator().manual_seed(8)
    shapes = {"q": (1, 4, 7, 16), "k_ctx": (1, 4, 33, 16), "v_ctx": (1, 4, 33, 16), "k_own": (1, 4, 7, 16),
              "v_own": (1, 4, 7, 16)}
    inputs = {k: torch.randn(s, generator=g, dtype=torch.float64).float().requires_grad_() for k, s in shapes.items()}
    weight = torch.randn(1, 4, 7, 16, generator=g)
    results = []
    for fn in (context_causal_attention, _reference_context_causal):
        out = fn(*inputs.values())
        grads = torch.autograd.grad((out * weight).sum(), list(inputs.values()))
        results.append((out, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """flash-attention varlen semantics in plain torch: per segment, causal window (-1, 0) aligned bottom-right."""
    assert window_size == (-1, 0) and max_q == max(cu_q.diff().tolist()) and max_k == max(cu_k.diff().tolist())
    outs = []
    q_bounds, k_bounds = cu_q.tolist(), cu_k.tolist()
    for (qa, qb), (ka, kb) in zip(zip(q_bounds[:-1], q_bounds[1:]), zip(k_bounds[:-1], k_bounds[1:])):
        qs, ks, vs = q[qa:qb].transpose(0, 1), k[ka:kb].transpose(0, 1), v[ka:kb].transpose(0, 1)
        allowed = torch.ones(qb - qa, kb - ka, dtype=torch.bool).tril(kb - ka - (qb - qa))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale,
                                                   enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(outs)


def test_varlen_path_gathers_keys_for_flash(models, monkeypatch):
    """The GPU path's gather and metadata, with flash-attention's varlen kernel replaced by its reference."""
    from torch.nn.attention import varlen

    monkeypatch.setattr(varlen, "varlen_attn", _reference_varlen)
    pairs = _random_pairs(9, [(50, 6, 11), (1, 2, 3), (20, 9, 1)])
    batch = collate_packed_pairs(pairs)
    model = models["packed"]
    with torch.no_grad():
        loop = _logps(model, batch)
        model.set_attn_implementation(PAIR_PACKED_VARLEN)
        try:
            flash_like = _logps(model, batch)
        finally:
            model.set_attn_implementation(PAIR_PACKED)
    torch.testing.assert_close(flash_like.sum, loop.sum, atol=1e-5, rtol=1e-6)


def test_without_pair_metadata_it_is_plain_causal_attention(models):
    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        got = models["packed"](input_ids=ids, use_cache=False).logits
        want = models["sdpa"](input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inconsistent_metadata_is_refused(models):
    batch = collate_packed_pairs(HAND_PAIRS)
    forward = {k: batch[k] for k in PACKED_PAIRS_FORWARD_KEYS}
    broken = forward["pair_key_index"].clone()
    broken[5] = 3  # B0's context would jump into the chosen branch
    with pytest.raises(ValueError, match="contiguous range"):
        models["packed"](**{**forward, "pair_key_index": broken}, use_cache=False)
    padded = torch.ones_like(forward["input_ids"])
    padded[0, -1] = 0
    with pytest.raises(ValueError, match="unpadded"):
        models["packed"](**forward, attention_mask=padded, use_cache=False)


class _WidestTensor(TorchDispatchMode):
    """Records, over every op output, the largest second-largest dimension (an L×L tensor makes it L)."""

    def __init__(self):
        super().__init__()
        self.widest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2:
                self.widest = max(self.widest, sorted(t.shape)[-2])
        return out


def test_no_tensor_spans_the_row_in_two_dimensions(models):
    """Forward+backward on a long prompt allocates nothing |row|×|row| (the prefix-shared mask does)."""
    pairs = _random_pairs(10, [(1200, 8, 8), (300, 8, 8)])
    modes = {}
    for name, model, collate in (("packed", models["packed"], collate_packed_pairs),
                                 ("prefix", models["sdpa"], lambda p: collate_prefix_shared(p, pad_id=PAD))):
        with _WidestTensor() as probe:  # collation included: the prefix-shared mask is built there
            lp = _logps(model, collate(pairs))
            lp.sum.sum().backward()
        model.zero_grad()
        modes[name] = probe.widest
    # packed: the widest second dimension is a weight's (hidden 64 / intermediate 128), not the 1.5k-token row
    assert modes["packed"] <= 128
    assert modes["prefix"] >= 1200  # the probe does see a dense (rows, 1, L, L) mask
