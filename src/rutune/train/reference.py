"""Reference log-probs for the DPO family: one no-grad pass before training, cached on disk.

Every pair's reference sums (chosen, rejected) are computed once, in dataset order, with the stage's own collator
and forward (`pref_batch`), so they are what a reference forward on the training batches would give; they are stored
per pair index and travel with the dataset as columns `ref_chosen` / `ref_rejected`, so the sampler's order, a
resume or another process cannot misalign them. A DPO step then costs what a SimPO step costs.

The reference (`stage.reference`): null = the stage's starting checkpoint — with LoRA the adapters-disabled model,
otherwise the model itself before its first step — or a model path / hub id, loaded for the pass and released.

Cache: `<output_root>/_reference/<key>.pt`, key = hash(the tokenised pairs' ids, the reference weights' content
hash, the precision), so a rerun, a resume, or a sweep variant with the same data and reference reuses it; other data
or other weights give another key (recomputed); a file whose stored key or pair count disagrees is recomputed, never
reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

from rutune.rundir import atomic_path, model_hash, stable_hash
from rutune.train.errors import TrainError

CACHE_DIR = "_reference"
PASSES = {"computed": 0}  # reference passes run in this process (tests count them)


def check_reference(cfg, stage) -> None:
    """Before the stage folder exists: a named reference must resolve (a one-line error naming the YAML path)."""
    from rutune.models import ModelError, resolve_model_path
    from rutune.train.objectives import OBJECTIVES

    if not OBJECTIVES.get(stage.loss.name).needs_reference or stage.reference is None:
        return
    index = [s.name for s in cfg.train.stages].index(stage.name)
    try:
        resolve_model_path(stage.reference)
    except ModelError as e:
        raise TrainError(f"train.stages.{index}.reference: {str(e).splitlines()[0]} (objective "
                         f"{stage.loss.name} needs a reference model)") from None


def pairs_hash(dataset) -> str:
    """Content hash of the tokenised pairs, in dataset order (pair index i = row i)."""
    import numpy as np

    h = hashlib.sha256()
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        for ids in dataset[col]:
            arr = np.asarray(ids, dtype=np.int64)
            h.update(np.int64(arr.size).tobytes())
            h.update(arr.tobytes())
    return h.hexdigest()[:16]


def weights_hash(path: str) -> str:
    """Content hash of a model folder's weights and configs (`*.safetensors`, `*.json`; `rundir.model_hash`)."""
    return model_hash(path)


def cache_file(output_root, key: str) -> Path:
    return Path(output_root) / CACHE_DIR / f"{key}.pt"


def load_cached(path: Path, key: str, n_pairs: int):
    """The cached (pairs, 2) tensor, or None when absent or made for other inputs (then it is recomputed)."""
    import torch

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed
        return None
    logps = blob.get("logps") if isinstance(blob, dict) else None
    if blob.get("key") != key or logps is None or tuple(logps.shape) != (n_pairs, 2):
        return None
    return logps


# The pass's micro-batches keep a prefix-shared / concat batch's L×L attention mask (and SDPA's per-row work) under
# this many elements: bench/dpo.py's RAG batch, 4 pairs × 3,361 tokens, held a 180 MB float32 mask and made the pass,
# not the training steps, the process's peak; one such pair alone is 11.3M elements. Short pairs still go
# `batch_size` at a time. The sums differ from a full-batch pass only by float rounding (padding changes the
# reduction order), as they already do from the shuffled training batches.
REFERENCE_MASK_ELEMENTS = 1 << 24


def micro_batches(widths_rows: list[tuple[int, int]], *, batch_size: int, budget: int = REFERENCE_MASK_ELEMENTS):
    """Consecutive [first, end) ranges of pairs: at most `batch_size` pairs, and at most `budget` mask elements
    (rows × padded width²) unless a single pair alone needs more. `widths_rows[i]` = (pair i's row width, rows)."""
    ranges, first, width, rows = [], 0, 0, 0
    for i, (w, r) in enumerate(widths_rows):
        grown_w, grown_r = max(width, w), rows + r
        if i > first and (i - first >= batch_size or grown_r * grown_w * grown_w > budget):
            ranges.append((first, i))
            first, grown_w, grown_r = i, w, r
        width, rows = grown_w, grown_r
    if widths_rows:
        ranges.append((first, len(widths_rows)))
    return ranges


