"""Eval suites: one module per suite in this package, each declaring `SUITE = Suite(...)`.

A suite declares, once: its `name` (the `eval.<name>` config block, the `rutune eval <name>` command, the
`eval/<name>/` folder), its config model, one `run(EvalRequest) -> results` function with the signature every suite
shares, the extra inputs of its stage identity (`inputs`: content hashes of every file it reads, hub ids at their
revisions — beyond the common inputs the pipeline adds: model identity, backend, seed, rounds), a one-line
`summary` for the terminal, and optionally the texts of its items (`item_texts`, for the contamination check).

Every metric a suite writes to results.json that should be a report column carries a `display` block
(`rutune.results.display`: title, decimals, direction, test kind, order, per-item key), so the report builds its
columns, legend and significance marks from the result files alone. The config schema, the CLI command
(`rutune.eval.suites.cli`), the pipeline and the report derive from `SUITES`: a new suite is one module here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rutune.eval.backend_base import BackendConfig
from rutune.registry import Registry
from rutune.rundir import RunDir, file_fingerprint
from rutune.schema import Strict


@dataclass(frozen=True)
class EvalRequest:
    """What every suite run gets. `cfg` is the suite's own config block; `run_dir` is the experiment's run folder
    (None outside an experiment, e.g. `rutune eval`); `rounds` the bootstrap rounds of `eval.bootstrap_rounds`."""

    cfg: Any
    backend: BackendConfig
    model_path: str | None
    model_label: str
    out_dir: Path
    seed: int = 0
    rounds: int = 1000
    run_dir: RunDir | None = None
    progress: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    config: type[Strict]
    run: Callable[[EvalRequest], dict]
    title: str
    summary: Callable[[dict], str]
    inputs: Callable[[Any, RunDir | None], list[str]] = lambda cfg, run_dir: []
    item_texts: Callable[[Any], dict[str, str]] | None = None  # item id → text, for the contamination check
    needs_model: bool = True  # False: `--model` may be omitted when the config says where answers come from
    own_progress: bool = False  # True: the suite draws its own progress bars (the CLI adds none)
    cli_aliases: dict[str, str] = field(default_factory=dict)  # config field → extra option name (e.g. path → data)
    order: int = 100


SUITES: Registry[Suite] = Registry("eval suite", __name__, "SUITE")


def file_inputs(*paths: str | Path | None) -> list[str]:
    """Identity parts for local files a suite reads: path and content hash (a missing path is recorded as such)."""
    return [file_fingerprint(p) for p in paths if p]


def values_summary(label: str) -> Callable[[dict], str]:
    """A `Suite.summary` that prints every metric's value: `<label> <model>: name 0.123, ...`."""

    def summary(res: dict) -> str:
        parts = [f"{k} {v['value']:.3f}" for k, v in res["metrics"].items()
                 if isinstance(v, dict) and v.get("value") is not None]
        return f"{label} {res['model']}: " + ", ".join(parts)

    return summary


def prepared_file(given: str | None, run_dir: RunDir | None, file_name: str, *, option: str, what: str) -> Path:
    """A suite's data file: the path the config gives, else the experiment's `prepare/<file_name>`; outside an
    experiment (`rutune eval`) without a path, an EvalError naming the option to pass."""
    from rutune.eval.errors import EvalError

    if given:
        return Path(given).expanduser()
    if run_dir is None:
        raise EvalError(f"give {option} FILE ({what})")
    return run_dir.prepare / file_name


def run_suite(suite: Suite, request: EvalRequest, *, inputs_hash: str | None = None) -> dict:
    """Run one suite for one model; a failure before any item was written leaves no output folder behind.

    A folder that holds items from an interrupted run (same inputs) is kept, so the next run resumes it.
    `inputs_hash` (the pipeline's stage identity) is recorded in the folder first (`rundir.mark_started`).
    """
    from rutune.rundir import mark_started

    existed = request.out_dir.exists()
    try:
        if inputs_hash is not None:
            request.out_dir.mkdir(parents=True, exist_ok=True)
            mark_started(request.out_dir, inputs_hash)
        return suite.run(request)
    except BaseException:
        if not existed and request.out_dir.exists() and not _has_items(request.out_dir):
            shutil.rmtree(request.out_dir, ignore_errors=True)
        raise


def _has_items(folder: Path) -> bool:
    return any(p.stat().st_size > 0 for p in folder.glob("*.jsonl") if p.is_file())


__all__ = ["EvalRequest", "SUITES", "Suite", "file_inputs", "prepared_file", "run_suite"]
