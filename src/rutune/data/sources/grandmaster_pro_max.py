"""GrandMaster-PRO-MAX (Vikhrmodels): multi-source Russian instructions with prompt/answer language tags."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rutune.data.sources._common import Source, SourceBase, conversation
from rutune.records import Conversation

class GrandMasterSource(SourceBase):
    name: Literal["grandmaster_pro_max"]
    prompt_lang: list[str] | None = None
    answer_lang: list[str] | None = None
    max_answer_tokens: Annotated[int, Field(strict=True, gt=0)] | None = None

def _gm_record(row: dict, cfg) -> Conversation:
    meta = {k: row.get(k) for k in ("source", "cluster", "prompt_lang", "answer_lang", "answer_tokens")}
    return conversation(row, "conversation", "grandmaster_pro_max", meta)


def _gm_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.prompt_lang is not None and row.get("prompt_lang") not in cfg.prompt_lang:
        return "prompt_lang"
    if cfg.answer_lang is not None and row.get("answer_lang") not in cfg.answer_lang:
        return "answer_lang"
    if cfg.max_answer_tokens is not None and (row.get("answer_tokens") or 0) > cfg.max_answer_tokens:
        return "max_answer_tokens"
    return None


SOURCE = Source("grandmaster_pro_max", "sft", GrandMasterSource, "Vikhrmodels/GrandMaster-PRO-MAX",
                "de9cc765d834f6d14f03155fe9c78b0b6c992b4c", frozenset({"conversation", "prompt_lang", "answer_lang"}),
                _gm_record, _gm_drop, short="GM", order=10)
