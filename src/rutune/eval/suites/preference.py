"""Held-out preference pairs: the share of pairs whose chosen reply the model prefers (length-normalised log-prob)
and the mean margin, with CIs; usable on any model (base, SFT, every preference objective).

Implementation: `rutune.eval.pref_pairs`.
"""

from __future__ import annotations

from pathlib import Path

from rutune.eval.errors import EvalError
from rutune.eval.suites import EvalRequest, Suite, file_inputs, prepared_file
from rutune.results import annotate, display
from rutune.schema import PositiveInt, Strict


class PreferenceConfig(Strict):
    """`pairs`: a parquet or jsonl of pairs (`prompt`, `chosen`, `rejected`); null = the experiment's
    `prepare/preference_holdout.parquet` (`data.preference.holdout_percent`). `max_tokens`: prompt + longer reply
    budget (the prompt is cut from the left, as training does). The hf backend always scores (log-probs need the
    weights); `eval.backend`'s dtype and device apply."""

    pairs: str | None = None
    limit: PositiveInt | None = None
    max_tokens: PositiveInt = 2048


def pairs_path(cfg: PreferenceConfig, run_dir) -> Path:
    return prepared_file(cfg.pairs, run_dir, "preference_holdout.parquet", option="--pairs",
                         what="parquet/jsonl with prompt, chosen, rejected")


def run(req: EvalRequest) -> dict:
    from rutune.eval.pref_pairs import run_pairs
    from rutune.rundir import write_json_atomic

    results = run_pairs(req.cfg, req.backend, req.model_path, pairs_path(req.cfg, req.run_dir), req.out_dir,
                        seed=req.seed, model_label=req.model_label, rounds=req.rounds)
    annotate(results, {
        "pref_accuracy": display("Pref. pairs won", test="mcnemar", order=45, item_key="correct"),
        "pref_margin": display("Pref. margin (nats/token)", test="paired_bootstrap", order=46, item_key="margin"),
    })
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def inputs(cfg: PreferenceConfig, run_dir) -> list[str]:
    try:
        return file_inputs(pairs_path(cfg, run_dir))
    except EvalError:
        return []


def summary(res: dict) -> str:
    m = res["metrics"]
    return (f"preference pairs {res['model']}: won {m['pref_accuracy']['value']:.3f}, "
            f"margin {m['pref_margin']['value']:.3f}")


SUITE = Suite("preference", PreferenceConfig, run, title="Held-out preference pairs: share won and mean margin.",
              summary=summary, inputs=inputs, order=45)
