"""Plumbing every training recipe shares: where a stage starts from, model + LoRA loading, `TrainingArguments`
from `OptimConfig`, metrics JSONL + progress bar, the loss-curve PNG, exact resume, and the final checkpoint.

A recipe (`sft.run_stage`, `simpo.run_stage`) is: check inputs (`check_stage`, `init_source`, `load_stage_tokenizer`)
→ build its dataset → `load_stage_model` (+ `apply_lora`) → a `RecipeTrainer` subclass with `training_arguments(...)`
and `stage_callbacks(...)` → `train_resumable(trainer, paths)` → `save_final_checkpoint(...)` → `plot_loss_curve(...)`.

Crash safety (complete-marked intermediate checkpoints, atomic final checkpoint) lives in
`rutune.train.checkpoints`; its public names are re-exported here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rutune.rundir import RunDir, read_json, read_manifest, write_json_atomic
from rutune.train.checkpoints import (COMPLETE, CompletionMarker, latest_good_checkpoint, save_final_checkpoint,
                                      train_resumable, truncate_metrics)
from rutune.train.errors import TrainError

METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class StagePaths:
    """Files of one training stage under `train/<stage>/`."""

    root: Path

    @classmethod
    def of(cls, run: RunDir, stage_name: str) -> "StagePaths":
        return cls(run.train(stage_name))

    @property
    def checkpoint(self) -> Path:
        """The final Hugging Face checkpoint (what `init_from` of a later stage and eval load)."""
        return self.root / "checkpoint"

    @property
    def trainer_dir(self) -> Path:
        """Intermediate Trainer checkpoints (`checkpoint-N/`), used only to resume."""
        return self.root / "trainer"

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def loss_png(self) -> Path:
        return self.root / "loss.png"

    @property
    def cache(self) -> Path:
        """Tokenised datasets, shared by the stages of one run (keyed by data, tokenizer and template hashes)."""
        return self.root.parent / "_cache"


# ---------------------------------------------------------------- inputs, before any model loads
def prepared_data(run: RunDir, file_name: str, columns: tuple[str, ...], what: str, *,
                  block: str) -> tuple[Path, str | None]:
    """A prepared parquet of the run and its block's content hash (`data_hash`); TrainError when missing, empty or
    malformed.

    `what` names the data in messages ("SFT", "preference"); `block` is its key in the prepare manifest ("sft",
    "preference"); the check reads only the parquet footer.
    """
    import pyarrow.parquet as pq

    path = run.prepare / file_name
    if not path.is_file():
        raise TrainError(f"{path}: prepared {what} data not found; run `rutune prepare CONFIG` first")
    try:
        parquet_file = pq.ParquetFile(path)
        meta, present = parquet_file.metadata, parquet_file.schema_arrow.names
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainError(f"{path}: not a readable parquet file ({type(e).__name__}); rerun `rutune prepare CONFIG`")
    missing = [c for c in columns if c not in present]
    if missing:
        raise TrainError(f"{path}: missing column(s) {', '.join(missing)}; rerun `rutune prepare CONFIG`")
    if meta.num_rows == 0:
        raise TrainError(f"{path}: prepared {what} data has 0 rows; check the data sources and filters, then "
                         f"re-prepare")
    return path, data_hash(run, block)


def data_hash(run: RunDir, block: str) -> str | None:
    """The content hash prepare recorded for one data block (`"sft"` or `"preference"`), None when absent.

    Prepare writes it per block (`manifest["sft"]["content_hash"]`), so a stage's identity follows only its own
    data: changing `data.preference` does not retrain an SFT stage, and vice versa.
    """
    block_manifest = (read_manifest(run.prepare) or {}).get(block)
    return block_manifest.get("content_hash") if isinstance(block_manifest, dict) else None


def cached_tokenization(tokenizer, parquet: Path, tokenize_batch, *, kind: str, data_hash: str | None,
                        max_tokens: int, overlength: str, cache_dir: Path, with_indices: bool = False):
    """Tokenise a prepared parquet once per (data, tokenizer+template, length policy) with `datasets.map`, on the
    main process first (the other processes of a distributed run then load its Arrow cache).

    `tokenize_batch(batch[, indices], counts=…)` fills `counts` (kept / truncated / dropped…); the counts of the run
    that built the Arrow cache are stored beside it, so a cached rerun reports the same numbers. Returns
    (raw dataset, tokenised dataset, counts).
    """
    import functools

    import datasets
    from accelerate import PartialState

    from rutune.data.templates import template_hash
    from rutune.rundir import file_hash, stable_hash

    key = stable_hash({"data": data_hash or file_hash(parquet), "template": template_hash(tokenizer),
                       "max_tokens": max_tokens, "overlength": overlength, "v": 1})
    arrow = cache_dir / f"{kind}-{key}.arrow"
    counts_path = cache_dir / f"{kind}-{key}.counts.json"
    # Under torchrun the main process builds the cache while the others wait, then they read it. PartialState
    # starts the process group from the environment if the Trainer has not yet (one process: no-op, no barrier).
    with PartialState().main_process_first():
        cache_dir.mkdir(parents=True, exist_ok=True)
        raw = datasets.Dataset.from_parquet(str(parquet), cache_dir=str(cache_dir / "hf"))
        counts: dict[str, int] = {}
        was_cached = arrow.exists() and counts_path.exists()
        ds = raw.map(functools.partial(tokenize_batch, counts=counts), batched=True, batch_size=1000,
                     with_indices=with_indices, remove_columns=raw.column_names, cache_file_name=str(arrow),
                     load_from_cache_file=was_cached, new_fingerprint=key, desc=f"tokenize {kind}")
        if was_cached:
            counts = read_json(counts_path)
        else:
            write_json_atomic(counts_path, counts)
    return raw, ds, counts


def finish_stage(trainer, tokenizer, cfg, stage, paths, meta: dict, *, init_path: str, counts: dict) -> Path:
    """The end every recipe shares: final checkpoint (LoRA merged when asked), loss PNG, data counts."""
    save_final_checkpoint(trainer, tokenizer, paths.checkpoint, meta, init_path=init_path,
                          merge_lora=stage.lora.merge_on_save if stage.lora else False)
    if trainer.is_world_process_zero():
        plot_loss_curve(paths.metrics, paths.loss_png, title=f"{cfg.name} · {stage.name}")
        write_json_atomic(paths.root / "data_counts.json", counts)
    return paths.checkpoint


def check_stage(stage) -> None:
    """Hyperparameters that would only fail deep inside torch; pydantic already rejects them in YAML."""
    if not stage.learning_rate > 0:
        raise TrainError(f"train stage {stage.name}: learning_rate must be > 0, got {stage.learning_rate}")
    if stage.per_device_batch_size < 1 or stage.gradient_accumulation_steps < 1:
        raise TrainError(f"train stage {stage.name}: per_device_batch_size and gradient_accumulation_steps must be >= 1")
    if stage.max_steps == 0 or stage.epochs <= 0:
        raise TrainError(f"train stage {stage.name}: nothing to train (max_steps=0 or epochs<=0)")


def init_source(cfg, stage, run: RunDir) -> str:
    """What a stage loads: the base model (`init_from: base`) or an earlier stage's final checkpoint."""
    from rutune.models import resolve_model_path

    if stage.init_from == "base":
        # GGUF bases resolve to their converted safetensors folder, the same weights eval loads.
        return resolve_model_path(cfg.base_model.path, gguf_file=cfg.base_model.gguf_file)
    names = [s.name for s in cfg.train.stages]
    if stage.init_from not in names or names.index(stage.init_from) >= names.index(stage.name):
        known = ", ".join(["base", *names[: names.index(stage.name)]]) if stage.name in names else "base"
        raise TrainError(f"train stage {stage.name}: init_from {stage.init_from!r} is not an earlier stage "
                         f"(expected one of: {known})")
    ckpt = run.checkpoint(stage.init_from)
    if not (ckpt / "config.json").exists():
        raise TrainError(f"train stage {stage.name}: starts from stage {stage.init_from!r}, whose checkpoint {ckpt} "
                         f"does not exist yet; run `rutune train CONFIG --stage {stage.init_from}` first")
    return str(ckpt)


