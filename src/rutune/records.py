"""Canonical records every stage speaks: a chat `Conversation` and a `PreferencePair`.

Adapters turn each dataset's own schema into these; templates, training and evaluation never see
source-specific columns. Records are plain dataclasses so they serialise to parquet rows as dicts
(`to_row` / `from_row`) without a custom schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A row that cannot become a canonical record; the message says what is wrong with it."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """One chat: optional leading system message, then user/assistant turns, ending with assistant.

    `source` is the registry name of the adapter that produced it; `meta` keeps provenance such as
    the original row index and any columns a filter may still need (scores, language).
    """

    messages: tuple[Message, ...]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "messages": [m.to_dict() for m in self.messages],
            "source": self.source,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Conversation":
        meta = row.get("meta") or "{}"
        return cls(
            messages=tuple(Message(m["role"], m["content"]) for m in row["messages"]),
            source=row["source"],
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )

    def first_user_turn(self) -> str:
        return next((m.content for m in self.messages if m.role == "user"), "")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (dialogue history ending with a user turn) and two single assistant replies."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "prompt": [m.to_dict() for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PreferencePair":
        meta = row.get("meta") or "{}"
        return cls(
            prompt=tuple(Message(m["role"], m["content"]) for m in row["prompt"]),
            chosen=row["chosen"],
            rejected=row["rejected"],
            source=row["source"],
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )

    def first_user_turn(self) -> str:
        return next((m.content for m in self.prompt if m.role == "user"), "")

    def chosen_conversation(self) -> Conversation:
        return Conversation(self.prompt + (Message("assistant", self.chosen),), self.source, self.meta)

    def rejected_conversation(self) -> Conversation:
        return Conversation(self.prompt + (Message("assistant", self.rejected),), self.source, self.meta)


def validate_turns(messages: tuple[Message, ...], *, must_end_with: str) -> None:
    """Check roles, non-empty content and strict user/assistant alternation.

    A single optional system message may lead. Raises `RecordError` naming the first offending turn,
    so the adapter can prefix it with the file and row.
    """
    if not messages:
        raise RecordError("no messages")
    body = messages[1:] if messages[0].role == "system" else messages
    if messages[0].role == "system" and not messages[0].content.strip():
        raise RecordError("turn 0 (system) has empty content")
    offset = len(messages) - len(body)
    if not body:
        raise RecordError("only a system message, no dialogue")
    for i, m in enumerate(body):
        idx = i + offset
        if m.role not in ROLES:
            raise RecordError(f"turn {idx} has role {m.role!r}; expected one of {', '.join(ROLES)}")
        if m.role == "system":
            raise RecordError(f"turn {idx} is a system message after the first turn")
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise RecordError(f"turn {idx} is {m.role!r} but {expected!r} was expected (turns must alternate)")
        if not isinstance(m.content, str) or not m.content.strip():
            raise RecordError(f"turn {idx} ({m.role}) has empty content")
    if body[-1].role != must_end_with:
        raise RecordError(f"last turn is {body[-1].role!r}; expected {must_end_with!r}")
