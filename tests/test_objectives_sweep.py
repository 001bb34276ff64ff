"""`configs/sweeps/objectives.yaml` expands to the study's final row once per objective: same SFT stage, same
preference data and steps, the objective's own loss, its stage evaluated, held-out pairs for the preference suite."""

import subprocess
import sys
from pathlib import Path

from rutune.sweep import expand

GRID = Path(__file__).resolve().parent.parent / "configs" / "sweeps" / "objectives.yaml"
OBJECTIVES = ["simpo", "dpo", "ipo", "robust", "hinge", "apo_zero", "orpo", "smpo"]


def test_objectives_sweep_has_one_experiment_per_objective_differing_only_in_the_loss():
    name, configs = expand(GRID)
    assert name == "study-objectives"
    assert [c.name for c in configs] == [f"study-objectives-{o}" for o in OBJECTIVES]
    sft = {c.train.stages[0].model_dump_json() for c in configs}
    assert len(sft) == 1  # one SFT stage, trained once and linked
    for objective, cfg in zip(OBJECTIVES, configs):
        pref = cfg.train.stages[1]
        assert (pref.loss.name, pref.name, pref.init_from, pref.reference) == (objective, objective, "sft", None)
        assert cfg.eval.models == ["base", "sft", objective]
        assert cfg.data.preference.holdout_percent == 5
        assert cfg.eval.preference is not None and cfg.eval.preference.pairs is None
        rest = pref.model_dump(exclude={"loss", "name"})
        assert rest == configs[0].train.stages[1].model_dump(exclude={"loss", "name"})
    robust = configs[OBJECTIVES.index("robust")].train.stages[1].loss
    assert robust.label_smoothing == 0.1 and robust.beta == 0.1
    assert configs[0].train.stages[1].loss.model_dump() == {"name": "simpo", "beta": 2.5, "gamma": 0.6,
                                                           "sft_weight": 0.0}


def test_rutune_sweep_dry_run_expands_it():
    out = subprocess.run([str(Path(sys.executable).with_name("rutune")), "sweep", str(GRID), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("experiment ")] == \
        [f"study-objectives-{o}" for o in OBJECTIVES]


def test_real_objectives_experiment_trains_four_objectives_alike_after_one_sft():
    from rutune.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "experiments" / "real_objectives.yaml")
    sft, *prefs = cfg.train.stages
    assert sft.recipe == "sft" and [p.loss.name for p in prefs] == ["simpo", "dpo", "orpo", "smpo"]
    assert {p.init_from for p in prefs} == {"sft"}
    same = {p.model_dump_json(exclude={"loss", "name"}) for p in prefs}
    assert len(same) == 1  # same steps, batch, LoRA, learning rate, batching
    assert cfg.eval.models == ["base", "sft", "simpo", "dpo", "orpo", "smpo"]
    assert cfg.data.preference.holdout_percent == 20 and cfg.eval.preference is not None
