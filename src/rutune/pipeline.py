"""`rutune run`: an experiment is the list of its stages — prepare → each train stage → each (model, suite) eval →
report — and each is skipped when its identity is unchanged.

A stage's identity (`rundir.stage_identity`) covers its config slice, the content of every file it reads, the
identities of the stages it builds on, and the code version; it is recorded in the stage's manifest, written last.
A rerun after Ctrl-C or SIGKILL therefore redoes only unfinished stages, and those resume from their own partial
files (trainer checkpoints, append-only eval items). Finished stages are indexed by identity under
`<output_root>/.stage-index.json` (`StageIndex`), so experiments of a sweep that share a stage link the finished
one instead of redoing it. `experiment_stages` is the list; `run_experiment` walks it; a launcher (Slurm) submits
each stage as `rutune run CONFIG --only KEY`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rutune.eval.suites import SUITES, EvalRequest, run_suite
from rutune.models import resolve_model_path
from rutune.rundir import (RunDir, StageIndex, file_fingerprint, read_manifest, stage_done, stage_identity,
                           started_for, write_manifest)
from rutune.train.recipes import RECIPES


@dataclass
class StageLog:
    """What a run did, stage by stage ("done", "skipped", "linked"), for the summary and for tests."""

    entries: list[tuple[str, str]] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def add(self, stage: str, status: str) -> None:
        self.entries.append((stage, status))
        self.echo(f"[{status}] {stage}")


@dataclass
class Stage:
    """One step of an experiment. `identity` is computed when the stage is reached (it may read the manifest of a
    stage just finished); `work` does the stage and returns its manifest (written by the runner) or None when the
    stage writes its own; `forced_by`: the `--force` names that redo it."""

    key: str
    kind: str
    folder: Path
    identity: Callable[[], str]
    work: Callable[[str], dict | None]
    forced_by: frozenset[str]
    after: tuple[str, ...] = ()  # keys of the stages it needs (for launchers that run stages as separate jobs)


def force_names() -> list[str]:
    """Every name `--force` accepts, derived from the registries (for help texts and validation)."""
    return ["prepare", "train", "<stage name>", "eval", *SUITES.names(), "report"]


# ---------------------------------------------------------------- the stages of one experiment
def eval_set_items(cfg) -> dict[str, Callable[[], dict[str, str]]]:
    """The contamination check's eval sets: each named suite's items, as the suite is configured in `eval:`."""
    return {name: (lambda s=SUITES.get(name), c=getattr(cfg.eval, name): s.item_texts(c))
            for name in cfg.data.contamination.eval_sets}


def eval_set_inputs(cfg) -> list[str]:
    return [f"{name}:{SUITES.get(name).inputs(getattr(cfg.eval, name), None)}"
            for name in cfg.data.contamination.eval_sets]


def prepare_stage(cfg) -> Stage:
    from rutune.data.prepare import prepare_hash, run_prepare

    run = RunDir.for_experiment(cfg.output_root, cfg.name)

    def work(h: str):
        run_prepare(cfg, force=True, known_hash=h, eval_sets=eval_set_items(cfg))
        return None

    return Stage("prepare", "prepare", run.prepare, lambda: prepare_hash(cfg, eval_set_inputs(cfg)), work,
                 frozenset({"prepare"}))


def train_stage(cfg, stage, show_progress: bool) -> Stage:
    from rutune.train.stages import run_stage, stage_input_hash

    run = RunDir.for_experiment(cfg.output_root, cfg.name)

    def work(h: str):
        run_stage(cfg, stage, run, force=True, show_progress=show_progress)
        return None

    after = ("prepare",) if RECIPES.get(stage.recipe).data_block else ()
    after += (f"train/{stage.init_from}",) if stage.init_from != "base" else ()
    return Stage(f"train/{stage.name}", "train", run.train(stage.name), lambda: stage_input_hash(cfg, stage, run),
                 work, frozenset({"train", stage.name}), after)


def model_refs(cfg) -> list[tuple[str, str, Callable[[], str], tuple[str, ...]]]:
    """(label, path, identity, stages it needs) for each `eval.models` entry: `base`, a stage, or `label=path`."""
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    stage_names = [s.name for s in cfg.train.stages]
    refs = []
    for entry in cfg.eval.models:
        if entry == "base":
            path = resolve_model_path(cfg.base_model.path, gguf_file=cfg.base_model.gguf_file)
            refs.append(("base", path, lambda: f"base:{cfg.base_model.model_dump_json()}", ()))
        elif entry in stage_names:
            refs.append((entry, str(run.checkpoint(entry)),
                         lambda e=entry: f"stage:{(read_manifest(run.train(e)) or {}).get('input_hash')}",
                         (f"train/{entry}",)))
        else:  # `label=path` (the schema rejects anything else)
            label, path = entry.split("=", 1)
            refs.append((label, path, lambda p=path: f"path:{file_fingerprint(Path(p) / 'config.json')}", ()))
    return refs


def eval_stage(cfg, suite, label: str, path: str, model_identity: Callable[[], str], after: tuple) -> Stage:
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    suite_cfg = getattr(cfg.eval, suite.name)
    out = run.eval(suite.name, label)
    needs_prepare = ("prepare",) if cfg.data.sft is not None or cfg.data.preference is not None else ()

    def identity() -> str:
        config = {"suite": suite.name, "cfg": suite_cfg.model_dump(mode="json"),
                  "backend": cfg.eval.backend.model_dump(mode="json"), "seed": cfg.seed,
                  "rounds": cfg.eval.bootstrap_rounds}
        return stage_identity(config, upstream=[model_identity(), *suite.inputs(suite_cfg, run)])

    def work(h: str):
        # Items of other inputs must not count as done: a retrained checkpoint keeps its path, so the suite's own
        # resume fingerprint would not notice. Same inputs, unfinished: resume.
        if out.exists() and started_for(out) != h:
            shutil.rmtree(out, ignore_errors=True)
        request = EvalRequest(suite_cfg, cfg.eval.backend, path, label, out, seed=cfg.seed,
                              rounds=cfg.eval.bootstrap_rounds, run_dir=run)
        result = run_suite(suite, request, inputs_hash=h)
        return {"suite": suite.name, "model": label, "model_path": path,
                "metrics": {k: v.get("value") for k, v in (result.get("metrics") or {}).items() if isinstance(v, dict)}}

    return Stage(f"eval/{suite.name}/{label}", "eval", out, identity, work, frozenset({"eval", suite.name}),
                 after + needs_prepare)


def report_stage(run_dirs: list[Path], out_dir: Path, cfg, after: tuple = ()) -> Stage:
    def identity() -> str:
        inputs = sorted(p for d in run_dirs for p in Path(d).rglob("manifest.json") if "report" not in p.parts)
        return stage_identity({"report": cfg.report.model_dump(mode="json"), "rounds": cfg.eval.bootstrap_rounds},
                              files=inputs)

    def work(h: str):
        from rutune.report import build_report

        outputs = build_report([Path(d) for d in run_dirs], out_dir, baseline_label=cfg.report.baseline_label,
                               formats=tuple(cfg.report.formats), rounds=cfg.eval.bootstrap_rounds, seed=cfg.seed)
        return {"outputs": {k: str(v) for k, v in outputs.items()}}

    return Stage("report", "report", out_dir, identity, work, frozenset({"report"}), after)


def experiment_stages(cfg, *, report: bool = True, show_progress: bool = True) -> list[Stage]:
    """Every stage of one experiment, in the order they run."""
    stages = []
    if cfg.data.sft is not None or cfg.data.preference is not None:
        stages.append(prepare_stage(cfg))
    stages += [train_stage(cfg, s, show_progress) for s in cfg.train.stages]
    for label, path, identity, after in model_refs(cfg):
        stages += [eval_stage(cfg, suite, label, path, identity, after) for suite in SUITES
                   if getattr(cfg.eval, suite.name, None) is not None]
    if report:
        run = RunDir.for_experiment(cfg.output_root, cfg.name)
        stages.append(report_stage([run.root], run.report, cfg, tuple(s.key for s in stages)))
    return stages


# ---------------------------------------------------------------- running them
def execute(stage: Stage, *, force: set[str], index: StageIndex | None, log: StageLog) -> None:
    """Skip, link (from another experiment's identical stage) or do one stage, then index it."""
    h = stage.identity()
    forced = bool(stage.forced_by & force)
    if not forced and index is not None and index.link_into(stage.kind, h, stage.folder):
        log.add(stage.key, "linked")
    elif not forced and stage_done(stage.folder, h):
        log.add(stage.key, "skipped")
    else:
        manifest = stage.work(h)
        if manifest is not None:
            write_manifest(stage.folder, {"input_hash": h, **manifest})
        log.add(stage.key, "done")
    if index is not None and stage_done(stage.folder, h):
        index.add(stage.kind, h, stage.folder)


def run_experiment(cfg, *, force: set[str] | None = None, report: bool = True, show_progress: bool = True,
                   echo: Callable[[str], None] = print, only: list[str] | None = None) -> tuple[StageLog, dict]:
    """The whole pipeline for one experiment (or only the stages named in `only`); returns the stage log and the
    report outputs."""
    force = set(force or ())
    log = StageLog(echo=echo)
    stages = experiment_stages(cfg, report=report, show_progress=show_progress)
    if only:
        from rutune.schema import ConfigError

        unknown = [k for k in only if k not in {s.key for s in stages}]
        if unknown:
            raise ConfigError([f"--only {k}: no such stage; this experiment has: "
                               f"{', '.join(s.key for s in stages)}" for k in unknown])
        stages = [s for s in stages if s.key in only]
    index = StageIndex(cfg.output_root)
    for stage in stages:
        execute(stage, force=force, index=None if stage.kind == "report" else index, log=log)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    outputs = (read_manifest(run.report) or {}).get("outputs", {}) if report and any(
        s.kind == "report" for s in stages) else {}
    return log, outputs


def run_report_stage(run_dirs: list[Path], out_dir: Path, cfg, force: set[str], log: StageLog) -> dict:
    """The report over several runs (a sweep); returns its outputs."""
    execute(report_stage(run_dirs, out_dir, cfg), force=force, index=None, log=log)
    return (read_manifest(out_dir) or {}).get("outputs", {})
