"""Slurm job graphs without Slurm: the job and resource types, deduplication of shared stages, topological order,
fingerprints, and the sbatch flags and batch script of each job (`rutune.launch_slurm` submits them)."""


from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rutune.rundir import stable_hash

STATE_FILE = "jobs.json"
STATE_VERSION = 1
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
# squeue states in which a job still holds or waits for resources; anything else listed is a finished job.
ALIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
}
NEVER_SATISFIED = "DependencyNeverSatisfied"
SQUEUE_CHUNK = 200  # job ids per squeue call (its -j list goes on one command line)


class LaunchError(ValueError):
    """A one-line reason why the job graph could not be (fully) submitted or queried, naming the job."""


@dataclass(frozen=True)
class Resources:
    """What one job asks Slurm for; None leaves the cluster's default."""

    gpus: int | None = None  # --gres=gpu:N (works with select/cons_res and cons_tres, old and new Slurm)
    cpus: int | None = None  # --cpus-per-task
    mem_gb: float | None = None  # --mem=<MiB>M (fractions allowed)
    time_min: int | None = None  # --time=<minutes>
    partition: str | None = None  # --partition
    extra_sbatch: tuple[str, ...] = ()  # passed as is, after ours (so they win), e.g. ("--qos=high",)

    def sbatch_flags(self) -> list[str]:
        flags: list[str] = []
        if self.partition:
            flags.append(f"--partition={self.partition}")
        if self.gpus:
            flags.append(f"--gres=gpu:{int(self.gpus)}")
        if self.cpus:
            flags.append(f"--cpus-per-task={int(self.cpus)}")
        if self.mem_gb:
            flags.append(f"--mem={max(1, round(self.mem_gb * 1024))}M")
        if self.time_min:
            flags.append(f"--time={int(self.time_min)}")
        return flags + list(self.extra_sbatch)


@dataclass
class Job:
    """One node of the graph: a command, the keys of the jobs it waits for, and what it needs.

    `key` is unique per stage (`exp1/train/sft`); jobs with the same key, or the same `share_key`, are one
    Slurm job (a stage shared by several experiments). `done=True`: finished already; not submitted, and its
    dependents do not wait for it. Env values whose name looks secret (KEY/TOKEN/SECRET/PASSWORD) reach the job
    through sbatch's environment only and are never written to the script, the state file or the logs we write.
    `what`: for a key that stays the same while the job's inputs change (a config file rewritten in place, an
    edited data file), a hash of those inputs: a new `what` makes an earlier success no longer count, and a
    queued old job is cancelled and resubmitted.
    """

    key: str
    argv: Sequence[str]
    deps: Sequence[str] = ()
    resources: Resources | Mapping[str, Any] = field(default_factory=Resources)
    workdir: str | os.PathLike | None = None  # made absolute; None: the directory sbatch was called from
    env: Mapping[str, str] = field(default_factory=dict)
    done: bool = False
    share_key: str | None = None
    what: str | None = None  # what it computes beyond argv (e.g. a hash of its inputs); part of the fingerprint

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key.strip() or any(c in self.key for c in "\n\r\0"):
            raise LaunchError(f"job {self.key!r}: the key must be a non-empty one-line string")
        if isinstance(self.argv, str) or not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise LaunchError(f"job {self.key}: argv must be a non-empty list of strings, got {self.argv!r}")
        if isinstance(self.deps, str):
            raise LaunchError(f"job {self.key}: deps must be a list of keys, got the string {self.deps!r}")
        if isinstance(self.resources, Mapping):
            res = dict(self.resources)
            unknown = sorted(set(res) - set(Resources.__dataclass_fields__))
            if unknown:
                raise LaunchError(f"job {self.key}: unknown resources {unknown}; known: "
                                  f"{', '.join(Resources.__dataclass_fields__)}")
            res["extra_sbatch"] = tuple(res.get("extra_sbatch") or ())
            self.resources = Resources(**res)
        bad = [f for f in self.resources.extra_sbatch if not str(f).startswith("-")]
        if bad:
            raise LaunchError(f"job {self.key}: extra_sbatch entries must be sbatch flags (start with '-'): {bad}")
        for name in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise LaunchError(f"job {self.key}: env name {name!r} is not a valid shell variable name")
        self.argv = [str(a) for a in self.argv]
        self.workdir = str(Path(self.workdir).absolute()) if self.workdir is not None else None
        self.deps = [str(d) for d in self.deps]
        self.env = {str(k): str(v) for k, v in self.env.items()}

    @property
    def identity(self) -> str:
        """What makes two jobs the same Slurm job: the share key when given, else the key."""
        return self.share_key or self.key


