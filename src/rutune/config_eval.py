"""Schema of the `eval:` block: which models, which backend, and one optional block per suite.

`models` lists what to evaluate: `base`, training stage names, or `label=path` for any other checkpoint
(a baseline). A suite set to null is not run.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Number = Annotated[float, Field(strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BackendConfig(_Strict):
    """How to run a model: `hf` (transformers), `vllm` (extra) or `openai` (any compatible server)."""

    kind: Literal["hf", "vllm", "openai"] = "hf"
    batch_size: PositiveInt = 8
    apply_chat_template: bool = True
    max_length: PositiveInt | None = None  # null = the model's max_position_embeddings
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on a GPU
    device: str | None = None  # null = cuda when available, else cpu
    trust_remote_code: bool = False  # run a checkpoint's own modelling code (hf backend); off unless asked
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # openai: name of the env var holding the key (null = "EMPTY")
    served_model: str | None = None  # openai: model name on the server (null = the model path/label)
    concurrency: PositiveInt = 8
    vllm_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None  # vllm: share of GPU (CPU build: RAM)
    max_retries: Annotated[int, Field(strict=True, ge=0)] = 3
    timeout_s: Annotated[float, Field(gt=0)] = 300.0


class MmluConfig(_Strict):
    """ruMMLU. `path`: null = bundled mini sample; a .jsonl/.json/.parquet file or folder; or a hub id."""

    path: str | None = None
    revision: str | None = None  # hub revision (commit) to pin; recorded in results.json
    format: Literal["mera", "mmlu_ru"] = "mera"
    split: str = "test"
    shots: Annotated[int, Field(strict=True, ge=0, le=5)] = 0
    domains: list[str] | None = None
    limit: PositiveInt | None = None
    chat_template: bool = False  # MERA scores raw prompts; true wraps each prompt as one chat user turn
    bootstrap_rounds: PositiveInt = 1000


class BabilongConfig(_Strict):
    """`source: generate` builds seeded items at `lengths` tokens; otherwise a LIBRA path or hub id."""

    source: str = "generate"
    revision: str | None = None
    tasks: list[Literal["qa1", "qa2"]] = Field(default_factory=lambda: ["qa1", "qa2"])
    lengths: list[str] = Field(default_factory=lambda: ["1k", "2k", "4k"])
    samples_per_length: PositiveInt | None = 10  # generated items per length; cap per length for data (null = all)
    max_new_tokens: PositiveInt = 16
    task_file: str | None = None  # null = rutune's own instructions; LIBRA's datasets_config.json is accepted
    overlength: Literal["skip", "middle_truncate"] = "skip"
    lemmatise: bool = True  # score_norm uses pymorphy3 lemmas when it is installed (extra `lemma`)
    bootstrap_rounds: PositiveInt = 1000

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, value: list[str]) -> list[str]:
        import re

        for length in value:
            if not re.fullmatch(r"[1-9][0-9]*k?", length):
                raise ValueError(f"length {length!r}: expected e.g. 4k or 512")
        if len(set(value)) != len(value):
            raise ValueError("lengths repeat")
        return value


class ArenaConfig(_Strict):
    """RU Arena (ru_llm_arena protocol): answers → pairwise judge in both seat orders → BT win rate vs baseline.

    `questions`/`baseline`: local jsonl in the ru_llm_arena formats or a hub id (questions only); null = the
    benchdata copy when present, else the bundled placeholders. `answers`: an existing answer file for the model
    (skips generation). `bootstrap_unit`: `battle` resamples battle rows as the leaderboard does, `question`
    resamples whole questions (both games and the ×3 rows together).
    """

    questions: str | None = None
    revision: str | None = None  # hub revision of `questions` when it is a hub id; null = the pinned one
    baseline: str | None = None
    answers: str | None = None
    judge: str | None = None  # judge profile YAML; null = env-configured judge or "no judge configured"
    max_new_tokens: PositiveInt = 2048
    system_prompt: str | None = None
    limit: PositiveInt | None = None
    bootstrap_rounds: PositiveInt = 100
    bootstrap_unit: Literal["battle", "question"] = "battle"
    strong_weight: PositiveInt = 3


class NllConfig(_Strict):
    """Held-out Russian: mean NLL per assistant token on prepare's holdout rows (`data.sft.holdout_percent`), and
    the share of Cyrillic letters in the model's answers to those rows' user prompts.

    `max_tokens`: each row is cut to its first `max_tokens` tokens (the same cut for every model, so items stay
    paired). `max_new_tokens`: answer length for the Cyrillic share; 0 skips the generations.
    """

    limit: PositiveInt | None = None
    max_tokens: PositiveInt = 1024
    max_new_tokens: Annotated[int, Field(strict=True, ge=0)] = 64
    batch_size: PositiveInt = 8
    bootstrap_rounds: PositiveInt = 1000


class EvalConfig(_Strict):
    models: list[str] = Field(default_factory=lambda: ["base"])
    backend: BackendConfig = BackendConfig()
    mmlu: MmluConfig | None = None
    babilong: BabilongConfig | None = None
    arena: ArenaConfig | None = None
    nll: NllConfig | None = None
