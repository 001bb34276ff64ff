"""on_policy: preference pairs built from this run's own SFT rows — chosen = the dataset's answer, rejected = a
model's own greedy answer to the same prompt (generated once, cached on disk; `rutune.data.onpolicy`).

No file of its own: it reads `prepare/sft.parquet` and `prepare/sft_holdout.parquet`, which the prepare stage writes
just before the preference block. Pairs from SFT training rows train; pairs from SFT held-out rows are held out
(the `preference` suite's pairs), so a held-out pair's prompt and answer were never trained on by the SFT stage.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rutune.data.sources._common import Source, SourceBase, messages_of
from rutune.records import PreferencePair, RecordError, validate_turns
from rutune.schema import Number, PositiveInt


class OnPolicySource(SourceBase):
    """`from`: the data.sft source(s) whose prepared rows give the prompts (messages up to the last user turn) and
    the chosen answers (the last assistant turn). `model`: `base` (the experiment's base model), a registered
    model name or a model folder — its greedy answer is the rejected reply. `max_prompts`: a seeded cap on the
    prompts used (generation is the cost); `min_answer_russian_share`: only Russian chosen answers are used;
    `chosen_max_tokens`: cut each chosen answer to its first N tokens (the model's tokenizer), as the rejected one
    is cut at `max_new_tokens`, so long dataset answers do not exceed the training/eval token budget."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=False)

    name: Literal["on_policy"]
    from_: list[str] = Field(alias="from", min_length=1)
    model: str = "base"
    max_new_tokens: PositiveInt = 128
    chosen_max_tokens: PositiveInt | None = None
    max_prompts: PositiveInt | None = None
    batch_size: PositiveInt = 8
    min_answer_russian_share: Number = Field(default=0.5, ge=0, le=1)

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any):
        return [v] if isinstance(v, str) else v

    @field_validator("from_")
    @classmethod
    def _sft_sources(cls, v: list[str]):
        from rutune.data.sources import SOURCES

        sft = [s.name for s in SOURCES if s.kind == "sft"]
        for name in v:
            if name not in sft:
                raise ValueError(f"unknown SFT source {name!r}; expected one of {', '.join(sft)} (an entry of "
                                 f"data.sft.sources)")
        return v

    @model_validator(mode="after")
    def _no_file(self):
        if self.path is not None or self.revision is not None:
            raise ValueError("on_policy reads this run's prepared data.sft rows; `path`/`revision` do not apply")
        return self


def _record(row: dict, cfg) -> PreferencePair:
    prompt = messages_of(row.get("prompt"), "prompt")
    validate_turns(prompt, must_end_with="user")
    chosen, rejected = row.get("chosen") or "", row.get("rejected") or ""
    if not chosen.strip() or not rejected.strip():
        raise RecordError("empty chosen or rejected reply")
    meta = {"from": row.get("from"), "sft_split": row.get("sft_split"), "sft_row": row.get("sft_row"),
            "model": row.get("model")}
    return PreferencePair(prompt, chosen, rejected, "on_policy", meta)


def _drop(row: dict, cfg, seed: int) -> str | None:
    if row.get("skip"):
        return row["skip"]
    rejected = (row.get("rejected") or "").strip()
    if not rejected:
        return "greedy_empty"
    if rejected == (row.get("chosen") or "").strip():
        return "greedy_equals_chosen"
    return None


class _Derived:
    """The prepare stage's hooks (see `Source.derived`); the work is in `rutune.data.onpolicy`."""

    @staticmethod
    def check(src, cfg, key):
        from rutune.data.onpolicy import check

        check(src, cfg, key)

    @staticmethod
    def fingerprint(src, cfg):
        from rutune.data.onpolicy import fingerprint

        return fingerprint(src, cfg)

    @staticmethod
    def describe(src):
        return f"on_policy: data.sft rows of {', '.join(src.from_)}, rejected = {src.model}'s greedy answer"

    @staticmethod
    def load(src, cfg, prepare_dir, key):
        from rutune.data.onpolicy import build_rows

        return build_rows(src, cfg, prepare_dir, key)

    @staticmethod
    def split(part_path):
        from rutune.data.onpolicy import split_by_sft

        return split_by_sft(part_path)


SOURCE = Source("on_policy", "preference", OnPolicySource, None, None,
                frozenset({"prompt", "chosen", "rejected", "sft_split", "skip"}), _record, _drop,
                short="On-policy", order=50, derived=_Derived())
