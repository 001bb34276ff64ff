"""Batch builders: SFT padding-free packing, and preference batches (prefix-shared and concatenated)."""

from __future__ import annotations

from typing import Sequence

import torch

# ---- SFT section ----


def shift_targets(labels: Sequence[int]) -> list[int]:
    """Next-token targets aligned with positions: position i is scored on labels[i+1]; the last position on nothing.

    Shifting inside each sequence (not after concatenation) is what keeps the last token of one packed sequence
    from being trained to predict the first token of the next.
    """
    return [*labels[1:], -100]


def pack_sft(features: Sequence[dict]) -> dict:
    """Padding-free packing: all sequences of the batch in one row, positions restarting at each boundary.

    Each feature has `input_ids` and `labels` (-100 = not trained). Returns tensors of shape (1, total_tokens):
    `input_ids`, `position_ids`, `labels`, `shift_labels` (targets per position, see `shift_targets`), plus the
    boundaries `cu_seq_lens_q/k` (cumulative lengths, int32) and `max_length_q/k`, which per-sequence SDPA and
    flash-attention varlen read. No attention mask: there is no padding.
    """
    if not features:
        raise ValueError("cannot pack an empty batch")
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    targets: list[int] = []
    bounds = [0]
    for f in features:
        n = len(f["input_ids"])
        ids.extend(f["input_ids"])
        positions.extend(range(n))
        labels.extend(f["labels"])
        targets.extend(shift_targets(f["labels"]))
        bounds.append(bounds[-1] + n)
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = int(max(b - a for a, b in zip(bounds[:-1], bounds[1:])))
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "labels": torch.tensor([labels]),
        "shift_labels": torch.tensor([targets]),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def pad_sft(features: Sequence[dict], *, pad_token_id: int) -> dict:
    """Right-padded batch (the conventional layout, kept for comparison and for models without packed attention)."""
    if not features:
        raise ValueError("cannot pad an empty batch")
    width = max(len(f["input_ids"]) for f in features)
    ids, mask, labels, targets = [], [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append([*f["input_ids"], *([pad_token_id] * pad)])
        mask.append([1] * len(f["input_ids"]) + [0] * pad)
        labels.append([*f["labels"], *([-100] * pad)])
        targets.append([*shift_targets(f["labels"]), *([-100] * pad)])
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(mask),
        "labels": torch.tensor(labels),
        "shift_labels": torch.tensor(targets),
    }


# ---- Preference section ----

IGNORE_INDEX = -100


