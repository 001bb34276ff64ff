"""Crash-safe checkpoints: intermediate Trainer checkpoints that are marked complete only once fully written,
resume from the newest complete one, and the final Hugging Face checkpoint written into a temp folder and renamed.

Crash safety. The Trainer writes `trainer/checkpoint-N/` every `save_steps`; `CompletionMarker` drops a `COMPLETE`
file into it only after the Trainer has finished writing it (model, optimizer, scheduler, RNG, trainer state), and
older checkpoints are rotated away only after the newer one is complete (the Trainer's own rotation is off). On
restart `latest_good_checkpoint` ignores (and removes) any folder without the marker, so a SIGKILL during a save
falls back to the previous complete checkpoint.

Resume. A resumed run says so on stderr (main process only): `resuming train/sft from checkpoint-20 (step 20 of
40)`. While the Trainer loads a checkpoint's weights, `TiedKeysFilter` drops its "There were missing keys in the
checkpoint model loaded: ['lm_head.weight']" warning when every missing key is tied to a loaded one (tied
embeddings: safetensors stores the shared tensor once, under the other name) — harmless, but alarming to read.
An untied key that is missing is still reported.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from transformers import TrainerCallback

from rutune.rundir import write_json_atomic, write_text_atomic

COMPLETE = "COMPLETE"

class CompletionMarker(TrainerCallback):
    """After the Trainer has fully written `checkpoint-N/`, mark it complete, then keep only the newest `keep`
    complete checkpoints (see the module docstring): an older one is deleted only once a newer one is complete."""

    def __init__(self, keep: int = 2):
        self.keep = max(1, keep)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        write_text_atomic(folder / COMPLETE, f"{state.global_step}\n")
        done = sorted((int(p.name.removeprefix("checkpoint-")), p) for p in Path(args.output_dir).glob("checkpoint-*")
                      if p.name.removeprefix("checkpoint-").isdigit() and (p / COMPLETE).exists())
        for _, old in done[: -self.keep]:
            (old / COMPLETE).unlink()  # unmark first: a kill mid-delete leaves an ignored folder, not a broken one
            shutil.rmtree(old, ignore_errors=True)



# ---------------------------------------------------------------- resume
def latest_good_checkpoint(trainer_dir: Path, *, remove_incomplete: bool = True) -> Path | None:
    """The newest `checkpoint-N/` with a COMPLETE marker; incomplete ones (a kill during save) are removed."""
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return None
    found = []
    for folder in trainer_dir.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if not step.isdigit():
            continue
        if (folder / COMPLETE).exists():
            found.append((int(step), folder))
        elif remove_incomplete:
            shutil.rmtree(folder, ignore_errors=True)
    return max(found)[1] if found else None


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop metric lines past the resumed step (they are logged again by the resumed run)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))


def train_resumable(trainer, paths):
    """`trainer.train()`, resuming from the last complete intermediate checkpoint when there is one.

    A resume is announced on stderr by the main process (`resume_line`), and the Trainer's missing-keys warning
    for tied weights is filtered while it loads the checkpoint (`quiet_tied_missing_keys`).
    """
    resume = None
    if trainer.is_world_process_zero():
        resume = latest_good_checkpoint(paths.trainer_dir)
    if trainer.args.world_size > 1:
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([str(resume) if resume else ""], from_process=0)[0]
        resume = Path(shared) if shared else None
    if resume is None:
        if trainer.is_world_process_zero() and paths.metrics.exists():
            paths.metrics.unlink()
        return trainer.train(resume_from_checkpoint=None)
    if trainer.is_world_process_zero():
        truncate_metrics(paths.metrics, int(resume.name.removeprefix("checkpoint-")))
        print(resume_line(paths.trainer_dir.parent, resume, trainer.args.max_steps), file=sys.stderr, flush=True)
    with quiet_tied_missing_keys(trainer):
        if _finished(resume) and not _sharded(trainer):
            return _restore_finished(trainer, resume)
        return trainer.train(resume_from_checkpoint=str(resume))


def resume_line(stage_dir: Path, checkpoint: Path, max_steps: int | None = None) -> str:
    """`resuming train/sft from checkpoint-20 (step 20 of 40)`.

    The step is the checkpoint's `global_step` (else its folder number). The total is this run's `max_steps` when
    set (> 0), else the one the checkpoint's run computed from its epochs; unknown → `(step N)`.
    """
    stage_dir, checkpoint = Path(stage_dir), Path(checkpoint)
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        state = {}
    step = state.get("global_step") or int(checkpoint.name.removeprefix("checkpoint-"))
    total = max_steps if max_steps and max_steps > 0 else state.get("max_steps") or 0
    of = f" of {total}" if total > 0 else ""
    return f"resuming {stage_dir.parent.name}/{stage_dir.name} from {checkpoint.name} (step {step}{of})"


TRAINER_LOGGER = "transformers.trainer"  # the logger `Trainer._issue_warnings_after_load` warns on
MISSING_KEYS = "There were missing keys in the checkpoint model loaded: "


def tied_aliases(model) -> dict[str, set[str]]:
    """Parameter name → the other names of the same tensor (tied weights); untied parameters are absent."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {n: set(group) - {n} for group in names.values() if len(group) > 1 for n in group}


