"""Score-only import of LIBRA's `predictions.json` (`predict.py`: `{task: [{length, model_answer,
positive_outputs, negative_outputs}]}`): scored with LIBRA's containment rule and rutune's normalised variant
(`babilong.libra_score`, `babilong.normalised_score`, aggregated by `babilong.babilong_metrics`); no model is run.
A file in another layout stops with one line naming the file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from rutune.eval.errors import EvalError

# LIBRA's datasets_config.json scores these with another metric than containment ("em"); rutune has no port.
OTHER_METRIC_TASKS = {"ru_sci_passage_count": "count_score", "ru_qasper": "f1"}
ANSWER_KEYS = ("model_answer", "output", "prediction")  # LIBRA writes `model_answer`; the others are accepted
_LAYOUT = "LIBRA predictions.json layout {task: [{length, model_answer, positive_outputs, negative_outputs}]}"


def _length_key(length: str) -> tuple:
    m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", length)
    return (0, int(m.group(1)) * (1024 if m.group(2) else 1), length) if m else (1, 0, length)


def _libra_rows(data, path: Path) -> list[dict]:
    if isinstance(data, dict) and ("total_score" in data or any(
            isinstance(v, dict) and "dataset_total_score" in v for v in data.values())):
        raise EvalError(f"{path}: this is LIBRA's eval.py score file, not predictions.json; expected the {_LAYOUT}")
    if not isinstance(data, dict) or not data:
        raise EvalError(f"{path}: expected the {_LAYOUT}, got {type(data).__name__}"
                        f"{' (empty)' if isinstance(data, (dict, list)) and not data else ''}")
    rows = []
    for task, items in data.items():
        if not isinstance(items, list):
            raise EvalError(f"{path}: task {task}: expected a list of predictions, got {type(items).__name__}; "
                            f"expected the {_LAYOUT}")
        for i, item in enumerate(items):
            where = f"{path}: {task}[{i}]"
            if not isinstance(item, dict):
                raise EvalError(f"{where}: expected an object; {_LAYOUT}")
            key = next((k for k in ANSWER_KEYS if k in item), None)
            missing = [k for k in ("length", "positive_outputs") if k not in item] + ([] if key else ["model_answer"])
            if missing:
                raise EvalError(f"{where}: missing `{missing[0]}`; expected the {_LAYOUT}")
            pos, neg = item["positive_outputs"], item.get("negative_outputs") or []
            if isinstance(pos, str):
                pos = [pos]
            if not isinstance(pos, list) or not pos or not all(isinstance(p, (str, int, float)) for p in pos):
                raise EvalError(f"{where}: `positive_outputs` must be a non-empty list of strings")
            if not isinstance(neg, list) or not all(isinstance(n, (str, int, float)) for n in neg):
                raise EvalError(f"{where}: `negative_outputs` must be a list of strings")
            answer = item[key]
            if answer is not None and not isinstance(answer, (str, int, float)):
                raise EvalError(f"{where}: `{key}` must be text")
            rows.append({"task": str(task), "length": str(item["length"]),
                         "output": None if answer is None else str(answer),
                         "positive_outputs": [str(p) for p in pos], "negative_outputs": [str(n) for n in neg]})
    return rows


def read_libra_predictions(path: str | os.PathLike, lengths: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                           tasks: Sequence[str] | None = None, lemmatise: bool = True, rounds: int = 1000,
                           seed: int = 0) -> dict:
    """Scores of a LIBRA `predictions.json`: per task and length, per task, and the total, raw and normalised.

    `lengths`: the lengths each task is averaged over (LIBRA's datasets_config `lengths`; a configured length with
    no prediction counts 0 and is listed under `missing_lengths`), one list for all tasks or one per task; by
    default the lengths present in the file. `tasks`: which tasks to score (default all). Tasks that LIBRA scores
    with another metric (`OTHER_METRIC_TASKS`) are listed under `skipped_tasks`. A null answer is not scored
    (counted in `n_total`, not `n_valid`).
    """
    from rutune.eval.babilong import babilong_metrics, lemmatiser_name, libra_score, normalised_score

    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalError(f"LIBRA predictions {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise EvalError(f"{path}: not UTF-8 text; expected the {_LAYOUT}") from None
    rows = _libra_rows(data, path)
    present = [str(t) for t in data]
    if tasks is not None:
        unknown = [t for t in tasks if t not in present]
        if unknown:
            raise EvalError(f"{path}: no task {unknown[0]} (tasks: {', '.join(present)})")
        present = [t for t in present if t in tasks]
    skipped = {t: f"LIBRA scores it with {OTHER_METRIC_TASKS[t]}, not containment" for t in present
               if t in OTHER_METRIC_TASKS}
    task_lengths: dict[str, list[str]] = {}
    for t in present:
        if t in skipped:
            continue
        if lengths is None:
            task_lengths[t] = sorted({r["length"] for r in rows if r["task"] == t}, key=_length_key)
        elif isinstance(lengths, Mapping):
            if t not in lengths:
                raise EvalError(f"{path}: no lengths given for task {t}")
            task_lengths[t] = [str(x) for x in lengths[t]]
        else:
            task_lengths[t] = [str(x) for x in lengths]
        if not task_lengths[t]:
            skipped[t] = "no predictions"
            del task_lengths[t]
    scored = list(task_lengths)
    if not scored:
        raise EvalError(f"{path}: no task to score with containment (skipped: "
                        f"{', '.join(f'{t} ({why})' for t, why in skipped.items()) or 'none'})")

    keep = [r for r in rows if r["task"] in task_lengths and r["length"] in task_lengths[r["task"]]]
    for r in keep:
        out = r["output"]
        r["score"] = None if out is None else libra_score(out, r["positive_outputs"], r["negative_outputs"])
        r["score_norm"] = None if out is None else normalised_score(out, r["positive_outputs"], r["negative_outputs"],
                                                                   lemmatise=lemmatise)
    groups = {tuple(v) for v in task_lengths.values()}
    if len(groups) == 1:
        metrics, extra = babilong_metrics(keep, scored, list(next(iter(groups))), rounds=rounds, seed=seed)
    else:  # different lengths per task: per-task blocks; the total is the mean of task totals (no CI)
        metrics, extra = {}, {"per_length": {}, "missing_lengths": {}}
        for t in scored:
            m, e = babilong_metrics([r for r in keep if r["task"] == t], [t], task_lengths[t], rounds=rounds,
                                    seed=seed)
            metrics.update({k: v for k, v in m.items() if k.startswith(t)})
            extra["per_length"].update(e["per_length"])
            extra["missing_lengths"].update(e["missing_lengths"])
        for suffix in ("", "_norm"):
            values = [metrics[f"{t}{suffix}"]["value"] for t in scored]
            metrics[f"total{suffix}"] = {"value": sum(values) / len(values), "ci_low": None, "ci_high": None,
                                         "n_valid": sum(metrics[f"{t}{suffix}"]["n_valid"] for t in scored),
                                         "n_total": sum(metrics[f"{t}{suffix}"]["n_total"] for t in scored),
                                         "item_key": None}
    return {"source": str(path), "tasks": scored, "lengths": task_lengths, "metrics": metrics,
            "per_length": extra["per_length"], "missing_lengths": extra["missing_lengths"],
            "skipped_tasks": skipped, "n_items": len(rows), "n_scored": sum(r["score"] is not None for r in keep),
            "lemmatiser": lemmatiser_name() if lemmatise else "none",
            "metric": "LIBRA containment (score) and normalised whole-word containment (score_norm), 0–1"}
