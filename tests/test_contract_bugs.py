"""Bugs that left stale, partial or silently substituted results (each test failed before its fix)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from rutune.cli import app
from rutune.config import parse_config

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _arena_cfg(tmp_path: Path, profile: Path) -> object:
    return parse_config({"name": "a", "output_root": str(tmp_path / "runs"), "data": {},
                         "eval": {"models": ["base"], "arena": {"judge": str(profile), "limit": 2}}})


def _arena_identity(cfg) -> str:
    from rutune.pipeline import experiment_stages

    return next(s for s in experiment_stages(cfg, report=False) if s.key == "eval/arena/base").identity()


def test_editing_the_judge_profile_or_its_prompt_file_changes_the_arena_identity(tmp_path):
    """Bug 1: the identity covered the profile's path, so a new judge model left the old judge's numbers."""
    prompt = tmp_path / "prompt.yaml"
    prompt.write_text("system_prompt: Судья.\nprompt_template: '{question_1} {answer_1} {answer_2}'\n",
                      encoding="utf-8")
    profile = tmp_path / "judge.yaml"
    profile.write_text(f"base_url: http://127.0.0.1:9/v1\nmodel: judge-a\nprompt_file: {prompt}\n", encoding="utf-8")
    cfg = _arena_cfg(tmp_path, profile)
    first = _arena_identity(cfg)
    assert _arena_identity(cfg) == first  # stable while nothing changes
    profile.write_text(f"base_url: http://127.0.0.1:9/v1\nmodel: judge-b\nprompt_file: {prompt}\n", encoding="utf-8")
    second = _arena_identity(cfg)
    assert second != first  # the judge model changed, same path
    prompt.write_text("system_prompt: Другой судья.\nprompt_template: '{question_1} {answer_1} {answer_2}'\n",
                      encoding="utf-8")
    assert _arena_identity(cfg) not in (first, second)  # the prompt file's content changed


def test_an_edited_question_file_changes_the_arena_identity(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": [{"content": "a"}]}\n', encoding="utf-8")
    cfg = parse_config({"name": "a", "output_root": str(tmp_path / "runs"), "data": {},
                        "eval": {"arena": {"questions": str(questions)}}})
    before = _arena_identity(cfg)
    questions.write_text('{"question_id": 1, "turns": [{"content": "b"}]}\n', encoding="utf-8")
    assert _arena_identity(cfg) != before


def test_a_rejected_eval_model_leaves_no_output_folder(tmp_path, monkeypatch):
    """Bug 2: `rutune eval mmlu --model /absent` created runs/eval/mmlu/<name> before rejecting the model."""
    monkeypatch.chdir(tmp_path)
    for suite in ("mmlu", "babilong", "arena", "nll"):
        result = runner.invoke(app, ["eval", suite, "--model", str(tmp_path / "absent")])
        assert result.exit_code == 2 and "absent: folder not found" in result.output, (suite, result.output)
    assert not (tmp_path / "runs").exists()


def test_a_suite_failing_before_any_item_removes_the_folder_it_created(tmp_path):
    from rutune.eval.backend_base import BackendConfig
    from rutune.eval.errors import EvalError
    from rutune.eval.suites import SUITES, EvalRequest, run_suite

    suite = SUITES.get("mmlu")
    out = tmp_path / "o"
    bad = suite.config(path=str(tmp_path / "missing.jsonl"))
    try:
        run_suite(suite, EvalRequest(bad, BackendConfig(), "tiny", "m", out))
    except EvalError:
        pass
    else:  # pragma: no cover - the file does not exist
        raise AssertionError("expected an EvalError")
    assert not out.exists()


def test_chat_messages_without_path_fails_validation(tmp_path):
    """Bug 3: `chat_messages` without `path` passed validate and failed only at prepare."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\ndata:\n  sft:\n    sources:\n      - {name: chat_messages, percent: 100}\n",
                   encoding="utf-8")
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 2
    assert "data.sft.sources.0: chat_messages needs `path`" in result.output


