"""SIGKILL during training, rerun the same command: final weights bit-identical to an uninterrupted run (CPU).

Kill points: right after optimizer step 5 (last complete checkpoint: 4); inside the save of checkpoint-6 after the
Trainer wrote it but before rutune marked it complete (so the resume must ignore it and use 4); and while the final
checkpoint sits in its temp folder (the rerun resumes at step 8 and writes it again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sft_data import make_rows, write_prepared

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}


def _config(tmp_path: Path, name: str) -> Path:
    text = f"""
name: {name}
seed: 11
output_root: {tmp_path / 'runs'}
data:
  sft:
    sources: [{{name: chat_messages, path: unused.jsonl, percent: 100}}]
    max_tokens: 512
train:
  stages:
    - recipe: sft
      learning_rate: 0.002
      per_device_batch_size: 4
      gradient_accumulation_steps: 2
      max_steps: 8
      save_steps: 2
      save_total_limit: 2
      warmup_ratio: 0.25
      lr_scheduler: cosine
      weight_decay: 0.01
      precision: fp32
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    write_prepared(tmp_path / "runs" / name, make_rows(48, seed=5))
    return path


def _train(config: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HERE / "_sft_kill.py"), str(config), kill] if kill else \
        [sys.executable, "-m", "rutune.cli", "train", str(config)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def _weights(run_root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_root / "train" / "sft" / "checkpoint" / "model.safetensors"))


def _losses(run_root: Path) -> list[float]:
    lines = (run_root / "train" / "sft" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    config = _config(tmp, "ref")
    done = _train(config)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / "runs" / "ref"


@pytest.mark.parametrize("kill", ["save:6", pytest.param("step_end:5", marks=pytest.mark.slow),
                                  pytest.param("final:0", marks=pytest.mark.slow)])
def test_sigkill_then_same_command_gives_bit_identical_weights(reference, tmp_path, kill):
    import torch

    config = _config(tmp_path, "killed")
    run_root = tmp_path / "runs" / "killed"
    killed = _train(config, kill)
    assert killed.returncode == -9, killed.stderr[-2000:]
    trainer_dir = run_root / "train" / "sft" / "trainer"
    complete = sorted(p.name for p in trainer_dir.iterdir() if (p / "COMPLETE").exists())
    assert complete == (["checkpoint-6", "checkpoint-8"] if kill == "final:0" else ["checkpoint-2", "checkpoint-4"])
    if kill.startswith("save"):
        assert (trainer_dir / "checkpoint-6").is_dir() and not (trainer_dir / "checkpoint-6" / "COMPLETE").exists()
    assert not (run_root / "train" / "sft" / "checkpoint").exists()

    resumed = _train(config)  # the same command, nothing else
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = _weights(reference), _weights(run_root)
    assert set(ref) == set(got)
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    assert _losses(run_root) == _losses(reference)  # the metrics log has each step once, same values
    assert len(_losses(run_root)) == 8
