"""Per-sequence attention for padding-free packed batches.

A packed row holds several sequences back to back; `cu_seq_lens_q` (cumulative lengths, starting at 0) marks
their boundaries. transformers' own SDPA path handles restarting `position_ids` by building a dense L×L
block-diagonal mask and attending over the whole row (measured ~5× slower on CPU than attending per sequence).
`packed_sdpa` instead runs causal SDPA on each sequence separately, so no token can see across a boundary and no
work is spent on the blocked blocks. On a GPU the same `cu_seq_lens_*`/`max_length_*` kwargs drive
flash-attention's varlen kernel (`attn_implementation="flash_attention_2"`) without any code of ours.

Registered under the name `PACKED_SDPA` in `transformers.AttentionInterface` (and a mask function that builds no
mask); select it with `model.set_attn_implementation(PACKED_SDPA)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "rutune_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal SDPA run separately on each packed sequence; falls back to plain SDPA without boundaries.

    `query` is (batch=1, heads, length, head_dim); keys/values may have fewer heads (GQA). Returns
    (batch, length, heads, head_dim) like every transformers attention function.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one packed row per batch (batch size 1)")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # expanding once beat SDPA's enable_gqa on CPU (95 vs 109 ms fwd+bwd, 8 seqs / 3k tokens)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    bounds = cu.tolist()
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if sum(lengths) != query.shape[2]:
        raise ValueError(f"cu_seq_lens_q covers {sum(lengths)} tokens but the row has {query.shape[2]}")
    # split, not slicing: its backward is one concatenation, where N slices would each allocate a full-size zero
    # gradient and add into it (measured 95 vs 263 ms forward+backward for 8 sequences / 3k tokens on CPU)
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, scale=scaling)
        for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _packed_mask(*args, attention_mask=None, **kwargs):
    """No mask for unpadded inputs (boundaries come from `cu_seq_lens_q`); a real SDPA mask when padding is present."""
    if attention_mask is not None and not bool(attention_mask.all()):
        return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)
    return None


AttentionInterface.register(PACKED_SDPA, packed_sdpa)
AttentionMaskInterface.register(PACKED_SDPA, _packed_mask)

__all__ = ["PACKED_SDPA", "packed_sdpa"]


# ---- Multi-pair preference rows (`collators.collate_packed_pairs`) ----
#
# One unpadded row holds many preference pairs; per pair two query segments: A = prompt prefix ‖ chosen branch (plain
# causal) and B = rejected branch, whose keys are [the pair's prefix rows ‖ its own rows] with bottom-right causal
# alignment. The batch describes this as flash-attention varlen metadata (`pair_cu_seq_q`, `pair_cu_seq_k`,
# `pair_key_index`, `pair_max_length_q/k`, see the collator); no mask exists anywhere, so memory grows linearly with
# the row. Two kernels read it:
#
# * `pair_packed_sdpa` (PAIR_PACKED; CPU and any device): a loop over segments. A segments run SDPA `is_causal=True`
#   on contiguous slices (the CPU flash kernel, scores tiled, never materialised). A B segment needs "all context
#   keys, then causal over its own keys", which SDPA's `is_causal` (top-left aligned when |q| ≠ |k|) cannot say.
#   An explicit mask would do, but CPU SDPA converts it to a float |q|×|k| tensor that each layer keeps for backward,
#   and the math fallback materialises |q|×|k| scores per head (measured: 1000 queries × 33k keys, fwd+bwd peak RSS
#   +182 MiB with a bool mask, +1.57 GiB on the math path, vs +56 MiB for mask-free causal over all 33k rows).
#   So on CPU a B segment is split along its keys into two mask-free flash calls — context keys (no mask) and own
#   keys (square causal) — merged exactly through their log-sum-exps (`_ContextThenCausal`): nothing |q|×|k| is
#   allocated and it ran 2.4× faster than the masked call (32 vs 80 ms, 300 queries × 4.3k keys, 1 thread).
# * `pair_packed_varlen` (PAIR_PACKED_VARLEN; CUDA, fp16/bf16): gathers K/V into the key-segment buffer and makes
#   one `torch.nn.attention.varlen.varlen_attn` call (flash-attention varlen, built into torch ≥ 2.10) with
#   cu_seq_q ≠ cu_seq_k and causal window (-1, 0), which flash aligns bottom-right when a segment has more keys
#   than queries — exactly the B-segment rule. Importable without a GPU; never run here (no GPU).
#
# torch's flex attention (a block mask from segment ids) was considered and rejected for CPU: in torch 2.13 it
# raises "FlexAttention does not support backward on CPU", and uncompiled it would materialise the row's scores.

PAIR_PACKED = "rutune_pair_packed"
PAIR_PACKED_VARLEN = "rutune_pair_packed_varlen"


def _cpu_flash_ops():
    """The CPU flash-attention forward/backward ATen ops (private; present in torch 2.13) or None."""
    try:
        return (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    except (AttributeError, RuntimeError):
        return None


_CPU_FLASH = _cpu_flash_ops()


class _ContextThenCausal(torch.autograd.Function):
    """Attention of `q` over [context keys, all visible ‖ own keys, causal] without a mask (CPU flash kernel).

    Softmax over the union of two key sets equals the two partial attentions weighted by exp(lse_part − lse_all),
    so the forward runs the context part unmasked and the own part with `is_causal` (square: |q| = |k_own|) and
    merges them. Backward is flash-attention's split-KV rule: each part's backward kernel, given the *merged*
    output and log-sum-exp, yields exact gradients for its own keys and values and a share of dq.
    """

    @staticmethod
    def forward(ctx, q, k_ctx, v_ctx, k_own, v_own, scale):
        forward_op, _ = _CPU_FLASH
        out_ctx, lse_ctx = forward_op(q, k_ctx, v_ctx, 0.0, False, scale=scale)
        out_own, lse_own = forward_op(q, k_own, v_own, 0.0, True, scale=scale)
        lse = torch.logaddexp(lse_ctx, lse_own)
        out = (out_ctx.float() * (lse_ctx - lse).exp().unsqueeze(-1)
               + out_own.float() * (lse_own - lse).exp().unsqueeze(-1)).to(q.dtype)
        ctx.save_for_backward(q, k_ctx, v_ctx, k_own, v_own, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _, backward_op = _CPU_FLASH
        q, k_ctx, v_ctx, k_own, v_own, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq_ctx, dk_ctx, dv_ctx = backward_op(grad_out, q, k_ctx, v_ctx, out, lse, 0.0, False, scale=ctx.scale)
        dq_own, dk_own, dv_own = backward_op(grad_out, q, k_own, v_own, out, lse, 0.0, True, scale=ctx.scale)
        return dq_ctx + dq_own, dk_ctx, dv_ctx, dk_own, dv_own, None


def context_causal_attention(q, k_ctx, v_ctx, k_own, v_own, *, dropout_p: float = 0.0, scale=None):
    """Queries `q` (b, h, m, d) over [k_ctx (all visible) ‖ k_own (m keys, causal)]: bottom-right causal attention.

    CPU without dropout: `_ContextThenCausal` (two mask-free flash calls). Elsewhere (CUDA, or dropout): one SDPA
    call with torch's `causal_lower_right` bias, which CUDA runs in its flash / memory-efficient kernels without a
    materialised mask (on CPU that bias is materialised as a |q|×|k| mask — only the dropout case gets there).
    """
    device = q.device.type
    if device == "cpu" and not dropout_p and _CPU_FLASH is not None:
        # SDPA is on autocast's low-precision list; the private ops are not: cast as autocast would (RoPE can
        # leave q/k in fp32 while v is bf16)
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else q.dtype
        q, k_ctx, v_ctx, k_own, v_own = (t.to(dtype) for t in (q, k_ctx, v_ctx, k_own, v_own))
        return _ContextThenCausal.apply(q, k_ctx, v_ctx, k_own, v_own, scale)
    from torch.nn.attention.bias import causal_lower_right

    m, c = q.shape[2], k_ctx.shape[2]
    return F.scaled_dot_product_attention(q, torch.cat([k_ctx, k_own], 2), torch.cat([v_ctx, v_own], 2),
                                          attn_mask=causal_lower_right(m, c + m), dropout_p=dropout_p, scale=scale)


def _pair_plan(cu_q: torch.Tensor, cu_k: torch.Tensor, key_index: torch.Tensor, length: int):
    """(query lengths, per segment: None or (context's query segment, offset in it, context length)) from the batch.

    Checks the invariants the loop relies on: segments tile the row, each segment's keys are a contiguous context
    range lying inside one earlier query segment, followed by the segment's own rows in order.
    """
    import bisect

    q_bounds, k_bounds = cu_q.tolist(), cu_k.tolist()
    if len(q_bounds) != len(k_bounds) or q_bounds[0] != 0 or q_bounds[-1] != length:
        raise ValueError(f"pair_cu_seq_q must tile the row of {length} tokens and match pair_cu_seq_k in length")
    if k_bounds[-1] != key_index.shape[0]:
        raise ValueError("pair_cu_seq_k must end at the length of pair_key_index")
    q_lens = [b - a for a, b in zip(q_bounds[:-1], q_bounds[1:])]
    ctx_lens = [(b - a) - m for a, b, m in zip(k_bounds[:-1], k_bounds[1:], q_lens)]
    if min(q_lens) < 1 or min(ctx_lens) < 0:
        raise ValueError("every pair segment needs at least one query and at least as many keys as queries")
    # four probes per segment: first/last context key, first/last own key
    probes = []
    for s, c in enumerate(ctx_lens):
        probes += [k_bounds[s], k_bounds[s] + max(c, 1) - 1, k_bounds[s] + c, k_bounds[s + 1] - 1]
    got = key_index[torch.tensor(probes, device=key_index.device)].tolist()
    plan = []
    for s, c in enumerate(ctx_lens):
        first, last, own_first, own_last = got[4 * s: 4 * s + 4]
        if own_first != q_bounds[s] or own_last != q_bounds[s + 1] - 1:
            raise ValueError(f"pair segment {s}: its last keys must be its own query rows")
        if not c:
            plan.append(None)
            continue
        t = bisect.bisect_right(q_bounds, first) - 1
        if last != first + c - 1 or t >= s or last >= q_bounds[t + 1]:
            raise ValueError(f"pair segment {s}: context keys must be one contiguous range inside an earlier segment")
        plan.append((t, first - q_bounds[t], c))
    return q_lens, plan


def pair_packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for `collate_packed_pairs` rows: per segment, causal over own rows after the segment's context.

    Without `pair_cu_seq_q` it is `packed_sdpa` (plain SDPA, or per-sequence SDPA from `cu_seq_lens_q`), so a model
    left on this implementation still evaluates and generates normally. Shapes as `packed_sdpa`: query
    (1, heads, length, head_dim), returns (1, length, heads, head_dim). Segments are split (not sliced) out of the
    row, so backward is one concatenation; a context is a slice of its own (earlier) segment only.
    """
    cu_q = kwargs.get("pair_cu_seq_q")
    if cu_q is None:
        return packed_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if attention_mask is not None:
        raise ValueError("pair-packed rows are unpadded: pass no attention_mask with pair_cu_seq_q")
    if query.shape[0] != 1:
        raise ValueError("pair-packed attention expects one packed row per batch (batch size 1)")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    p = dropout if module.training else 0.0
    q_lens, plan = _pair_plan(cu_q, kwargs["pair_cu_seq_k"], kwargs["pair_key_index"], query.shape[2])
    qs, ks, vs = query.split(q_lens, dim=2), key.split(q_lens, dim=2), value.split(q_lens, dim=2)
    outs = []
    for q, k, v, context in zip(qs, ks, vs, plan):
        if context is None:
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p, scale=scaling))
            continue
        t, at, n = context
        outs.append(context_causal_attention(q, ks[t][:, :, at:at + n], vs[t][:, :, at:at + n], k, v,
                                             dropout_p=p, scale=scaling))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def pair_packed_varlen(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """GPU attention for `collate_packed_pairs` rows: one flash-attention varlen call (torch's `varlen_attn`).

    K/V are gathered into the key-segment buffer (`pair_key_index`: the prompt prefix is copied once more per pair,
    a linear cost), then flash runs every segment at once with cu_seq_q ≠ cu_seq_k; its causal window (-1, 0) is
    aligned bottom-right, so a rejected branch sees its whole prefix and itself causally. Needs CUDA and fp16/bf16
    inputs, no attention dropout. Not tested on a GPU here; the gather/metadata logic is tested on CPU against a
    reference kernel. Without pair metadata it is `packed_sdpa`.
    """
    cu_q = kwargs.get("pair_cu_seq_q")
    if cu_q is None:
        return packed_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError("pair-packed rows are one unpadded row: batch size 1 and no attention_mask")
    if dropout and module.training:
        raise ValueError("pair_packed_varlen has no attention dropout; use pair_packed_sdpa")
    from torch.nn.attention import varlen

    index = kwargs["pair_key_index"]
    if query.dtype != value.dtype or key.dtype != value.dtype:
        # Under bf16/fp16 autocast with fp32 master weights the rotary step hands back q and k in fp32 while v is
        # already in the autocast dtype; the kernel takes one dtype (transformers' flash path casts the same way).
        query, key = query.to(value.dtype), key.to(value.dtype)
    q = query[0].transpose(0, 1).contiguous()  # (tokens, heads, head_dim)
    k = key[0].transpose(0, 1).index_select(0, index)
    v = value[0].transpose(0, 1).index_select(0, index)
    out = varlen.varlen_attn(q, k, v, cu_q, kwargs["pair_cu_seq_k"], int(kwargs["pair_max_length_q"]),
                             int(kwargs["pair_max_length_k"]), scale=scaling, window_size=(-1, 0),
                             enable_gqa=q.shape[1] != k.shape[1])
    return out.unsqueeze(0), None


AttentionInterface.register(PAIR_PACKED, pair_packed_sdpa)
AttentionMaskInterface.register(PAIR_PACKED, _packed_mask)
AttentionInterface.register(PAIR_PACKED_VARLEN, pair_packed_varlen)
AttentionMaskInterface.register(PAIR_PACKED_VARLEN, _packed_mask)

__all__ += ["PAIR_PACKED", "PAIR_PACKED_VARLEN", "context_causal_attention", "pair_packed_sdpa", "pair_packed_varlen"]
