"""`rutune run`: prepare → train stages → eval suites → report, each skipped when its inputs are unchanged.

Every stage is identified by an input hash (its config slice + the hashes of what it reads + the code
version) recorded in its manifest, which is written last. A rerun after Ctrl-C or SIGKILL therefore
redoes only unfinished stages, and those resume from their own partial files (trainer checkpoints,
append-only eval items). Finished stages are also indexed by hash under `<output_root>/.stage-index.json`,
so experiments of a sweep that share a stage (the same SFT, say) link the finished one instead of redoing it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rutune.models import resolve_model_path
from rutune.rundir import (RunDir, file_hash, input_hash, mark_started, read_json, read_manifest, stage_done,
                           started_for, write_json_atomic, write_manifest)

SUITES = ("mmlu", "babilong", "arena", "nll")


@dataclass
class StageLog:
    """What a run did, stage by stage ("done" or "skipped"), for the summary and for tests."""

    entries: list[tuple[str, str]] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def add(self, stage: str, status: str) -> None:
        self.entries.append((stage, status))
        self.echo(f"[{status}] {stage}")


# ---------------------------------------------------------------- cross-experiment stage index
def _index_path(cfg) -> Path:
    return Path(cfg.output_root) / ".stage-index.json"


def _index_lookup(cfg, kind: str, h: str) -> Path | None:
    path = _index_path(cfg)
    index = read_json(path) if path.exists() else {}
    hit = index.get(f"{kind}:{h}")
    return Path(hit) if hit and stage_done(hit, h) else None


def _index_add(cfg, kind: str, h: str, stage_dir: Path) -> None:
    path = _index_path(cfg)
    index = read_json(path) if path.exists() else {}
    key, where = f"{kind}:{h}", str(stage_dir.resolve())
    if index.get(key) != where:  # most stages are already indexed: no rewrite
        index[key] = where
        write_json_atomic(path, index)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link a finished stage folder into another run (copy where links are not possible)."""
    tmp = dst.with_name(dst.name + ".linking")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link, ignore=shutil.ignore_patterns("trainer", "*.lock"))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def _reuse(cfg, kind: str, h: str, stage_dir: Path) -> bool:
    """If another experiment finished the same stage, link it here; True when reused."""
    if stage_done(stage_dir, h):
        return False
    hit = _index_lookup(cfg, kind, h)
    if hit is None or hit.resolve() == stage_dir.resolve():
        return False
    _link_tree(hit, stage_dir)
    return True


# ---------------------------------------------------------------- stages
def run_prepare_stage(cfg, force: set[str], log: StageLog) -> dict:
    from rutune.data.prepare import prepare_hash, run_prepare

    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    h = prepare_hash(cfg)
    linked = "prepare" not in force and _reuse(cfg, "prepare", h, run.prepare)
    manifest = run_prepare(cfg, force="prepare" in force, known_hash=h)
    log.add("prepare", "linked" if linked else "skipped" if manifest.get("skipped") else "done")
    _index_add(cfg, "prepare", h, run.prepare)
    return manifest


def run_train_stages(cfg, force: set[str], log: StageLog, show_progress: bool = True) -> None:
    from rutune.train.stages import run_training, stage_input_hash

    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    for stage in cfg.train.stages:
        forced = bool({"train", stage.name} & force)
        h = stage_input_hash(cfg, stage, run)
        if not forced and _reuse(cfg, "train", h, run.train(stage.name)):
            log.add(f"train/{stage.name}", "linked")
            _index_add(cfg, "train", h, run.train(stage.name))
            continue
        was_done = stage_done(run.train(stage.name), h) and not forced
        run_training(cfg, force=forced, only=[stage.name], show_progress=show_progress)
        log.add(f"train/{stage.name}", "skipped" if was_done else "done")
        _index_add(cfg, "train", h, run.train(stage.name))


def model_refs(cfg) -> list[tuple[str, str, str]]:
    """(label, path, identity) for each `eval.models` entry: `base`, a stage name, or `label=path`."""
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    stage_names = [s.name for s in cfg.train.stages]
    refs = []
    for i, entry in enumerate(cfg.eval.models):
        if entry == "base":
            path = resolve_model_path(cfg.base_model.path, gguf_file=cfg.base_model.gguf_file)
            refs.append(("base", path, f"base:{cfg.base_model.model_dump_json()}"))
        elif entry in stage_names:
            manifest = read_manifest(run.train(entry)) or {}
            refs.append((entry, str(run.checkpoint(entry)), f"stage:{manifest.get('input_hash')}"))
        elif "=" in entry:
            label, path = entry.split("=", 1)
            cfg_file = Path(path) / "config.json"
            ident = file_hash(cfg_file) if cfg_file.exists() else path
            refs.append((label, path, f"path:{path}:{ident}"))
        else:
            from rutune.config import ConfigError

            raise ConfigError([f"eval.models.{i}: {entry!r} is not `base`, a train stage ({', '.join(stage_names)}) "
                               f"or `label=path`"])
    return refs


