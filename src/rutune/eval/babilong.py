"""LIBRA ruBABILong QA1/QA2: data (hub, local, or generated), prompts, overlength policy, metrics, run.

Metric `score` is LIBRA's containment ("em"): 1 if any positive output occurs in the answer as a raw
substring, minus 1/len(negatives) per negative output found (0 when all are found, never below 0).
`score_norm` applies the same rule after normalising both sides — lowercase, ё→е, punctuation removed,
pymorphy3 lemmas (`lemmatise: true`, the default) — and matches whole words, so "рассада" no longer counts for
"сад" and, with lemmas, "на кухне" counts for "кухня". pymorphy3 and its Russian dictionary are core dependencies:
when lemmas are asked for and they cannot load, the run stops with one EvalError line instead of quietly scoring
without lemmas (a `score_norm` that silently changes meaning between machines would not compare).

Aggregation follows LIBRA: mean per (task, length); a task's total is the mean over its configured lengths,
where a length with no scored item counts as 0 and is listed under `missing_lengths`; `total` is the mean
over tasks. A prompt that does not fit the model's window is skipped and counted (or middle-truncated when
`overlength: middle_truncate`), never cut silently.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from rutune.eval.babilong_gen import generate_items, parse_length
from rutune.data.sources import is_local_path
from rutune.eval.errors import EvalError
from rutune.items import ItemsLog
from rutune.stats import bootstrap_ci, stratified_bootstrap_ci

LIBRA_HUB = "ai-forever/LIBRA"
# The July 2024 upload with ru_babilong_qa1..qa3 at 4k–128k (a late-2025 update re-cut the lengths).
LIBRA_REVISION = "55cd1f153a2eab82464bf862097877555501c8d8"
TASK_CONFIG = {"qa1": "ru_babilong_qa1", "qa2": "ru_babilong_qa2"}
# rutune's own instructions (LIBRA's task file is accepted via `task_file`).
DEFAULT_TEMPLATES = {
    "qa1": ("Ниже дан текст, в который вставлены факты о том, куда перемещались люди. Ответь на вопрос, "
            "опираясь только на эти факты. Если человек побывал в нескольких местах, верно последнее из них.\n"
            "{context}\nОтветь очень коротко.\nВопрос: {input}\nОтвет:"),
    "qa2": ("Ниже дан текст, в который вставлены факты о людях, их перемещениях и предметах. Ответь на вопрос, "
            "опираясь только на эти факты. Предмет, который человек взял, перемещается вместе с ним; предмет, "
            "который человек оставил, остаётся там, где его оставили.\n"
            "{context}\nОтветь одним словом.\nВопрос: {input}\nОтвет:"),
}
TRUNCATION_MARK = "\n…\n"


# ---------------------------------------------------------------------------------------------- metric
def libra_score(prediction: str, positives: list[str], negatives: list[str],
                contains: Callable[[str, str], bool] = lambda text, part: part in text) -> float:
    """LIBRA's containment score with its negative-output penalty."""
    score = max((1.0 if contains(prediction, p) else 0.0) for p in positives) if positives else 0.0
    if negatives:
        found = sum(contains(prediction, n) for n in negatives)
        score = 0.0 if found == len(negatives) else max(0.0, score - found / len(negatives))
    return score


@lru_cache(maxsize=1)
def _morph():
    """The pymorphy3 analyser (loaded once); an EvalError line when the package or its dictionary cannot load."""
    try:
        import pymorphy3

        return pymorphy3.MorphAnalyzer()
    except Exception as e:  # ImportError, a missing or broken dictionary package: one line, never a silent fallback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EvalError(f"eval.babilong.lemmatise: the lemmatiser (pymorphy3 with pymorphy3-dicts-ru) cannot load "
                        f"({type(e).__name__}{': ' + first if first else ''}); reinstall rutune's dependencies or "
                        "set lemmatise: false") from None


def lemmatiser_name() -> str:
    """The lemmatiser that lemmatised scoring uses (loading it, so a missing one fails before any generation)."""
    _morph()
    return "pymorphy3"


