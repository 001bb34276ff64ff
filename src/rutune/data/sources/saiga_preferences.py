"""saiga_preferences (IlyaGusev): prompt, chosen and rejected replies with Sonnet approval."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rutune.data.sources._common import Source, SourceBase, messages_of, seeded_unit
from rutune.records import PreferencePair, RecordError, validate_turns
from rutune.schema import Number

class SaigaPreferencesSource(SourceBase):
    name: Literal["saiga_preferences"]
    sonnet_approved_only: bool = True
    exclude_regex: bool = True
    length_ratio: Number | None = Field(default=1.5, gt=1)
    length_ratio_drop_probability: Number = Field(default=0.8, ge=0, le=1)

def _single_reply(raw: Any, column: str) -> str:
    msgs = messages_of(raw if not isinstance(raw, str) else [{"role": "assistant", "content": raw}], column)
    if len(msgs) != 1 or msgs[0].role != "assistant":
        raise RecordError(f"{column} must be exactly one assistant message")
    if not msgs[0].content.strip():
        raise RecordError(f"{column} is empty")
    return msgs[0].content


def _pref_record(row: dict, cfg) -> PreferencePair:
    prompt = messages_of(row.get("prompt"), "prompt")
    validate_turns(prompt, must_end_with="user")
    chosen = _single_reply(row.get("chosen"), "chosen")
    rejected = _single_reply(row.get("rejected"), "rejected")
    if chosen.strip() == rejected.strip():
        raise RecordError("chosen and rejected are identical")
    meta = {k: row.get(k) for k in ("chosen_model", "rejected_model", "source")}
    return PreferencePair(prompt, chosen, rejected, "saiga_preferences", meta)


def _pref_drop(row: dict, cfg, seed: int) -> str | None:
    if cfg.sonnet_approved_only and not row.get("sonnet_approved"):
        return "sonnet_approved"
    if cfg.exclude_regex and row.get("is_bad_by_regex"):
        return "is_bad_by_regex"
    if cfg.length_ratio is not None:
        # Saiga's rule: character length of str(list); such pairs are dropped with a probability.
        chosen_len, rejected_len = len(str(row.get("chosen"))), len(str(row.get("rejected")))
        if chosen_len > cfg.length_ratio * rejected_len:
            if seeded_unit(seed, "length_ratio", row.get("prompt")) < cfg.length_ratio_drop_probability:
                return "length_ratio"
    return None


SOURCE = Source("saiga_preferences", "preference", SaigaPreferencesSource, "IlyaGusev/saiga_preferences",
                "4042c2f3d79f7674f8d1dc31f08cc9b2f89a3ead",
                frozenset({"prompt", "chosen", "rejected", "sonnet_approved", "is_bad_by_regex"}), _pref_record,
                _pref_drop, short="Saiga Pref", order=40)