def _suite_runner(suite: str):
    if suite == "mmlu":
        from rutune.eval.mmlu import run_mmlu

        return lambda c, b, path, label, out, seed, run: run_mmlu(c, b, path, out, seed, model_label=label)
    if suite == "babilong":
        from rutune.eval.babilong import run_babilong

        return lambda c, b, path, label, out, seed, run: run_babilong(c, b, path, out, seed, model_label=label)
    if suite == "arena":
        from rutune.eval.arena import run_arena

        return lambda c, b, path, label, out, seed, run: run_arena(c, b, path, label, out, seed)
    from rutune.eval.nll import run_nll

    return lambda c, b, path, label, out, seed, run: run_nll(c, b, path, run.prepare / "sft_holdout.parquet", out,
                                                             seed=seed, model_label=label)


def run_eval_suites(cfg, force: set[str], log: StageLog) -> None:
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    data_manifest = read_manifest(run.prepare) or {}
    for label, path, identity in model_refs(cfg):
        for suite in SUITES:
            suite_cfg = getattr(cfg.eval, suite)
            if suite_cfg is None:
                continue
            out = run.eval(suite, label)
            upstream = [identity]
            if suite == "nll":
                upstream.append(str((data_manifest.get("sft") or {}).get("holdout")))
            if suite == "arena":
                # The judge's identity (not its key) is part of the inputs: a newly configured judge reruns.
                upstream.append(";".join(os.environ.get(k, "") for k in ("RUTUNE_JUDGE_BASE_URL", "RUTUNE_JUDGE_MODEL")))
            h = input_hash({"suite": suite, "cfg": suite_cfg.model_dump(mode="json"),
                            "backend": cfg.eval.backend.model_dump(mode="json"), "seed": cfg.seed}, upstream)
            name = f"eval/{suite}/{label}"
            forced = bool({"eval", suite} & force)
            if not forced and _reuse(cfg, "eval", h, out):
                log.add(name, "linked")
            elif not forced and stage_done(out, h):
                log.add(name, "skipped")
            else:
                # Items of other inputs must not count as done: a retrained checkpoint keeps its path, so the
                # suite's own resume fingerprint would not notice. Same inputs, unfinished: resume.
                if forced or (out.exists() and started_for(out) != h):
                    shutil.rmtree(out, ignore_errors=True)
                mark_started(out, h)
                result = _suite_runner(suite)(suite_cfg, cfg.eval.backend, path, label, out, cfg.seed, run)
                write_manifest(out, {"input_hash": h, "suite": suite, "model": label, "model_path": path,
                                     "metrics": {k: v.get("value") for k, v in (result.get("metrics") or {}).items()
                                                 if isinstance(v, dict)}})
                log.add(name, "done")
            _index_add(cfg, "eval", h, out)


def run_report_stage(run_dirs: list[Path], out_dir: Path, cfg, force: set[str], log: StageLog) -> dict:
    from rutune.report import build_report

    inputs = sorted(str(p) for d in run_dirs for p in Path(d).rglob("manifest.json") if "report" not in p.parts)
    h = input_hash({"report": cfg.report.model_dump(mode="json")},
                   [f"{p}:{file_hash(p)}" for p in inputs])
    if "report" not in force and stage_done(out_dir, h):
        log.add("report", "skipped")
        return (read_manifest(out_dir) or {}).get("outputs", {})
    outputs = build_report([Path(d) for d in run_dirs], out_dir, baseline_label=cfg.report.baseline_label,
                           formats=tuple(cfg.report.formats), rounds=cfg.report.bootstrap_rounds, seed=cfg.seed)
    write_manifest(out_dir, {"input_hash": h, "outputs": {k: str(v) for k, v in outputs.items()}})
    log.add("report", "done")
    return {k: str(v) for k, v in outputs.items()}


def run_experiment(cfg, *, force: set[str] | None = None, report: bool = True, show_progress: bool = True,
                   echo: Callable[[str], None] = print) -> tuple[StageLog, dict]:
    """The whole pipeline for one experiment; returns the stage log and the report outputs."""
    force = set(force or ())
    log = StageLog(echo=echo)
    run = RunDir.for_experiment(cfg.output_root, cfg.name)
    if cfg.data.sft is not None or cfg.data.preference is not None:
        run_prepare_stage(cfg, force, log)
    if cfg.train.stages:
        run_train_stages(cfg, force, log, show_progress)
    run_eval_suites(cfg, force, log)
    outputs = run_report_stage([run.root], run.report, cfg, force, log) if report else {}
    return log, outputs