def load_stage_tokenizer(path: str):
    """The tokenizer a stage trains with; it must carry a chat template (masks and packing are defined by it)."""
    from rutune.data.templates import TemplateError, load_tokenizer

    try:
        tok = load_tokenizer(path)
    except TemplateError as e:
        raise TrainError(str(e).splitlines()[0]) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------- model
def resolve_precision(precision: str) -> str:
    """`auto` → bf16 on a GPU that supports it, else fp32 (CPU bf16 changes numerics and is rarely faster)."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def load_stage_model(path: str, model_cfg=None, *, attn_implementation: str | None = None, from_base: bool = True):
    """Load a causal LM for training in float32 master weights (mixed precision is the Trainer's autocast).

    `model_cfg` (`base_model:` block) adds revision and trust_remote_code when loading the base.
    """
    from transformers import AutoModelForCausalLM

    # Safetensors only: a pickled checkpoint can run code on load (GGUF bases arrive already converted).
    kwargs: dict[str, Any] = {"dtype": "float32", "use_safetensors": True}
    if model_cfg is not None and from_base:
        if model_cfg.revision:
            kwargs["revision"] = model_cfg.revision
        kwargs["trust_remote_code"] = model_cfg.trust_remote_code
    attn = attn_implementation or (model_cfg.attn_implementation if model_cfg is not None else None)
    if attn:
        kwargs["attn_implementation"] = attn
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    return model


def apply_lora(model, lora_cfg, *, seed: int = 0):
    """Wrap `model` with peft LoRA adapters per the stage's `lora:` block (r, alpha, dropout, target modules).

    The adapters' random init (A matrices) is drawn from `seed`, so two runs of a config start identically.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ---------------------------------------------------------------- Trainer configuration
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


def _trainer_base():
    from transformers import Trainer

    return Trainer


class RecipeTrainer(_trainer_base()):
    """`transformers.Trainer` that lets a recipe's `compute_loss` record extra per-step metrics.

    `record_metric(name, value)` accumulates a float between logging steps; at each log the sum across processes
    (for names ending in `_tokens`) or the mean of the recorded values (anything else) is added to the log line.
    Recipes set `trained_tokens` so the metrics callback can report trained tokens per second.
    """

    def __init__(self, *args, **kwargs):
        from transformers.trainer_callback import PrinterCallback

        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # MetricsLogger writes the JSONL and the progress bar instead
        self._pending: dict[str, list[float]] = {}

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


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLogger(_callback_base()):
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


# ---------------------------------------------------------------- outputs
def library_versions() -> dict[str, str]:
    out = {}
    for name in ("rutune", "torch", "transformers", "accelerate", "peft", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def stage_meta(cfg, stage, *, init_path: str, data_manifest_hash: str | None, extra: dict | None = None) -> dict:
    """`meta.json` of a checkpoint: resolved stage config, where it started, data identity, library versions."""
    return {
        "experiment": cfg.name,
        "stage": stage.model_dump(mode="json"),
        "init_from": stage.init_from,
        "init_path": init_path,
        "base_model": cfg.base_model.model_dump(mode="json"),
        "seed": cfg.seed,
        "data_manifest_hash": data_manifest_hash,
        "versions": library_versions(),
        **(extra or {}),
    }


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(metrics_path: Path, png_path: Path, *, title: str = "training loss") -> Path | None:
    """Loss (and learning rate, on a second axis) against step, from the metrics JSONL."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if any("learning_rate" in r for r in rows):
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in rows], [r.get("learning_rate", 0.0) for r in rows], color="tab:gray",
                   alpha=0.5, linestyle="--")
        lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


__all__ = [
    "COMPLETE", "CompletionMarker", "MetricsLogger", "RecipeTrainer", "StagePaths", "apply_lora", "check_stage",
    "data_hash", "init_source", "latest_good_checkpoint", "library_versions", "load_stage_model",
    "load_stage_tokenizer", "plot_loss_curve", "read_metrics", "resolve_precision", "save_final_checkpoint",
    "stage_callbacks", "stage_meta", "train_resumable", "truncate_metrics",
]
