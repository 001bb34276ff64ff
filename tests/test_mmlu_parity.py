"""Parity with lm-eval-harness 0.4.13's HF backend: same questions, same tiny model → same prediction per item.

Zero-shot: lm-eval builds the prompt itself from the raw MERA rows (tests/data/lmeval/parity_utils.py).
Five-shot: lm-eval scores rutune's few-shot contexts, so the check covers tokenisation and scoring with shots.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rutune.eval.backend_base import BackendConfig
from rutune.eval.suites.mmlu import MmluConfig
from rutune.eval.mmlu import run_mmlu
from rutune.eval.mmlu_data import load_questions

torch.set_num_threads(2)
DATA = Path(__file__).parent / "data"
BUNDLED = Path(__file__).resolve().parent.parent / "src" / "rutune" / "samples" / "rummlu_mera.jsonl"
# The bundled mini ruMMLU (80 questions, 10 domains) when present; else the tests' own 20 questions.
MERA = BUNDLED if BUNDLED.exists() else DATA / "rummlu_mera_mini.jsonl"
SHOTS = (0, 5)


def lm_eval_task(include: Path, name: str, data: Path) -> str:
    yaml = (DATA / "lmeval" / "rummlu_parity.yaml").read_text()
    yaml = yaml.replace("rutune_rummlu_parity", name).replace("__DATA__", str(data.resolve()))
    (include / f"{name}.yaml").write_text(yaml)
    return name


def test_predictions_match_lm_eval(tiny_model_dir, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from rutune.eval.backends import make_backend

    backend = make_backend(BackendConfig(batch_size=8), str(tiny_model_dir))
    ours = {}
    for shots in SHOTS:
        run_mmlu(MmluConfig(path=str(MERA), shots=shots), BackendConfig(), str(tiny_model_dir),
                 tmp_path / f"ours{shots}", backend=backend)
        rows = [json.loads(x) for x in (tmp_path / f"ours{shots}" / "items.jsonl").read_text().splitlines()]
        ours[shots] = {r["id"]: r for r in rows}

    # The two-shot task gets rutune's contexts as ready prompts, in the raw file's order.
    from rutune.eval.mmlu import build_prompt, draw_shots

    questions = load_questions(str(MERA), "mera")
    by_domain: dict = {}
    for x in questions:
        by_domain.setdefault(x.domain, []).append(x)
    shot_rows = tmp_path / "shots.jsonl"
    with open(shot_rows, "w", encoding="utf-8") as f:
        for x in questions:
            prompt = build_prompt(x, draw_shots(x, by_domain, SHOTS[1], seed=0), "mera")
            f.write(json.dumps({"prompt": prompt, "outputs": x.gold}, ensure_ascii=False) + "\n")

    include = tmp_path / "tasks"
    include.mkdir()
    shutil.copy(DATA / "lmeval" / "parity_utils.py", include)
    tasks = [lm_eval_task(include, "rutune_parity_zero", MERA), lm_eval_task(include, "rutune_parity_five", shot_rows)]
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=tasks,
                                  task_manager=TaskManager(include_path=str(include)), batch_size=4, device="cpu",
                                  log_samples=True)
    for task, shots in zip(tasks, SHOTS):
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        assert len(samples) == len(questions)
        for x, s in zip(questions, samples):
            theirs = [float(ll) for ll, _ in s["filtered_resps"]]
            mine = ours[shots][x.id]
            assert mine["pred"] == "ABCD"[max(range(4), key=lambda j: theirs[j])], (task, x.id)
            assert mine["logprobs"] == pytest.approx(theirs, abs=1e-4)
        acc = out["results"][task]["acc,none"]
        assert acc == pytest.approx(sum(r["correct"] for r in ours[shots].values()) / len(questions))