def pair_widths(dataset, batching: str) -> list[tuple[int, int]]:
    """(row width, rows) per pair in the stage's layout; packed rows have no mask, so they count as width 0."""
    rows = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    if batching == "prefix_shared":
        return [(len(p) - 1 + len(c) + len(r), 1) for p, c, r in rows]
    if batching == "concat":
        return [(len(p) + max(len(c), len(r)), 2) for p, c, r in rows]
    return [(0, 1) for _ in rows]


def compute_reference(model, dataset, collate, *, batch_size: int, batching: str, device, autocast_dtype=None):
    """(pairs, 2) float64 reference sums [chosen, rejected] in dataset order: the stage's collator on consecutive
    micro-batches of at most `batch_size` pairs (`micro_batches`: long pairs fewer at a time), the stage's
    forward, under no_grad and in eval mode (no dropout)."""
    import torch

    from rutune.train.pref_batch import forward_logps

    PASSES["computed"] += 1
    out = torch.empty((len(dataset), 2), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for first, end in micro_batches(pair_widths(dataset, batching), batch_size=batch_size,
                                            budget=REFERENCE_MASK_ELEMENTS):
                rows = [dataset[i] for i in range(first, end)]
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(rows).items()}
                amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None \
                    else contextlib.nullcontext()
                with amp:
                    _, lp = forward_logps(model, batch, batching)
                n = len(rows)
                out[first:first + n, 0] = lp.sum[:n].double().cpu()
                out[first:first + n, 1] = lp.sum[n:2 * n].double().cpu()
                del batch, lp
    finally:
        model.train(was_training)
    return out


def attach_reference(cfg, stage, model, dataset, collate, args, *, init_path: str, attn: str | None):
    """The dataset with `ref_chosen` / `ref_rejected` columns, and what happened (for the stage's meta).

    Computed on the main process first (the others then read the file), or read from the cache."""
    import torch
    from accelerate import PartialState

    from rutune.models import resolve_model_path

    source = resolve_model_path(stage.reference) if stage.reference is not None else init_path
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    key = stable_hash({"pairs": pairs_hash(dataset), "weights": weights_hash(source), "precision": precision})
    path = cache_file(cfg.output_root, key)
    info = {"source": stage.reference or "init", "file": str(path), "key": key, "reused": True, "seconds": 0.0}
    with PartialState().main_process_first():
        logps = load_cached(path, key, len(dataset))
        if logps is None:
            info["reused"] = False
            start = time.perf_counter()
            logps = _run_pass(stage, model, dataset, collate, args, source=source, attn=attn, precision=precision)
            info["seconds"] = time.perf_counter() - start
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save({"key": key, "logps": logps, "pairs": len(dataset), "source": source}, tmp)
    dataset = dataset.add_column("ref_chosen", logps[:, 0].tolist())
    dataset = dataset.add_column("ref_rejected", logps[:, 1].tolist())
    return dataset, info


def _run_pass(stage, model, dataset, collate, args, *, source: str, attn: str | None, precision: str):
    import torch

    device = args.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    kw = dict(batch_size=stage.per_device_batch_size, batching=stage.batching, device=device, autocast_dtype=dtype)
    if stage.reference is not None:  # a named model: loaded for the pass, then released
        from rutune.train.model_setup import load_stage_model

        ref = load_stage_model(source, None, attn_implementation=attn, from_base=False).to(device)
        try:
            return compute_reference(ref, dataset, collate, **kw)
        finally:
            del ref
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    model.to(device)
    if _is_peft(model):  # LoRA: the reference is the base model under the adapters
        with model.disable_adapter():
            return compute_reference(model, dataset, collate, **kw)
    return compute_reference(model, dataset, collate, **kw)


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


__all__ = ["CACHE_DIR", "PASSES", "REFERENCE_MASK_ELEMENTS", "attach_reference", "cache_file", "check_reference",
           "compute_reference", "load_cached", "micro_batches", "pair_widths", "pairs_hash", "weights_hash"]
