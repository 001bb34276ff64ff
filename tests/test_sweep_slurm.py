"""`rutune sweep GRID --launcher slurm`: the grid's stages as one Slurm job graph.

Without a cluster (fake `sbatch`/`squeue` on PATH, like tests/test_slurm.py): job keys, dependencies, which
stages are shared (one job for several experiments) and which are not, argv, the written configs, resources from
the grid's `slurm:` block, done stages left out. With a real one-node Slurm (tests/slurm_cluster.py, skipped with
the reason when it cannot start): the demo grid runs through Slurm, its report.csv has the local sweep's numbers,
the base model's MMLU is one job, and a rerun submits nothing.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rutune.cli import app
from rutune.config import load_config
from rutune.rundir import write_manifest
from rutune.sweep import expand
from rutune.sweep_slurm import plan_sweep, submit_sweep

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
    - {{recipe: sft, max_steps: 2, per_device_batch_size: 4, learning_rate: 1.0e-3}}
eval:
  models: [base, sft]
  mmlu: {{limit: 6}}
  nll: {{limit: 4}}
  bootstrap_rounds: 50
report:
  formats: [md, csv]
"""


def mini_grid(tmp_path: Path, variants: str, slurm: str = "") -> Path:
    (tmp_path / "mini.yaml").write_text(MINI.format(root=tmp_path / "runs"), encoding="utf-8")
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"base: mini.yaml\nname: ms\nvariants:\n{textwrap.indent(variants, '  ')}{slurm}", encoding="utf-8")
    return grid


