"""`rutune run` / `rutune sweep`: stage skipping by input hash, --force, shared stages, recipes that validate."""

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rutune.cli import app
from rutune.config import ConfigError, load_config
from rutune.pipeline import run_experiment
from rutune.sweep import expand

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

MINI = """
name: mini
seed: 1
output_root: {root}
data:
  sft:
    holdout_percent: 10
    sources:
      - {{name: saiga_scored, percent: 25}}
train:
  stages:
    - {{recipe: sft, max_steps: 2, per_device_batch_size: 4, learning_rate: 1.0e-3, save_steps: 1}}
eval:
  models: [base, sft]
  mmlu: {{limit: 6}}
  bootstrap_rounds: 50
report:
  formats: [md, csv]
"""


@pytest.fixture
def mini(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(MINI.format(root=tmp_path / "runs"), encoding="utf-8")
    return path


def statuses(log):
    return dict(log.entries)


def test_second_run_does_no_work_and_force_redoes_one_stage(mini, monkeypatch):
    monkeypatch.setattr("rutune.pipeline.run_report_stage", lambda *a, **k: {})
    cfg = load_config(mini)
    first, _ = run_experiment(cfg, report=False, echo=lambda s: None)
    assert statuses(first) == {"prepare": "done", "train/sft": "done", "eval/mmlu/base": "done", "eval/mmlu/sft": "done"}
    second, _ = run_experiment(cfg, report=False, echo=lambda s: None)
    assert set(statuses(second).values()) == {"skipped"}
    third, _ = run_experiment(cfg, force={"mmlu"}, report=False, echo=lambda s: None)
    assert statuses(third) == {"prepare": "skipped", "train/sft": "skipped", "eval/mmlu/base": "done",
                               "eval/mmlu/sft": "done"}
    # A changed mixture changes the data hash, so SFT and its eval rerun; the base model's eval does not.
    # The retrained checkpoint keeps its path: its eval must score every item again, not resume the old ones.
    import rutune.eval.mmlu as mmlu

    scored = []
    real_score = mmlu.score_questions
    monkeypatch.setattr(mmlu, "score_questions", lambda backend, items: scored.extend(items) or real_score(backend, items))
    cfg2 = load_config(mini, ["data.sft.sources.0.percent=30"])
    fourth, _ = run_experiment(cfg2, report=False, echo=lambda s: None)
    assert len(scored) == 6
    assert statuses(fourth) == {"prepare": "done", "train/sft": "done", "eval/mmlu/base": "skipped",
                                "eval/mmlu/sft": "done"}
    results = json.loads((Path(cfg.output_root) / "mini" / "eval" / "mmlu" / "sft" / "results.json").read_text())
    assert results["metrics"]["accuracy"]["n_total"] == 6


def test_sweep_trains_a_shared_stage_once(tmp_path, mini):
    grid = tmp_path / "grid.yaml"
    grid.write_text(textwrap.dedent("""
    base: mini.yaml
    name: mini-sweep
    variants:
      a: [eval.mmlu.limit=4]
      b: [eval.mmlu.limit=5]
    """), encoding="utf-8")
    name, configs = expand(grid)
    assert name == "mini-sweep" and [c.name for c in configs] == ["mini-sweep-a", "mini-sweep-b"]
    logs = [run_experiment(c, report=False, echo=lambda s: None)[0] for c in configs]
    assert statuses(logs[0])["train/sft"] == "done"
    assert statuses(logs[1])["train/sft"] == "linked" and statuses(logs[1])["prepare"] == "linked"
    ckpt_a = Path(configs[0].output_root) / "mini-sweep-a" / "train" / "sft" / "checkpoint" / "model.safetensors"
    ckpt_b = Path(configs[1].output_root) / "mini-sweep-b" / "train" / "sft" / "checkpoint" / "model.safetensors"
    assert ckpt_a.read_bytes() == ckpt_b.read_bytes()


def test_sweep_grid_errors_all_at_once(tmp_path, mini):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: mini.yaml\nvariantz: {}\ngrid:\n  data.sft.sources.0.percent: [-1, 10]\n", encoding="utf-8")
    result = runner.invoke(app, ["sweep", str(grid), "--dry-run"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert any("variantz: unknown key" in line for line in lines)  # a problem of the grid file itself
    assert any("variants.saiga_scored-1: data.sft.sources.0.percent: Input should be greater than or equal to 0"
               in line for line in lines)  # and, in the same report, a problem of one expanded variant
    assert not any("saiga_scored10" in line for line in lines)  # the valid variant is not reported


def test_sweep_grid_names_variants_after_the_source(tmp_path, mini):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: mini.yaml\ngrid:\n  data.sft.sources.0.percent: [20, 40]\n  eval.mmlu.limit: [5]\n",
                    encoding="utf-8")
    _, configs = expand(grid)
    assert [c.name for c in configs] == ["mini-sweep-saiga_scored20-limit5", "mini-sweep-saiga_scored40-limit5"]
    assert [c.data.sft.sources[0].percent for c in configs] == [20, 40]
    grid.write_text("base: mini.yaml\nvariants:\n  saiga_scored20: [eval.mmlu.limit=3]\n"
                    "grid:\n  data.sft.sources.0.percent: [20]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="grid variant saiga_scored20 has the name of a listed variant"):
        expand(grid)


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "experiments" / "study").glob("[0-9]*.yaml")),
                         ids=lambda p: p.stem)
def test_study_recipes_validate(recipe):
    cfg = load_config(recipe)
    assert cfg.base_model.path == "Qwen/Qwen2.5-3B-Instruct"
    for block in (cfg.data.sft, cfg.data.preference):
        for src in (block.sources if block else []):
            assert src.path and src.revision, f"{recipe.name}: {src.name} must name a hub path and pinned revision"


def test_demo_config_validates():
    result = runner.invoke(app, ["validate", str(ROOT / "configs" / "experiments" / "demo.yaml")])
    assert result.exit_code == 0, result.output
