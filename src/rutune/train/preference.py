"""The `preference` recipe: preference optimisation with `transformers.Trainer` (`RecipeTrainer` + a step loss).

Loss: the objective the stage's `loss:` block names (`rutune.train.objectives`), computed from per-pair sequence
log-probs; the default is SimPO (`losses.simpo_loss`): −log σ(β/|y_w|·log π(y_w|x) − β/|y_l|·log π(y_l|x) − γ),
γ an absolute margin, no reference model, plus `sft_weight` × the chosen responses' token-mean NLL (CPO's α).
See docs/simpo.md for the γ conversions (SimPO's gamma_beta_ratio = γ/β, TRL's simpo_gamma = γ) and the defaults.

Data: `prepare/preference.parquet` (`prompt` messages ending with a user turn, `chosen`, `rejected`), rendered with
the stage's chat template by `templates.tokenize_pair` (responses = assistant content + end-of-turn, once).
Pairs whose responses are identical or empty are skipped and counted; a prompt the template cannot take (e.g. one
ending with an assistant turn) is an error naming the file and row. Over `data.preference.max_tokens` the prompt
is cut from the left or the pair dropped (`overlength`), also counted. The tokenised pairs are cached beside the
run (`train/_cache/`), keyed by data, tokenizer + template and the length policy.

Batches (`batching`): `prefix_shared` (default) puts prompt, chosen and rejected in one row with a 4D mask, so the
prompt is computed once and the LM head runs on response positions only (`collators.collate_prefix_shared`);
`concat` is the plain chosen-rows-then-rejected-rows batch TRL uses; `packed` puts all pairs of a micro-batch in one
unpadded row (`collators.collate_packed_pairs`, attention forced to `attention.PAIR_PACKED`). All three give the same
loss and gradients. The step (`pref_batch.forward_logps`) adds ORPO's prompt targets when the objective asks.

Reference objectives (DPO family): before training, `reference.attach_reference` computes every pair's reference
sums once (no grad, cached on disk) and adds them to the dataset as columns, which the collator carries to the step.
"""

from __future__ import annotations

import functools
from pathlib import Path

from rutune.rundir import RunDir
from rutune.train.errors import TrainError

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


# ---------------------------------------------------------------- data
def preference_data(run: RunDir) -> tuple[Path, str | None]:
    """The prepared preference parquet and its content hash (prepare manifest, `preference` block); TrainError when
    missing, empty or malformed."""
    from rutune.train.stage_io import prepared_data

    return prepared_data(run, "preference.parquet", PAIR_COLUMNS, "preference", block="preference")


def tokenize_pairs(tokenizer, prompts, chosen, rejected, *, max_tokens: int, overlength: str, counts: dict,
                   where: str = "pairs", first_row: int = 0) -> list:
    """TokenizedPair per kept pair; skips (counted) identical and empty responses, and over-budget drops.

    `counts` gains `dropped_identical`, `dropped_empty_response`, and tokenize_pair's `kept`, `truncated_prompt`,
    `dropped_overlength`. Malformed prompts raise TrainError naming `where` and the row number.
    """
    from rutune.data.templates import TemplateError, tokenize_pair

    kept = []
    for offset, (prompt, good, bad) in enumerate(zip(prompts, chosen, rejected)):
        row = first_row + offset
        if not isinstance(good, str) or not isinstance(bad, str):
            raise TrainError(f"{where} row {row}: chosen and rejected must be text")
        if not good.strip() or not bad.strip():
            counts["dropped_empty_response"] = counts.get("dropped_empty_response", 0) + 1
            continue
        if good == bad:
            counts["dropped_identical"] = counts.get("dropped_identical", 0) + 1
            continue
        try:
            pair = tokenize_pair(tokenizer, list(prompt or []), good, bad, max_tokens=max_tokens,
                                 overlength=overlength, counts=counts)
        except TemplateError as e:
            raise TrainError(f"{where} row {row}: {str(e).splitlines()[0]}") from None
        if pair is not None:
            kept.append(pair)
    return kept


def _tokenize_batch(batch: dict, indices: list[int], *, tokenizer, max_tokens: int, overlength: str, counts: dict,
                    where: str) -> dict:
    pairs = tokenize_pairs(tokenizer, batch["prompt"], batch["chosen"], batch["rejected"], max_tokens=max_tokens,
                           overlength=overlength, counts=counts, where=where, first_row=indices[0] if indices else 0)
    return {
        "prompt_ids": [p.prompt_ids for p in pairs],
        "chosen_ids": [p.chosen_ids for p in pairs],
        "rejected_ids": [p.rejected_ids for p in pairs],
    }


