"""Schema of the `eval:` block: which models, which backend, and one optional block per suite.

`models` lists what to evaluate: `base`, training stage names, or `label=path` for any other checkpoint
(a baseline). A suite set to null is not run.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Number = Annotated[float, Field(strict=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class BackendConfig(_Strict):
    kind: Literal["hf", "vllm", "openai"] = "hf"
    batch_size: PositiveInt = 8
    apply_chat_template: bool = True
    max_length: PositiveInt | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    served_model: str | None = None
    concurrency: PositiveInt = 8


class MmluConfig(_Strict):
    path: str | None = None  # null = bundled mini ruMMLU
    revision: str | None = None
    format: Literal["mera", "mmlu_ru"] = "mera"
    shots: Annotated[int, Field(strict=True, ge=0, le=5)] = 0
    domains: list[str] | None = None
    limit: PositiveInt | None = None


class BabilongConfig(_Strict):
    """`source: generate` builds seeded items at `lengths` tokens; otherwise a LIBRA path or hub id."""

    source: str = "generate"
    revision: str | None = None
    tasks: list[Literal["qa1", "qa2"]] = Field(default_factory=lambda: ["qa1", "qa2"])
    lengths: list[str] = Field(default_factory=lambda: ["1k", "2k", "4k"])
    samples_per_length: PositiveInt = 10
    max_new_tokens: PositiveInt = 16
    task_file: str | None = None
    overlength: Literal["skip", "middle_truncate"] = "skip"
    normalise: bool = True


class ArenaConfig(_Strict):
    questions: str | None = None  # null = benchdata when present, else bundled placeholders
    baseline: str | None = None
    judge: str | None = None  # judge profile YAML; null = env-configured judge or "no judge configured"
    max_new_tokens: PositiveInt = 2048
    system_prompt: str | None = None
    limit: PositiveInt | None = None
    bootstrap_rounds: PositiveInt = 100


class NllConfig(_Strict):
    """Held-out mean NLL per assistant token on prepare's holdout rows."""

    limit: PositiveInt | None = None


class EvalConfig(_Strict):
    models: list[str] = Field(default_factory=lambda: ["base"])
    backend: BackendConfig = BackendConfig()
    mmlu: MmluConfig | None = None
    babilong: BabilongConfig | None = None
    arena: ArenaConfig | None = None
    nll: NllConfig | None = None
