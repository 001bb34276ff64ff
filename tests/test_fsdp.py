"""Sharded training with real processes: FSDP2 over gloo, 2 CPU processes, launched the way users launch it.

Each test runs `accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/_fsdp_driver.py`
(`--mixed_precision no`: the shipped config says bf16, which would change the numbers being compared) and checks,
through the driver's per-rank probe, that the parameters really were FSDP2 DTensors holding half of the model on
each rank — not a replicated DDP model.

Why the driver sets `RUTUNE_FSDP_ON_CPU=1`: accelerate 1.15 switches to FSDP only when the processes are on
accelerators (`AcceleratorState.__init__`, MULTI_GPU/NPU/XPU/…); on CPU it keeps MULTI_CPU, i.e. plain DDP, and
ignores the FSDP settings without a word (`test_plain_accelerate_launch_on_cpu_silently_runs_ddp` pins this).
The shim promotes the state to FSDP with the plugin accelerate built; everything else — `fully_shard`, the sharded
optimizer, its state gathered into the checkpoint and re-sharded on resume, the gathered final save — is the
real FSDP2 path.

Covered: full-FT SFT and LoRA SimPO (the study's preference setting, merged on save), each against one process at
the same global batch — 1e-4 on every logged loss and every final weight (measured ~1e-5 SFT, ~5e-8 SimPO; the
shards reduce in another order) — and each killed with SIGKILL mid-run and resumed by the same command, compared
with the uninterrupted sharded run (bit-identical). All tests are `slow` (each launch takes ~40 s on 2 shared
cores): run them with `make test-distributed`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DRIVER = HERE / "_fsdp_driver.py"
FSDP_YAML = HERE.parent / "configs" / "accelerate" / "fsdp.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate not installed beside this python")]

SFT_STAGE = {"learning_rate": 0.003, "max_steps": 5, "save_steps": 2, "warmup_ratio": 0.0, "precision": "fp32"}
# the study's preference row trains LoRA adapters merged on save (row 13: SimPO, LoRA r128); here r 8
PREF_STAGE = {"max_steps": 4, "save_steps": 2, "logging_steps": 1,
              "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "merge_on_save": True}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(root: Path, recipe: str, per_device: int) -> tuple[Path, Path]:
    """Prepared data + config.json for one run under `root`; returns (config path, the stage folder)."""
    from _sft_data import make_rows, sft_config, write_prepared
    from _simpo_data import make_pairs, simpo_config, write_pairs

    from rutune.rundir import RunDir

    root.mkdir(parents=True, exist_ok=True)
    if recipe == "sft":
        cfg = sft_config(root, stage={**SFT_STAGE, "per_device_batch_size": per_device})
    else:
        cfg = simpo_config(root, stage={**PREF_STAGE, "per_device_batch_size": per_device})
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    if recipe == "sft":
        write_prepared(run.root, make_rows(40, seed=9))
    else:
        write_pairs(run.root, make_pairs(24))
    path = root / "config.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    return path, run.train(cfg.train.stages[0].name)


def _env(probe: Path | None, shim: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(HERE)}
    env.pop("RUTUNE_FSDP_ON_CPU", None)
    if shim:
        env["RUTUNE_FSDP_ON_CPU"] = "1"
    if probe is not None:
        probe.mkdir(parents=True, exist_ok=True)
        env["RUTUNE_PROBE"] = str(probe)
    return env


def launch(config: Path, *extra: str, probe: Path | None = None, shim: bool = True):
    """`accelerate launch` with the shipped fsdp.yaml on 2 CPU processes."""
    cmd = [str(ACCELERATE), "launch", "--config_file", str(FSDP_YAML), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(DRIVER), str(config), *extra]
    return subprocess.run(cmd, env=_env(probe, shim), capture_output=True, text=True, timeout=420)


def single(config: Path):
    return subprocess.run([sys.executable, str(DRIVER), str(config)], env=_env(None, False), capture_output=True,
                          text=True, timeout=300)


def weights(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(stage_dir / "checkpoint" / "model.safetensors"))


def metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def probes(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank-{r}.json").read_text()) for r in (0, 1)]


def assert_sharded(reports: list[dict]) -> None:
    """Both ranks ran FSDP with DTensor parameters, each holding about half the elements (dim-0 shards, padded)."""
    for rep in reports:
        assert rep["world_size"] == 2 and rep["distributed_type"] == "DistributedType.FSDP", rep
        assert rep["param_class"] == "DTensor", rep
        assert rep["local_numel"] <= rep["full_numel"] // 2 + 1024, rep
    assert sum(r["local_numel"] for r in reports) == reports[0]["full_numel"]


def assert_same_weights(got: dict, ref: dict, atol: float) -> None:
    """Every tensor of the reference within `atol`. A gathered FSDP save writes the tied `lm_head.weight` as its own
    entry (the one-process save stores it once); it must then equal the embedding exactly."""
    import torch

    if "lm_head.weight" in got and "lm_head.weight" not in ref:
        assert torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])
    assert set(ref) <= set(got)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """One process × 4 sequences and FSDP 2 processes × 2 sequences, both saving every 2 steps (5 steps)."""
    root = tmp_path_factory.mktemp("fsdp_sft")
    one_cfg, one = _write(root / "one", "sft", 4)
    done = single(one_cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    two_cfg, two = _write(root / "two", "sft", 2)
    done = launch(two_cfg, probe=root / "probe")
    assert done.returncode == 0, done.stderr[-4000:]
    return {"root": root, "one": one, "two": two, "probe": root / "probe"}


def test_fsdp_sft_on_two_cpu_processes_matches_one_process_at_the_same_global_batch(sft_runs):
    assert_sharded(probes(sft_runs["probe"]))
    ref, got = metrics(sft_runs["one"]), metrics(sft_runs["two"])
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]  # rank 0 alone writes
    assert [r["trained_tokens"] for r in got] == [r["trained_tokens"] for r in ref]  # same global batches
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert got[-1]["loss"] < got[0]["loss"] - 0.3  # it trained
    assert_same_weights(weights(sft_runs["two"]), weights(sft_runs["one"]), atol=1e-4)
    assert not (sft_runs["two"] / "trainer").exists()  # resume state removed once the stage finished


def test_fsdp_sft_resumes_after_sigkill_to_the_uninterrupted_sharded_weights(sft_runs, tmp_path):
    import torch

    cfg, stage = _write(tmp_path / "crashed", "sft", 2)
    killed = launch(cfg, "3")  # after step 3: checkpoint-2 complete, step 3 lost
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr, killed.stderr[-3000:]  # torch elastic reports the rank's signal
    ckpt = stage / "trainer" / "checkpoint-2"
    assert (ckpt / "COMPLETE").exists() and not (stage / "checkpoint").exists()
    saved = {p.name for p in ckpt.iterdir()}
    assert "optimizer.bin" in saved, saved  # FULL_STATE_DICT: the optimizer gathered on save, re-sharded on load
    resumed = launch(cfg, probe=tmp_path / "probe")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming train/sft from checkpoint-2 (step 2 of 5)" in resumed.stderr
    assert_sharded(probes(tmp_path / "probe"))
    assert [r["step"] for r in metrics(stage)] == [1, 2, 3, 4, 5]  # step 3 logged before the kill is not doubled
    got, ref = weights(stage), weights(sft_runs["two"])
    assert got.keys() == ref.keys()
    for k in ref:  # same processes, same shards, same reduction order: expected bit-identical
        assert torch.equal(got[k], ref[k]), k


@pytest.fixture(scope="module")
def pref_runs(tmp_path_factory):
    """One process × 4 pairs and FSDP 2 processes × 2 pairs, LoRA SimPO, saving every 2 steps (4 steps)."""
    root = tmp_path_factory.mktemp("fsdp_pref")
    one_cfg, one = _write(root / "one", "preference", 4)
    done = single(one_cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    two_cfg, two = _write(root / "two", "preference", 2)
    done = launch(two_cfg, probe=root / "probe")
    assert done.returncode == 0, done.stderr[-4000:]
    return {"one": one, "two": two, "probe": root / "probe"}


def test_fsdp_lora_preference_stage_matches_one_process_at_the_same_global_batch(pref_runs):
    """SimPO with LoRA under FSDP2: the adapters train sharded, the saved adapter is merged on rank 0 into the
    starting weights; merged weights = the one-process run's (measured ~5e-8), and they did move (~4e-3)."""
    import torch
    from safetensors.torch import load_file

    one, two = pref_runs["one"], pref_runs["two"]
    assert_sharded(probes(pref_runs["probe"]))
    ref, got = metrics(one), metrics(two)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(ref, got):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        assert b["rewards/margin"] == pytest.approx(a["rewards/margin"], abs=1e-4)
        assert b["trained_tokens"] == a["trained_tokens"]
    got, ref = weights(two), weights(one)
    assert_same_weights(got, ref, atol=1e-4)
    meta = json.loads((two / "checkpoint" / "meta.json").read_text())
    assert meta["lora_merged"] is True
    start = load_file(str(Path(meta["init_path"]) / "model.safetensors"))
    moved = (got["model.layers.0.self_attn.q_proj.weight"] - start["model.layers.0.self_attn.q_proj.weight"]).abs()
    assert moved.max() > 1e-3  # LoRA targets moved well beyond the tolerance …
    assert torch.equal(got["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # … nothing else did


def test_fsdp_lora_preference_resumes_after_sigkill_to_the_uninterrupted_sharded_weights(pref_runs, tmp_path):
    import torch

    cfg, stage = _write(tmp_path / "crashed", "preference", 2)
    killed = launch(cfg, "3")  # checkpoint-2 (adapter, optimizer, the FSDP model file) complete, step 3 lost
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert (stage / "trainer" / "checkpoint-2" / "COMPLETE").exists()
    assert (stage / "trainer" / "checkpoint-2" / "adapter_model.safetensors").exists()
    resumed = launch(cfg)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming train/simpo from checkpoint-2 (step 2 of 4)" in resumed.stderr
    assert [r["step"] for r in metrics(stage)] == [1, 2, 3, 4]
    got, ref = weights(stage), weights(pref_runs["two"])
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)  # measured: bit-identical


def test_plain_accelerate_launch_on_cpu_silently_runs_ddp(tmp_path):
    """Without the shim, the same launch trains replicated parameters on MULTI_CPU: the documented reason
    `accelerate launch --config_file fsdp.yaml` cannot by itself prove FSDP on CPU (docs/scaling.md)."""
    cfg, stage = _write(tmp_path / "ddp", "sft", 2)
    (tmp_path / "config.json").write_text(cfg.read_text().replace('"max_steps": 5', '"max_steps": 1'))
    done = launch(tmp_path / "config.json", probe=tmp_path / "probe", shim=False)
    assert done.returncode == 0, done.stderr[-4000:]
    for rep in probes(tmp_path / "probe"):
        assert rep["distributed_type"] == "DistributedType.MULTI_CPU", rep
        assert rep["param_class"] == "Parameter" and rep["local_numel"] == rep["full_numel"], rep
