"""SimPO's crash guarantees, each in fresh processes: exact resume after SIGKILL, and a 2-process CPU (gloo) run."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from _simpo_data import make_pairs, simpo_config, write_pairs
from rutune.rundir import RunDir

DRIVER = Path(__file__).with_name("_simpo_driver.py")


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(Path(__file__).parent)}
    return env


def _prepare(root: Path, stage: dict, n_pairs: int = 24):
    cfg = simpo_config(root, stage=stage)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    write_pairs(run.root, make_pairs(n_pairs))
    path = root / "config.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return cfg, run, path


def _drive(config_path: Path, *extra: str, launcher=(sys.executable,), env=None):
    return subprocess.run([*launcher, str(DRIVER), str(config_path), *extra], env={**_env(), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def _weights(run: RunDir):
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint("simpo") / "model.safetensors"))


def test_resume_after_sigkill_gives_bit_identical_weights(tmp_path):
    import torch

    stage = {"max_steps": 7, "save_steps": 3, "logging_steps": 1, "per_device_batch_size": 2}
    _, straight_run, straight_cfg = _prepare(tmp_path / "straight", stage)
    done = _drive(straight_cfg)
    assert done.returncode == 0, done.stderr[-2000:]

    _, run, cfg_path = _prepare(tmp_path / "crashed", stage)
    killed = _drive(cfg_path, "5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    trainer_dir = run.train("simpo") / "trainer"
    assert (trainer_dir / "checkpoint-3" / "COMPLETE").exists()
    assert not (run.checkpoint("simpo") / "config.json").exists()
    resumed = _drive(cfg_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _weights(straight_run), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    steps = [json.loads(line)["step"] for line in (run.train("simpo") / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # steps 4-5 logged before the kill are replaced, not duplicated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run_equals_one_process_with_the_same_global_batch(tmp_path):
    import torch

    torchrun = Path(sys.executable).with_name("torchrun")
    _, one_run, one_cfg = _prepare(tmp_path / "one", {"max_steps": 3, "per_device_batch_size": 4})
    assert _drive(one_cfg).returncode == 0
    _, two_run, two_cfg = _prepare(tmp_path / "two", {"max_steps": 3, "per_device_batch_size": 2})
    # ACCELERATE_USE_CPU is what `accelerate launch --cpu` sets: without it the Trainer ignores gloo DDP on CPU
    two = _drive(two_cfg, launcher=(str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port())),
                 env={"ACCELERATE_USE_CPU": "true"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(one_run), _weights(two_run)
    for k in a:  # DDP averages the two halves' gradients: the same mean over 4 pairs, summed in another order
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    rows = [json.loads(line) for line in (two_run.train("simpo") / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    one_rows = [json.loads(line) for line in (one_run.train("simpo") / "metrics.jsonl").read_text().splitlines()]
    # metrics are reduced over both processes: the same per-step means as the one-process run
    for r1, r2 in zip(one_rows, rows):
        assert r2["rewards/margin"] == pytest.approx(r1["rewards/margin"], abs=1e-4)
        assert r2["trained_tokens"] == r1["trained_tokens"]
