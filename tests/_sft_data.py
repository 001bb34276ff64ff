"""Shared fixtures for the SFT tests: a small long-tailed Russian chat mixture written as prepared parquet."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("привет мир модель ответ вопрос данные обучение текст язык русский пример задача решение город река "
         "книга время человек работа система документ поиск знание память число строка").split()


def make_rows(n: int, *, seed: int = 0, long_every: int = 5) -> list[dict]:
    """Chats with a long-tailed length mix: mostly short Q&A, every `long_every`-th a long RAG-like dialog."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        def text(k):
            return " ".join(rng.choice(WORDS) for _ in range(k))
        if long_every and i % long_every == long_every - 1:
            messages = [{"role": "system", "content": "Документы: " + text(rng.randint(60, 120))},
                        {"role": "user", "content": text(rng.randint(5, 15))},
                        {"role": "assistant", "content": text(rng.randint(10, 30))},
                        {"role": "user", "content": text(rng.randint(3, 8))},
                        {"role": "assistant", "content": text(rng.randint(5, 20))}]
        else:
            messages = [{"role": "user", "content": text(rng.randint(2, 10))},
                        {"role": "assistant", "content": text(rng.randint(3, 15))}]
        rows.append({"messages": messages, "source": "synthetic", "meta": "{}"})
    return rows


def write_block_manifest(prep: Path, block: str, file_name: str, rows: int, content_hash: str) -> None:
    """Record one data block in `prepare/manifest.json` the way `run_prepare` does: `content_hash` inside the block
    (`manifest["sft"]`, `manifest["preference"]`), the whole-prepare `input_hash` at the top; other blocks kept."""
    from rutune.rundir import read_manifest, write_json_atomic

    manifest = read_manifest(prep) or {"input_hash": "test-prepare-config", "seed": 0, "experiment": "test"}
    manifest[block] = {"file": file_name, "rows": rows, "content_hash": content_hash, "sources": []}
    write_json_atomic(prep / "manifest.json", manifest)


def write_block(run_root: Path, block: str, rows: list[dict], content_hash: str) -> Path:
    """Write `prepare/<block>.parquet` + its block of the manifest the way the prepare stage does."""
    import datasets

    prep = Path(run_root) / "prepare"
    prep.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(prep / f"{block}.parquet"))
    write_block_manifest(prep, block, f"{block}.parquet", len(rows), content_hash)
    return prep / f"{block}.parquet"


def write_prepared(run_root: Path, rows: list[dict], *, content_hash: str = "test-data") -> Path:
    return write_block(run_root, "sft", rows, content_hash)


def sft_config(tmp_path: Path, *, stage: dict | None = None, name: str = "t", **top):
    """An ExperimentConfig with one sft stage on the tiny model, output under tmp_path."""
    from rutune.config import parse_config

    st = {"recipe": "sft", "learning_rate": 1e-3, "per_device_batch_size": 4, "max_steps": 6, "warmup_ratio": 0.0,
          "lr_scheduler": "constant", "save_steps": 100, "precision": "fp32", **(stage or {})}
    tree = {"name": name, "output_root": str(tmp_path / "runs"), "seed": 7,
            "data": {"sft": {"sources": [{"name": "chat_messages", "path": "unused.jsonl", "percent": 100}],
                             "max_tokens": 512}},
            "train": {"stages": [st]}, **top}
    return parse_config(tree)
