"""ruMMLU: few-shot prompts in MERA's or mmlu_ru's layout, letter log-likelihood scoring, metrics.

Layouts (shot delimiter "\\n\\n", answer letters scored as the continuations " A" … " D"):

- `mera`: zero-shot, the item's own `instruction` filled with its fields. With k shots, the *first shot* is
  written with its own instruction, later shots and the query with the bare template
  "{text}\\nA) …\\nB) …\\nC) …\\nD) …\\nОтвет:"; each shot is followed by " <letter>".
- `mmlu_ru`: a header "Ниже приведены вопросы с множественным выбором (с ответами) по {subject}.\\n\\n",
  then shots and the query as "{question}\\nA. …\\nD. …\\nОтвет:" (shots end with " <letter>").

Shots are drawn from the same domain (seeded per item), never the item itself; a domain with fewer than k
candidates gives fewer shots, and each item row records `n_shots`.

Scoring: the letter with the highest log-likelihood. On the hf backend the four continuations of a question
share one forward pass (see `backend_hf`); other backends answer the same four requests their own way.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from rutune.eval.backends import render_chat
from rutune.eval.errors import EvalError
from rutune.items import ItemsLog
from rutune.eval.mmlu_data import (CATEGORIES, CATEGORY, LETTERS, MERA_HUB, MMLU_RU_HUB, Question, hub_revision,
                                    load_questions)
from rutune.stats import metric_entry, stratified_bootstrap_ci

MMLU_RU_HEADER = "Ниже приведены вопросы с множественным выбором (с ответами) по {subject}.\n\n"
TARGET_DELIMITER = " "
SHOT_DELIMITER = "\n\n"
POOL_SPLIT = {"mera": "train", "mmlu_ru": "dev"}
SUBMISSION_DIR = "submission"  # <out>/submission/ruMMLU.json, zipped to <out>/submission.zip (MERA's packer layout)
SUBMISSION_FILE = "ruMMLU.json"  # MERA names each task's file after its task class


def _bare_mera(q: Question) -> str:
    lines = [q.question] + [f"{letter}) {opt}" for letter, opt in zip(LETTERS, q.options)]
    return "\n".join(lines) + "\nОтвет:"


def _instructed_mera(q: Question) -> str:
    if not q.instruction:
        return _bare_mera(q)
    fields = {"text": q.question, "subject": q.subject,
              **{f"option_{k}": opt for k, opt in zip("abcd", q.options)}}
    try:
        return q.instruction.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise EvalError(f"{q.id}: instruction template cannot be filled ({type(e).__name__}: {e})") from None


def _mmlu_ru_block(q: Question) -> str:
    lines = [q.question] + [f"{letter}. {opt}" for letter, opt in zip(LETTERS, q.options)]
    return "\n".join(lines) + "\nОтвет:"


def build_prompt(q: Question, shots: list[Question], fmt: str) -> str:
    """The context whose continuation is " A" … " D"."""
    for s in shots:
        if s.gold is None:
            raise EvalError(f"shot {s.id} has no answer; shots need a labelled pool")
    if fmt == "mera":
        if not shots:
            return _instructed_mera(q)
        blocks = [_instructed_mera(shots[0]) + TARGET_DELIMITER + shots[0].gold]  # type: ignore[operator]
        blocks += [_bare_mera(s) + TARGET_DELIMITER + s.gold for s in shots[1:]]  # type: ignore[operator]
        return SHOT_DELIMITER.join(blocks + [_bare_mera(q)])
    if fmt == "mmlu_ru":
        blocks = [_mmlu_ru_block(s) + TARGET_DELIMITER + s.gold for s in shots]  # type: ignore[operator]
        return MMLU_RU_HEADER.format(subject=q.subject) + SHOT_DELIMITER.join(blocks + [_mmlu_ru_block(q)])
    raise EvalError(f"eval.mmlu.format: unknown format {fmt!r} (mera, mmlu_ru)")


def draw_shots(q: Question, pool_by_domain: dict[str, list[Question]], k: int, seed: int) -> list[Question]:
    """k labelled shots from the item's domain, seeded by (seed, item id), excluding the item itself."""
    if k == 0:
        return []
    candidates = [s for s in pool_by_domain.get(q.domain, []) if s.id != q.id and s.question != q.question
                  and s.gold is not None]
    rng = random.Random(f"{seed}:{q.id}")
    return rng.sample(candidates, min(k, len(candidates)))


