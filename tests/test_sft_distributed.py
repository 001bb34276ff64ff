"""Two CPU processes (torchrun, gloo) at the same global batch reproduce the one-process loss curve.

Global batch 4 sequences: 1 process × 4 per device vs 2 processes × 2 per device. The Trainer's seeded sampler
hands the same 4 sequences to each global step either way (2 to each process), and the loss is normalised by
the trained tokens of the global batch on both sides, so the curves agree up to float reduction order.
Tolerance: 1e-4 absolute per logged step over 5 steps (measured difference ~1e-6).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _sft_data import make_rows, write_prepared

from rutune.config import load_config
from rutune.train.outputs import read_metrics
from rutune.train.stages import run_training


def _free_port() -> int:
    """A port nobody listens on now, so parallel test runs on one machine do not collide."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _yaml(tmp_path: Path, name: str, per_device: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
seed: 5
output_root: {tmp_path / 'runs'}
data:
  sft:
    sources: [{{name: chat_messages, path: unused.jsonl, percent: 100}}]
train:
  stages:
    - {{recipe: sft, learning_rate: 0.003, per_device_batch_size: {per_device}, max_steps: 5, save_steps: 100,
        warmup_ratio: 0.0, precision: fp32}}
""")
    write_prepared(tmp_path / "runs" / name, make_rows(40, seed=9))
    return path


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed beside this python")
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    torch.set_num_threads(1)
    one = load_config(_yaml(tmp_path, "one", 4))
    run_training(one, show_progress=False)
    two = _yaml(tmp_path, "two", 2)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "rutune.cli",
                           "train", str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint:") == 1  # printed by rank 0 only

    ref = read_metrics(tmp_path / "runs" / "one" / "train" / "sft" / "metrics.jsonl")
    got = read_metrics(tmp_path / "runs" / "two" / "train" / "sft" / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]  # one line per step: only rank 0 writes
    assert [r["trained_tokens"] for r in got] == [r["trained_tokens"] for r in ref]  # same global batches
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert got[-1]["loss"] < got[0]["loss"] - 0.3
    meta = json.loads((tmp_path / "runs" / "two" / "train" / "sft" / "checkpoint" / "meta.json").read_text())
    assert meta["stage"]["per_device_batch_size"] == 2