def tokenized_preferences(tokenizer, parquet: Path, *, data_hash: str | None, max_tokens: int, overlength: str,
                          cache_dir: Path):
    """Tokenise the pairs once per (data, tokenizer+template, length policy); returns (dataset, counts)."""
    from rutune.train.tokenize_cache import cached_tokenization

    fn = functools.partial(_tokenize_batch, tokenizer=tokenizer, max_tokens=max_tokens, overlength=overlength,
                           where=str(parquet))
    raw, ds, counts = cached_tokenization(tokenizer, parquet, fn, kind="pref", data_hash=data_hash,
                                                  max_tokens=max_tokens, overlength=overlength, cache_dir=cache_dir,
                                                  with_indices=True)
    if len(ds) == 0:
        raise TrainError(f"{parquet}: no usable pair among {len(raw)} rows ({_describe(counts)}); "
                         f"check the data or raise data.preference.max_tokens={max_tokens}")
    return ds, counts


def _describe(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


# ---------------------------------------------------------------- trainer
def preference_step_loss(trainer, model, inputs, *, objective, loss_cfg, batching: str = "prefix_shared",
                         return_outputs: bool = False, num_items_in_batch=None):
    """One micro-batch: forward on the preference batch (`pref_batch.forward_logps`), the objective's loss on the
    per-pair sums (+ the cached reference sums, + the prompt sums for ORPO), per-pair metrics recorded for the log."""
    from rutune.train.objectives import PairLogps
    from rutune.train.pref_batch import forward_logps

    outputs, lp = forward_logps(model, inputs, batching, with_prompt=objective.needs_prompt)
    n = int(inputs["num_pairs"])
    pairs = PairLogps(lp.sum[:n], lp.count[:n], lp.sum[n:2 * n], lp.count[n:2 * n],
                      inputs.get("ref_chosen"), inputs.get("ref_rejected"),
                      *((lp.sum[2 * n:], lp.count[2 * n:]) if objective.needs_prompt else ()))
    out = objective.loss(pairs, loss_cfg)
    margin = out.rewards_chosen - out.rewards_rejected
    record = trainer.record_metric
    record("rewards/chosen", out.rewards_chosen.mean())
    record("rewards/rejected", out.rewards_rejected.mean())
    record("rewards/margin", margin.mean())
    record("rewards/accuracy", (margin > 0).float().mean())
    for name in ("logps_chosen", "logps_rejected"):
        if hasattr(out, name):
            record(name.replace("_", "/", 1), getattr(out, name).mean())
    if hasattr(out, "nll"):
        record("nll/chosen", out.nll)
    for name, value in (getattr(out, "extra", None) or {}).items():  # pref_losses' objective-specific metrics
        record(f"extra/{name}", value.float().mean())
    record("length/chosen", lp.count[:n].float().mean())
    record("length/rejected", lp.count[n:2 * n].float().mean())
    record("trained_tokens", lp.count[:2 * n].sum())
    record("input_tokens", inputs["input_ids"].numel())
    return (out.loss, outputs) if return_outputs else out.loss


def stage_collator(stage, tokenizer, *, with_prompt: bool = False):
    """The stage's collator (`pref_batch.collate_pairs`) for its batching. Prefix-shared masks are bool here and
    become additive in the attention's dtype inside `forward_logps` (bench/dpo.py: the float32 mask of a
    4 × 3,361-token RAG batch is 180 MB, and the data loader holds the next batch while the current one runs)."""
    import torch

    from rutune.train.pref_batch import collate_pairs

    return functools.partial(collate_pairs, batching=stage.batching, pad_id=tokenizer.pad_token_id,
                             mask_dtype=torch.bool, with_prompt=with_prompt)


def build_trainer(model, tokenizer, dataset, args, stage, *, callbacks=()):
    """The preference Trainer over a tokenised pair dataset (columns prompt_ids, chosen_ids, rejected_ids, and
    ref_chosen / ref_rejected for reference objectives): `RecipeTrainer` with `preference_step_loss`."""
    from rutune.train.objectives import OBJECTIVES
    from rutune.train.trainer import RecipeTrainer

    objective = OBJECTIVES.get(stage.loss.name)
    if objective.needs_reference and "ref_chosen" not in dataset.column_names:
        raise TrainError(f"objective {objective.name} needs reference log-probs; none were attached")
    collator = stage_collator(stage, tokenizer, with_prompt=objective.needs_prompt)
    step = functools.partial(preference_step_loss, objective=objective, loss_cfg=stage.loss, batching=stage.batching)
    return RecipeTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         processing_class=tokenizer, callbacks=list(callbacks), step_loss=step)