@dataclass
class Unit:
    """One Slurm job after deduplication: the shared identity, every caller key it stands for, resolved deps."""

    key: str
    job: Job | None  # None only for units rebuilt from the state file (status)
    keys: list[str]
    deps: list[str]  # identities
    done: bool


@dataclass
class SubmitResult:
    """What `submit` did, by job key (the identity of shared jobs)."""

    submitted: dict[str, str] = field(default_factory=dict)  # key → new Slurm job id
    queued: dict[str, str] = field(default_factory=dict)  # key → id of the job already pending/running
    done: list[str] = field(default_factory=list)  # caller's done flag or an exit-0 marker
    cancelled: dict[str, str] = field(default_factory=dict)  # key → stale pending job id cancelled and replaced


@dataclass
class JobStatus:
    """One row of the status table."""

    key: str
    job_id: str
    state: str  # pending, running, done, failed, died, blocked, cancelled
    exit_code: int | None = None
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    keys: list[str] = field(default_factory=list)


def is_secret(name: str) -> bool:
    """Env names whose values must never be written anywhere we write (scripts, state, messages)."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def file_stem(key: str) -> str:
    """A file-system-safe, collision-free name for a key: `exp1/train/sft` → `exp1_train_sft-<8 hex>`."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "job"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------------------------------ graph


def dedupe(jobs: Iterable[Job]) -> list[Unit]:
    """Merge jobs with the same identity (key or share_key) into one unit, in first-seen order.

    Jobs merged this way must run the same command in the same place with the same dependencies; anything else
    is a caller bug (two different stages given one key) and raises. A unit is done if any of its jobs says so.
    """
    jobs = list(jobs)
    identity_of: dict[str, str] = {}
    for job in jobs:
        if job.key in identity_of and identity_of[job.key] != job.identity:
            raise LaunchError(f"job {job.key}: listed twice with different share keys "
                              f"({identity_of[job.key]!r} and {job.identity!r})")
        identity_of[job.key] = job.identity
    for ident in set(identity_of.values()):
        identity_of.setdefault(ident, ident)  # a dep may name the share key itself
    units: dict[str, Unit] = {}
    for job in jobs:
        deps: list[str] = []
        for dep in job.deps:
            if dep not in identity_of:
                raise LaunchError(f"job {job.key}: unknown dependency {dep!r}")
            if identity_of[dep] not in deps:
                deps.append(identity_of[dep])
        unit = units.get(job.identity)
        if unit is None:
            units[job.identity] = Unit(job.identity, job, [job.key], deps, job.done)
            continue
        first = unit.job
        for what, a, b in (("argv", first.argv, job.argv), ("workdir", first.workdir, job.workdir),
                           ("env", first.env, job.env), ("resources", first.resources, job.resources),
                           ("deps", unit.deps, deps), ("what", first.what, job.what)):
            if a != b:
                raise LaunchError(f"job {job.key}: shares {job.identity!r} with {unit.keys[0]} but its {what} differ")
        if job.key not in unit.keys:
            unit.keys.append(job.key)
        unit.done = unit.done or job.done
    return list(units.values())


