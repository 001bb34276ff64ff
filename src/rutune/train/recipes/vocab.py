"""The `vocab` recipe: extend the tokenizer with Russian merges, mean-initialise the new rows, then train the
embeddings and LM head on Russian text (implementation: `rutune.train.vocab_stage`).

It brings its own text (`data_block: None`): wordfreq + the merge side of the bundled samples for the merges, the
merge-side sample texts for the embedding training — never the held-out side, which the `vocab` eval suite
measures on. Later stages (`sft`, `preference`) with `init_from: <this stage>` train the adapted model with the
adapted tokenizer, which the checkpoint carries.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rutune.schema import NonNegativeInt, Number, PositiveInt, Strict
from rutune.train.options import OptimConfig
from rutune.train.recipes import Recipe


class VocabText(Strict):
    """Where the Russian text comes from (`rutune.data.russian_text.russian_text` settings). The eval suite `vocab`
    must use the same `held_out_share` and `seed`, or its held-out texts would overlap the merge text."""

    n_words: PositiveInt = 50_000
    wordlist: Literal["large", "best", "small"] = "large"
    use_wordfreq: bool = True
    sample_weight: NonNegativeInt = 100
    held_out_share: Number = Field(default=0.25, gt=0, lt=1)
    seed: NonNegativeInt = 0


class VocabStage(OptimConfig):
    """`new_tokens`: size of the extension (the core refuses more than 10× the vocabulary or 1,000,000).
    `train_embeddings: false` stops after the mean initialisation (no training steps). `freeze_old_rows`: only
    the new rows move (a gradient mask; needs `weight_decay: 0`). `max_tokens`: length of the training blocks
    (texts joined with the end-of-text token, cut into equal blocks). `lora:` (optional): LoRA adapters on the
    other layers while the embedding and LM head train fully; merged into the saved checkpoint."""

    recipe: Literal["vocab"]
    name: str = Field(default="vocab", pattern=r"^[A-Za-z0-9_\-]+$")
    init_from: str = "base"
    new_tokens: int = Field(default=8000, strict=True)
    text: VocabText = Field(default_factory=VocabText)
    train_embeddings: bool = True
    freeze_old_rows: bool = False
    max_tokens: PositiveInt = 256
    learning_rate: Number = Field(default=1e-3, gt=0)
    warmup_ratio: Number = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self):
        if self.new_tokens <= 0:
            raise ValueError(f"new_tokens {self.new_tokens}: give a positive number of new tokens (e.g. 8000)")
        if self.new_tokens > 1_000_000:
            raise ValueError(f"new_tokens {self.new_tokens}: more than 1,000,000 new tokens is not a sane extension")
        if self.freeze_old_rows and self.weight_decay:
            raise ValueError("freeze_old_rows needs weight_decay: 0 (decay would still move the frozen rows)")
        if self.lora is not None and not self.lora.merge_on_save:
            raise ValueError("lora.merge_on_save: false is not supported in a vocab stage: its checkpoint must be a "
                             "full model (the resized embedding matrix lives outside the adapters)")
        if self.lora is not None and not self.train_embeddings:
            raise ValueError("lora with train_embeddings: false trains nothing; drop lora or train the embeddings")
        return self


def run(cfg, stage, run_dir, *, show_progress: bool = True):
    from rutune.train.vocab_stage import run_stage

    return run_stage(cfg, stage, run_dir, show_progress=show_progress)


def check(cfg, stage, run_dir) -> None:
    """Text sources must exist before the stage folder does (wordfreq installed, samples readable)."""
    from rutune.train.vocab_stage import check_inputs

    check_inputs(stage)


def manifest(cfg, stage, checkpoint) -> dict:
    """The stage manifest records what the merges and the embedding training learned from: each text source with
    package, version and licence (from the checkpoint's meta.json), the split, and the extension's size."""
    import json
    from pathlib import Path

    meta_path = Path(checkpoint) / "meta.json"
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    text = meta.get("text") or {}
    ext = meta.get("extension") or {}
    return {"text_sources": [{k: s.get(k) for k in ("name", "package", "version", "licence", "used", "detail")}
                             for s in text.get("sources", [])],
            "text_split": {"settings": text.get("settings"),
                           "merge_documents": len(text.get("merge_documents") or []),
                           "heldout_documents": len(text.get("heldout_documents") or [])},
            "vocab": {k: ext.get(k) for k in ("first_new_id", "num_new_tokens", "vocab_size", "fingerprint",
                                              "base_fingerprint")}}


RECIPE = Recipe("vocab", VocabStage, None, run, title="Russian vocabulary extension + embedding training",
                check=check, order=5, manifest=manifest)
