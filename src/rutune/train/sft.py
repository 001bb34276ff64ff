"""The `sft` recipe: supervised fine-tuning on the prepared mixture with `transformers.Trainer`.

Data: `prepare/sft.parquet` (`messages` column), tokenised with the stage's own chat template and assistant-only
labels (`rutune.data.templates`), cached as Arrow beside the run (`train/_cache/`) under a key of data hash,
tokenizer + template hash and the length policy, so a rerun or a resume does not re-tokenise.

Batches: with `packing: true` (default) each device batch of `per_device_batch_size` sequences becomes one row with
restarting `position_ids` and `cu_seq_lens` boundaries (`collators.pack_sft`); attention runs per sequence
(`attention.packed_sdpa` on CPU/SDPA, flash-attention varlen when `base_model.attn_implementation` names it).
Logits are computed only at trained positions (`logits_to_keep`), which matters at 150k vocabularies.

Loss: the token-weighted mean NLL over the trained tokens of the whole global batch (all micro-batches of a
gradient-accumulation cycle, all processes), the normalisation TRL's `SFTTrainer` and transformers use.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rutune.rundir import RunDir
from rutune.train.errors import TrainError

FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                "max_length_k")


# ---------------------------------------------------------------- data
def sft_data(run: RunDir) -> tuple[Path, str | None]:
    """The prepared SFT parquet and its content hash (prepare manifest, `sft` block); TrainError when missing or empty."""
    from rutune.train.stage_io import prepared_data

    return prepared_data(run, "sft.parquet", ("messages",), "SFT", block="sft")


def _tokenize_batch(batch: dict, *, tokenizer, max_tokens: int, overlength: str, counts: dict) -> dict:
    from rutune.data.templates import tokenize_chats

    rows = tokenize_chats(tokenizer, batch["messages"], max_tokens=max_tokens, overlength=overlength, counts=counts)
    kept = [r for r in rows if r is not None]
    return {
        "input_ids": [r.input_ids for r in kept],
        "labels": [r.labels for r in kept],
        "length": [len(r.input_ids) for r in kept],
    }


def tokenized_dataset(tokenizer, parquet: Path, *, data_hash: str | None, max_tokens: int, overlength: str,
                      cache_dir: Path):
    """Tokenise the mixture once per (data, tokenizer+template, length policy); returns (dataset, counts).

    `counts` has `kept`, `truncated`, `dropped_overlength` — from the run that built the cache, stored beside it.
    """
    from rutune.train.tokenize_cache import cached_tokenization

    fn = functools.partial(_tokenize_batch, tokenizer=tokenizer, max_tokens=max_tokens, overlength=overlength)
    raw, ds, counts = cached_tokenization(tokenizer, parquet, fn, kind="sft", data_hash=data_hash,
                                                  max_tokens=max_tokens, overlength=overlength, cache_dir=cache_dir)
    if len(ds) == 0:
        raise TrainError(f"{parquet}: all {len(raw)} rows are longer than data.sft.max_tokens={max_tokens} "
                         f"(overlength: {overlength}); raise max_tokens or use overlength: truncate")
    return ds, counts


# ---------------------------------------------------------------- trainer
def sft_step_loss(trainer, model, inputs, *, return_outputs=False, num_items_in_batch=None):
    """One micro-batch's share of the global token-weighted loss (see the module docstring)."""
    from rutune.train.losses import sft_loss

    targets = inputs["shift_labels"]
    keep = targets.ne(-100)
    forward = {k: inputs[k] for k in FORWARD_KEYS if k in inputs}
    outputs = model(**forward, use_cache=False, logits_to_keep=keep)
    n_local = keep.sum()
    denominator = num_items_in_batch if num_items_in_batch is not None else n_local.clamp(min=1)
    loss = sft_loss(outputs.logits, targets[keep], denominator)
    if trainer.args.world_size > 1 and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # DDP averages gradients over processes; undo it
    trainer.record_metric("trained_tokens", float(n_local))
    trainer.record_metric("input_tokens", float(inputs["input_ids"].numel()))
    return (loss, outputs) if return_outputs else loss


def build_trainer(model, tokenizer, dataset, args, *, packing: bool, callbacks=()):
    """The SFT Trainer over a tokenised dataset (columns input_ids, labels): `RecipeTrainer` with `sft_step_loss`,
    counting trained tokens over the global batch."""
    from rutune.train.collators import pack_sft, pad_sft
    from rutune.train.trainer import RecipeTrainer

    collator = pack_sft if packing else functools.partial(pad_sft, pad_token_id=tokenizer.pad_token_id)
    return RecipeTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         processing_class=tokenizer, callbacks=list(callbacks), step_loss=sft_step_loss,
                         counts_tokens=True)


def choose_attention(model_cfg, packing: bool) -> str | None:
    """Packed batches: flash-attention varlen when configured, else rutune's per-sequence SDPA."""
    from rutune.attention import PACKED_SDPA

    configured = model_cfg.attn_implementation if model_cfg is not None else None
    if not packing:
        return configured
    if configured and configured.startswith("flash_attention"):
        return configured
    return PACKED_SDPA


# ---------------------------------------------------------------- the stage
def run_stage(cfg, stage, run: RunDir, *, show_progress: bool = True) -> Path:
    """Train one `sft` stage and write `train/<stage>/checkpoint/`; resumes from the last complete checkpoint."""
    from rutune.train.model_setup import apply_lora, load_stage_model
    from rutune.train.outputs import finish_stage, read_metrics, stage_meta
    from rutune.train.stage_io import StagePaths, init_source, load_stage_tokenizer
    from rutune.train.checkpoints import train_resumable
    from rutune.train.trainer import stage_callbacks, training_arguments

    paths = StagePaths.of(run, stage.name)
    parquet, data_hash = sft_data(run)
    init_path = init_source(cfg, stage, run)
    tokenizer = load_stage_tokenizer(init_path)
    args = training_arguments(stage, paths.trainer_dir, seed=cfg.seed)
    dataset, counts = tokenized_dataset(tokenizer, parquet, data_hash=data_hash, max_tokens=cfg.data.sft.max_tokens,
                                        overlength=cfg.data.sft.overlength, cache_dir=paths.cache)

    from_base = stage.init_from == "base"
    model = load_stage_model(init_path, cfg.base_model if from_base else None, from_base=from_base,
                             attn_implementation=choose_attention(cfg.base_model, stage.packing))
    if stage.lora is not None:
        model = apply_lora(model, stage.lora, seed=cfg.seed)
    trainer = build_trainer(model, tokenizer, dataset, args, packing=stage.packing,
                            callbacks=stage_callbacks(paths, show_progress=show_progress, label=f"sft {stage.name}",
                                                      keep=stage.save_total_limit))
    result = train_resumable(trainer, paths)
    metrics = read_metrics(paths.metrics)
    meta = stage_meta(cfg, stage, init_path=init_path, data_manifest_hash=data_hash, extra={
        "recipe": "sft",
        "data_rows": counts,
        "train": {"global_steps": result.global_step, "mean_loss": result.training_loss,
                  "first_loss": metrics[0]["loss"] if metrics else None,
                  "last_loss": metrics[-1]["loss"] if metrics else None,
                  "trained_tokens": sum(r.get("trained_tokens", 0) for r in metrics)},
    })
    return finish_stage(trainer, tokenizer, cfg, stage, paths, meta, init_path=init_path, counts=counts)


__all__ = ["build_trainer", "choose_attention", "run_stage", "sft_data", "sft_step_loss", "tokenized_dataset"]
