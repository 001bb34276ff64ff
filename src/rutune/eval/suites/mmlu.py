"""ruMMLU suite: letter log-likelihood accuracy with a 95% CI, per domain, the mmlu_ru macro average.

Implementation: `rutune.eval.mmlu` (prompts, scoring) and `rutune.eval.mmlu_data` (MERA / mmlu_ru loaders).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rutune.eval.suites import EvalRequest, Suite, file_inputs
from rutune.results import annotate, display
from rutune.schema import PositiveInt, Strict


class MmluConfig(Strict):
    """ruMMLU. `path`: null = bundled mini sample; a .jsonl/.json/.parquet file or folder; or a hub id."""

    path: str | None = None
    revision: str | None = None  # hub revision (commit) to pin; recorded in results.json
    format: Literal["mera", "mmlu_ru"] = "mera"
    split: str = "test"
    shots: int = Field(default=0, ge=0, le=5, strict=True)
    domains: list[str] | None = None
    limit: PositiveInt | None = None
    chat_template: bool = False  # MERA scores raw prompts; true wraps each prompt as one chat user turn


def run(req: EvalRequest) -> dict:
    from rutune.eval.mmlu import run_mmlu
    from rutune.rundir import write_json_atomic

    results = run_mmlu(req.cfg, req.backend, req.model_path, req.out_dir, seed=req.seed, model_label=req.model_label,
                       progress=req.progress, rounds=req.rounds)
    results["extra"]["substituted"] = req.cfg.path is None  # the bundled mini sample stands in for ruMMLU
    annotate(results, {"accuracy": display("ruMMLU", test="mcnemar", order=20, item_key="correct")})
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def inputs(cfg: MmluConfig, run_dir) -> list[str]:
    from rutune.data.sources import is_local_path
    from rutune.eval.mmlu_data import SAMPLE, hub_revision

    if cfg.path is None:
        return file_inputs(SAMPLE)
    if is_local_path(cfg.path):
        return file_inputs(cfg.path)
    return [f"hub:{cfg.path}@{hub_revision(cfg.path, cfg.format, cfg.revision)}"]


def item_texts(cfg: MmluConfig) -> dict[str, str]:
    from rutune.eval.mmlu_data import load_questions

    return {q.id: q.question for q in load_questions(cfg.path, cfg.format, cfg.split, cfg.revision, cfg.domains)}


def summary(res: dict) -> str:
    acc, macro = res["metrics"]["accuracy"], res["metrics"]["macro"]
    note = " (bundled mini sample, not ruMMLU)" if res["extra"].get("substituted") else ""
    return (f"ruMMLU {res['model']}: accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] "
            f"(n={acc['n_valid']}/{acc['n_total']}), macro {macro['value']:.3f}{note}")


SUITE = Suite("mmlu", MmluConfig, run, title="ruMMLU: letter log-likelihood, accuracy with a 95% CI, per domain.",
              summary=summary, inputs=inputs, item_texts=item_texts, cli_aliases={"path": "data"}, order=20)
