"""What a finished stage leaves: the final checkpoint (+ meta.json with versions), the loss curve PNG and the data
counts; and reading metrics.jsonl back."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

from rutune.rundir import write_json_atomic
from rutune.train.checkpoints import save_final_checkpoint


def finish_stage(trainer, tokenizer, cfg, stage, paths, meta: dict, *, init_path: str, counts: dict) -> Path:
    """The end every recipe shares: final checkpoint (LoRA merged when asked), loss PNG, data counts."""
    save_final_checkpoint(trainer, tokenizer, paths.checkpoint, meta, init_path=init_path,
                          merge_lora=stage.lora.merge_on_save if stage.lora else False)
    if trainer.is_world_process_zero():
        plot_loss_curve(paths.metrics, paths.loss_png, title=f"{cfg.name} · {stage.name}")
        write_json_atomic(paths.root / "data_counts.json", counts)
    return paths.checkpoint


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
