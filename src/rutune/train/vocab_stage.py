"""The `vocab` stage: extend the tokenizer → mean-initialise the new rows → train embeddings + LM head.

Layout under `train/<stage>/`:
* `adapted/` — the extended tokenizer + the mean-initialised checkpoint (`embedding_init.adapt_checkpoint`) and
  `rutune_stage_key.json`. Deterministic from the key (base tokenizer fingerprint, text settings, size), so a
  resumed run reuses it and a changed setting rebuilds it.
* `trainer/`, `metrics.jsonl` — the usual Trainer checkpoints and log (`train_resumable`: exact resume).
* `checkpoint/` — the final model with the adapted tokenizer, `rutune_vocab.json` (pairing record) and
  `meta.json` with the text sources + licences (`text`), the extension report (`extension`) and what trained.

Training text: the merge-side sample texts (`russian_text.merge_side_texts`), each followed by the end-of-text
token, concatenated and cut into blocks of `max_tokens` (the last partial block is dropped). Loss: mean next-token
NLL over each block. Everything but the input embedding and the LM head is frozen; with `freeze_old_rows` a
gradient mask keeps rows below the first new id unchanged (the tied head shares the mask). With `lora:` the other
layers get LoRA adapters too (the embedding and head then train as peft `modules_to_save`), and the final
checkpoint has the adapters merged: a plain transformers checkpoint, no adapter files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rutune.rundir import RunDir, stable_hash, write_json_atomic
from rutune.train.errors import TrainError

STAGE_KEY = "rutune_stage_key.json"


def check_inputs(stage) -> None:
    """TrainError (one line) when a text source is missing: wordfreq not installed, samples unreadable."""
    from rutune.data.russian_text import merge_side_texts, wordfreq_counts
    from rutune.data.vocab_bpe import VocabError

    if not stage.text.use_wordfreq and stage.text.sample_weight == 0:
        raise TrainError(f"train stage {stage.name}: text sources: nothing to learn merges from "
                         "(use_wordfreq false and sample_weight 0)")
    try:
        if stage.text.use_wordfreq:
            wordfreq_counts(10, wordlist=stage.text.wordlist)
        merge_side_texts(held_out_share=stage.text.held_out_share, seed=stage.text.seed)
    except VocabError as e:
        raise TrainError(f"train stage {stage.name}: {e}") from None


def _text_settings(stage) -> dict:
    return stage.text.model_dump(mode="json")


def adapt(stage, init_path: str, folder: Path) -> tuple[Path, dict]:
    """Extended tokenizer + mean-initialised checkpoint in `folder` (reused when its key matches).

    Returns (checkpoint folder, record) where the record holds the text manifest (sources, licences, split) and
    the extension report — what the stage's meta.json carries.
    """
    from rutune.data.russian_text import russian_text
    from rutune.data.vocab import effective_tokenizer_json, extend_tokenizer_dir, fingerprint
    from rutune.data.vocab_bpe import VocabError
    from rutune.train.embedding_init import adapt_checkpoint

    try:
        base_json, _ = effective_tokenizer_json(init_path)
        key = stable_hash({"base": fingerprint(base_json), "text": _text_settings(stage),
                           "new_tokens": stage.new_tokens})
        record_path = folder / STAGE_KEY
        ckpt = folder / "checkpoint"
        if record_path.is_file() and (ckpt / "config.json").is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("key") == key:
                return ckpt, record
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t = stage.text
        text = russian_text(n_words=t.n_words, wordlist=t.wordlist, use_wordfreq=t.use_wordfreq,
                            sample_weight=t.sample_weight, held_out_share=t.held_out_share, seed=t.seed)
        report = extend_tokenizer_dir(init_path, folder / "tokenizer", text.merge_counts, stage.new_tokens)
        init = adapt_checkpoint(init_path, folder / "tokenizer", ckpt)
    except VocabError as e:
        raise TrainError(f"train stage {stage.name}: {e}") from None
    record = {"key": key, "text": text.manifest(), "extension": report.to_dict(), "init": init.to_dict()}
    write_json_atomic(record_path, record)  # last: a kill before this rebuilds the folder
    return ckpt, record


def text_blocks(tokenizer, texts: list[str], block: int) -> list[list[int]]:
    """Texts tokenised (no specials), each followed by the end-of-text id, joined and cut into `block`-long rows."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainError("vocab stage: the tokenizer has no eos token to separate texts")
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text, add_special_tokens=False))
        stream.append(eos)
    rows = [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]
    if not rows:
        raise TrainError(f"vocab stage: {len(stream)} training tokens, fewer than one block of max_tokens={block}")
    return rows