def normalise(text: str, *, lemmatise: bool = True) -> list[str]:
    """Lowercase, ё→е, keep letter/digit runs, and with `lemmatise` replace each word by its pymorphy3 lemma."""
    words = re.findall(r"[0-9a-zа-яё]+", text.lower())
    if lemmatise:
        morph = _morph()
        words = [morph.parse(w)[0].normal_form for w in words]
    return [w.replace("ё", "е") for w in words]


def _contains_words(text_words: list[str], part_words: list[str]) -> bool:
    n = len(part_words)
    return n > 0 and any(text_words[i:i + n] == part_words for i in range(len(text_words) - n + 1))


def normalised_score(prediction: str, positives: list[str], negatives: list[str], *, lemmatise: bool = True) -> float:
    """LIBRA's rule on normalised words: whole-word containment of the normalised gold in the answer."""
    pred = normalise(prediction, lemmatise=lemmatise)
    key = {s: normalise(s, lemmatise=lemmatise) for s in [*positives, *negatives]}
    return libra_score("", positives, negatives, contains=lambda _, part: _contains_words(pred, key[part]))


# ---------------------------------------------------------------------------------------------- templates
def load_templates(task_file: str | None) -> tuple[dict[str, str], str]:
    """(task → instruction with {context} and {input}, source). Accepts LIBRA's datasets_config.json."""
    if task_file is None:
        return dict(DEFAULT_TEMPLATES), "rutune"
    path = Path(task_file).expanduser()
    if not path.exists():
        raise EvalError(f"eval.babilong.task_file: {task_file}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalError(f"{task_file}: not JSON ({e.msg} at line {e.lineno})") from None
    templates = {}
    for task, config_name in TASK_CONFIG.items():
        entry = data.get(config_name, data.get(task))
        if entry is None:
            continue
        instruction = entry.get("instruction") if isinstance(entry, dict) else entry
        if not isinstance(instruction, str) or "{context}" not in instruction or "{input}" not in instruction:
            raise EvalError(f"{task_file}: {config_name}.instruction must contain {{context}} and {{input}}")
        templates[task] = instruction
    if not templates:
        raise EvalError(f"{task_file}: no ru_babilong_qa1 / ru_babilong_qa2 entry")
    return templates, str(path)


def fill(template: str, context: str, question: str) -> str:
    """Substitute {context} and {input} literally (contexts may hold braces)."""
    return template.replace("{input}", question).replace("{context}", context)


# ---------------------------------------------------------------------------------------------- data
def _check_row(row: dict, where: str) -> dict:
    for key in ("length", "context", "input", "positive_outputs"):
        if key not in row:
            raise EvalError(f"{where}: missing field `{key}`")
    if not isinstance(row["context"], str) or not row["context"].strip():
        raise EvalError(f"{where}: empty context")
    if not isinstance(row["input"], str) or not row["input"].strip():
        raise EvalError(f"{where}: empty question (`input`)")
    pos = row["positive_outputs"]
    if not isinstance(pos, list) or not pos or not all(isinstance(p, str) and p for p in pos):
        raise EvalError(f"{where}: `positive_outputs` must be a non-empty list of strings")
    neg = row.get("negative_outputs") or []
    if not isinstance(neg, list) or not all(isinstance(n, str) and n for n in neg):
        raise EvalError(f"{where}: `negative_outputs` must be a list of strings")
    return {**row, "negative_outputs": neg, "length": str(row["length"])}


def _local_files(path: Path, task: str) -> list[Path]:
    if path.is_file():
        return [path]
    name = TASK_CONFIG[task]
    found = [path / f"{stem}.{ext}" for stem in (name, task) for ext in ("jsonl", "json", "parquet")]
    found = [p for p in found if p.exists()]
    for folder in (path / name, path / task):
        if folder.is_dir():
            found += sorted(folder.glob("*.parquet")) + sorted(folder.glob("*.jsonl"))
    return found


def load_rows(source: str, task: str, revision: str | None) -> list[dict]:
    """LIBRA rows for one task from a local file/folder or the hub (`ai-forever/LIBRA` or another id)."""
    from rutune.eval.mmlu_data import read_rows

    if is_local_path(source):
        local = Path(source).expanduser()
        if not local.exists():
            raise EvalError(f"eval.babilong.source: {source}: file not found")
        files = _local_files(local, task)
        if not files:
            raise EvalError(f"{source}: no data for {TASK_CONFIG[task]} (expected {TASK_CONFIG[task]}.jsonl "
                            "or a folder of that name)")
        rows = []
        for f in files:
            for row, where in read_rows(f):
                if "task" in row and row["task"] not in (task, TASK_CONFIG[task]):
                    continue
                rows.append(_check_row(row, where))
        return rows
    return load_hub_rows(source, task, revision)


def hub_revision(source: str, revision: str | None) -> str | None:
    """The given revision, else the pinned one for LIBRA's own hub id (another id loads its main branch)."""
    return revision or (LIBRA_REVISION if source == LIBRA_HUB else None)


def load_hub_rows(source: str, task: str, revision: str | None) -> list[dict]:
    """`datasets.load_dataset(source, "ru_babilong_qaN", split="test", revision=...)` (LIBRA's hub layout)."""
    import datasets

    revision = hub_revision(source, revision)
    try:
        ds = datasets.load_dataset(source, TASK_CONFIG[task], split="test", revision=revision)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EvalError(f"LIBRA source {source}: cannot load ({first}); use a local file or source: generate") from None
    return [_check_row(dict(row), f"{source}/{TASK_CONFIG[task]}:test:{i}") for i, row in enumerate(ds)]


def item_id(task: str, row: dict, index: int) -> str:
    meta = row.get("metadata") or {}
    return f"{task}-{meta['id']}" if isinstance(meta, dict) and meta.get("id") else f"{task}-{row['length']}-{index}"


def select_rows(rows: list[dict], lengths: list[str], per_length: int | None) -> list[dict]:
    """Rows of the configured lengths, at most `per_length` each, in file order."""
    kept, seen = [], defaultdict(int)
    for row in rows:
        if row["length"] in lengths and (per_length is None or seen[row["length"]] < per_length):
            seen[row["length"]] += 1
            kept.append(row)
    return kept


# ---------------------------------------------------------------------------------------------- prompts
def fit_prompt(backend, template: str, row: dict, max_new_tokens: int, policy: str) -> tuple[str | None, dict]:
    """(prompt or None when skipped, facts about its length). Counts tokens as the backend will send them."""
    from rutune.eval.backends import GenerationRequest

    text = fill(template, row["context"], row["input"])
    if not hasattr(backend, "prompt_ids"):  # a remote server counts (and rejects) on its own
        return text, {"prompt_tokens": None}
    window = backend.max_length
    n = len(backend.prompt_ids(GenerationRequest(prompt=text)))
    if n + max_new_tokens <= window:
        return text, {"prompt_tokens": n}
    reason = f"prompt {n} + {max_new_tokens} new tokens > window {window}"
    if policy == "skip":
        return None, {"prompt_tokens": n, "skipped": reason}
    tok = backend.tokenizer
    ids = tok(row["context"], add_special_tokens=False)["input_ids"]
    keep = len(ids) - (n + max_new_tokens - window) - 8
    while keep > 0:
        head = keep // 2
        context = tok.decode(ids[:head]) + TRUNCATION_MARK + tok.decode(ids[len(ids) - (keep - head):])
        text = fill(template, context, row["input"])
        n2 = len(backend.prompt_ids(GenerationRequest(prompt=text)))
        if n2 + max_new_tokens <= window:
            return text, {"prompt_tokens": n2, "truncated_tokens": len(ids) - keep}
        keep -= n2 + max_new_tokens - window + 8
    return None, {"prompt_tokens": n, "skipped": reason + "; nothing left after middle truncation"}


# ---------------------------------------------------------------------------------------------- metrics
def _task_block(rows: list[dict], lengths: list[str], key: str, rounds: int, seed: int) -> tuple[dict, dict, list]:
    groups = [[float(r[key]) for r in rows if r["length"] == length and r.get(key) is not None] for length in lengths]
    means = [float(np.mean(g)) if g else 0.0 for g in groups]
    low, high = stratified_bootstrap_ci(groups, rounds=rounds, seed=seed)
    entry = {"value": float(np.mean(means)), "ci_low": low, "ci_high": high,
             "n_valid": sum(len(g) for g in groups), "n_total": len(rows), "item_key": None}
    per_length = {}
    for length, g in zip(lengths, groups):
        lo, hi = bootstrap_ci(g, rounds=rounds, seed=seed) if g else (float("nan"), float("nan"))
        per_length[length] = {"mean": float(np.mean(g)) if g else None, "ci_low": lo, "ci_high": hi,
                              "n_valid": len(g), "n_total": sum(r["length"] == length for r in rows)}
    return entry, per_length, groups


def babilong_metrics(rows: list[dict], tasks: list[str], lengths: list[str], *, rounds: int = 1000,
                     seed: int = 0) -> tuple[dict, dict]:
    """(metrics, extra) for results.json: per task totals (missing lengths = 0), overall, micro, per length."""
    metrics: dict = {}
    extra: dict = {"per_length": {}, "missing_lengths": {}}
    for key, suffix in (("score", ""), ("score_norm", "_norm")):
        all_groups = []
        for task in tasks:
            task_rows = [r for r in rows if r["task"] == task]
            entry, per_length, groups = _task_block(task_rows, lengths, key, rounds, seed)
            metrics[f"{task}{suffix}"] = entry
            all_groups += groups
            for length, info in per_length.items():
                slot = extra["per_length"].setdefault(task, {}).setdefault(length, {})
                slot.update({f"mean{suffix}": info["mean"], f"ci_low{suffix}": info["ci_low"],
                             f"ci_high{suffix}": info["ci_high"], "n_valid": info["n_valid"],
                             "n_total": info["n_total"]})
            if key == "score":
                extra["missing_lengths"][task] = [length for length, g in zip(lengths, groups) if not g]
        means = [float(np.mean(g)) if g else 0.0 for g in all_groups]
        low, high = stratified_bootstrap_ci(all_groups, rounds=rounds, seed=seed)
        valid = [float(r[key]) for r in rows if r.get(key) is not None]
        metrics[f"total{suffix}"] = {"value": float(np.mean(means)) if means else float("nan"), "ci_low": low,
                                     "ci_high": high, "n_valid": len(valid), "n_total": len(rows), "item_key": None}
        lo, hi = bootstrap_ci(valid, rounds=rounds, seed=seed)
        metrics[f"micro{suffix}"] = {"value": float(np.mean(valid)) if valid else float("nan"), "ci_low": lo,
                                     "ci_high": hi, "n_valid": len(valid), "n_total": len(rows), "item_key": key}
    extra["skipped"] = sum(1 for r in rows if r.get("skipped"))
    return metrics, extra


# ---------------------------------------------------------------------------------------------- run
def _score_row(rid: str, task: str, row: dict, output: str | None, info: dict, lemmatise: bool) -> dict:
    out = {"id": rid, "task": task, "length": row["length"], "output": output,
           "positive_outputs": row["positive_outputs"], "negative_outputs": row["negative_outputs"], **info}
    if output is None:
        out.update(score=None, score_norm=None)
    else:
        out["score"] = libra_score(output, row["positive_outputs"], row["negative_outputs"])
        out["score_norm"] = normalised_score(output, row["positive_outputs"], row["negative_outputs"],
                                             lemmatise=lemmatise)
    return out


def _items(cfg, backend, seed: int) -> list[tuple[str, str, dict]]:
    items = []
    for task in cfg.tasks:
        if cfg.source == "generate":
            count = getattr(backend, "count_tokens", None)
            if count is None:
                raise EvalError("eval.babilong.source: generate needs a backend with a local tokenizer (hf, vllm)")
            for length in cfg.lengths:
                try:
                    parse_length(length)
                except ValueError as e:
                    raise EvalError(f"eval.babilong.lengths: {e}") from None
            if cfg.samples_per_length is None:
                raise EvalError("eval.babilong.samples_per_length: generate needs a number of items per length")
            rows = generate_items(task, cfg.lengths, cfg.samples_per_length, seed, count)
        else:
            rows = select_rows(load_rows(cfg.source, task, cfg.revision), cfg.lengths, cfg.samples_per_length)
        ids = [item_id(task, row, i) for i, row in enumerate(rows)]
        if len(set(ids)) != len(ids):
            raise EvalError(f"{cfg.source}: duplicate item ids in {TASK_CONFIG[task]}")
        items += [(rid, task, row) for rid, row in zip(ids, rows)]
    return items


def run_babilong(cfg, backend_cfg, model_path: str, out_dir: str | Path, seed: int = 0, *, backend=None,
                 model_label: str | None = None, progress: Callable[[int, int], None] | None = None,
                 rounds: int = 1000) -> dict:
    """Evaluate one model on ruBABILong QA1/QA2; items.jsonl as it goes, results.json at the end; returns it."""
    from rutune.eval.backends import GenerationRequest
    from rutune.rundir import write_json_atomic

    templates, template_source = load_templates(cfg.task_file)
    for task in cfg.tasks:
        if task not in templates:
            raise EvalError(f"eval.babilong.task_file: {template_source} has no instruction for {TASK_CONFIG[task]}")
    lemmatiser = lemmatiser_name() if cfg.lemmatise else "none"  # before the model loads: refuse early
    if backend is None:
        from rutune.eval.backends import make_backend

        backend = make_backend(backend_cfg, model_path)
    items = _items(cfg, backend, seed)
    revision = None if cfg.source == "generate" or is_local_path(cfg.source) else hub_revision(cfg.source, cfg.revision)
    fingerprint = {"suite": "babilong", "model_path": str(model_path), "source": cfg.source,
                   "revision": revision, "templates": {t: templates[t] for t in cfg.tasks}, "seed": seed,
                   "max_new_tokens": cfg.max_new_tokens, "overlength": cfg.overlength,
                   "window": getattr(backend, "max_length", None),
                   "lemmatiser": lemmatiser}
    log = ItemsLog(out_dir, fingerprint)
    todo = [it for it in items if it[0] not in log.done]
    chunk = max(1, getattr(backend, "batch_size", 8)) * 2
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        fitted = [fit_prompt(backend, templates[task], row, cfg.max_new_tokens, cfg.overlength)
                  for _, task, row in part]
        requests = [GenerationRequest(prompt=p, max_new_tokens=cfg.max_new_tokens) for p, _ in fitted if p]
        outputs = iter(backend.generate(requests) if requests else [])
        log.append(_score_row(rid, task, row, next(outputs).text if prompt else None, info, cfg.lemmatise)
                   for (rid, task, row), (prompt, info) in zip(part, fitted))
        if progress:
            progress(min(start + chunk, len(todo)), len(todo))
    rows = log.ordered([rid for rid, _, _ in items])
    metrics, extra = babilong_metrics(rows, list(cfg.tasks), list(cfg.lengths), rounds=rounds,
                                      seed=seed)
    extra.update({"source": cfg.source, "revision": revision, "templates": template_source,
                  "lengths": list(cfg.lengths), "overlength": cfg.overlength, "max_new_tokens": cfg.max_new_tokens,
                  "lemmatiser": lemmatiser, "window": getattr(backend, "max_length", None),
                  "unit": "fraction"})
    results = {"suite": "babilong", "model": model_label or Path(str(model_path)).name,
               "model_path": str(model_path), "metrics": metrics, "extra": extra}
    write_json_atomic(Path(out_dir) / "results.json", results)
    return results
