"""Held-out Russian suite: mean NLL per assistant token on prepare's holdout rows, and the Cyrillic share of the
model's own answers to those rows' prompts (all of it, and of the words not copied from the prompt).

Implementation: `rutune.eval.nll` and `rutune.eval.language`.
"""

from __future__ import annotations

from pathlib import Path

from rutune.eval.errors import EvalError
from rutune.eval.suites import EvalRequest, Suite, file_inputs, prepared_file, values_summary
from rutune.results import annotate, display
from rutune.schema import NonNegativeInt, PositiveInt, Strict


class NllConfig(Strict):
    """`holdout`: a parquet of held-out rows (`messages`); null = the experiment's `prepare/sft_holdout.parquet`
    (`data.sft.holdout_percent`). `max_tokens`: each row is cut to its first `max_tokens` tokens (the same cut for
    every model, so items stay paired). `max_new_tokens`: answer length for the Cyrillic share; 0 skips it.
    The hf backend always scores (the weights are needed); `eval.backend`'s batch size, dtype and device apply."""

    holdout: str | None = None
    limit: PositiveInt | None = None
    max_tokens: PositiveInt = 1024
    max_new_tokens: NonNegativeInt = 64


def holdout_path(cfg: NllConfig, run_dir) -> Path:
    return prepared_file(cfg.holdout, run_dir, "sft_holdout.parquet", option="--holdout",
                         what="a parquet of held-out rows with a `messages` column")


def run(req: EvalRequest) -> dict:
    from rutune.eval.nll import run_nll
    from rutune.rundir import write_json_atomic

    results = run_nll(req.cfg, req.backend, req.model_path, holdout_path(req.cfg, req.run_dir), req.out_dir,
                      seed=req.seed, model_label=req.model_label, rounds=req.rounds)
    annotate(results, {
        "cyrillic_share": display("Cyrillic share", test="paired_bootstrap", order=40, item_key="cyrillic_share"),
        "own_cyrillic_share": display("Cyrillic share (own words)", test="paired_bootstrap", order=41,
                                      item_key="own_cyrillic_share"),
        "nll_per_token": display("Held-out NLL", direction="lower", test="paired_bootstrap", order=42,
                                 item_key="nll_per_token"),
    })
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def inputs(cfg: NllConfig, run_dir) -> list[str]:
    try:
        return file_inputs(holdout_path(cfg, run_dir))
    except EvalError:
        return []


SUITE = Suite("nll", NllConfig, run, title="Held-out Russian NLL per token and the Cyrillic share of answers.",
              summary=values_summary("held-out"), inputs=inputs, order=40)
