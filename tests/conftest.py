"""Shared fixtures: the embedded tiny model folder and the real Qwen2.5 tokenizer (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """`shared/` beside the repo (`<clone>/../shared` in CI) or inside it; None when neither exists."""
    for candidate in (REPO_ROOT.parent / "shared", REPO_ROOT / "shared"):
        if candidate.is_dir():
            return candidate
    return None


def benchdata_dir() -> Path | None:
    """`shared/benchdata/ru_llm_arena` (real arena questions and answers): tests pass its files explicitly, the
    package never looks for it."""
    shared = shared_dir()
    path = shared / "benchdata" / "ru_llm_arena" if shared else None
    return path if path is not None and (path / "arena-hard-v0.1" / "question.jsonl").is_file() else None


def qwen_tokenizer_dir() -> Path | None:
    shared = shared_dir()
    path = shared / "tokenizers" / "qwen2.5" if shared else None
    return path if path is not None and (path / "tokenizer.json").exists() else None


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The cached tiny Qwen2 model + ChatML tokenizer (built on first use, ~6 s)."""
    from rutune.models import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 vocabulary and chat template from `shared/tokenizers/qwen2.5`."""
    path = qwen_tokenizer_dir()
    if path is None:
        pytest.skip("shared/tokenizers/qwen2.5 not found beside the repo (expected at <repo>/../shared)")
    from rutune.data.templates import load_tokenizer

    return load_tokenizer(str(path))
