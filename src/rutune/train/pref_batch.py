"""What the preference step adds around the collators: the forward for each layout, the per-pair log-probs, prompt
targets (ORPO's NLL covers the prompt) and the cached reference sums carried as dataset columns.

Shared by the training step (`preference.preference_step_loss`) and the one no-grad reference pass
(`reference.compute_reference`), so both see exactly the same batches and forward.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rutune.train.collators import (IGNORE_INDEX, PACKED_PAIRS_FORWARD_KEYS, _pair_ids, collate_preference)

FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids")
REF_COLUMNS = ("ref_chosen", "ref_rejected")


def add_prompt_targets(batch: dict, pairs: Sequence, batching: str) -> dict:
    """Label every predicted prompt token (prompt[1:]) of pair i as segment 2n + i, so `sequence_logps(...,
    num_segments=3n)` also returns the prompt sums/counts (`lp.sum[2n:]`). The prompt is scored once per pair, on the
    chosen branch (concat: the chosen row's positions 0 … P−2; prefix_shared / packed: the shared prefix). Keeps every
    logit of the row for prefix_shared (`logits_to_keep` 0) and appends the prefix positions to packed's index."""
    rows = [_pair_ids(p) for p in pairs]
    n = len(rows)
    targets, segments = batch["target_ids"], batch["target_segment"]
    if batching == "concat":
        for i, (p, _, _) in enumerate(rows):
            targets[i, : len(p) - 1] = torch.tensor(p[1:], dtype=torch.long)
            segments[i, : len(p) - 1] = 2 * n + i
        return batch
    if batching == "prefix_shared":
        width, keep = batch["input_ids"].shape[1], int(batch["logits_to_keep"])
        full_t = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        full_s = torch.full((n, width), -1, dtype=torch.long)
        full_t[:, width - keep:], full_s[:, width - keep:] = targets, segments
        for i, (p, c, r) in enumerate(rows):
            start = width - (len(p) - 1 + len(c) + len(r))
            full_t[i, start:start + len(p) - 1] = torch.tensor(p[1:], dtype=torch.long)
            full_s[i, start:start + len(p) - 1] = 2 * n + i
        batch.update(target_ids=full_t, target_segment=full_s, logits_to_keep=0)
        return batch
    if batching == "packed":
        keep, extra_t, extra_s, start = [], [], [], 0
        for i, (p, c, r) in enumerate(rows):
            keep.extend(range(start, start + len(p) - 1))
            extra_t.extend(p[1:])
            extra_s.extend([2 * n + i] * (len(p) - 1))
            start += len(p) - 1 + len(c) + len(r)
        batch["logits_to_keep"] = torch.cat([batch["logits_to_keep"], torch.tensor(keep, dtype=torch.long)])
        batch["target_ids"] = torch.cat([targets, torch.tensor([extra_t], dtype=torch.long)], dim=1)
        batch["target_segment"] = torch.cat([segments, torch.tensor([extra_s], dtype=torch.long)], dim=1)
        return batch
    raise ValueError(f"unknown preference batching {batching!r}")


def collate_pairs(features: Sequence, *, batching: str, pad_id: int, mask_dtype=torch.float32,
                  with_prompt: bool = False) -> dict:
    """The stage's collator: `collate_preference`, plus prompt targets when the objective needs them, plus the
    per-pair reference sums (`ref_chosen`, `ref_rejected` float64 → float32 tensors) when the rows carry them."""
    batch = collate_preference(features, batching=batching, pad_id=pad_id, mask_dtype=mask_dtype)
    if with_prompt:
        add_prompt_targets(batch, features, batching)
    if features and isinstance(features[0], dict) and all(k in features[0] for k in REF_COLUMNS):
        for k in REF_COLUMNS:
            batch[k] = torch.tensor([f[k] for f in features], dtype=torch.float32)
    return batch


def additive_mask(mask, model):
    """A prefix-shared 4D mask as SDPA takes it: additive, in the attention's dtype (the autocast dtype when
    autocast is on, else the model's). A bool mask (True = attend, what the stage's collator builds: a quarter of
    the float32 size while the data loader holds the next batch) is expanded here, so the float copy lives only
    for the step that uses it. Handing the bool mask to SDPA instead peaked higher (1,113 vs 900 MiB for a RAG
    forward + backward, docs/objectives.md)."""
    device = mask.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
        else model.get_input_embeddings().weight.dtype
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=mask.device)  # one pass over the mask (zeros + fill is two)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    if mask.dtype != dtype:
        return mask.to(dtype).clamp_min(torch.finfo(dtype).min)
    return mask


def forward_logps(model, inputs: dict, batching: str, *, with_prompt: bool = False):
    """The model's forward on a collated preference batch and the per-segment log-prob sums and counts
    (segments: chosen 0…n−1, rejected n…2n−1, then prompts 2n…3n−1 when the batch has prompt targets)."""
    from rutune.train.losses import sequence_logps

    if batching == "packed":  # segment metadata instead of a mask; the model's attention must be PAIR_PACKED
        forward = {k: inputs[k] for k in PACKED_PAIRS_FORWARD_KEYS}
    else:
        forward = {k: inputs[k] for k in FORWARD_KEYS}
        mask = forward["attention_mask"]
        if mask.dim() == 4:
            forward["attention_mask"] = additive_mask(mask, model)
    outputs = model(**forward, use_cache=False, logits_to_keep=inputs["logits_to_keep"])
    n = int(inputs["num_pairs"])
    lp = sequence_logps(outputs.logits, inputs["target_ids"], segment_ids=inputs["target_segment"],
                        num_segments=(3 if with_prompt else 2) * n)
    return outputs, lp


__all__ = ["REF_COLUMNS", "add_prompt_targets", "additive_mask", "collate_pairs", "forward_logps"]
