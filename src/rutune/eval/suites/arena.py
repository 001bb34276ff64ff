"""RU Arena suite (ru_llm_arena protocol): answers → pairwise judge in both seat orders → Bradley–Terry win rate
vs the baseline answers, two length controls, a style-controlled win rate, judge-reliability figures (swap
agreement, first-position bias, length correlation; warnings below the configured thresholds), average length.

Implementation: `rutune.eval.arena` (stage), `arena_scoring` (maths), `judge` / `judge_client` (the judge),
`arena_data` (file formats). Besides results.json and items.jsonl (one row per game) the suite writes
`lengths.jsonl` (per question: cl100k tokens, model tokens, characters), the per-item values of the Avg len column.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from rutune.eval.suites import EvalRequest, Suite, file_inputs
from rutune.results import annotate, display
from rutune.schema import Number, PositiveInt, Strict

UNIT_TITLES = {"cl100k": "cl100k tokens", "model_tokens": "model tokens", "chars": "chars"}


class ArenaConfig(Strict):
    """`questions`/`baseline`: local jsonl in the ru_llm_arena formats, a pinned URL, or a hub id (questions only);
    null = the bundled placeholders (20 questions, not the leaderboard's 500 — results.json and the terminal say so).
    `answers`: an existing answer file for the model (skips generation). `judge`: a judge profile YAML (null =
    RUTUNE_JUDGE_* env vars, else answers only). `bootstrap_rounds`: 100, the leaderboard's (this suite's own).
    `bootstrap_unit`: `battle` resamples battle rows as the leaderboard does, `question` whole questions.
    `style_control` / `style_reference`: the style features of the style-controlled score ("Judge (SC)") and where
    it is read off — `equal` (both answers of the same style; the default, since a single model's "mean" keeps
    its own average style advantage) or `mean` (arena-hard-auto's z = 0). `min_swap_agreement` /
    `max_first_position_skew`: below / beyond these the judge-reliability warnings are written into results.json
    (`extra.warnings`) and shown under the report's table (docs/arena-style.md)."""

    questions: str | None = None
    revision: str | None = None  # hub revision of `questions` when it is a hub id; null = the pinned one
    baseline: str | None = None
    answers: str | None = None
    judge: str | None = None
    max_new_tokens: PositiveInt = 2048
    system_prompt: str | None = None
    limit: PositiveInt | None = None
    bootstrap_rounds: PositiveInt = 100
    bootstrap_unit: Literal["battle", "question"] = "battle"
    strong_weight: PositiveInt = 3
    style_control: list[Literal["length", "markdown", "header", "list", "bold"]] = Field(
        default_factory=lambda: ["length", "markdown"], min_length=1)
    style_reference: Literal["equal", "mean"] = "equal"
    min_swap_agreement: Number = Field(default=0.6, ge=0, le=1)
    max_first_position_skew: Number = Field(default=0.1, ge=0, le=0.5)


def run(req: EvalRequest) -> dict:
    from rutune.eval.arena import LENGTHS_FILE, run_arena
    from rutune.items import read_items
    from rutune.rundir import write_json_atomic
    from rutune.stats import bootstrap_ci

    results = run_arena(req.cfg, req.backend, req.model_path, req.model_label, req.out_dir, seed=req.seed,
                        progress=True)
    rows = read_items(req.out_dir / LENGTHS_FILE)  # the run's questions only (an answer file may hold more)
    avg = results["metrics"]["avg_tokens"]
    lengths = [r[avg["unit"]] for r in rows if r.get(avg["unit"]) is not None]
    if lengths:
        avg["ci_low"], avg["ci_high"] = bootstrap_ci(lengths, rounds=req.rounds, seed=req.seed)
    extra = results["extra"]
    extra["questions"]["substituted"] = req.cfg.questions is None
    extra["baseline"]["substituted"] = req.cfg.baseline is None
    annotate(results, {
        "win_rate": display("Judge", test="paired_bootstrap", order=10, item_key="model_score"),
        "win_rate_lc": display("Judge (LC)", order=11),
        "win_rate_style": display("Judge (SC)", order=11.5),
        "avg_tokens": display("Avg len", decimals=0, direction="none", test="paired_bootstrap", order=12,
                              items_file="lengths.jsonl", item_key=avg["unit"],
                              unit_title=UNIT_TITLES.get(avg["unit"], avg["unit"]), histogram=True),
        "avg_chars": display("Avg len (chars)", decimals=0, direction="none", test="paired_bootstrap", order=13,
                             items_file="lengths.jsonl", item_key="chars"),
    })
    write_json_atomic(req.out_dir / "results.json", results)
    return results


def _data_inputs(ref: str | None, default, revision: str | None = None) -> list[str]:
    from rutune.data.sources import is_local_path
    from rutune.eval.arena_data import HUB_QUESTIONS, HUB_REVISION
    from rutune.eval.upstream import is_url

    if ref is None:
        return file_inputs(default())
    if is_url(ref):
        return [f"url:{ref}"]
    if is_local_path(ref):
        return file_inputs(ref)
    return [f"hub:{ref}@{revision or (HUB_REVISION if ref == HUB_QUESTIONS else 'main')}"]


def inputs(cfg: ArenaConfig, run_dir) -> list[str]:
    """Everything the scores depend on besides the model: the judge profile's content and its prompt file's, or
    the env-configured judge; the questions, baseline and given answers (content hashes, URLs or hub ids)."""
    from rutune.eval import arena_data
    from rutune.eval.judge import ENV_BASE_URL, ENV_MODEL, load_profile, profile_files

    if cfg.judge:
        judge = file_inputs(cfg.judge)
        try:
            judge += profile_files(load_profile(cfg.judge))
        except ValueError:  # a bad profile fails when the suite runs, with its own message
            pass
    else:
        judge = ["env-judge:" + ";".join(os.environ.get(k, "") for k in (ENV_BASE_URL, ENV_MODEL))]
    return [*judge, *_data_inputs(cfg.questions, arena_data.default_questions, cfg.revision),
            *_data_inputs(cfg.baseline, arena_data.default_baseline), *file_inputs(cfg.answers)]


def item_texts(cfg: ArenaConfig) -> dict[str, str]:
    from rutune.eval.arena_data import load_questions

    return {q.question_id: q.text for q in load_questions(cfg.questions, cfg.revision, cfg.limit)}


def summary(res: dict) -> str:
    from rutune.eval.arena import summary_line

    line = summary_line(res)
    if res["extra"]["questions"].get("substituted"):
        line += ("\nnote: the bundled placeholder questions stood in for RU Arena (set eval.arena.questions to "
                 "Vikhrmodels/ru-arena-general for the real 500)")
    return line


SUITE = Suite("arena", ArenaConfig, run, title="RU Arena: pairwise judge (both orders), win rate vs the baseline.",
              summary=summary, inputs=inputs, item_texts=item_texts, needs_model=False, own_progress=True, order=10)