def _mask_old_rows(weight, first_new_id: int) -> None:
    """Gradient mask: rows below `first_new_id` get a zero gradient (so AdamW without decay never moves them)."""
    import torch

    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
    mask[first_new_id:] = 1
    weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))


def freeze_all_but_embeddings(model, *, first_new_id: int, freeze_old_rows: bool) -> dict:
    """Only the input embedding and LM head train (tied: one matrix); optionally only their new rows.

    Returns counts for meta.json: trainable parameters (all rows of the trained matrices) and the rows that move.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                if m is not None}
    for weight in matrices.values():
        weight.requires_grad_(True)
        if freeze_old_rows:
            _mask_old_rows(weight, first_new_id)
    rows = model.get_input_embeddings().weight.shape[0]
    return {"trainable_parameters": sum(w.numel() for w in matrices.values()), "matrices": len(matrices),
            "rows_trained": rows - first_new_id if freeze_old_rows else rows}


def embedding_modules(model) -> tuple[list[str], bool]:
    """(Module names of the input embedding and LM head as peft's `modules_to_save` matches them, tied?).

    A tied head is left out (peft's `ensure_weight_tying` ties it to the trained embedding copy)."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is inp.weight
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is inp or (m is out and not tied)]
    return names, tied


def lora_with_embeddings(model, lora_cfg, *, first_new_id: int, freeze_old_rows: bool, seed: int):
    """LoRA adapters on the other layers (`model_setup.apply_lora`, the sft recipe's setup) + the input embedding
    and LM head trained fully as peft `modules_to_save` (ruadapt's PEFT variant), so a Trainer checkpoint — the
    adapter folder — carries the trained matrices and the final save merges both into full weights.

    Returns (peft model, counts for meta.json)."""
    from rutune.train.model_setup import apply_lora

    for p in model.parameters():
        p.requires_grad_(False)
    names, tied = embedding_modules(model)
    model = apply_lora(model, lora_cfg, seed=seed, modules_to_save=names, ensure_weight_tying=tied)
    matrices = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                for p in m.parameters() if p.requires_grad}
    if freeze_old_rows:
        for weight in matrices.values():
            _mask_old_rows(weight, first_new_id)
    rows = next(iter(matrices.values())).shape[0]
    embedding = sum(w.numel() for w in matrices.values())
    return model, {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "embedding_parameters": embedding, "lora_parameters":
                   sum(p.numel() for p in model.parameters() if p.requires_grad) - embedding,
                   "matrices": len(matrices), "rows_trained": rows - first_new_id if freeze_old_rows else rows}


def collate_blocks(rows: list[dict]) -> dict:
    import torch

    return {"input_ids": torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)}