def select(questions: list[Question], domains: list[str] | None, limit: int | None, source: str) -> list[Question]:
    if domains:
        present = {q.domain for q in questions}
        for d in domains:
            if d not in CATEGORY:
                raise EvalError(f"eval.mmlu.domains: unknown domain {d!r} (expected one of the 57 MMLU subjects)")
            if d not in present:
                raise EvalError(f"eval.mmlu.domains: no questions for domain {d!r} in {source}")
        questions = [q for q in questions if q.domain in set(domains)]
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise EvalError(f"{source}: question id {q.id} appears twice")
        seen.add(q.id)
    return questions[:limit] if limit else questions


def score_letters(logprobs: list[float]) -> str:
    """The letter with the highest log-likelihood (the first one on an exact tie)."""
    return LETTERS[int(np.argmax(np.asarray(logprobs)))]


def chat_wrap(backend, prompt: str) -> str:
    """Render a prompt as one user turn with the model's chat template (for `chat_template: true`)."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None:
        raise EvalError("eval.mmlu.chat_template needs a backend with a local tokenizer (hf or vllm)")
    return render_chat(tok, [{"role": "user", "content": prompt}], fix="set eval.mmlu.chat_template: false")


def score_questions(backend, items: list[tuple[Question, str, int]]) -> list[dict]:
    """Item rows for (question, context, n_shots) triples: four letter log-likelihoods, one request batch."""
    from rutune.eval.backends import LoglikelihoodRequest

    requests = [LoglikelihoodRequest(ctx, TARGET_DELIMITER + letter) for _, ctx, _ in items for letter in LETTERS]
    results = backend.loglikelihood(requests)
    rows = []
    for n, (q, _, n_shots) in enumerate(items):
        lps = [results[4 * n + j].logprob for j in range(4)]
        pred = score_letters(lps)
        rows.append({"id": q.id, "domain": q.domain, "category": CATEGORY[q.domain], "pred": pred, "gold": q.gold,
                     "correct": None if q.gold is None else int(pred == q.gold),
                     "logprobs": [round(x, 6) for x in lps], "n_shots": n_shots})
    return rows


def mmlu_metrics(rows: list[dict], *, rounds: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, extra): micro accuracy, the mmlu_ru macro (mean of category means of domain means), per domain."""
    labelled = [r for r in rows if r.get("correct") is not None]
    correct = [float(r["correct"]) for r in labelled]
    by_domain: dict[str, list[float]] = defaultdict(list)
    for r in labelled:
        by_domain[r["domain"]].append(float(r["correct"]))
    domains = sorted(by_domain)
    per_domain = {d: {"accuracy": float(np.mean(by_domain[d])), "n": len(by_domain[d])} for d in domains}
    cat_of = [CATEGORY[d] for d in domains]
    present = [c for c in CATEGORIES if c in cat_of]

    def macro(domain_means: np.ndarray) -> float:
        cats = [np.mean([m for m, c in zip(domain_means, cat_of) if c == cat]) for cat in present]
        return float(np.mean(cats)) if cats else float("nan")

    groups = [by_domain[d] for d in domains]
    metrics = {"accuracy": metric_entry(correct, n_total=len(rows), item_key="correct", rounds=rounds, seed=seed)}
    macro_value = macro(np.array([np.mean(g) for g in groups])) if groups else float("nan")
    macro_ci = stratified_bootstrap_ci(groups, macro, rounds=rounds, seed=seed) if groups else (np.nan, np.nan)
    metrics["macro"] = metric_entry(correct, n_total=len(rows), item_key=None, value=macro_value, ci=macro_ci)
    per_category = {c: float(np.mean([per_domain[d]["accuracy"] for d in domains if CATEGORY[d] == c]))
                    for c in present}
    extra = {"per_domain": per_domain, "per_category": per_category,
             "missing_categories": [c for c in CATEGORIES if c not in present], "unit": "fraction"}
    return metrics, extra


def data_label(cfg) -> str:
    """Which data a score is on, short enough for a report header: "MERA train", "mmlu_ru test", a file name."""
    if cfg.path is None:
        return "bundled sample"
    name = {MERA_HUB[0]: "MERA", MMLU_RU_HUB: "mmlu_ru"}.get(cfg.path, Path(cfg.path).name)
    return name if Path(cfg.path).expanduser().is_file() else f"{name} {cfg.split}"


def submission_wanted(cfg, questions: list[Question]) -> bool:
    """`always`, or `auto` on a split without any gold answer (MERA's closed test); never for mmlu_ru rows."""
    if cfg.submission == "never" or cfg.format != "mera":
        return False
    return cfg.submission == "always" or all(q.gold is None for q in questions)