def test_nothing_in_the_package_or_configs_reads_the_shared_folder():
    """Bug 4: arena defaults, contamination and a judge profile looked for <repo>/../shared/benchdata."""
    pattern = re.compile(r"shared[/\"' ]*(benchdata|tokenizers|docs)|RUTUNE_BENCHDATA|\.\./\.\./\.\./shared")
    offenders = [str(p.relative_to(REPO)) for root in ("src", "configs") for p in (REPO / root).rglob("*")
                 if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".json", ".jinja")
                 and pattern.search(p.read_text(encoding="utf-8", errors="ignore"))]
    assert offenders == []


def test_a_bundled_stand_in_says_so_in_results_and_output(tmp_path):
    """Bug 4: the bundled ruMMLU sample / arena placeholders stood in for the real sets without a word."""
    import json

    result = runner.invoke(app, ["eval", "mmlu", "--model", "tiny", "--limit", "4", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "(bundled mini sample, not ruMMLU)" in result.output
    assert json.loads((tmp_path / "m" / "results.json").read_text())["extra"]["substituted"] is True


def test_train_before_prepare_leaves_nothing_behind(tmp_path):
    """Bug 5: `rutune train CONFIG --stage sft` before `rutune prepare` left train/sft/inputs.json behind."""
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"name: t\noutput_root: {tmp_path / 'runs'}\ndata:\n  sft:\n    sources:\n"
                   f"      - {{name: saiga_scored, percent: 10}}\ntrain:\n  stages:\n    - {{recipe: sft}}\n",
                   encoding="utf-8")
    result = runner.invoke(app, ["train", str(cfg), "--stage", "sft"])
    assert result.exit_code == 2 and "run `rutune prepare CONFIG` first" in result.output
    assert not (tmp_path / "runs" / "t" / "train").exists()


def test_a_prepare_stage_linked_from_another_experiment_does_not_rename_the_run(tmp_path):
    """A sweep links an identical prepare into the next experiment: the report names a run by its folder, not by the
    experiment written in the linked manifest (which made two runs collide: "experiment X is also Y")."""
    from _report_runs import make_sweep
    from rutune.report import build_report
    from rutune.report.collect import read_run

    gm60, gm80 = make_sweep(tmp_path)
    (gm80 / "prepare" / "manifest.json").write_text((gm60 / "prepare" / "manifest.json").read_text())
    assert read_run(gm80).experiment == "gm80"
    written = build_report([gm60, gm80], tmp_path / "rep", formats=("md",))
    assert "gm80" in written["md"].read_text()


def test_stage_index_entries_from_concurrent_writers_are_all_kept(tmp_path):
    """Slurm jobs finishing at once each add their stage: the locked read-modify-write keeps every entry."""
    import multiprocessing

    from rutune.rundir import StageIndex

    procs = [multiprocessing.get_context("fork").Process(target=_add_many, args=(tmp_path, k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    index = StageIndex(tmp_path)._read()
    assert len(index) == 4 * 25


def _add_many(root, k):
    from rutune.rundir import StageIndex

    for i in range(25):
        StageIndex(root).add("eval", f"h{k}-{i}", root / f"f{k}-{i}")


def test_a_pipeline_eval_that_fails_before_any_item_leaves_no_folder(tmp_path):
    """Under `rutune run` the eval folder (with its inputs marker) is made inside the suite's guarded region, so a
    suite rejecting its data leaves no eval/<suite>/<model>/ behind."""
    import pytest

    from rutune.config import parse_config
    from rutune.eval.errors import EvalError
    from rutune.pipeline import run_experiment

    cfg = parse_config({"name": "e", "output_root": str(tmp_path / "runs"), "data": {},
                        "eval": {"models": ["base"], "mmlu": {"path": str(tmp_path / "missing.jsonl")}}})
    with pytest.raises(EvalError):
        run_experiment(cfg, report=False, echo=lambda line: None)
    assert not (tmp_path / "runs" / "e" / "eval" / "mmlu" / "base").exists()
