"""The study's arena points at the leaderboard's own files at pinned revisions: baseline answers given as a
`https://raw.githubusercontent.com/<repo>/<commit>/<path>` URL are fetched over real HTTP (a local server here)
once, cached, and scored like a local file; the study config names exactly those pins."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from static_server import serve_folder  # noqa: E402
from judge_server import JudgeServer  # noqa: E402

from rutune.eval import arena_data, upstream  # noqa: E402
from rutune.eval.arena import run_arena  # noqa: E402
from rutune.eval.judge import JudgeProfile, load_profile  # noqa: E402
from rutune.eval.suites.arena import ArenaConfig, inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINE_PATH = "data/arena-hard-v0.1/model_answer/gpt-3.5-turbo-0125.jsonl"


def _answer(qid: str, model: str, text: str) -> str:
    return json.dumps({"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model, "tstamp": 0.0,
                       "choices": [{"index": 0, "turns": [{"content": text, "token_len": len(text)}]}]},
                      ensure_ascii=False) + "\n"


def test_baseline_answers_from_a_url_are_fetched_once_and_scored(tmp_path, monkeypatch):
    qids = ["11", "12", "13"]
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps({"question_id": q, "turns": [{"content": f"Вопрос {q}?"}]},
                                            ensure_ascii=False) + "\n" for q in qids), encoding="utf-8")
    served = tmp_path / "www" / "VikhrModels" / "ru_llm_arena" / "501ab65" / BASELINE_PATH
    served.parent.mkdir(parents=True)
    served.write_text("".join(_answer(q, "gpt-3.5-turbo-0125", f"Базовый ответ {q}.") for q in qids),
                      encoding="utf-8")
    model = tmp_path / "model.jsonl"
    model.write_text("".join(_answer(q, "m", f"Ответ модели {q}, подробнее.") for q in qids),
                     encoding="utf-8")
    monkeypatch.setenv("RUTUNE_CACHE", str(tmp_path / "cache"))
    with serve_folder(tmp_path / "www") as (root_url, hits):
        url = f"{root_url}/VikhrModels/ru_llm_arena/501ab65/{BASELINE_PATH}"
        cfg = ArenaConfig(questions=str(questions), baseline=url, answers=str(model), bootstrap_rounds=10)
        with JudgeServer(lambda body: "[[A=B]]") as judge:
            prof = JudgeProfile(base_url=judge.base_url, model="tie")
            first = run_arena(cfg, None, None, "m", tmp_path / "a", judge=prof, progress=False)
            second = run_arena(cfg, None, None, "m", tmp_path / "b", judge=prof, progress=False)
    assert len(hits) == 1  # the second run read the cached copy
    for res in (first, second):
        assert res["extra"]["baseline"] == {"path": url, "model": "gpt-3.5-turbo-0125"}  # the URL, not "http:/…"
        assert res["metrics"]["win_rate"]["value"] == 0.5 and res["metrics"]["win_rate"]["n_valid"] == 6
    assert f"url:{url}" in inputs(cfg, None)  # the stage identity names the pinned URL, not a local copy


def test_the_study_config_points_the_arena_at_the_pinned_upstream_files():
    base = yaml.safe_load((REPO / "configs" / "experiments" / "study" / "_base.yaml").read_text(encoding="utf-8"))
    block = base["eval"]["arena"]
    cfg = ArenaConfig(**block)
    assert cfg.questions == arena_data.HUB_QUESTIONS and cfg.revision is None  # None = HUB_REVISION, pinned
    assert cfg.baseline == f"{upstream.PINNED_ARENA}/{BASELINE_PATH}"
    assert "501ab65d54bc92789d9a1f974a5841a4aab96b74" in cfg.baseline
    profile = load_profile(str(REPO / cfg.judge))
    assert profile.model == "gpt-4-1106-preview"
    assert str(profile.prompt_file).startswith(upstream.PINNED_ARENA + "/")