def write_submission(out_dir: str | Path, rows: list[dict], questions: list[Question]) -> Path:
    """MERA's upload for ruMMLU: `submission/ruMMLU.json` = {"data": {"test": [{"outputs": letter, "meta": {"id":
    meta.id}}, …]}} in item order, and the folder's files zipped at the archive root to `submission.zip`."""
    from rutune.rundir import write_text_atomic

    meta = {q.id: q.meta_id for q in questions}

    def as_id(value):
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    entries = [{"outputs": r["pred"], "meta": {"id": as_id(meta[r["id"]])}} for r in rows]
    folder = Path(out_dir) / SUBMISSION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / SUBMISSION_FILE,
                      json.dumps({"data": {"test": entries}}, ensure_ascii=False, indent=4) + "\n")
    archive = Path(out_dir) / f"{SUBMISSION_DIR}.zip"
    partial = archive.with_name(archive.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            zf.write(file, file.name)
    os.replace(partial, archive)
    return archive


def run_mmlu(cfg, backend_cfg, model_path: str, out_dir: str | Path, seed: int = 0, *, backend=None,
             model_label: str | None = None, chunk_questions: int = 64, rounds: int = 1000,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Evaluate one model on ruMMLU; writes items.jsonl as it goes and results.json at the end; returns it."""
    from rutune.rundir import write_json_atomic

    loaded = load_questions(cfg.path, cfg.format, cfg.split, cfg.revision, cfg.domains)
    questions = select(loaded, cfg.domains, cfg.limit, cfg.path or "bundled sample")
    if not questions:
        raise EvalError(f"ruMMLU source {cfg.path or 'bundled sample'}: no questions")
    pool = loaded  # a single file (or the bundled sample) is its own shot pool; the item itself is excluded
    if cfg.shots and cfg.path is not None and not Path(cfg.path).expanduser().is_file():
        pool = load_questions(cfg.path, cfg.format, POOL_SPLIT[cfg.format], cfg.revision, cfg.domains)
    pool_by_domain: dict[str, list[Question]] = defaultdict(list)
    for q in pool:
        pool_by_domain[q.domain].append(q)
    revision = hub_revision(cfg.path, cfg.format, cfg.revision)
    fingerprint = {"suite": "mmlu", "model_path": str(model_path), "format": cfg.format, "shots": cfg.shots,
                   "source": cfg.path, "revision": revision, "split": cfg.split, "seed": seed,
                   "chat_template": cfg.chat_template}
    log = ItemsLog(out_dir, fingerprint)
    todo = [q for q in questions if q.id not in log.done]
    if todo and backend is None:
        from rutune.eval.backends import make_backend

        backend = make_backend(backend_cfg, model_path)
    for start in range(0, len(todo), chunk_questions):
        chunk = []
        for q in todo[start:start + chunk_questions]:
            shots = draw_shots(q, pool_by_domain, cfg.shots, seed)
            ctx = build_prompt(q, shots, cfg.format)
            chunk.append((q, chat_wrap(backend, ctx) if cfg.chat_template else ctx, len(shots)))
        log.append(score_questions(backend, chunk))
        if progress:
            progress(min(start + chunk_questions, len(todo)), len(todo))
    rows = log.ordered([q.id for q in questions])
    metrics, extra = mmlu_metrics(rows, rounds=rounds, seed=seed)
    label = data_label(cfg)
    extra.update({"format": cfg.format, "shots": cfg.shots, "source": cfg.path or "bundled:rummlu_mera.jsonl",
                  "revision": revision, "split": cfg.split, "data": label, "chat_template": cfg.chat_template,
                  "warnings": []})
    if submission_wanted(cfg, questions):
        archive = write_submission(out_dir, rows, questions)
        extra["submission"] = {"file": str(Path(out_dir) / SUBMISSION_DIR / SUBMISSION_FILE), "zip": str(archive),
                               "n": len(rows), "complete": len(questions) == len(loaded)}
        if len(questions) != len(loaded):
            extra["warnings"].append(f"the MERA submission holds {len(questions)} of the {len(loaded)} questions "
                                     "(limit/domains): MERA expects every test question")
    if metrics["accuracy"]["n_valid"] == 0:
        where = f"; predictions packed for MERA in {extra['submission']['zip']}" if "submission" in extra else ""
        extra["warnings"].append(f"{label} has no gold answers (a closed test): no accuracy{where}")
    results = {"suite": "mmlu", "model": model_label or Path(str(model_path)).name, "model_path": str(model_path),
               "metrics": metrics, "extra": extra}
    write_json_atomic(Path(out_dir) / "results.json", results)
    return results


__all__ = ["build_prompt", "draw_shots", "load_questions", "mmlu_metrics", "run_mmlu", "score_letters"]
