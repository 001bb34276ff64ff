"""Any local file with a `messages` column in HF chat format: the escape hatch for own data."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from rutune.data.sources._common import Source, SourceBase, conversation, no_drop
from rutune.records import Conversation

class ChatJsonlSource(SourceBase):
    """Own data: a local .jsonl/.json/.parquet file (or folder) with a `messages` column. `path` is required:
    there is no bundled sample or hub default to fall back on."""

    name: Literal["chat_messages"]

    @model_validator(mode="after")
    def _needs_path(self):
        if not self.path:
            raise ValueError("chat_messages needs `path`: a local .jsonl/.json/.parquet file or folder with a "
                             "`messages` column")
        return self

def _chat_record(row: dict, cfg) -> Conversation:
    return conversation(row, "messages", "chat_messages", {})


SOURCE = Source("chat_messages", "sft", ChatJsonlSource, None, None, frozenset({"messages"}), _chat_record, no_drop,
                short="Chat", order=50)