def block_step_loss(trainer, model, inputs, *, return_outputs=False, num_items_in_batch=None):
    """Mean next-token NLL over the micro-batch's blocks (all blocks are full, so every token weighs the same)."""
    import torch

    ids = inputs["input_ids"]
    outputs = model(input_ids=ids, use_cache=False)
    logits = outputs.logits[:, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    trainer.record_metric("trained_tokens", float(ids[:, 1:].numel()))
    return (loss, outputs) if return_outputs else loss


def run_stage(cfg, stage, run: RunDir, *, show_progress: bool = True) -> Path:
    """Train one `vocab` stage and write `train/<stage>/checkpoint/` (see the module docstring)."""
    from datasets import Dataset

    from rutune.data.russian_text import merge_side_texts
    from rutune.data.vocab import VOCAB_RECORD
    from rutune.train.checkpoints import train_resumable
    from rutune.train.embedding_init import INIT_RECORD
    from rutune.train.model_setup import load_stage_model
    from rutune.train.outputs import finish_stage, read_metrics, stage_meta
    from rutune.train.stage_io import StagePaths, init_source, load_stage_tokenizer
    from rutune.train.trainer import RecipeTrainer, stage_callbacks, training_arguments

    paths = StagePaths.of(run, stage.name)
    init_path = init_source(cfg, stage, run)
    adapted, record = adapt(stage, init_path, paths.root / "adapted")
    tokenizer = load_stage_tokenizer(str(adapted))  # also checks the checkpoint/tokenizer pairing
    if not stage.train_embeddings:
        return _copy_untrained(cfg, stage, paths, adapted, init_path, record)
    texts = merge_side_texts(held_out_share=stage.text.held_out_share, seed=stage.text.seed)
    blocks = text_blocks(tokenizer, texts, stage.max_tokens)
    model = load_stage_model(str(adapted), None, from_base=False)
    first_new_id = record["extension"]["first_new_id"]
    if stage.lora is None:
        trained = freeze_all_but_embeddings(model, first_new_id=first_new_id, freeze_old_rows=stage.freeze_old_rows)
    else:
        model, trained = lora_with_embeddings(model, stage.lora, first_new_id=first_new_id,
                                              freeze_old_rows=stage.freeze_old_rows, seed=cfg.seed)
    args = training_arguments(stage, paths.trainer_dir, seed=cfg.seed)
    dataset = Dataset.from_dict({"input_ids": blocks})
    trainer = RecipeTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_blocks,
                            processing_class=tokenizer, step_loss=block_step_loss,
                            callbacks=stage_callbacks(paths, show_progress=show_progress, label=f"vocab {stage.name}",
                                                      keep=stage.save_total_limit))
    result = train_resumable(trainer, paths)
    metrics = read_metrics(paths.metrics)
    counts = {"texts": len(texts), "blocks": len(blocks), "block_tokens": stage.max_tokens,
              "training_tokens": len(blocks) * stage.max_tokens}
    meta = stage_meta(cfg, stage, init_path=init_path, data_manifest_hash=None, extra={
        "recipe": "vocab", "text": record["text"], "extension": record["extension"], "init": record["init"],
        "trained": {**trained, "freeze_old_rows": stage.freeze_old_rows, "lora": stage.lora is not None},
        "data_rows": counts,
        "train": {"global_steps": result.global_step, "mean_loss": result.training_loss,
                  "first_loss": metrics[0]["loss"] if metrics else None,
                  "last_loss": metrics[-1]["loss"] if metrics else None,
                  "trained_tokens": sum(r.get("trained_tokens", 0) for r in metrics)},
    })
    out = finish_stage(trainer, tokenizer, cfg, stage, paths, meta, init_path=str(adapted), counts=counts)
    for name in (VOCAB_RECORD, INIT_RECORD):  # the pairing record travels with the weights it describes
        shutil.copy2(adapted / name, out / name)
    return out


def _copy_untrained(cfg, stage, paths, adapted: Path, init_path: str, record: dict) -> Path:
    """`train_embeddings: false`: the mean-initialised checkpoint becomes the stage's checkpoint as it is."""
    import os

    from rutune.train.outputs import stage_meta

    out = paths.checkpoint
    tmp = out.with_name(f".{out.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapted, tmp)
    write_json_atomic(tmp / "meta.json", stage_meta(cfg, stage, init_path=init_path, data_manifest_hash=None, extra={
        "recipe": "vocab", "text": record["text"], "extension": record["extension"], "init": record["init"],
        "trained": None, "lora": False, "lora_merged": False}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


__all__ = ["adapt", "block_step_loss", "check_inputs", "collate_blocks", "embedding_modules",
           "freeze_all_but_embeddings", "lora_with_embeddings", "run_stage", "text_blocks"]