def choose_attention(model_cfg, batching: str) -> str | None:
    """Prefix-shared batches need an attention that takes a 4D float mask: SDPA (default) or eager. Packed batches
    get `attention.PAIR_PACKED` whatever is configured (sdpa/eager would silently mis-attend the rejected branch;
    `PAIR_PACKED_VARLEN`, the CUDA flash kernel, is kept when configured)."""
    configured = model_cfg.attn_implementation if model_cfg is not None else None
    if batching == "packed":
        from rutune.attention import PAIR_PACKED, PAIR_PACKED_VARLEN  # importing registers them

        return PAIR_PACKED_VARLEN if configured == PAIR_PACKED_VARLEN else PAIR_PACKED
    if batching == "prefix_shared" and configured not in (None, "sdpa", "eager"):
        raise TrainError(f"base_model.attn_implementation: {configured!r} cannot take the prefix-shared 4D mask; "
                         "use sdpa or eager, or set the preference stage's batching: concat")
    return configured


# ---------------------------------------------------------------- the stage
def run_stage(cfg, stage, run: RunDir, *, show_progress: bool = True) -> Path:
    """Train one `preference` stage and write `train/<stage>/checkpoint/`; resumes from the last complete
    checkpoint."""
    from rutune.train.checkpoints import train_resumable
    from rutune.train.model_setup import apply_lora, load_stage_model
    from rutune.train.objectives import OBJECTIVES
    from rutune.train.outputs import finish_stage, read_metrics, stage_meta
    from rutune.train.stage_io import StagePaths, init_source, load_stage_tokenizer
    from rutune.train.trainer import stage_callbacks, training_arguments

    attn = choose_attention(cfg.base_model, stage.batching)
    paths = StagePaths.of(run, stage.name)
    parquet, data_hash = preference_data(run)
    init_path = init_source(cfg, stage, run)
    tokenizer = load_stage_tokenizer(init_path)
    dataset, counts = tokenized_preferences(tokenizer, parquet, data_hash=data_hash,
                                            max_tokens=cfg.data.preference.max_tokens,
                                            overlength=cfg.data.preference.overlength, cache_dir=paths.cache)

    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA adapters are random-initialised: seed before they are created, so runs repeat
    from_base = stage.init_from == "base"
    model = load_stage_model(init_path, cfg.base_model if from_base else None, from_base=from_base,
                             attn_implementation=attn)
    if stage.lora is not None:
        model = apply_lora(model, stage.lora, seed=cfg.seed)
    args = training_arguments(stage, paths.trainer_dir, seed=cfg.seed)
    reference = None
    if OBJECTIVES.get(stage.loss.name).needs_reference:
        from rutune.train.reference import attach_reference

        dataset, reference = attach_reference(cfg, stage, model, dataset, stage_collator(stage, tokenizer),
                                              args, init_path=init_path, attn=attn)
    trainer = build_trainer(model, tokenizer, dataset, args, stage,
                            callbacks=stage_callbacks(paths, show_progress=show_progress,
                                                      label=f"{stage.loss.name} {stage.name}",
                                                      keep=stage.save_total_limit))
    result = train_resumable(trainer, paths)
    metrics = read_metrics(paths.metrics)
    last = metrics[-1] if metrics else {}
    meta = stage_meta(cfg, stage, init_path=init_path, data_manifest_hash=data_hash, extra={
        "recipe": "preference",
        "objective": {**stage.loss.model_dump(mode="json"), "batching": stage.batching},
        "reference": reference,
        "data_rows": counts,
        "train": {"global_steps": result.global_step, "mean_loss": result.training_loss,
                  "first_loss": metrics[0]["loss"] if metrics else None, "last_loss": last.get("loss"),
                  "last_accuracy": last.get("rewards/accuracy"), "last_margin": last.get("rewards/margin"),
                  "trained_tokens": sum(r.get("trained_tokens", 0) for r in metrics)},
    })
    return finish_stage(trainer, tokenizer, cfg, stage, paths, meta, init_path=init_path, counts=counts)


__all__ = ["build_trainer", "choose_attention", "preference_data", "preference_step_loss", "run_stage",
           "tokenize_pairs", "tokenized_preferences"]
