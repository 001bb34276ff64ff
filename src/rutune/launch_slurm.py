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
key, or keeps the key and gives a new `Job.what` (a hash of the inputs), so an old success is never taken for the
new stage. The fingerprint (argv, workdir, `what` and the dependencies' fingerprints) guards against the same key
being reused for a different command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, TextIO

from rutune.rundir import read_json, write_json_atomic, write_text_atomic

from rutune.slurm_graph import (ALIVE_STATES, Job, JobStatus, LaunchError, NEVER_SATISFIED, Resources, SQUEUE_CHUNK, STATE_FILE, STATE_VERSION, SubmitResult, Unit, _order, dedupe, file_stem, fingerprint, is_secret, render_script, sbatch_args, toposort)


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


__all__ = ["Job", "JobStatus", "LaunchError", "Resources", "SubmitResult", "dedupe", "format_status", "load_state",
           "render_script", "sbatch_args", "status", "submit", "toposort", "wait"]