def toposort(units: Sequence[Unit]) -> list[Unit]:
    """Dependencies before dependents; among ready units, input order (so the result is deterministic)."""
    by_key = {u.key: u for u in units}
    try:
        return [by_key[k] for k in _order({u.key: u.deps for u in units})]
    except _Cycle as e:
        raise LaunchError(f"job {by_key[e.path[0]].keys[0]}: dependency cycle: {' -> '.join(e.path)}") from None


class _Cycle(Exception):
    def __init__(self, path: list[str]):
        super().__init__(" -> ".join(path))
        self.path = path


def _order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm in rounds over key → deps (deps outside the graph are ignored); raises _Cycle."""
    order: list[str] = []
    placed: set[str] = set()
    pending = list(graph)
    while pending:
        ready = [k for k in pending if all(d in placed or d not in graph for d in graph[k])]
        if not ready:  # every pending key waits on another pending key: follow deps until one repeats
            path: list[str] = []
            key = pending[0]
            while key not in path:
                path.append(key)
                key = next(d for d in graph[key] if d in graph and d not in placed)
            raise _Cycle(path[path.index(key):] + [key])
        order += ready
        placed.update(ready)
        pending = [k for k in pending if k not in placed]
    return order


def fingerprint(unit: Unit, fingerprints: Mapping[str, str]) -> str:
    """What the job runs: argv, workdir, `what` and its dependencies' fingerprints (not env, not resources)."""
    what = {"what": unit.job.what} if unit.job.what else {}  # absent when unset: earlier fingerprints still match
    return stable_hash({"argv": list(unit.job.argv), "workdir": str(unit.job.workdir or ""),
                        "deps": [fingerprints[d] for d in unit.deps], **what})


# ------------------------------------------------------------------------------------------------ scripts


def sbatch_args(unit: Unit, state_dir: str | os.PathLike, dep_ids: Sequence[str] = ()) -> list[str]:
    """The sbatch flags (without the script path) for one unit."""
    state = Path(state_dir).absolute()
    stem = file_stem(unit.key)
    args = ["--parsable", "--export=ALL", f"--job-name={unit.key}",
            f"--output={state / 'logs' / stem}.%j.out", f"--error={state / 'logs' / stem}.%j.err",
            "--nodes=1", "--ntasks=1"]
    if dep_ids:
        args += [f"--dependency=afterok:{':'.join(dep_ids)}", "--kill-on-invalid-dep=yes"]
    return args + unit.job.resources.sbatch_flags()


def render_script(unit: Unit, state_dir: str | os.PathLike, dep_ids: Sequence[str] = ()) -> str:
    """The batch script: markers at start and end, non-secret env, `cd workdir`, the shell-quoted command."""
    state = Path(state_dir).absolute()
    job = unit.job
    marker = state / "markers" / file_stem(unit.key)
    flags = " ".join(shlex.quote(a) for a in sbatch_args(unit, state, dep_ids))
    lines = ["#!/bin/bash",
             f"# rutune job {unit.key}" + (f" (also {', '.join(k for k in unit.keys if k != unit.key)})"
                                           if len(unit.keys) > 1 else ""),
             f"# generated by rutune.launch_slurm, submitted as: sbatch {flags} THIS_FILE"]
    secrets = [k for k in job.env if is_secret(k)]
    if secrets:
        lines.append(f"# secret env, passed through sbatch's environment and not written here: {', '.join(secrets)}")
    lines.append(f"marker={shlex.quote(str(marker))}.\"${{SLURM_JOB_ID:-manual}}\"")
    lines.append('date +%s > "$marker.start"')
    for name, value in job.env.items():
        if not is_secret(name):
            lines.append(f"export {name}={shlex.quote(value)}")
    command = " ".join(shlex.quote(a) for a in job.argv)
    lines.append(f"cd {shlex.quote(job.workdir)} && {command}" if job.workdir else command)
    lines += ["rc=$?",
              'echo "$rc" > "$marker.exit.tmp" && mv -f "$marker.exit.tmp" "$marker.exit"',
              'exit "$rc"']
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ slurm calls
