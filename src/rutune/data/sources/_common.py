"""What every source adapter shares: the settings every source has, the entry type, message helpers."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from rutune.records import Conversation, Message, PreferencePair, RecordError, validate_turns
from rutune.schema import Number, NonNegativeInt, Strict

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class DataError(ValueError):
    """Bad data input (file, columns, empty result); the message names the file or source."""


class SourceBase(Strict):
    """Settings every dataset source shares. `path` is a hub id, a local file or folder; null = bundled sample."""

    path: str | None = None
    revision: str | None = None
    split: str = "train"
    percent: Number | None = Field(default=None, ge=0)
    count: NonNegativeInt | None = None
    min_russian_share: Number | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _one_size(self):
        if self.percent is None and self.count is None:
            raise ValueError("give exactly one of `percent` (share of this source, 250 = 2.5 passes) or `count` (rows)")
        if self.percent is not None and self.count is not None:
            raise ValueError("give `percent` or `count`, not both")
        return self


@dataclass(frozen=True)
class Source:
    """One dataset adapter, declared once in its own module (`SOURCE = Source(...)`).

    `settings`: its config model (a `SourceBase` subclass whose `name` is `Literal[<name>]`); `kind`: the data
    block it feeds (`sft` or `preference`); `hub_id`/`revision`: the public dataset and the pinned commit;
    `columns`: raw columns it reads (a file missing any is rejected); `to_record`/`drop_reason`: raw row →
    canonical record, and the source-specific filters; `short`: the name the report uses ("GM", "Saiga");
    `sample`: the bundled sample file in the hub schema (`samples/<name>.jsonl`). `derived`: for a source whose
    rows are built from the run's own prepared data rather than read from a file (`on_policy`), an object with
    `check(src, cfg, key)`, `fingerprint(src, cfg)`, `describe(src)`, `load(src, cfg, prepare_dir, key)` →
    `(dataset, where, info)` and `split(part_path)` → `(train indices, held-out indices)`; None for file sources.
    """

    name: str
    kind: Literal["sft", "preference"]
    settings: type[SourceBase]
    hub_id: str | None
    revision: str | None
    columns: frozenset[str]
    to_record: Callable[[dict, Any], Conversation | PreferencePair]
    drop_reason: Callable[[dict, Any, int], str | None]
    short: str
    order: int = 100
    derived: Any = None

    @property
    def sample(self) -> Path:
        return SAMPLES / f"{self.name}.jsonl"


def no_drop(row: dict, cfg, seed: int) -> str | None:
    return None


def messages_of(raw: Any, where: str) -> tuple[Message, ...]:
    """Normalise a list of {role, content} (roles `bot`→`assistant`); `where` names the column for errors."""
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise RecordError(f"{where} is not a list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"{where}[{i}] is not a {{role, content}} message")
        role = {"bot": "assistant", "human": "user"}.get(m["role"], m["role"])
        content = m["content"] if isinstance(m["content"], str) else ""
        out.append(Message(role, content.replace("\xa0", " ")))
    return tuple(out)


def conversation(row: dict, column: str, source: str, meta: dict) -> Conversation:
    messages = messages_of(row.get(column), column)
    validate_turns(messages, must_end_with="assistant")
    return Conversation(messages, source, meta)


def seeded_unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from the parts (hash-based, so independent of row order)."""
    return zlib.crc32(json.dumps(parts, ensure_ascii=False, default=str).encode()) / 2**32


