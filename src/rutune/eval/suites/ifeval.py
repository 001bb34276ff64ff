"""ruIFEval suite: verifiable Russian instructions, the four scores (prompt/instruction × strict/loose) with 95% CIs.

The core (checkers, strict/loose scoring, row validation, loading) is `rutune.eval.ifeval`; this module generates
the answers with the configured backend (greedy, through the model's chat template when `eval.backend` applies it),
writes one resumable item row per prompt, and turns the rows into metrics with display blocks.

Confidence intervals (`req.rounds` bootstrap rounds, seeded):
- prompt level: percentile bootstrap of the mean of the per-prompt 0/1 outcomes (`metric_entry`);
- instruction level: the prompts are resampled with replacement and the micro-average recomputed on each
  resample (followed instructions / instructions of the resampled prompts). Instructions of one prompt answer
  to one response and are not independent, so the prompt is the resampling unit.

Report tests against the baseline: prompt-level columns use McNemar on the per-prompt 0/1 items; instruction-level
columns use a paired bootstrap on the per-prompt *number* of followed instructions. Both models answer the same
prompts with the same instructions, so the mean difference of those counts is the micro-average difference times
(instructions / prompts): the test is of exactly the shown score, which a per-prompt share would not be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rutune.eval.errors import EvalError
from rutune.eval.suites import EvalRequest, Suite, file_inputs
from rutune.results import annotate, display
from rutune.schema import PositiveInt, Strict
from rutune.stats import metric_entry

# lm-eval runs IFEval greedy with up to 1280 new tokens; 512 keeps a CPU run short while leaving room for the
# common "at least 300 words" answers of short models. Answers cut at the limit are counted in `extra.truncated`.
DEFAULT_MAX_NEW_TOKENS = 512
LEVELS = ("strict", "loose")


class IfevalConfig(Strict):
    """ruIFEval. `path`: null = the bundled 66-prompt sample (written for rutune, not ruIFEval's data), a local
    .jsonl of ruIFEval rows, an http(s) URL, `NLP-Core-Team/ruIFEval` (ruIFEval v0.1's 541 prompts from the
    upstream repository at a pinned commit, downloaded once and cached) or another hub id loaded at `revision`.
    `max_new_tokens`: lm-eval uses 1280; the default is CPU-friendly."""

    path: str | None = None
    revision: str | None = None
    limit: PositiveInt | None = None
    max_new_tokens: PositiveInt = DEFAULT_MAX_NEW_TOKENS


def load(cfg: IfevalConfig):
    """The configured rows (`LoadedRows`), with a bad row or source as one EvalError line naming it."""
    from rutune.eval.ifeval import IfevalError, load_rows

    try:
        return load_rows(cfg.path, cfg.revision)
    except IfevalError as e:
        raise EvalError(str(e)) from None


def item_row(row: dict, text: str, n_tokens: int, finish_reason: str) -> dict:
    """One items.jsonl row: the per-instruction verdicts, the per-prompt outcomes and counts, and the response."""
    from rutune.eval.ifeval import IfevalError, score_response

    try:
        scored = score_response(row, text)
    except IfevalError as e:
        raise EvalError(str(e)) from None
    return {**scored, "key": row["key"],
            "inst_strict_followed": sum(scored["inst_strict"]), "inst_loose_followed": sum(scored["inst_loose"]),
            "response": text, "n_tokens": n_tokens, "finish_reason": finish_reason}


def ratio_bootstrap_ci(numerators, denominators, *, rounds: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of sum(numerators)/sum(denominators) with the units (prompts) resampled with replacement.

    Draws the same index blocks as `rutune.stats.bootstrap_ci` (blocks of 200 rounds), so with all denominators 1
    the two intervals coincide.
    """
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if len(num) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    out = np.empty(rounds)
    for start in range(0, rounds, 200):
        stop = min(start + 200, rounds)
        idx = rng.integers(0, len(num), size=(stop - start, len(num)))
        out[start:stop] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(out, [tail, 100.0 - tail])
    return float(low), float(high)


def ifeval_metrics(rows: list[dict], *, rounds: int = 1000, seed: int = 0) -> dict:
    """The four scores as results.json metric entries (values equal `rutune.eval.ifeval.ifeval_scores`)."""
    metrics = {f"prompt_level_{level}": metric_entry([r[f"prompt_{level}"] for r in rows], n_total=len(rows),
                                                     item_key=f"prompt_{level}", rounds=rounds, seed=seed)
               for level in LEVELS}
    n_inst = [r["n_instructions"] for r in rows]
    for level in LEVELS:
        followed = [r[f"inst_{level}_followed"] for r in rows]
        flat = [v for r in rows for v in r[f"inst_{level}"]]
        value = sum(followed) / sum(n_inst) if rows else float("nan")
        metrics[f"inst_level_{level}"] = metric_entry(
            flat, n_total=len(flat), item_key=f"inst_{level}_followed", value=value,
            ci=ratio_bootstrap_ci(followed, n_inst, rounds=rounds, seed=seed))
    return metrics


def run_ifeval(req: EvalRequest, *, backend=None, chunk: int | None = None) -> dict:
    """Answer every configured prompt (resuming finished ones), score, write items.jsonl and results.json."""
    from rutune.eval.backends import GenerationRequest
    from rutune.eval.ifeval import instruction_breakdown
    from rutune.items import ItemsLog
    from rutune.rundir import write_json_atomic

    cfg = req.cfg
    loaded = load(cfg)
    rows = list(loaded.rows[:cfg.limit] if cfg.limit else loaded.rows)
    source = "bundled:ruifeval.jsonl" if loaded.bundled_sample else loaded.source
    fingerprint = {"suite": "ifeval", "model_path": str(req.model_path), "source": source,
                   "revision": loaded.revision, "max_new_tokens": cfg.max_new_tokens,
                   "chat_template": req.backend.apply_chat_template}
    log = ItemsLog(req.out_dir, fingerprint)
    todo = [r for r in rows if str(r["key"]) not in log.done]
    if todo and backend is None:
        from rutune.eval.backends import make_backend

        backend = make_backend(req.backend, req.model_path)
    step = chunk or max(1, getattr(backend, "batch_size", 8)) * 2
    for start in range(0, len(todo), step):
        part = todo[start:start + step]
        requests = [GenerationRequest(messages=({"role": "user", "content": r["prompt"]},),
                                      max_new_tokens=cfg.max_new_tokens) for r in part]
        outputs = backend.generate(requests)
        log.append(item_row(r, o.text, o.n_tokens, o.finish_reason) for r, o in zip(part, outputs))
        if req.progress:
            req.progress(min(start + step, len(todo)), len(todo))
    items = log.ordered([str(r["key"]) for r in rows])
    metrics = ifeval_metrics(items, rounds=req.rounds, seed=req.seed)
    extra = {"substituted": loaded.bundled_sample, "source": source, "revision": loaded.revision,
             "n_prompts": len(items),
             "n_instructions": sum(r["n_instructions"] for r in items), "max_new_tokens": cfg.max_new_tokens,
             "truncated": sum(1 for r in items if r.get("finish_reason") == "length"),
             "per_instruction": instruction_breakdown(items), "unit": "fraction"}
    results = {"suite": "ifeval", "model": req.model_label, "model_path": str(req.model_path),
               "metrics": metrics, "extra": extra}
    annotate(results, {
        "prompt_level_strict": display("ruIFEval prompt strict", test="mcnemar", order=50, item_key="prompt_strict"),
        "prompt_level_loose": display("ruIFEval prompt loose", test="mcnemar", order=51, item_key="prompt_loose"),
        "inst_level_strict": display("ruIFEval instr. strict", test="paired_bootstrap", order=52,
                                     item_key="inst_strict_followed"),
        "inst_level_loose": display("ruIFEval instr. loose", test="paired_bootstrap", order=53,
                                    item_key="inst_loose_followed"),
    })
    write_json_atomic(Path(req.out_dir) / "results.json", results)
    return results


def run(req: EvalRequest) -> dict:
    return run_ifeval(req)


def inputs(cfg: IfevalConfig, run_dir) -> list[str]:
    """The row file's content, the pinned URL (its commit fixes the content), or the hub id at its revision."""
    from rutune.eval.ifeval import SAMPLE_PATH
    from rutune.eval.ifeval.rows import resolve_source
    from rutune.eval.upstream import is_url

    if cfg.path is None:
        return file_inputs(SAMPLE_PATH)
    source = resolve_source(cfg.path, cfg.revision)
    if is_url(source):
        return [f"url:{source}"]
    if Path(source).expanduser().is_file() or source.endswith((".jsonl", ".json")):
        return file_inputs(source)
    return [f"hub:{source}@{cfg.revision or 'default-branch'}"]


def item_texts(cfg: IfevalConfig) -> dict[str, str]:
    rows = load(cfg).rows
    return {f"ifeval-{r['key']}": r["prompt"] for r in (rows[:cfg.limit] if cfg.limit else rows)}


def summary(res: dict) -> str:
    m, extra = res["metrics"], res["extra"]
    parts = [f"{name.replace('_level_', ' ')} {m[name]['value']:.3f} [{m[name]['ci_low']:.3f}, "
             f"{m[name]['ci_high']:.3f}]" for name in ("prompt_level_strict", "prompt_level_loose",
                                                      "inst_level_strict", "inst_level_loose")]
    line = (f"ruIFEval {res['model']}: " + ", ".join(parts) +
            f" (n={extra['n_prompts']} prompts, {extra['n_instructions']} instructions)")
    if extra.get("substituted"):
        line += " (bundled sample, not ruIFEval)"
    if extra.get("truncated"):
        line += f"\n{extra['truncated']} answer(s) reached max_new_tokens={extra['max_new_tokens']} and were cut"
    return line


SUITE = Suite("ifeval", IfevalConfig, run,
              title="ruIFEval: verifiable Russian instructions, prompt/instruction-level strict and loose with CIs.",
              summary=summary, inputs=inputs, item_texts=item_texts, order=50)