def demo_grid(tmp_path: Path, output_root: Path) -> Path:
    """configs/sweeps/demo-slurm.yaml with its base made absolute and every run under `output_root`."""
    tree = yaml.safe_load((ROOT / "configs" / "sweeps" / "demo-slurm.yaml").read_text(encoding="utf-8"))
    tree["base"] = str(ROOT / "configs" / "experiments" / "demo.yaml")
    for overrides in tree["variants"].values():
        overrides.append(f"output_root={output_root}")
    path = tmp_path / f"grid-{output_root.name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake sbatch (prints ids 101, 102, ... and logs its arguments) and an empty squeue first on PATH."""
    d = tmp_path / "fake"
    d.mkdir()
    (d / "sbatch").write_text(f'#!/bin/bash\nn=$(( $(cat {d}/n 2>/dev/null || echo 100) + 1 )); echo $n > {d}/n\n'
                              f'printf "%s\\n" "$@" >> {d}/sbatch.log; echo "==" >> {d}/sbatch.log; echo $n\n')
    (d / "squeue").write_text("#!/bin/bash\nexit 0\n")
    for name in ("sbatch", "squeue"):
        (d / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    return d


def sbatch_calls(d: Path) -> dict[str, list[str]]:
    """job name → its sbatch flags, from the fake's log."""
    text = (d / "sbatch.log").read_text() if (d / "sbatch.log").exists() else ""
    calls = [c.strip("\n").split("\n") for c in text.split("==\n") if c.strip()]
    return {next(a for a in c if a.startswith("--job-name=")).removeprefix("--job-name="): c for c in calls}


# ------------------------------------------------------------------------------------------------ no cluster


def test_demo_grid_shares_only_the_base_models_eval_and_chains_each_experiments_stages(tmp_path):
    grid = demo_grid(tmp_path, tmp_path / "runs")
    state = tmp_path / "state"
    plan = plan_sweep(grid, state, python="PY", workdir=tmp_path)
    a, b = "demo-slurm-gm60", "demo-slurm-gm100"
    jobs = {j.key: j for j in plan.jobs}
    assert list(jobs) == [f"{a}/prepare", f"{a}/train/sft", f"{a}/eval/mmlu/base", f"{b}/eval/mmlu/base",
                          f"{a}/eval/mmlu/sft", f"{b}/prepare", f"{b}/train/sft", f"{b}/eval/mmlu/sft",
                          "demo-slurm/report"]
    # different data: prepare, SFT and the SFT's eval are per experiment; the base model's MMLU is one job
    [(share_key, keys)] = plan.shared.items()
    assert share_key.startswith("eval/mmlu/base@") and keys == [f"{a}/eval/mmlu/base", f"{b}/eval/mmlu/base"]
    assert jobs[f"{a}/eval/mmlu/base"].share_key == jobs[f"{b}/eval/mmlu/base"].share_key == share_key
    assert [jobs[k].share_key for k in jobs if "mmlu/base" not in k] == [None] * 7
    cfg_a, cfg_b = state / "configs" / f"{a}.yaml", state / "configs" / f"{b}.yaml"
    assert jobs[f"{b}/train/sft"].argv == ["PY", "-m", "rutune.cli", "run", str(cfg_b), "--only", "train/sft"]
    assert jobs[f"{a}/eval/mmlu/base"].argv == [
        "bash", "-c", f"PY -m rutune.cli run {cfg_a} --only eval/mmlu/base && PY -m rutune.cli run {cfg_b} "
                      "--only eval/mmlu/base"]
    assert jobs[f"{b}/train/sft"].deps == [f"{b}/prepare"]
    assert jobs[f"{b}/eval/mmlu/sft"].deps == [f"{b}/train/sft", f"{b}/prepare"]
    assert jobs[f"{a}/eval/mmlu/base"].deps == [f"{a}/prepare", f"{b}/prepare"]
    assert jobs["demo-slurm/report"].argv == ["PY", "-m", "rutune.cli", "sweep", str(grid), "--only-report"]
    assert set(jobs["demo-slurm/report"].deps) == set(jobs) - {"demo-slurm/report"}
    assert not any(j.done for j in plan.jobs) and {j.workdir for j in plan.jobs} == {str(tmp_path)}
    # the written config is the variant itself (the jobs see exactly what the sweep expanded)
    _, configs = expand(grid)
    assert load_config(cfg_b) == configs[1] and configs[1].data.sft.sources[0].percent == 100


def test_variants_differing_only_in_eval_share_prepare_and_the_sft_not_yet_trained(tmp_path):
    grid = mini_grid(tmp_path, "a: [eval.mmlu.limit=4]\nb: [eval.mmlu.limit=5]\n")
    plan = plan_sweep(grid, tmp_path / "state", python="PY")
    shared = {k.split("@")[0]: v for k, v in plan.shared.items()}
    # nll reads the experiment's own holdout file, mmlu's limit differs: those stay per experiment
    assert shared == {"prepare": ["ms-a/prepare", "ms-b/prepare"], "train/sft": ["ms-a/train/sft", "ms-b/train/sft"]}
    jobs = {j.key: j for j in plan.jobs}
    assert jobs["ms-b/eval/mmlu/sft"].deps == ["ms-b/train/sft", "ms-b/prepare"]


def test_same_training_config_on_different_data_is_not_shared(tmp_path):
    """The SFT stage's own config slice is equal; only prepare's recipe tells the two SFTs apart."""
    grid = mini_grid(tmp_path, "a: [data.sft.sources.0.percent=20]\nb: [data.sft.sources.0.percent=30]\n")
    plan = plan_sweep(grid, tmp_path / "state", python="PY")
    assert sorted(k.split("@")[0] for k in plan.shared) == ["eval/mmlu/base"]


def test_study_grid_is_the_14_row_yamls_and_shares_the_base_evals_across_all_rows(tmp_path):
    grid = ROOT / "configs" / "sweeps" / "study-slurm.yaml"
    name, configs = expand(grid)
    rows = sorted((ROOT / "configs" / "experiments" / "study").glob("[0-9]*.yaml"))
    assert [c.name for c in configs] == [f"study-{p.stem}" for p in rows]
    assert [c == load_config(p) for c, p in zip(configs, rows)] == [True] * 14
    plan = plan_sweep(grid, tmp_path / "state", expanded=(name, configs), python="PY")
    assert len(plan.jobs) == 112 and sorted(k.split("@")[0] for k in plan.shared) == [
        "eval/arena/base", "eval/babilong/base", "eval/mmlu/base"]
    assert {len(keys) for keys in plan.shared.values()} == {14}
    row13 = "study-13-gm100-rag100-saiga100-pref100"
    simpo = next(j for j in plan.jobs if j.key == f"{row13}/train/simpo")
    assert simpo.resources.gpus == 1 and simpo.resources.time_min == 2880 and simpo.resources.partition == "gpu"
    assert simpo.deps == [f"{row13}/prepare", f"{row13}/train/sft"]


def test_slurm_block_sets_each_kinds_sbatch_flags(tmp_path, fake):
    slurm = ("slurm:\n  partition: gpu\n  default: {cpus: 8, time_min: 60}\n  train: {gpus: 1, time_min: 600}\n"
             "  eval: {gpus: 1, mem_gb: 0.5, extra_sbatch: [--qos=high]}\n  report: {cpus: 1, partition: cpu}\n")
    grid = mini_grid(tmp_path, "a: [eval.mmlu.limit=4]\n", slurm)
    _, result = submit_sweep(grid, tmp_path / "state", echo=lambda s: None)
    assert len(result.submitted) == 7
    flags = {k: [f for f in v if f.split("=")[0] in ("--partition", "--gres", "--cpus-per-task", "--time", "--mem",
                                                       "--qos", "--dependency")] for k, v in sbatch_calls(fake).items()}
    assert flags["ms-a/prepare"] == ["--partition=gpu", "--cpus-per-task=8", "--time=60"]
    assert flags["ms-a/train/sft"] == ["--dependency=afterok:101", "--partition=gpu", "--gres=gpu:1",
                                       "--cpus-per-task=8", "--time=600"]
    assert flags["ms-a/eval/mmlu/sft"] == ["--dependency=afterok:102:101", "--partition=gpu", "--gres=gpu:1",
                                           "--cpus-per-task=8", "--mem=512M", "--time=60", "--qos=high"]
    assert flags["ms/report"][1:] == ["--partition=cpu", "--cpus-per-task=1", "--time=60"]


def test_slurm_block_unknown_keys_are_one_line_each_with_did_you_mean(tmp_path):
    grid = mini_grid(tmp_path, "a: [eval.mmlu.limit=4]\n", "slurm:\n  train: {gpu: 1}\n  evals: {cpus: 2}\n")
    result = runner.invoke(app, ["sweep", str(grid), "--dry-run"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"error: {grid}:6: slurm.train.gpu: unknown key; did you mean `gpus`?",
                                          f"error: {grid}:7: slurm.evals: unknown key; did you mean `eval`?"]


def test_finished_prepare_is_left_out_and_its_dependents_do_not_wait(tmp_path, fake):
    grid = mini_grid(tmp_path, "a: [eval.mmlu.limit=4]\n")
    from rutune.pipeline import experiment_stages

    _, [cfg] = expand(grid)
    prepare = experiment_stages(cfg, report=False)[0]
    write_manifest(prepare.folder, {"input_hash": prepare.identity()})
    _, result = submit_sweep(grid, tmp_path / "state", echo=lambda s: None)
    assert result.done == ["ms-a/prepare"] and "ms-a/prepare" not in result.submitted
    assert not any(f.startswith("--dependency") for f in sbatch_calls(fake)["ms-a/train/sft"])
    # a stale prepare (other data) is not done: it and everything after it is submitted again
    _, result = submit_sweep(mini_grid(tmp_path, "a: [eval.mmlu.limit=4, data.sft.sources.0.percent=30]\n"),
                             tmp_path / "state2", echo=lambda s: None)
    assert result.done == [] and len(result.submitted) == 7


def test_cli_slurm_options_need_the_slurm_launcher(tmp_path):
    grid = mini_grid(tmp_path, "a: [eval.mmlu.limit=4]\n")
    bad = runner.invoke(app, ["sweep", str(grid), "--status"])
    assert bad.exit_code == 2 and "--state-dir, --wait and --status need --launcher slurm" in bad.output
    bad = runner.invoke(app, ["sweep", str(grid), "--launcher", "pbs"])
    assert bad.exit_code == 2 and "--launcher pbs: expected local or slurm" in bad.output
    bad = runner.invoke(app, ["sweep", str(grid), "--launcher", "slurm", "--force", "mmlu"])
    assert bad.exit_code == 2 and "--force is not passed to Slurm jobs" in bad.output


# ------------------------------------------------------------------------------------------------ real cluster


@pytest.fixture(scope="module")
def cluster():
    """One real single-node Slurm for this module; skipped with the reason when it cannot start."""
    from slurm_cluster import SlurmUnavailable, running_cluster

    try:
        with running_cluster() as c:
            yield c
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm cluster: {e}")


def report_rows(path: Path, root: Path) -> list[dict]:
    """report.csv rows with the output root made neutral (the only thing that differs between the two runs)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: v.replace(str(root), "<root>") for k, v in row.items()} for row in csv.DictReader(f)]


def test_cluster_runs_the_demo_grid_to_the_local_report_sharing_the_base_eval_and_a_rerun_submits_nothing(
        cluster, tmp_path):
    from rutune.sweep import run_sweep

    local_root, slurm_root = tmp_path / "local", tmp_path / "slurm"
    grid, state = demo_grid(tmp_path, slurm_root), tmp_path / "state"
    slurm = ["sweep", str(grid), "--launcher", "slurm", "--state-dir", str(state)]
    t0 = time.monotonic()
    first = runner.invoke(app, slurm)
    assert first.exit_code == 0, first.output
    assert "slurm: 8 submitted, 0 already queued, 0 done" in first.output
    run_sweep(demo_grid(tmp_path, local_root), echo=lambda s: None)  # the local sweep, while Slurm works
    done = runner.invoke(app, [*slurm, "--status", "--wait"])
    print(f"\ndemo-slurm grid, local sweep and Slurm side by side: {time.monotonic() - t0:.1f} s")
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[-1] == "8 done"  # the status table's summary line

    rows = report_rows(slurm_root / "demo-slurm" / "report" / "report.csv", slurm_root)
    assert rows == report_rows(local_root / "demo-slurm" / "report" / "report.csv", local_root)
    assert [(r["experiment"], r["model"]) for r in rows] == [
        ("demo-slurm-gm60", "base"), ("demo-slurm-gm60", "sft"), ("demo-slurm-gm100", "sft")]

    # the base model's MMLU: one Slurm job; the second experiment linked what the first computed
    records = json.loads((state / "jobs.json").read_text())["jobs"]
    [shared] = [r for k, r in records.items() if k.startswith("eval/mmlu/base@")]
    assert shared["keys"] == ["demo-slurm-gm60/eval/mmlu/base", "demo-slurm-gm100/eval/mmlu/base"]
    log = Path(shared["stdout"]).read_text()
    assert "[done] eval/mmlu/base" in log and "[linked] eval/mmlu/base" in log
    base_a = slurm_root / "demo-slurm-gm60" / "eval" / "mmlu" / "base" / "results.json"
    base_b = slurm_root / "demo-slurm-gm100" / "eval" / "mmlu" / "base" / "results.json"
    assert os.stat(base_a).st_ino == os.stat(base_b).st_ino  # hard-linked, not recomputed

    again = runner.invoke(app, slurm)
    assert "slurm: 0 submitted, 0 already queued, 8 done" in again.output
