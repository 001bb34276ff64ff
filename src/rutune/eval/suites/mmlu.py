"""ruMMLU suite: letter log-likelihood accuracy with a 95% CI, per domain, the mmlu_ru macro average.

Implementation: `rutune.eval.mmlu` (prompts, scoring) and `rutune.eval.mmlu_data` (MERA / mmlu_ru loaders).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    # MERA's upload file (<out>/submission/ruMMLU.json + submission.zip): auto = when the split has no gold answer
    # (MERA's closed test), always (MERA rows only), never
    submission: Literal["auto", "always", "never"] = "auto"

    @model_validator(mode="after")
    def _submission_needs_mera(self):
        if self.submission == "always" and self.format != "mera":
            raise ValueError("submission: always writes MERA's upload file, which needs MERA rummlu rows "
                             "(format: mera)")
        return self


def run(req: EvalRequest) -> dict:
    from rutune.eval.mmlu import run_mmlu
    from rutune.rundir import write_json_atomic

    results = run_mmlu(req.cfg, req.backend, req.model_path, req.out_dir, seed=req.seed, model_label=req.model_label,
                       progress=req.progress, rounds=req.rounds)
    results["extra"]["substituted"] = req.cfg.path is None  # the bundled mini sample stands in for ruMMLU
    # The data the score is on follows the title ("ruMMLU (mmlu_ru test)"): MERA's test split, its train split and
    # mmlu_ru give numbers that do not compare. The bundled sample is named by the report's substitution note.
    label = None if req.cfg.path is None else results["extra"]["data"]
    annotate(results, {"accuracy": display("ruMMLU", test="mcnemar", order=20, item_key="correct",
                                           unit_title=label)})
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
    extra = res["extra"]
    note = " (bundled mini sample, not ruMMLU)" if extra.get("substituted") else f" on {extra.get('data')}"
    line = (f"ruMMLU {res['model']}: accuracy {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] "
            f"(n={acc['n_valid']}/{acc['n_total']}), macro {macro['value']:.3f}{note}")
    if extra.get("submission"):
        line += f"\nMERA submission: {extra['submission']['zip']}"
    return "\n".join([line] + [f"warning: {w}" for w in extra.get("warnings", [])])


SUITE = Suite("mmlu", MmluConfig, run, title="ruMMLU: letter log-likelihood, accuracy with a 95% CI, per domain.",
              summary=summary, inputs=inputs, item_texts=item_texts, cli_aliases={"path": "data"}, order=20)
