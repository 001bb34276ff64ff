"""Shared helpers for the SimPO tests: preference pairs written as prepared parquet, and a one-stage config."""

from __future__ import annotations

import json
import random
from pathlib import Path

RU = ("привет мир модель ответ вопрос данные обучение текст язык русский пример задача решение город река "
      "книга время человек работа система документ поиск знание память число строка").split()
NOISE = ("lorem ipsum dolor sit amet 123 456 ### ??? !!! xyz qwerty error null none").split()


def make_pairs(n: int, *, seed: int = 0, long_every: int = 4) -> list[dict]:
    """Saiga-like pairs: a Russian answer (chosen) vs. a noisy one (rejected); some prompts are long, RAG-like."""
    rng = random.Random(seed)

    def text(words, k):
        return " ".join(rng.choice(words) for _ in range(k))

    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": text(RU, rng.randint(3, 10))}]
        if long_every and i % long_every == long_every - 1:
            prompt = [{"role": "system", "content": "Документы: " + text(RU, rng.randint(40, 80))},
                      {"role": "user", "content": text(RU, rng.randint(3, 8))},
                      {"role": "assistant", "content": text(RU, rng.randint(5, 10))},
                      {"role": "user", "content": text(RU, rng.randint(3, 8))}]
        rows.append({"prompt": prompt, "chosen": text(RU, rng.randint(4, 14)),
                     "rejected": text(NOISE, rng.randint(4, 14)), "source": "saiga_preferences",
                     "meta": json.dumps({"row": i})})
    return rows


def write_pairs(run_root: Path, rows: list[dict], *, content_hash: str = "pref-test-data") -> Path:
    from _sft_data import write_block

    return write_block(run_root, "preference", rows, content_hash)


def simpo_config(tmp_path: Path, *, stage: dict | None = None, preference: dict | None = None, name: str = "t",
                 stages_before: list[dict] | None = None, **top):
    """An ExperimentConfig with one preference stage (SimPO; `beta`/`gamma`/`sft_weight` in `stage` go to its `loss`
    block) after optional earlier stages, on the tiny model."""
    from rutune.config import parse_config

    stage = dict(stage or {})
    loss = {"name": "simpo", **{k: stage.pop(k) for k in ("beta", "gamma", "sft_weight") if k in stage}}
    st = {"recipe": "preference", "name": "simpo", "init_from": "base", "learning_rate": 1e-3,
          "per_device_batch_size": 4, "max_steps": 6, "warmup_ratio": 0.0, "lr_scheduler": "constant",
          "save_steps": 100, "precision": "fp32", "loss": loss, **stage}
    data = {"preference": {"sources": [{"name": "saiga_preferences", "path": "unused.jsonl", "percent": 100}],
                           "max_tokens": 512, **(preference or {})}}
    if stages_before:
        data["sft"] = {"sources": [{"name": "chat_messages", "path": "unused.jsonl", "percent": 100}],
                       "max_tokens": 512}
    tree = {"name": name, "output_root": str(tmp_path / "runs"), "seed": 7, "data": data,
            "train": {"stages": [*(stages_before or []), st]}, **top}
    return parse_config(tree)
