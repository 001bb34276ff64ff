"""The Trainer every recipe uses (`RecipeTrainer`: the loss is the recipe's step function), its arguments from a
stage's `OptimConfig`, and the callbacks that write metrics.jsonl, drive the progress bar and mark checkpoints."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from rutune.train.checkpoints import CompletionMarker
from rutune.train.model_setup import resolve_precision
from rutune.train.stage_io import StagePaths


def training_arguments(stage, output_dir: Path, *, seed: int, **overrides):
    """`TrainingArguments` from a stage's `OptimConfig` fields; `overrides` win (tests, benchmarks)."""
    import torch
    from transformers import TrainingArguments

    precision = resolve_precision(stage.precision)
    report_to = list(stage.report_to) or "none"
    if "tensorboard" in stage.report_to:  # beside the stage, not in trainer/ (which is removed when the stage ends)
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(output_dir).parent / "tensorboard"))
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=stage.learning_rate,
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        per_device_train_batch_size=stage.per_device_batch_size,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        lr_scheduler_type=stage.lr_scheduler,
        # transformers 5 removed `warmup_ratio`; a float warmup_steps < 1 is read as that fraction of all steps.
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        max_grad_norm=stage.max_grad_norm,
        activation_checkpointing=stage.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if stage.gradient_checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=None,  # rotation is CompletionMarker's job: only after the newer checkpoint is complete
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPUs start a gloo process group
        ddp_find_unused_parameters=False,
        average_tokens_across_devices=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class RecipeTrainer(Trainer):
    """`transformers.Trainer` whose loss is the recipe's `step_loss(trainer, model, inputs, return_outputs=…,
    num_items_in_batch=…)` — the one way every recipe plugs in (no recipe subclasses the Trainer).

    It also lets that step record extra per-step metrics.

    `record_metric(name, value)` accumulates a float between logging steps; at each log the sum across processes
    (for names ending in `_tokens`) or the mean of the recorded values (anything else) is added to the log line.
    Recipes set `trained_tokens` so the metrics callback can report trained tokens per second.
    """

    def __init__(self, *args, step_loss, counts_tokens: bool = False, **kwargs):
        """`counts_tokens`: the step divides by the trained tokens of the whole global batch (SFT), so the Trainer
        must count them (`num_items_in_batch`) and must not rescale the loss for gradient accumulation."""
        from transformers.trainer_callback import PrinterCallback

        super().__init__(*args, **kwargs)
        self.step_loss = step_loss
        if counts_tokens:
            self.model_accepts_loss_kwargs = True
            self.loss_is_scaled_for_ga = True
        self.remove_callback(PrinterCallback)  # MetricsLogger writes the JSONL and the progress bar instead
        self._pending: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return self.step_loss(self, model, inputs, return_outputs=return_outputs,
                              num_items_in_batch=num_items_in_batch)

    def record_metric(self, name: str, value: float) -> None:
        self._pending.setdefault(name, []).append(float(value))

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.model.training and "loss" in logs:
            import torch

            names = sorted(self._pending)
            if self.args.world_size > 1:  # every process logs in lockstep, so the reduction is collective
                from accelerate.utils import gather_object

                names = sorted(set().union(*gather_object([names])))
            for name in names:
                values = self._pending.get(name, [])
                total = torch.tensor([sum(values), float(len(values))], dtype=torch.float64, device=self.args.device)
                if self.args.world_size > 1:
                    total = self.accelerator.reduce(total, reduction="sum")
                if name.endswith("_tokens"):
                    logs[name] = float(total[0])
                elif total[1] > 0:
                    logs[name] = float(total[0] / total[1])
            self._pending.clear()
        super().log(logs, *args, **kwargs)


class MetricsLogger(TrainerCallback):
    """Writes one JSON line per logging step (step, epoch, loss, learning_rate, grad_norm, trained tokens/s and any
    extra metrics) on the main process, and drives a rich progress bar there."""

    def __init__(self, path: Path, *, show_progress: bool = True, label: str = "train"):
        self.path = Path(path)
        self.show_progress = show_progress
        self.label = label
        self._progress = None
        self._task = None
        self._last_time: float | None = None
        self._last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_step = state.global_step  # a resumed run's earlier steps are already in the file
        if state.is_world_process_zero and self.show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[status]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=state.max_steps, completed=state.global_step,
                                                 status="")

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        elapsed = now - (self._last_time or now)
        self._last_time = now
        if not state.is_world_process_zero or not logs or "loss" not in logs or state.global_step <= self._last_step:
            return
        self._last_step = state.global_step
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 6), **logs}
        tokens = logs.get("trained_tokens")
        if tokens is not None and elapsed > 0:
            row["tokens_per_s"] = tokens / elapsed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._progress is not None:
            status = f"loss {logs['loss']:.4f}" + (f" · {row['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in row
                                                   else "")
            self._progress.update(self._task, status=status)

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def stage_callbacks(paths: StagePaths, *, show_progress: bool = True, label: str = "train", keep: int = 2) -> list:
    """Metrics JSONL + progress bar, and checkpoint completion/rotation (`keep` = the stage's save_total_limit)."""
    return [MetricsLogger(paths.metrics, show_progress=show_progress, label=label), CompletionMarker(keep)]
