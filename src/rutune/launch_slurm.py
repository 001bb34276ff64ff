"""Submit a graph of CLI jobs to Slurm with `sbatch`, and tell which of them are done, failed or waiting.

A sweep is a graph of stages (prepare → train stages → eval suites → report); each stage is a shell command
(`rutune run CONFIG --only STAGE_KEY`). `submit(jobs, state_dir)` turns the graph into Slurm jobs chained with
`--dependency=afterok:<ids>`, so Slurm itself runs each stage once its inputs are done and never runs the
dependents of a failed stage (`--kill-on-invalid-dep=yes` cancels them instead of leaving them pending).

Why `sbatch` directly and not `submitit`: submitit pickles a Python callable and unpickles it on the node, which
needs the same Python environment and a shared filesystem for the pickles, and its dependency support is a raw
`slurm_additional_parameters` pass-through anyway. Our stages are already CLI commands, so a plain batch script
is simpler, visible (the user can read and resubmit `<state_dir>/scripts/*.sh`), works with any Python/conda on
the node, and dependency chains are first-class in `sbatch`. It also adds no dependency.

State (`<state_dir>/`, written by the submitting side and by the jobs):

    jobs.json                      key → {job_id, script, stdout, stderr, submitted_at, deps, keys, fingerprint,
                                   history}; rewritten atomically after *each* sbatch, so a failure half-way
                                   leaves every submitted job recorded
    scripts/<name>.sh              the batch script of each job (argv shell-quoted; secrets not written)
    logs/<name>.<jobid>.out|.err   Slurm's --output/--error, one pair per submission (a failed attempt's log
                                   survives the rerun)
    markers/<name>.<jobid>.start   written by the script when it starts
    markers/<name>.<jobid>.exit    written by the script when the command ends: its exit code

Status needs no accounting database (`sacct`): a job still in `squeue -h -j IDS` is pending/running; a job gone
from it is finished, and its markers (for that job id) say how: exit marker 0 → done, non-zero → failed, start
but no exit marker → died (time limit, out of memory, scancel), neither → never ran (cancelled, or blocked by
a failed dependency).

A rerun (`submit` again with the same jobs) submits only what is neither done (the caller's `Job.done`, or an
exit-0 marker of the recorded job with the same fingerprint) nor queued/running; pending jobs that wait on a
resubmitted job (or can never run) are cancelled and resubmitted so they wait on the new id.

The key (or `share_key`) names *what* a job computes: when a stage's inputs change the caller gives it a new
key, so an old success is never taken for the new stage. The fingerprint (argv, workdir and the dependencies'
fingerprints) only guards against the same key being reused for a different command.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

from rutune.rundir import read_json, stable_hash, write_json_atomic, write_text_atomic

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
    """

    key: str
    argv: Sequence[str]
    deps: Sequence[str] = ()
    resources: Resources | Mapping[str, Any] = field(default_factory=Resources)
    workdir: str | os.PathLike | None = None  # made absolute; None: the directory sbatch was called from
    env: Mapping[str, str] = field(default_factory=dict)
    done: bool = False
    share_key: str | None = None

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
                           ("deps", unit.deps, deps)):
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
    """What the job runs: argv, workdir and its dependencies' fingerprints (not env, not resources)."""
    return stable_hash({"argv": list(unit.job.argv), "workdir": str(unit.job.workdir or ""),
                        "deps": [fingerprints[d] for d in unit.deps]})


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


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"{name} not found on PATH: is this a Slurm login node? (install slurm-client)")
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _squeue(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """job id → (state, reason) for the ids Slurm still lists; finished/purged jobs are simply absent."""
    found: dict[str, tuple[str, str]] = {}
    ids = sorted(set(job_ids), key=lambda i: (len(i), i))
    if not ids:
        return found
    squeue = _tool("squeue")
    for start in range(0, len(ids), SQUEUE_CHUNK):
        chunk = ids[start:start + SQUEUE_CHUNK]
        proc = subprocess.run([squeue, "-h", "-j", ",".join(chunk), "-o", "%i|%T|%r"],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            # one unknown (purged) id makes squeue fail with this message; several unknown ones list nothing
            if "Invalid job id" in proc.stderr:
                continue
            raise LaunchError(f"squeue failed (exit {proc.returncode}): {_last_line(proc.stderr)}")
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2:
                found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


def _scancel(job_id: str) -> None:
    proc = subprocess.run([_tool("scancel"), job_id], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LaunchError(f"scancel {job_id} failed: {_last_line(proc.stderr)}")


def _sbatch(unit: Unit, args: Sequence[str], script: Path) -> str:
    env = {**os.environ, **unit.job.env}
    try:
        sbatch = _tool("sbatch")
    except LaunchError as e:
        raise LaunchError(f"job {unit.key}: {e}") from None
    try:
        proc = subprocess.run([sbatch, *args, str(script)], capture_output=True, text=True,
                              env=env, timeout=120)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"job {unit.key}: sbatch did not answer in 120 s") from None
    if proc.returncode != 0:
        raise LaunchError(f"job {unit.key}: sbatch rejected it: {_redact(_last_line(proc.stderr), unit.job.env)}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise LaunchError(f"job {unit.key}: sbatch --parsable printed {proc.stdout.strip()!r}, not a job id")
    return job_id


def _redact(text: str, env: Mapping[str, str]) -> str:
    for name, value in env.items():
        if is_secret(name) and value:
            text = text.replace(value, f"<{name}>")
    return text


# ------------------------------------------------------------------------------------------------ state


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One submit at a time per state dir (two would submit the same jobs twice)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_state(state_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The recorded jobs (key → record); empty when nothing was submitted yet."""
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except (ValueError, OSError) as e:
        raise LaunchError(f"{path}: unreadable state file ({e})") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or not isinstance(data.get("jobs"), dict):
        raise LaunchError(f"{path}: not a rutune Slurm state file (version {STATE_VERSION})")
    return data["jobs"]


def _save_state(state_dir: Path, jobs: Mapping[str, Any]) -> None:
    write_json_atomic(state_dir / STATE_FILE, {"version": STATE_VERSION, "jobs": dict(jobs)})


def _marker(state_dir: Path, key: str, job_id: str, kind: str) -> Path:
    return state_dir / "markers" / f"{file_stem(key)}.{job_id}.{kind}"


def _exit_code(state_dir: Path, key: str, job_id: str) -> int | None:
    path = _marker(state_dir, key, job_id, "exit")
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ submit


def submit(jobs: Iterable[Job], state_dir: str | os.PathLike) -> SubmitResult:
    """Submit every job of the graph that is not done and not already queued/running; return what happened.

    Jobs are deduplicated by key/share_key, checked (unknown deps, cycles) before anything is submitted, then
    submitted in topological order, each waiting (afterok) on its not-done dependencies. The state file is
    rewritten after every sbatch, so an error half-way (raised as LaunchError naming the job) leaves every
    submitted job recorded and a rerun picks up from there.
    """
    state_dir = Path(state_dir).absolute()
    order = toposort(dedupe(jobs))
    with _locked(state_dir):
        records = load_state(state_dir)
        live = _squeue([r["job_id"] for r in records.values() if r.get("job_id")])
        result = SubmitResult()
        fingerprints: dict[str, str] = {}
        wait_on: dict[str, str] = {}  # key → job id dependents must wait for (absent: done)
        fresh: set[str] = set()  # keys (re)submitted in this call
        for unit in order:
            fp = fingerprints[unit.key] = fingerprint(unit, fingerprints)
            if unit.done:
                result.done.append(unit.key)
                continue
            record = records.get(unit.key)
            old_id = record.get("job_id") if record else None
            if record and record.get("fingerprint") == fp and old_id:
                state, reason = live.get(old_id, ("", ""))
                exit_code = _exit_code(state_dir, unit.key, old_id)
                alive = state in ALIVE_STATES and not (state == "COMPLETING" and exit_code is not None)
                stale = state == "PENDING" and (reason == NEVER_SATISFIED or any(d in fresh for d in unit.deps))
                if alive and not stale:
                    result.queued[unit.key] = wait_on[unit.key] = old_id
                    continue
                if not alive and exit_code == 0:
                    result.done.append(unit.key)
                    continue
                if alive:  # pending on a dependency that can never be satisfied, or that is being replaced
                    _scancel(old_id)
                    result.cancelled[unit.key] = old_id
            elif old_id and live.get(old_id, ("", ""))[0] in ALIVE_STATES:
                _scancel(old_id)  # the same key now runs a different command: the queued old one is obsolete
                result.cancelled[unit.key] = old_id
            dep_ids = [wait_on[d] for d in unit.deps if d in wait_on]
            args = sbatch_args(unit, state_dir, dep_ids)
            script = state_dir / "scripts" / f"{file_stem(unit.key)}.sh"
            write_text_atomic(script, render_script(unit, state_dir, dep_ids))
            script.chmod(0o755)
            (state_dir / "logs").mkdir(exist_ok=True)
            (state_dir / "markers").mkdir(exist_ok=True)
            job_id = _sbatch(unit, args, script)
            stem = state_dir / "logs" / file_stem(unit.key)
            history = list(record.get("history", [])) if record else []
            if old_id:
                history.append(old_id)
            records[unit.key] = {
                "job_id": job_id, "keys": unit.keys, "deps": unit.deps, "fingerprint": fp, "script": str(script),
                "stdout": f"{stem}.{job_id}.out", "stderr": f"{stem}.{job_id}.err",
                "submitted_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "history": history,
            }
            _save_state(state_dir, records)  # recorded before the next sbatch: nothing submitted goes unrecorded
            result.submitted[unit.key] = wait_on[unit.key] = job_id
            fresh.add(unit.key)
        return result


# ------------------------------------------------------------------------------------------------ status


def status(state_dir: str | os.PathLike, out: TextIO | None = sys.stdout) -> dict[str, JobStatus]:
    """Each recorded job's state from squeue + markers (no sacct needed); prints the table to `out` if given."""
    state_dir = Path(state_dir).absolute()
    records = load_state(state_dir)
    live = _squeue([r["job_id"] for r in records.values()])
    result: dict[str, JobStatus] = {}
    for key in _order({k: list(records[k].get("deps", [])) for k in sorted(records)}):
        rec = records[key]
        unit = Unit(key, None, list(rec.get("keys") or [key]), [d for d in rec.get("deps", []) if d in records], False)
        job_id = rec["job_id"]
        row = JobStatus(unit.key, job_id, "", stdout=rec.get("stdout", ""), stderr=rec.get("stderr", ""),
                        keys=unit.keys)
        state, reason = live.get(job_id, ("", ""))
        row.exit_code = _exit_code(state_dir, unit.key, job_id)
        if state in ALIVE_STATES and not (state == "COMPLETING" and row.exit_code is not None):
            if state == "PENDING" and reason == NEVER_SATISFIED:
                row.state, row.detail = "blocked", _blocked_detail(unit, result)
            elif state == "PENDING":
                row.state, row.detail = "pending", reason if reason not in ("None", "(null)") else ""
            else:
                row.state = "running" if state in ("RUNNING", "CONFIGURING", "COMPLETING") else state.lower()
        elif row.exit_code == 0:
            row.state = "done"
        elif row.exit_code is not None:
            row.state, row.detail = "failed", f"exit {row.exit_code}, see {row.stderr}"
        elif _marker(state_dir, unit.key, job_id, "start").exists():
            row.state, row.detail = "died", f"killed without an exit code (time limit, memory, scancel?), see {row.stderr}"
        elif any(result[d].state in ("failed", "died", "blocked", "cancelled") for d in unit.deps):
            row.state, row.detail = "blocked", _blocked_detail(unit, result)
        else:
            row.state, row.detail = "cancelled", "left the queue without running"
        result[unit.key] = row
    if out is not None:
        out.write(format_status(result))
    return result


def _blocked_detail(unit: Unit, rows: Mapping[str, JobStatus]) -> str:
    """Name the dependencies that can no longer succeed (else every unfinished one)."""
    deps = [d for d in unit.deps if d in rows]
    bad = [d for d in deps if rows[d].state in ("failed", "died", "blocked", "cancelled")]
    bad = [f"{d} ({rows[d].state})" for d in (bad or [d for d in deps if rows[d].state != "done"])]
    return "never runs: waits on " + ", ".join(bad) if bad else "never runs: a dependency failed"


def format_status(rows: Mapping[str, JobStatus]) -> str:
    """A fixed-width table: key, job id, state, detail (one line per job, shared keys listed)."""
    if not rows:
        return "no jobs recorded\n"
    table = [("KEY", "JOB", "STATE", "DETAIL")]
    for row in rows.values():
        others = [k for k in row.keys if k != row.key]
        detail = "; ".join(x for x in (row.detail, f"also {', '.join(others)}" if others else "") if x)
        table.append((row.key, row.job_id, row.state, detail))
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in table]
    counts: dict[str, int] = {}
    for row in rows.values():
        counts[row.state] = counts.get(row.state, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines) + "\n"


def wait(state_dir: str | os.PathLike, timeout_s: float = 3600, poll_s: float = 2.0) -> dict[str, JobStatus]:
    """Poll `status` until no job is pending or running (blocked jobs count as finished); raise on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = status(state_dir, out=None)
        busy = [r.key for r in rows.values() if r.state not in ("done", "failed", "died", "blocked", "cancelled")]
        if not busy:
            return rows
        if time.monotonic() > deadline:
            raise LaunchError(f"job {busy[0]}: still {rows[busy[0]].state} after {timeout_s:.0f} s "
                              f"({len(busy)} jobs not finished)")
        time.sleep(poll_s)
