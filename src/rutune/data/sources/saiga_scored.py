"""saiga_scored (IlyaGusev): Saiga dialogues with a judge score, language and a bad-regex flag."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rutune.data.sources._common import Source, SourceBase, conversation
from rutune.records import Conversation

class SaigaScoredSource(SourceBase):
    name: Literal["saiga_scored"]
    min_score: Annotated[int, Field(strict=True, ge=1, le=10)] | None = 8
    exclude_regex: bool = True
    language: list[str] | None = None

# Saiga's own `is_bad_by_regex` flag is trusted; we do not re-run its substring list.
def _saiga_record(row: dict, cfg) -> Conversation:
    meta = {k: row.get(k) for k in ("source", "opus_score", "language", "sonnet_topic", "sonnet_complexity")}
    return conversation(row, "messages", "saiga_scored", meta)


def _saiga_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.min_score is not None and (row.get("opus_score") or 0) < cfg.min_score:
        return "min_score"
    if cfg.exclude_regex and row.get("is_bad_by_regex"):
        return "is_bad_by_regex"
    if cfg.language is not None and row.get("language") not in cfg.language:
        return "language"
    return None


SOURCE = Source("saiga_scored", "sft", SaigaScoredSource, "IlyaGusev/saiga_scored",
                "fbbd5d012fd7c6731d28ca52b12b5f7e29846a08",
                frozenset({"messages", "opus_score", "is_bad_by_regex", "language"}), _saiga_record, _saiga_drop,
                short="Saiga", order=20)
