"""The extension contract: a recipe and a suite registered from inside this test — one entry each, no table edited
anywhere — are validated by the config, run by `rutune run`, exposed as `rutune eval toy`, and shown in the report
with their own column, decimals and significance marks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from typer.testing import CliRunner

from rutune.eval.suites import SUITES, EvalRequest, Suite
from rutune.items import ItemsLog
from rutune.results import annotate, display
from rutune.rundir import write_json_atomic
from rutune.schema import PositiveInt, Strict
from rutune.stats import metric_entry
from rutune.train.options import OptimConfig
from rutune.train.recipes import RECIPES, Recipe

N_ITEMS = 40


# ---------------------------------------------------------------- a toy recipe: "training" copies the start model
class ToyStage(OptimConfig):
    recipe: Literal["toy"]
    name: str = "toy"
    init_from: str = "base"
    boost: PositiveInt = 30  # how many toy items the "trained" model gets right (the base gets 10)


def run_toy(cfg, stage, run_dir, *, show_progress: bool = True) -> Path:
    from rutune.train.stage_io import init_source

    out = run_dir.checkpoint(stage.name)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(init_source(cfg, stage, run_dir), out)
    (out / "toy.json").write_text(json.dumps({"right": stage.boost}))
    return out


TOY_RECIPE = Recipe("toy", ToyStage, None, run_toy, title="a toy recipe registered by a test")


# ---------------------------------------------------------------- a toy suite: item i is right when i < the model's "right"
class ToyConfig(Strict):
    items: PositiveInt = Field(default=N_ITEMS, description="number of toy items")


def run_toy_suite(req: EvalRequest) -> dict:
    marker = Path(req.model_path) / "toy.json"
    right = json.loads(marker.read_text())["right"] if marker.exists() else 10
    log = ItemsLog(req.out_dir, {"suite": "toy", "model": str(req.model_path)})
    ids = [f"t{i}" for i in range(req.cfg.items)]
    log.append([{"id": f"t{i}", "ok": int(i < right)} for i in range(req.cfg.items) if f"t{i}" not in log.done])
    rows = log.ordered(ids)
    values = [r["ok"] for r in rows]
    results = {"suite": "toy", "model": req.model_label, "model_path": str(req.model_path),
               "metrics": {"score": metric_entry(values, n_total=len(rows), item_key="ok", rounds=req.rounds,
                                                 seed=req.seed)}, "extra": {}}
    annotate(results, {"score": display("Toy score", decimals=2, test="mcnemar", order=5, item_key="ok")})
    write_json_atomic(req.out_dir / "results.json", results)
    return results


TOY_SUITE = Suite("toy", ToyConfig, run_toy_suite, title="a toy suite registered by a test",
                  summary=lambda r: f"toy {r['model']}: {r['metrics']['score']['value']:.2f}")


@pytest.fixture
def registered():
    with RECIPES.added(TOY_RECIPE), SUITES.added(TOY_SUITE):
        yield


def _config(tmp_path: Path, stage: str = "{recipe: toy, boost: 30}") -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(f"name: toy\noutput_root: {tmp_path / 'runs'}\ndata: {{}}\ntrain:\n  stages:\n    - {stage}\n"
                    f"eval:\n  models: [base, toy]\n  toy: {{items: {N_ITEMS}}}\n  bootstrap_rounds: 200\n"
                    "report:\n  formats: [md, csv]\n", encoding="utf-8")
    return path


def test_without_registration_the_names_are_unknown(tmp_path):
    from rutune.cli import app

    result = CliRunner().invoke(app, ["validate", str(_config(tmp_path))])
    assert result.exit_code == 2 and "unknown name 'toy'" in result.output


def test_a_registered_recipe_and_suite_are_validated_like_builtins(tmp_path, registered):
    from rutune.cli import app

    ok = CliRunner().invoke(app, ["validate", str(_config(tmp_path))])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, ["validate", str(_config(tmp_path, "{recipe: toy, bost: 3}"))])
    assert bad.exit_code == 2 and "train.stages.0.bost: unknown key; did you mean `boost`?" in bad.output


def test_a_registered_recipe_and_suite_run_in_the_pipeline_and_show_in_the_report(tmp_path, registered):
    from rutune.cli import app, refresh_eval_commands

    result = CliRunner().invoke(app, ["run", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    for line in ("[done] train/toy", "[done] eval/toy/base", "[done] eval/toy/toy", "[done] report"):
        assert line in result.output
    run = tmp_path / "runs" / "toy"
    manifest = json.loads((run / "train" / "toy" / "manifest.json").read_text())
    assert manifest["recipe"] == "toy" and manifest["data_block"] is None
    md = (run / "report" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert header == "| model | Toy score |"
    toy_row = next(line for line in md.splitlines() if line.startswith("| toy/toy |"))  # no mixture: exp/model
    assert "0.75 [" in toy_row and "▲" in toy_row  # 30/40 right vs the base's 10/40: McNemar p = 2·0.5^20
    assert "exact McNemar for Toy score" in md
    again = CliRunner().invoke(app, ["run", str(_config(tmp_path))])
    assert again.output.count("[skipped]") == 4  # identities unchanged: nothing reruns

    refresh_eval_commands()
    cli = CliRunner().invoke(app, ["eval", "toy", "--model", "tiny", "--items", "8", "--out", str(tmp_path / "e")])
    assert cli.exit_code == 0, cli.output
    assert "toy tiny: 1.00" in cli.output  # the tiny model has no toy.json: 10 right, of 8 items all right