def _pair_ids(pair) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token lists from a mapping (dataset row) or a TokenizedPair-like object."""
    if isinstance(pair, dict):
        prompt, chosen, rejected = pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]
    else:
        prompt, chosen, rejected = pair.prompt_ids, pair.chosen_ids, pair.rejected_ids
    prompt, chosen, rejected = list(prompt), list(chosen), list(rejected)
    if not prompt or not chosen or not rejected:
        raise ValueError("preference batch: prompt, chosen and rejected must each hold at least one token")
    return prompt, chosen, rejected


def collate_prefix_shared(pairs: Sequence, *, pad_id: int, mask_dtype: torch.dtype = torch.float32) -> dict:
    """One row per pair: prompt[:-1] ‖ (prompt[-1] + chosen[:-1]) ‖ (prompt[-1] + rejected[:-1]), left-padded.

    The shared prefix is computed once; each branch starts with the prompt's last token (whose logit
    predicts the response's first token) and drops the response's last token (nothing predicts from it).
    A 4D additive mask `(rows, 1, L, L)` (0 attend, dtype-min blocked; with `mask_dtype=torch.bool` True
    attend) lets each branch see the prefix and itself causally, never the other branch, and `position_ids`
    restart each branch at len(prompt) − 1, so every logit equals the one a separate forward of
    prompt‖response gives. Left padding puts all targets in the last `logits_to_keep` positions, so the LM
    head runs on response positions only.

    Targets: `target_ids[r, t]` is what logit `L − K + t` predicts; `target_segment` names the sequence
    (pair i's chosen = i, rejected = n + i; −1 none), the input of `losses.sequence_logps`.
    """
    rows = [_pair_ids(p) for p in pairs]
    n = len(rows)
    lengths = [len(p) - 1 + len(c) + len(r) for p, c, r in rows]
    width = max(lengths)
    keep = max(len(c) + len(r) for _, c, r in rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    target_ids = torch.full((n, keep), IGNORE_INDEX, dtype=torch.long)
    target_segment = torch.full((n, keep), -1, dtype=torch.long)
    # Causal everywhere, then per row: block the padding keys (pads see only themselves, so no row is all-blocked)
    # and the rectangle rejected-queries × chosen-keys. Built by slices: one full-size pass instead of a dozen.
    # A bool mask (True = attend) is a quarter of a float32 one; `pref_batch.forward_logps` expands it to the
    # additive form just before the forward, so only the batch in the model holds the float copy, not the one the
    # data loader fetched ahead.
    if mask_dtype == torch.bool:
        blocked, attend = False, True
        mask = torch.ones((width, width), dtype=torch.bool).tril_().expand(n, 1, width, width).clone()
    else:
        blocked, attend = torch.finfo(mask_dtype).min, 0
        mask = torch.full((width, width), blocked, dtype=mask_dtype).triu_(1).expand(n, 1, width, width).clone()
    for i, (p, c, r) in enumerate(rows):
        start = width - lengths[i]
        prefix, last = p[:-1], p[-1]
        chosen_at = start + len(prefix)
        rejected_at = chosen_at + len(c)
        input_ids[i, start:] = torch.tensor(prefix + [last] + c[:-1] + [last] + r[:-1])
        position_ids[i, start:chosen_at] = torch.arange(len(prefix))
        position_ids[i, chosen_at:rejected_at] = torch.arange(len(prefix), len(prefix) + len(c))
        position_ids[i, rejected_at:] = torch.arange(len(prefix), len(prefix) + len(r))
        target_ids[i, keep - len(c) - len(r):] = torch.tensor(c + r)
        target_segment[i, keep - len(c) - len(r):keep - len(r)] = i
        target_segment[i, keep - len(r):] = n + i
        if start:
            mask[i, 0, :, :start] = blocked
            pads = torch.arange(start)
            mask[i, 0, pads, pads] = attend
        mask[i, 0, rejected_at:, chosen_at:rejected_at] = blocked
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": position_ids,
        "logits_to_keep": keep,
        "target_ids": target_ids,
        "target_segment": target_segment,
        "num_pairs": n,
    }


def collate_concat(pairs: Sequence, *, pad_id: int) -> dict:
    """The plain batch: rows prompt‖chosen for every pair, then prompt‖rejected, right-padded (TRL's layout).

    Same output keys as `collate_prefix_shared` (`logits_to_keep` 0 = all positions, a 2D padding mask),
    so the recipe's loss code does not branch on the layout.
    """
    rows = [_pair_ids(p) for p in pairs]
    n = len(rows)
    seqs = [(p, c, i) for i, (p, c, _) in enumerate(rows)] + [(p, r, n + i) for i, (p, _, r) in enumerate(rows)]
    width = max(len(p) + len(resp) for p, resp, _ in seqs)
    input_ids = torch.full((2 * n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((2 * n, width), dtype=torch.long)
    target_ids = torch.full((2 * n, width), IGNORE_INDEX, dtype=torch.long)
    target_segment = torch.full((2 * n, width), -1, dtype=torch.long)
    for row, (p, resp, seg) in enumerate(seqs):
        ids = p + resp
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        target_ids[row, len(p) - 1 : len(ids) - 1] = torch.tensor(resp)
        target_segment[row, len(p) - 1 : len(ids) - 1] = seg
    position_ids = torch.arange(width).expand(2 * n, width).clone()
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "logits_to_keep": 0,
        "target_ids": target_ids,
        "target_segment": target_segment,
        "num_pairs": n,
    }


def collate_preference(pairs: Sequence, *, batching: str, pad_id: int, mask_dtype: torch.dtype = torch.float32) -> dict:
    """Dispatch on `batching` (`prefix_shared` | `concat` | `packed`), the preference stage's config key."""
    if batching == "prefix_shared":
        return collate_prefix_shared(pairs, pad_id=pad_id, mask_dtype=mask_dtype)
    if batching == "concat":
        return collate_concat(pairs, pad_id=pad_id)
    if batching == "packed":
        return collate_packed_pairs(pairs, pad_id=pad_id)
    raise ValueError(f"unknown preference batching {batching!r}; expected prefix_shared, concat or packed")


# ---- Preference section: padding-free multi-pair rows ----

# What a recipe hands the model for a `collate_packed_pairs` batch (beside `use_cache=False`), with the model's
# attention set to `rutune.attention.PAIR_PACKED`. There is no `attention_mask`: nothing is padded.
PACKED_PAIRS_FORWARD_KEYS = ("input_ids", "position_ids", "pair_cu_seq_q", "pair_cu_seq_k", "pair_key_index",
                             "pair_max_length_q", "pair_max_length_k")


def collate_packed_pairs(pairs: Sequence, *, pad_id: int | None = None) -> dict:
    """All pairs in ONE unpadded row, per pair prompt[:-1] ‖ prompt[-1] + chosen[:-1] ‖ prompt[-1] + rejected[:-1].

    The branch trick is `collate_prefix_shared`'s: the prompt's first P−1 tokens are computed once, each branch
    starts with the prompt's last token (whose logit predicts the response's first token) and drops the response's
    last token, so branch lengths equal response lengths and every branch position carries a target. Positions
    restart at 0 for each pair; both branches continue the prefix at P−1.

    Attention is described by segments instead of a mask (an L×L mask would grow with the square of the row).
    Per pair two query segments, in row order: A = prefix ‖ chosen branch (plain causal over its own rows), and
    B = rejected branch, whose keys are [the pair's prefix rows ‖ its own rows], causal aligned bottom-right
    (query t sees the whole prefix and own keys 0..t) — never the chosen branch, never another pair. This is the
    varlen form flash-attention takes, with key segments in a gathered key buffer:

    * `pair_cu_seq_q` (int32, 2n+1): query segment s covers row positions [cu_q[s], cu_q[s+1]);
    * `pair_cu_seq_k` (int32, 2n+1): its keys are gathered-buffer entries [cu_k[s], cu_k[s+1]);
    * `pair_key_index` (int64): row position of each gathered key (so K_s = K[key_index[cu_k[s]:cu_k[s+1]]]);
      a segment's keys are always its context rows (a contiguous range, empty for A) followed by its own rows;
    * `pair_max_length_q`, `pair_max_length_k`: the longest query and key segment.

    `logits_to_keep` is a LongTensor of the branch positions (a 1D index that transformers' LM heads accept), so
    the LM head never runs on prompt tokens; `target_ids[0, t]` is what logit `logits_to_keep[t]` predicts and
    `target_segment` names its sequence (pair i's chosen = i, rejected = n + i), the input of
    `losses.sequence_logps` — the same contract as the other preference collators. `pad_id` is accepted for a
    uniform collator signature; nothing is padded.
    """
    del pad_id
    rows = [_pair_ids(p) for p in pairs]
    if not rows:
        raise ValueError("cannot pack an empty preference batch")
    n = len(rows)
    ids: list[int] = []
    positions: list[int] = []
    keep: list[int] = []
    targets: list[int] = []
    segments: list[int] = []
    cu_q, cu_k, key_index = [0], [0], []
    for i, (p, c, r) in enumerate(rows):
        start = len(ids)
        prefix = len(p) - 1
        chosen_at = start + prefix
        rejected_at = chosen_at + len(c)
        end = rejected_at + len(r)
        ids.extend([*p[:-1], p[-1], *c[:-1], p[-1], *r[:-1]])
        positions.extend([*range(prefix + len(c)), *range(prefix, prefix + len(r))])
        keep.extend(range(chosen_at, end))
        targets.extend(c + r)
        segments.extend([i] * len(c) + [n + i] * len(r))
        cu_q.extend([rejected_at, end])
        key_index.extend(range(start, rejected_at))  # A: its own rows
        key_index.extend([*range(start, chosen_at), *range(rejected_at, end)])  # B: prefix rows, then its own
        cu_k.append(cu_k[-1] + rejected_at - start)
        cu_k.append(cu_k[-1] + prefix + len(r))
    q_lens = [b - a for a, b in zip(cu_q[:-1], cu_q[1:])]
    k_lens = [b - a for a, b in zip(cu_k[:-1], cu_k[1:])]
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "pair_cu_seq_q": torch.tensor(cu_q, dtype=torch.int32),
        "pair_cu_seq_k": torch.tensor(cu_k, dtype=torch.int32),
        "pair_key_index": torch.tensor(key_index, dtype=torch.long),
        "pair_max_length_q": max(q_lens),
        "pair_max_length_k": max(k_lens),
        "logits_to_keep": torch.tensor(keep, dtype=torch.long),
        "target_ids": torch.tensor([targets]),
        "target_segment": torch.tensor([segments]),
        "num_pairs": n,
    }