class TiedKeysFilter(logging.Filter):
    """Drops the Trainer's missing-keys warning when each missing key is tied to a key that was loaded.

    With tied embeddings `lm_head.weight` is `embed_tokens.weight`; safetensors stores the tensor once, so a
    resume reports `lm_head.weight` missing although loading `embed_tokens.weight` filled it. Any other
    message, or a missing key with no loaded alias (untied, really absent), passes.
    """

    def __init__(self, aliases: dict[str, set[str]]):
        super().__init__()
        self.aliases = aliases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(MISSING_KEYS):
            return True
        try:
            missing = ast.literal_eval(message[len(MISSING_KEYS):].strip().rstrip("."))
        except (ValueError, SyntaxError):
            return True
        if not isinstance(missing, (list, tuple)) or not missing:
            return True
        gone = set(missing)
        return not all(self.aliases.get(key, set()) - gone for key in missing)


@contextlib.contextmanager
def quiet_tied_missing_keys(trainer):
    """While this is open, each `trainer._load_from_checkpoint` call runs with `TiedKeysFilter` on the Trainer's
    logger (and only then): training's own warnings are never filtered. Nothing to do for an untied model."""
    model = trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    aliases = tied_aliases(model)
    load = getattr(trainer, "_load_from_checkpoint", None)
    if not aliases or load is None:
        yield
        return

    def load_quietly(*args, **kwargs):
        logger = logging.getLogger(TRAINER_LOGGER)
        quiet = TiedKeysFilter(aliases)
        logger.addFilter(quiet)
        try:
            return load(*args, **kwargs)
        finally:
            logger.removeFilter(quiet)

    own = vars(trainer).get("_load_from_checkpoint")  # normally None: the class's method
    trainer._load_from_checkpoint = load_quietly  # an instance attribute shadows the method until restored
    try:
        yield
    finally:
        if own is None:
            del trainer._load_from_checkpoint
        else:
            trainer._load_from_checkpoint = own


def _finished(checkpoint: Path) -> bool:
    """The checkpoint was written at the last step (the kill came during the final save)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def _sharded(trainer) -> bool:
    from accelerate.utils import DistributedType

    return trainer.accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def _restore_finished(trainer, checkpoint: Path):
    """Load the last step's weights instead of re-entering the loop (which would log a spurious extra step)."""
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    return TrainOutput(state["global_step"], sum(losses) / len(losses) if losses else 0.0, {})


def save_final_checkpoint(trainer, tokenizer, out_dir: Path, meta: dict, *, init_path: str,
                          merge_lora: bool = True) -> Path:
    """Write the stage's HF checkpoint atomically: safetensors weights, tokenizer with its chat template, meta.json.

    LoRA: with `merge_lora` the adapter is merged into a fresh copy of the starting weights (works the same whether
    the trained model was sharded by ZeRO-3/FSDP or not); otherwise the adapter folder is saved, which
    `AutoModelForCausalLM.from_pretrained` also loads when peft is installed.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.writing")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective: gathers sharded weights
    if trainer.is_world_process_zero():
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        is_peft = hasattr(unwrapped, "peft_config")
        if is_peft and merge_lora:
            _merge_adapter_into(tmp, init_path)
        # training-time settings that must not leak into inference
        cfg_path = tmp / "config.json"
        if cfg_path.exists():
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
            config["use_cache"] = True
            write_json_atomic(cfg_path, config)
        tokenizer.save_pretrained(str(tmp))
        for leftover in ("training_args.bin",):
            (tmp / leftover).unlink(missing_ok=True)
        write_json_atomic(tmp / "meta.json", {**meta, "lora_merged": bool(is_peft and merge_lora),
                                              "lora": bool(is_peft)})
        _replace_dir(tmp, out_dir)
    trainer.accelerator.wait_for_everyone()
    return out_dir


def _merge_adapter_into(folder: Path, init_path: str) -> None:
    """Replace the adapter files in `folder` by full merged weights (adapter applied to the starting model)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(init_path, dtype="float32")
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        (folder / name).unlink(missing_ok=True)
    merged.save_pretrained(str(folder), safe_serialization=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; the previous one (a forced rerun) is removed only after the move."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["COMPLETE", "CompletionMarker", "TiedKeysFilter", "latest_good_checkpoint", "quiet_tied_missing_keys",
           "resume_line", "save_final_checkpoint", "train_resumable", "truncate_metrics"]
