"""Bad input to `rutune train`: each a one-line error, raised before any model weights load."""

from __future__ import annotations

import shutil

import pytest
from _sft_data import make_rows, sft_config, write_prepared

from rutune.config import ConfigError, parse_config
from rutune.rundir import RunDir
from rutune.train.errors import TrainError
from rutune.train.stages import run_training


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Any attempt to load weights fails the test: every error below must come first."""
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input error was found")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text
    return text


def test_missing_mixture(tmp_path):
    cfg = sft_config(tmp_path)
    with pytest.raises(TrainError) as e:
        run_training(cfg, show_progress=False)
    msg = _one_line(e.value)
    assert "prepare/sft.parquet" in msg and "rutune prepare" in msg


def test_empty_mixture(tmp_path):
    import datasets

    cfg = sft_config(tmp_path)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    (run.prepare).mkdir(parents=True)
    rows = make_rows(1)
    datasets.Dataset.from_list(rows).select([]).to_parquet(str(run.prepare / "sft.parquet"))
    with pytest.raises(TrainError) as e:
        run_training(cfg, show_progress=False)
    assert "0 rows" in _one_line(e.value)


def test_tokenizer_without_chat_template(tmp_path, tiny_model_dir):
    import json

    model_dir = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tc))
    cfg = sft_config(tmp_path, base_model={"path": str(model_dir)})
    write_prepared(RunDir.for_experiment(cfg.output_root, cfg.name).root, make_rows(4))
    with pytest.raises(TrainError) as e:
        run_training(cfg, show_progress=False)
    msg = _one_line(e.value)
    assert str(model_dir) in msg and "chat template" in msg and "chat_template.jinja" in msg


def test_every_row_longer_than_max_tokens(tmp_path):
    cfg = sft_config(tmp_path)
    cfg.data.sft.max_tokens = 3
    write_prepared(RunDir.for_experiment(cfg.output_root, cfg.name).root, make_rows(4))
    with pytest.raises(TrainError) as e:
        run_training(cfg, show_progress=False)
    assert "max_tokens=3" in _one_line(e.value)


@pytest.mark.parametrize("key, value, expected", [
    ("learning_rate", -1e-5, "train.stages.0.learning_rate"),
    ("per_device_batch_size", 0, "train.stages.0.per_device_batch_size"),
    ("gradient_accumulation_steps", 0, "train.stages.0.gradient_accumulation_steps"),
    ("init_from", "sft0", "train.stages.0.init_from: unknown stage 'sft0'"),
])
def test_impossible_hyperparameters_are_config_errors(tmp_path, key, value, expected):
    tree = {"name": "x", "output_root": str(tmp_path),
            "data": {"sft": {"sources": [{"name": "chat_messages", "path": "a.jsonl", "percent": 100}]}},
            "train": {"stages": [{"recipe": "sft", key: value}]}}
    with pytest.raises(ConfigError) as e:
        parse_config(tree)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_stage_whose_upstream_checkpoint_is_missing(tmp_path):
    cfg = sft_config(tmp_path)
    tree = cfg.model_dump(mode="json")
    tree["train"]["stages"].append({**tree["train"]["stages"][0], "name": "sft2", "init_from": "sft"})
    cfg = parse_config(tree)
    write_prepared(RunDir.for_experiment(cfg.output_root, cfg.name).root, make_rows(4))
    with pytest.raises(TrainError) as e:
        run_training(cfg, only=["sft2"], show_progress=False)
    msg = _one_line(e.value)
    assert "'sft'" in msg and "--stage sft" in msg
    with pytest.raises(TrainError, match="--stage nope: no such stage"):
        run_training(cfg, only=["nope"], show_progress=False)


def test_cli_prints_one_line(tmp_path):
    from typer.testing import CliRunner

    from rutune.cli import app

    yaml_path = tmp_path / "exp.yaml"
    yaml_path.write_text(
        "name: e\n"
        f"output_root: {tmp_path / 'runs'}\n"
        "data:\n  sft:\n    sources:\n      - {name: chat_messages, path: a.jsonl, percent: 100}\n"
        "train:\n  stages:\n    - {recipe: sft}\n")
    result = CliRunner().invoke(app, ["train", str(yaml_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "sft.parquet" in lines[0] and "Traceback" not in result.output
