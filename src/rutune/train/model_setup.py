"""Loading a model for training: fp32 master weights, the attention implementation, LoRA adapters, precision."""

from __future__ import annotations

from typing import Any


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


def apply_lora(model, lora_cfg, *, seed: int = 0, modules_to_save: list[str] | None = None,
               ensure_weight_tying: bool = False):
    """Wrap `model` with peft LoRA adapters per the stage's `lora:` block (r, alpha, dropout, target modules).

    The adapters' random init (A matrices) is drawn from `seed`, so two runs of a config start identically.
    `modules_to_save`: modules trained fully beside the adapters (saved in the adapter folder);
    `ensure_weight_tying` keeps a tied LM head tied to the trained embedding copy.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)

    extra = {"modules_to_save": list(modules_to_save), "ensure_weight_tying": ensure_weight_tying} \
        if modules_to_save else {}
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, task_type="CAUSAL_LM", **extra)
    return get_peft_model(model, config)
