"""Model resolution: `tiny` (built locally), registered names, local folders, hub ids.

The embedded default is a random-init Qwen2-architecture model with a small byte-level BPE tokenizer
trained on the bundled samples. It carries Qwen2.5's ChatML special tokens and a chat template that
renders like Qwen2.5's, so every code path (templates, masks, packing, generation) is the one a real
Qwen2.5 run takes — only at a vocabulary of a few thousand, where a CPU step costs ~30 ms.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# `ModelError` and `cache_root` live in `real_models` (which needs them and must not import this module, so the
# import arrow points one way: models → real_models); they are re-exported here, where callers import them from.
from rutune.real_models import ModelError, cache_root, resolve_real_model
from rutune.rundir import stable_hash

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

def chatml_template(*, generation_markers: bool = False) -> str:
    """Qwen2.5's chat template without the tools branch (the default system prompt kept, so renders match Qwen2.5).

    `generation_markers=True` wraps each assistant turn's content + `<|im_end|>` in `{% generation %}` — the form
    TRL's `assistant_only_loss` needs. It renders the same text; rutune's own masks never need the markers, the
    marked copy exists for parity tests and benchmarks against TRL.
    """
    if generation_markers:
        assistant = ("{%- elif message.role == 'assistant' %}"
                     "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}"
                     "{% endgeneration %}{{- '\\n' }}")
        other = "(message.role == 'user') or (message.role == 'system' and not loop.first)"
    else:
        assistant = ""
        other = "(message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant')"
    return (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}"
        "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for message in messages %}"
        f"{{%- if {other} %}}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
        f"{assistant}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


CHATML_TEMPLATE = chatml_template()

TINY_DEFAULTS = dict(vocab_size=4096, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, max_position_embeddings=8192)


def sample_texts() -> list[str]:
    """Every message text in the bundled samples, in a fixed order (the tokenizer's training corpus)."""
    samples = Path(__file__).parent / "samples"
    texts: list[str] = []
    for path in sorted(samples.rglob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    _collect_strings(json.loads(line), texts)
    # A fixed fallback keeps the builder working in a checkout without samples (it is never empty).
    texts.append("Привет! Как дела? Hello, how are you? 0123456789 ABCD Ответ: A B C D ёЁ .,;:!?-()[]{}\"'")
    return texts


def _collect_strings(obj, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_strings(v, out)


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = TINY_DEFAULTS["vocab_size"]):
    """Train a byte-level BPE on the samples and save it as a Qwen2-style fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_texts(), trainer=trainer)
    # Special tokens are added after training so they sit at the end of the vocabulary, as in Qwen.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    fast.eos_token = "<|im_end|>"
    fast.pad_token = "<|endoftext|>"
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = TINY_DEFAULTS["max_position_embeddings"]
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, **overrides) -> Path:
    """Build tokenizer + random-init Qwen2 causal LM into `out_dir` (atomically, via a temp folder)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    shape = {**TINY_DEFAULTS, **overrides}
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_tiny_tokenizer(tmp, vocab_size=min(shape["vocab_size"], 8192))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    config = Qwen2Config(
        vocab_size=max(shape["vocab_size"], len(tokenizer)),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        max_position_embeddings=shape["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "rutune_tiny.json").write_text(json.dumps({"seed": seed, **shape}, indent=2))
    if (out_dir / "config.json").exists():  # another process finished first: keep its build
        shutil.rmtree(tmp, ignore_errors=True)
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def tiny_model_path(seed: int = 0, **overrides) -> Path:
    """The cached tiny model for (seed, shape, samples), built on first use."""
    key = stable_hash({"seed": seed, "shape": {**TINY_DEFAULTS, **overrides}, "corpus": stable_hash(sample_texts())})
    path = cache_root() / "models" / f"tiny-{key}"
    if not (path / "config.json").exists():
        build_tiny_model(path, seed=seed, **overrides)
    return path


def resolve_model_path(path: str, *, seed: int = 0, gguf_file: str | None = None) -> str:
    """Map a `base_model.path` to something `from_pretrained` takes: `tiny` → cached build, else unchanged.

    Registered real models (e.g. `smollm2-135m-instruct`) and GGUF files (`x.gguf`, or a folder + `gguf_file`)
    resolve in `rutune.real_models` to a converted safetensors checkpoint.
    """
    if path == "tiny":
        return str(tiny_model_path(seed=seed))
    real = resolve_real_model(path, gguf_file=gguf_file)
    if real is not None:
        return real
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    if path.startswith(("/", "./", "../", "~")):
        raise ModelError(f"model path {path}: folder not found")
    return path  # a hub id: from_pretrained reports if it cannot be reached


__all__ = ["build_tiny_model", "cache_root", "chatml_template", "resolve_model_path", "tiny_model_path",
           "CHATML_TEMPLATE", "ModelError"]
