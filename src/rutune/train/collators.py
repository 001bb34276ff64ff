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
