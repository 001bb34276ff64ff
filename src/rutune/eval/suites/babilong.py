"""LIBRA ruBABILong QA1/QA2 suite: containment (LIBRA's and normalised) per length, totals with missing = 0.

Implementation: `rutune.eval.babilong` (loader, scoring) and `rutune.eval.babilong_gen` (seeded generator).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from rutune.eval.suites import EvalRequest, Suite, file_inputs
from rutune.results import annotate, display
from rutune.schema import PositiveInt, Strict


class BabilongConfig(Strict):
    """`source: generate` builds seeded items at `lengths` tokens; otherwise a LIBRA path or hub id."""

    source: str = "generate"
    revision: str | None = None
    tasks: list[Literal["qa1", "qa2"]] = Field(default_factory=lambda: ["qa1", "qa2"])
    lengths: list[str] = Field(default_factory=lambda: ["1k", "2k", "4k"])
    samples_per_length: PositiveInt | None = 10  # generated items per length; cap per length for data (null = all)
    max_new_tokens: PositiveInt = 16
    task_file: str | None = None  # null = rutune's own instructions; LIBRA's datasets_config.json is accepted
    overlength: Literal["skip", "middle_truncate"] = "skip"
    lemmatise: bool = True  # score_norm on pymorphy3 lemmas; a lemmatiser that cannot load is an error, not a fallback

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, value: list[str]) -> list[str]:
        for length in value:
            if not re.fullmatch(r"[1-9][0-9]*k?", length):
                raise ValueError(f"length {length!r}: expected e.g. 4k or 512")
        if len(set(value)) != len(value):
            raise ValueError("lengths repeat")
        return value


def run(req: EvalRequest) -> dict:
    from rutune.eval.babilong import run_babilong
    from rutune.rundir import write_json_atomic

    results = run_babilong(req.cfg, req.backend, req.model_path, req.out_dir, seed=req.seed,
                           model_label=req.model_label, progress=req.progress, rounds=req.rounds)
    annotate(results, {task: display(task.upper(), test="mcnemar", order=30 + i, item_key="score",
                                     where={"task": task}) for i, task in enumerate(req.cfg.tasks)})
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def inputs(cfg: BabilongConfig, run_dir) -> list[str]:
    from rutune.data.sources import is_local_path
    from rutune.eval.babilong import hub_revision

    parts = file_inputs(cfg.task_file)
    if cfg.source == "generate":
        return parts
    if is_local_path(cfg.source):
        return parts + file_inputs(cfg.source)
    return parts + [f"hub:{cfg.source}@{hub_revision(cfg.source, cfg.revision)}"]


def summary(res: dict) -> str:
    m = res["metrics"]
    tasks = [t for t in ("qa1", "qa2") if t in m]
    parts = [f"{t} {m[t]['value']:.3f} (norm {m[t + '_norm']['value']:.3f})" for t in tasks]
    line = f"ruBABILong {res['model']}: " + ", ".join(parts) + f", total {m['total']['value']:.3f}"
    missing = {t: v for t, v in res["extra"]["missing_lengths"].items() if v}
    if missing or res["extra"]["skipped"]:
        line += (f"\nskipped {res['extra']['skipped']} item(s) longer than the window; lengths counted as 0: "
                 f"{missing}")
    return line


SUITE = Suite("babilong", BabilongConfig, run, title="LIBRA ruBABILong QA1/QA2: containment per length, totals.",
              summary=summary, inputs=inputs, cli_aliases={"samples_per_length": "samples"}, order=30)
