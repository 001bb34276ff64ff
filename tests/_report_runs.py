"""Hand-written run directories for the report tests (the files the prepare/train/eval stages write).

Two experiments of a sweep over the GrandMaster share:

- `gm60`: GM 60% + Saiga 20% (sft) then Saiga Pref 100% (simpo); evaluates base, sft, simpo on mmlu, babilong,
  arena (simpo's arena had no judge);
- `gm80`: GM 80% + Saiga 20% (sft only); evaluates sft on mmlu only.

ruMMLU (200 items): base right on items 0–99; gm60/sft on 0–159 (60 discordant, McNemar p = 2·0.5⁶⁰);
gm60/simpo on 0–104 (5 discordant, p = 2/32 = 0.0625, not significant); gm80/sft on 0–105 (p = 2/64 = 0.03125).
QA2: base right on 20/30, gm60/sft on 2/30 (18 discordant the other way: ▼). QA1: base and sft identical;
simpo has 5 failed (skipped) items. Arena: 20 questions × 2 games; base scores 0 then 1 per question, sft wins
every game but one invalid; lengths base 100–119, sft 200–219 model tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from rutune.results import display
from rutune.stats import bootstrap_ci

SHORT = {"grandmaster_pro_max": "GM", "saiga_scored": "Saiga", "grounded_rag_ru_v2": "RAG",
         "saiga_preferences": "Saiga Pref"}  # what the source registry writes into the prepare manifest

JUDGE_FIX = "no judge configured: pass --judge configs/judges/NAME.yaml or set RUTUNE_JUDGE_BASE_URL"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _entry(value, lo, hi, n_valid, n_total, item_key=None, **extra):
    return {"value": value, "ci_low": lo, "ci_high": hi, "n_valid": n_valid, "n_total": n_total,
            "item_key": item_key, **extra}


def source(name, requested, available, realised, *, read, after, held=0, dropped=None):
    return {"source": name, "short": SHORT.get(name, name), "requested": requested, "available": available,
            "realised": realised,
            "rows_read": read, "after_filters": after, "held_out": held, "dropped": dropped or {},
            "location": f"/data/{name}.jsonl", "examples": {}}


def write_prepare(root: Path, experiment: str, sft_sources, pref_sources=(), contamination=None) -> None:
    manifest = {"input_hash": "x", "seed": 42, "experiment": experiment,
                "sft": {"file": "sft.parquet", "rows": sum(s["realised"] for s in sft_sources),
                        "sources": list(sft_sources)}}
    if pref_sources:
        manifest["preference"] = {"file": "preference.parquet", "rows": sum(s["realised"] for s in pref_sources),
                                  "sources": list(pref_sources)}
    if contamination:
        manifest["contamination"] = contamination["summary"]
        _write(root / "prepare" / "contamination.json", contamination)
    _write(root / "prepare" / "manifest.json", manifest)


def write_stage(root: Path, name: str, recipe: str, init_from: str, losses) -> None:
    block = {"sft": "sft", "preference": "preference"}.get(recipe)
    _write(root / "train" / name / "manifest.json", {"input_hash": "x", "stage": name, "recipe": recipe,
                                                      "data_block": block, "init_from": init_from, "checkpoint": "c"})
    _jsonl(root / "train" / name / "metrics.jsonl",
           [{"step": 5 * (i + 1), "epoch": 0.1 * (i + 1), "loss": loss, "learning_rate": 1e-3, "grad_norm": 1.0}
            for i, loss in enumerate(losses)])


def write_mmlu(root: Path, model: str, right_upto: int, n: int = 200, ci=(0.43, 0.57)) -> None:
    items = [{"id": f"rummlu-{i}", "domain": "anatomy", "pred": "A", "gold": "A" if i < right_upto else "B",
              "correct": int(i < right_upto)} for i in range(n)]
    folder = root / "eval" / "mmlu" / model
    _jsonl(folder / "items.jsonl", items)
    _write(folder / "results.json", {"suite": "mmlu", "model": model, "model_path": f"/ckpt/{model}",
                                     "metrics": {"accuracy": _entry(right_upto / n, *ci, n, n, "correct",
                                                                    display=display("ruMMLU", test="mcnemar",
                                                                                    order=20, item_key="correct")),
                                                 "macro": _entry(right_upto / n, *ci, n, n)},
                                     "extra": {"unit": "fraction"}})


def write_babilong(root: Path, model: str, qa1_right: set, qa2_right: set, failed: set = frozenset(),
                   qa1=(0.5, 0.33, 0.67), qa2=(0.667, 0.5, 0.83)) -> None:
    items = []
    for task, right in (("qa1", qa1_right), ("qa2", qa2_right)):
        for i in range(30):
            rid = f"{task}-{['1k', '2k', '4k'][i % 3]}-{i}"
            score = None if (task, i) in failed else float(i in right)
            items.append({"id": rid, "task": task, "length": ["1k", "2k", "4k"][i % 3], "output": "x",
                          "score": score, "score_norm": score})
    n_failed = {t: sum(1 for f in failed if f[0] == t) for t in ("qa1", "qa2")}
    folder = root / "eval" / "babilong" / model
    _jsonl(folder / "items.jsonl", items)
    _write(folder / "results.json", {"suite": "babilong", "model": model, "model_path": f"/ckpt/{model}",
                                     "metrics": {"qa1": _entry(*qa1, 30 - n_failed["qa1"], 30, display=display(
                                                     "QA1", test="mcnemar", order=30, item_key="score",
                                                     where={"task": "qa1"})),
                                                 "qa2": _entry(*qa2, 30 - n_failed["qa2"], 30, display=display(
                                                     "QA2", test="mcnemar", order=31, item_key="score",
                                                     where={"task": "qa2"}))},
                                     "extra": {"unit": "fraction"}})


def write_arena(root: Path, model: str, scores: list | None, lengths: list[int], win=None, lc=None) -> None:
    """`scores`: per game (question q → games 2q, 2q+1) the model score or None (invalid); None = no judge."""
    folder = root / "eval" / "arena" / model
    _jsonl(folder / "answers.jsonl", [
        {"question_id": q, "answer_id": f"a{q}", "model_id": model,
         "choices": [{"index": 0, "turns": [{"content": "ответ " * n, "token_len": None,
                                             "token_len_unit": "cl100k", "model_token_len": n}]}]} for q, n in enumerate(lengths)])
    n_q = len(lengths)
    _jsonl(folder / "lengths.jsonl", [{"id": str(q), "model_tokens": n, "chars": 6 * n, "cl100k": None}
                                      for q, n in enumerate(lengths)])
    lo, hi = bootstrap_ci(lengths, rounds=1000, seed=0)
    avg = {"value": sum(lengths) / n_q, "ci_low": lo, "ci_high": hi, "unit": "model_tokens", "n_valid": n_q,
           "n_total": n_q, "item_key": None,
           "display": display("Avg len", decimals=0, direction="none", test="paired_bootstrap", order=12,
                              items_file="lengths.jsonl", item_key="model_tokens", unit_title="model tokens",
                              histogram=True)}
    metrics = {"avg_tokens": avg}
    shown = {"win_rate": display("Judge", test="paired_bootstrap", order=10, item_key="model_score"),
             "win_rate_lc": display("Judge (LC)", order=11)}
    if scores is None:
        for name in ("win_rate", "win_rate_lc", "win_rate_lc_alpaca"):
            metrics[name] = {"value": None, "ci_low": None, "ci_high": None, "n_valid": 0, "n_total": 2 * n_q,
                             "item_key": None, "available": False, "note": "no judge configured",
                             "reason": JUDGE_FIX}
            if name in shown:
                metrics[name]["display"] = shown[name]
    else:
        rows = [{"id": f"{q}-g{g}", "question_id": str(q), "game": g, "status": "ok" if s is not None else "error",
                 "valid": s is not None, "verdict": None, "model_score": s, "model_token_len": lengths[q]}
                for q in range(n_q) for g, s in ((1, scores[2 * q]), (2, scores[2 * q + 1]))]
        _jsonl(folder / "items.jsonl", rows)
        n_valid = sum(s is not None for s in scores)
        metrics["win_rate"] = _entry(*win, n_valid, 2 * n_q, display=shown["win_rate"])
        metrics["win_rate_lc"] = _entry(*lc, n_valid, 2 * n_q, display=shown["win_rate_lc"])
    _write(folder / "results.json", {"suite": "arena", "model": model, "model_path": f"/ckpt/{model}",
                                     "metrics": metrics, "extra": {"judge_configured": scores is not None}})


CONTAMINATION = {"ngram_words": 13, "summary": {"arena": "2/50 items share a 13-gram",
                                                "rummlu": "0/40 items share a 13-gram"},
                 "sets": {"arena": {"file": "q.jsonl", "items": 50, "contaminated": 2, "ids": ["7", "19"]},
                          "rummlu": {"file": "r.jsonl", "items": 40, "contaminated": 0, "ids": []}}}


def make_sweep(tmp: Path) -> list[Path]:
    gm60, gm80 = tmp / "gm60", tmp / "gm80"
    saiga = source("saiga_scored", "20%", 500, 100, read=900, after=500, dropped={"min_score": 400})
    write_prepare(gm60, "gm60", [source("grandmaster_pro_max", "60%", 1000, 600, read=1200, after=1100, held=100,
                                        dropped={"duplicate_exact": 60, "min_russian_share": 40}), saiga],
                  [source("saiga_preferences", "100%", 300, 300, read=320, after=300, dropped={"regex": 20})],
                  CONTAMINATION)
    write_stage(gm60, "sft", "sft", "base", [2.5, 2.0, 1.6, 1.4])
    write_stage(gm60, "simpo", "preference", "sft", [0.9, 0.7, 0.6])
    write_mmlu(gm60, "base", 100)
    write_mmlu(gm60, "sft", 160, ci=(0.74, 0.86))
    write_mmlu(gm60, "simpo", 105, ci=(0.455, 0.595))
    right = set(range(15))
    write_babilong(gm60, "base", right, set(range(20)))
    write_babilong(gm60, "sft", right, {0, 1}, qa2=(0.067, 0.0, 0.167))
    write_babilong(gm60, "simpo", right, set(range(20)), failed={("qa1", i) for i in range(25, 30)})
    write_arena(gm60, "base", [0.0, 1.0] * 20, list(range(100, 120)), win=(0.5, 0.4, 0.6), lc=(0.5, 0.41, 0.59))
    write_arena(gm60, "sft", [1.0] * 39 + [None], list(range(200, 220)), win=(0.97, 0.9, 1.0), lc=(0.9, 0.8, 0.97))
    write_arena(gm60, "simpo", None, list(range(150, 170)))
    write_prepare(gm80, "gm80", [source("grandmaster_pro_max", "80%", 1000, 800, read=1200, after=1100, held=100),
                                 saiga])
    write_stage(gm80, "sft", "sft", "base", [2.4, 1.9, 1.5, 1.3])
    write_mmlu(gm80, "sft", 106, ci=(0.46, 0.6))
    return [gm60, gm80]
