"""DPO and SMPO keep SimPO's crash guarantees, each in fresh processes (slow: ~1 min each on 2 shared cores):
exact resume after SIGKILL (the cached reference is reused, not recomputed), and a 2-process CPU (gloo) run equal to
one process with the same global batch."""

import json
import signal
import sys
from pathlib import Path

import pytest

from _simpo_data import make_pairs, simpo_config, write_pairs
from test_simpo_resume import _drive, _free_port
from rutune.rundir import RunDir

pytestmark = pytest.mark.slow

LOSSES = {"dpo": {"name": "dpo", "beta": 0.5, "sft_weight": 0.3}, "smpo": {"name": "smpo"}}


def _prepare(root: Path, loss: dict, stage: dict, n_pairs: int = 24):
    cfg = simpo_config(root, stage={"name": loss["name"], "loss": loss, **stage})
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    write_pairs(run.root, make_pairs(n_pairs))
    path = root / "config.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return run, path


def _weights(run: RunDir, name: str):
    from safetensors.torch import load_file

    return load_file(str(run.checkpoint(name) / "model.safetensors"))


@pytest.mark.parametrize("name", ["dpo", "smpo"])
def test_resume_after_sigkill_gives_bit_identical_weights(tmp_path, name):
    import torch

    stage = {"max_steps": 6, "save_steps": 3, "logging_steps": 1, "per_device_batch_size": 2,
             "gradient_accumulation_steps": 2}
    straight_run, straight_cfg = _prepare(tmp_path / "straight", LOSSES[name], stage)
    done = _drive(straight_cfg)
    assert done.returncode == 0, done.stderr[-2000:]

    run, cfg_path = _prepare(tmp_path / "crashed", LOSSES[name], stage)
    killed = _drive(cfg_path, "5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (run.train(name) / "trainer" / "checkpoint-3" / "COMPLETE").exists()
    refs = sorted((tmp_path / "crashed" / "runs" / "_reference").glob("*.pt"))
    stamps = [p.stat().st_mtime_ns for p in refs]
    resumed = _drive(cfg_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in refs] == stamps  # the resume read the cached reference

    a, b = _weights(straight_run, name), _weights(run, name)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    steps = [json.loads(line)["step"] for line in (run.train(name) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    meta = json.loads((run.train(name) / "manifest.json").read_text())
    assert meta["stage"] == name


@pytest.mark.parametrize("name", ["dpo", "smpo"])
def test_two_process_cpu_run_equals_one_process_accumulating_the_same_micro_batches(tmp_path, name):
    """DPO's RPO term and SMPO's SFT terms are token means per micro-batch (as upstream computes them), so 2 × 2
    pairs is not one batch of 4; it is one process accumulating 2 micro-batches of 2 — the same micro-batches, since
    the distributed sampler hands process k the k-th batch of the same shuffled order."""
    import torch

    torchrun = Path(sys.executable).with_name("torchrun")
    one_run, one_cfg = _prepare(tmp_path / "one", LOSSES[name], {"max_steps": 3, "per_device_batch_size": 2,
                                                                  "gradient_accumulation_steps": 2})
    assert _drive(one_cfg).returncode == 0
    two_run, two_cfg = _prepare(tmp_path / "two", LOSSES[name], {"max_steps": 3, "per_device_batch_size": 2})
    two = _drive(two_cfg, launcher=(str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port())),
                 env={"ACCELERATE_USE_CPU": "true"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(one_run, name), _weights(two_run, name)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=k)
    rows = [json.loads(line) for line in (two_run.train(name) / "metrics.jsonl").read_text().splitlines()]
    one_rows = [json.loads(line) for line in (one_run.train(name) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r1, r2 in zip(one_rows, rows):
        assert r2["rewards/margin"] == pytest.approx(r1["rewards/margin"], abs=1e-4)
