"""The Slurm launcher: job graph → sbatch calls, scripts, state, status, reruns.

Two kinds of tests:
- without a cluster, against fake `sbatch`/`squeue`/`scancel` scripts on PATH that log their arguments (the
  exact flags, scripts and state we produce; graph errors; dedup; secrets; rerun decisions);
- against a real one-node Slurm started by `tests/slurm_cluster.py` (munged + slurmctld + slurmd, installed
  with apt-get when missing), skipped with the daemon's own reason when it cannot start.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rutune.launch_slurm import Job, LaunchError, Resources, SubmitResult, dedupe, status, submit, toposort, wait

SECRET = "hf_s3cr3t_VALUE_do_not_log"

# ------------------------------------------------------------------------------------------------ fakes

FAKE_SBATCH = r"""#!/bin/bash
d=__DIR__
if [ -f "$d/reject" ] && printf '%s\n' "$@" | grep -qx -- "--job-name=$(cat "$d/reject")"; then
  echo "sbatch: error: Batch job submission failed: Invalid partition name specified (token ${HF_TOKEN-})" >&2
  exit 1
fi
n=$(( $(cat "$d/counter" 2>/dev/null || echo 100) + 1 )); echo "$n" > "$d/counter"
printf '%s\n' "$@" >> "$d/sbatch.log"; echo "==" >> "$d/sbatch.log"
printf '%s\n' "${HF_TOKEN-unset}" >> "$d/token.log"
echo "$n"
"""
FAKE_SQUEUE = r"""#!/bin/bash
d=__DIR__
printf '%s\n' "$*" >> "$d/squeue.log"
cat "$d/squeue.txt" 2>/dev/null
exit 0
"""
FAKE_SCANCEL = r"""#!/bin/bash
printf '%s\n' "$*" >> __DIR__/scancel.log
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A bin dir with fake sbatch/squeue/scancel first on PATH; returns the dir their logs go to."""
    d = tmp_path / "fake"
    d.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL)):
        (d / name).write_text(text.replace("__DIR__", str(d)))
        (d / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    return d


def sbatch_calls(d: Path) -> list[list[str]]:
    if not (d / "sbatch.log").exists():
        return []
    text = (d / "sbatch.log").read_text()
    return [c.strip("\n").split("\n") for c in text.split("==\n") if c.strip()]


def diamond(workdir: Path) -> list[Job]:
    """exp1/prepare → (exp1/train/sft, exp1/eval/base) → exp1/report, listed out of order on purpose."""
    return [
        Job("exp1/report", ["rutune", "run", "c.yaml", "--only", "exp1/report"],
            deps=["exp1/train/sft", "exp1/eval/base"], workdir=workdir),
        Job("exp1/train/sft", ["rutune", "run", "c.yaml", "--only", "exp1/train/sft", "--note", "it's a test"],
            deps=["exp1/prepare"], workdir=workdir, env={"HF_HOME": "/cache/hf", "HF_TOKEN": SECRET},
            resources={"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 90, "partition": "gpu",
                       "extra_sbatch": ["--qos=high"]}),
        Job("exp1/eval/base", ["rutune", "run", "c.yaml", "--only", "exp1/eval/base"], deps=["exp1/prepare"],
            workdir=workdir, resources=Resources(cpus=2)),
        Job("exp1/prepare", ["rutune", "run", "c.yaml", "--only", "exp1/prepare"], workdir=workdir),
    ]


# ------------------------------------------------------------------------------------------------ no cluster


def test_diamond_submits_in_topological_order_with_exact_flags(tmp_path, fake):
    state, work = tmp_path / "state", tmp_path / "work"
    result = submit(diamond(work), state)
    assert result == SubmitResult(submitted={"exp1/prepare": "101", "exp1/train/sft": "102",
                                             "exp1/eval/base": "103", "exp1/report": "104"})
    logs = f"{state}/logs"

    def common(key, stem):
        return ["--parsable", "--export=ALL", f"--job-name={key}", f"--output={logs}/{stem}.%j.out",
                f"--error={logs}/{stem}.%j.err", "--nodes=1", "--ntasks=1"]

    assert sbatch_calls(fake) == [
        common("exp1/prepare", "exp1_prepare-059fab57") + [f"{state}/scripts/exp1_prepare-059fab57.sh"],
        common("exp1/train/sft", "exp1_train_sft-838026de")
        + ["--dependency=afterok:101", "--kill-on-invalid-dep=yes", "--partition=gpu", "--gres=gpu:1",
           "--cpus-per-task=8", "--mem=32768M", "--time=90", "--qos=high",
           f"{state}/scripts/exp1_train_sft-838026de.sh"],
        common("exp1/eval/base", "exp1_eval_base-4f487120")
        + ["--dependency=afterok:101", "--kill-on-invalid-dep=yes", "--cpus-per-task=2",
           f"{state}/scripts/exp1_eval_base-4f487120.sh"],
        common("exp1/report", "exp1_report-5a054fd9")
        + ["--dependency=afterok:102:103", "--kill-on-invalid-dep=yes", f"{state}/scripts/exp1_report-5a054fd9.sh"],
    ]


def test_batch_script_text_is_exact_and_shell_quoted(tmp_path, fake):
    state, work = tmp_path / "state", tmp_path / "work"
    submit(diamond(work), state)
    stem = "exp1_train_sft-838026de"
    flags = (f"--parsable --export=ALL --job-name=exp1/train/sft --output={state}/logs/{stem}.%j.out "
             f"--error={state}/logs/{stem}.%j.err --nodes=1 --ntasks=1 --dependency=afterok:101 "
             "--kill-on-invalid-dep=yes --partition=gpu --gres=gpu:1 --cpus-per-task=8 --mem=32768M --time=90 "
             "--qos=high")
    assert (state / "scripts" / f"{stem}.sh").read_text() == (
        "#!/bin/bash\n"
        "# rutune job exp1/train/sft\n"
        f"# generated by rutune.launch_slurm, submitted as: sbatch {flags} THIS_FILE\n"
        "# secret env, passed through sbatch's environment and not written here: HF_TOKEN\n"
        f'marker={state}/markers/{stem}."${{SLURM_JOB_ID:-manual}}"\n'
        'date +%s > "$marker.start"\n'
        "export HF_HOME=/cache/hf\n"
        f"cd {work} && rutune run c.yaml --only exp1/train/sft --note 'it'\"'\"'s a test'\n"
        "rc=$?\n"
        'echo "$rc" > "$marker.exit.tmp" && mv -f "$marker.exit.tmp" "$marker.exit"\n'
        'exit "$rc"\n'
    )
    assert os.access(state / "scripts" / f"{stem}.sh", os.X_OK)
    # the quoting survives a real shell: bash parses the command line back to the same argv
    line = (state / "scripts" / f"{stem}.sh").read_text().splitlines()[7].split(" && ", 1)[1]
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True).stdout
    assert out.splitlines() == ["rutune", "run", "c.yaml", "--only", "exp1/train/sft", "--note", "it's a test"]


def test_state_file_records_every_job_with_ids_scripts_and_logs(tmp_path, fake):
    state = tmp_path / "state"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    submit(diamond(tmp_path / "work"), state)
    jobs = json.loads((state / "jobs.json").read_text())
    assert jobs["version"] == 1
    rec = jobs["jobs"]["exp1/report"]
    stamp = datetime.strptime(rec.pop("submitted_at"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= stamp <= datetime.now(timezone.utc)
    assert rec == {
        "job_id": "104", "keys": ["exp1/report"], "deps": ["exp1/train/sft", "exp1/eval/base"],
        "fingerprint": rec["fingerprint"], "script": f"{state}/scripts/exp1_report-5a054fd9.sh",
        "stdout": f"{state}/logs/exp1_report-5a054fd9.104.out", "stderr": f"{state}/logs/exp1_report-5a054fd9.104.err",
        "history": [],
    }
    assert re.fullmatch(r"[0-9a-f]{16}", rec["fingerprint"])
    assert {k: v["job_id"] for k, v in jobs["jobs"].items()} == {
        "exp1/prepare": "101", "exp1/train/sft": "102", "exp1/eval/base": "103", "exp1/report": "104"}


def test_secret_env_reaches_sbatch_but_is_written_nowhere(tmp_path, fake):
    state = tmp_path / "state"
    submit(diamond(tmp_path / "work"), state)
    # sbatch got the secret in its environment only for the job that has it
    assert (fake / "token.log").read_text().splitlines() == ["unset", SECRET, "unset", "unset"]
    written = [p for p in state.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(state).as_posix() for p in written) == [
        ".lock", "jobs.json", "scripts/exp1_eval_base-4f487120.sh", "scripts/exp1_prepare-059fab57.sh",
        "scripts/exp1_report-5a054fd9.sh", "scripts/exp1_train_sft-838026de.sh"]
    assert [p.name for p in written if SECRET in p.read_text()] == []
    assert SECRET not in "\n".join(sum(sbatch_calls(fake), []))


def test_sbatch_error_message_redacts_secret_values(tmp_path, fake):
    (fake / "reject").write_text("exp1/train/sft")
    with pytest.raises(LaunchError) as err:
        submit(diamond(tmp_path / "work"), tmp_path / "state")
    assert str(err.value) == ("job exp1/train/sft: sbatch rejected it: sbatch: error: Batch job submission failed: "
                              "Invalid partition name specified (token <HF_TOKEN>)")


def test_rejected_job_leaves_earlier_ones_recorded_and_rerun_submits_the_rest(tmp_path, fake):
    state = tmp_path / "state"
    (fake / "reject").write_text("exp1/eval/base")
    with pytest.raises(LaunchError, match=r"^job exp1/eval/base: sbatch rejected it: .*Invalid partition name"):
        submit(diamond(tmp_path / "work"), state)
    jobs = json.loads((state / "jobs.json").read_text())["jobs"]
    assert {k: v["job_id"] for k, v in jobs.items()} == {"exp1/prepare": "101", "exp1/train/sft": "102"}
    (fake / "reject").unlink()
    (fake / "squeue.txt").write_text("101|RUNNING|None\n102|PENDING|Dependency\n")
    result = submit(diamond(tmp_path / "work"), state)
    assert result == SubmitResult(submitted={"exp1/eval/base": "103", "exp1/report": "104"},
                                  queued={"exp1/prepare": "101", "exp1/train/sft": "102"})
    calls = sbatch_calls(fake)
    assert [c[2] for c in calls[2:]] == ["--job-name=exp1/eval/base", "--job-name=exp1/report"]
    assert "--dependency=afterok:101" in calls[2] and "--dependency=afterok:102:103" in calls[3]
    assert (fake / "squeue.log").read_text().splitlines() == ["-h -j 101,102 -o %i|%T|%r"]


def test_topological_order_puts_deps_first_and_keeps_input_order_among_ready(tmp_path):
    order = toposort(dedupe(diamond(tmp_path)))
    assert [u.key for u in order] == ["exp1/prepare", "exp1/train/sft", "exp1/eval/base", "exp1/report"]


def test_dependency_cycle_is_one_line_error_and_nothing_is_submitted(tmp_path, fake):
    jobs = [Job("a", ["true"], deps=["c"]), Job("b", ["true"], deps=["a"]), Job("c", ["true"], deps=["b"]),
            Job("x", ["true"])]
    with pytest.raises(LaunchError) as err:
        submit(jobs, tmp_path / "state")
    assert str(err.value) == "job a: dependency cycle: a -> c -> b -> a"
    assert isinstance(err.value, ValueError)
    assert sbatch_calls(fake) == [] and not (tmp_path / "state" / "jobs.json").exists()
    with pytest.raises(LaunchError, match=r"^job s: dependency cycle: s -> s$"):
        submit([Job("s", ["true"], deps=["s"])], tmp_path / "state")


def test_unknown_dependency_names_the_job_and_the_missing_key(tmp_path, fake):
    with pytest.raises(LaunchError) as err:
        submit([Job("a", ["true"]), Job("b", ["true"], deps=["a", "nope"])], tmp_path / "state")
    assert str(err.value) == "job b: unknown dependency 'nope'"
    assert sbatch_calls(fake) == []


def test_bad_job_fields_are_one_line_errors_naming_the_job():
    with pytest.raises(LaunchError, match=r"^job a: argv must be a non-empty list of strings, got 'echo hi'$"):
        Job("a", "echo hi")
    with pytest.raises(LaunchError, match=r"^job a: unknown resources \['gpu'\]; known: gpus, cpus, mem_gb, "):
        Job("a", ["true"], resources={"gpu": 1})
    with pytest.raises(LaunchError, match=r"^job a: extra_sbatch entries must be sbatch flags"):
        Job("a", ["true"], resources={"extra_sbatch": ["qos=high"]})
    with pytest.raises(LaunchError, match=r"^job a: env name 'A-B' is not a valid shell variable name$"):
        Job("a", ["true"], env={"A-B": "1"})


def test_missing_sbatch_is_a_launch_error_naming_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LaunchError) as err:
        submit([Job("exp1/prepare", ["true"])], tmp_path / "state")
    assert str(err.value) == ("job exp1/prepare: sbatch not found on PATH: is this a Slurm login node? "
                              "(install slurm-client)")


def test_shared_stages_are_submitted_once_and_dependents_wait_on_that_one_job(tmp_path, fake):
    """Two experiments share the prepare stage (same key) and an SFT (same share_key, different keys)."""
    jobs = []
    for exp in ("exp1", "exp2"):
        jobs += [
            Job("shared/prepare", ["prep"]),
            Job(f"{exp}/train/sft", ["sft"], deps=["shared/prepare"], share_key="sft-9f3a"),
            Job(f"{exp}/eval", ["eval", exp], deps=[f"{exp}/train/sft"]),
        ]
    result = submit(jobs, tmp_path / "state")
    assert result.submitted == {"shared/prepare": "101", "sft-9f3a": "102", "exp1/eval": "103", "exp2/eval": "104"}
    calls = sbatch_calls(fake)
    assert [c[2] for c in calls] == ["--job-name=shared/prepare", "--job-name=sft-9f3a", "--job-name=exp1/eval",
                                     "--job-name=exp2/eval"]
    assert [c[7] for c in calls[1:]] == ["--dependency=afterok:101", "--dependency=afterok:102",
                                         "--dependency=afterok:102"]
    jobs_json = json.loads((tmp_path / "state" / "jobs.json").read_text())["jobs"]
    assert jobs_json["sft-9f3a"]["keys"] == ["exp1/train/sft", "exp2/train/sft"]
    assert (tmp_path / "state" / "scripts").glob("*.sh") and sorted(
        p.name for p in (tmp_path / "state" / "scripts").glob("*.sh")) == sorted(
        f"{n}.sh" for n in ("shared_prepare-" + _h("shared/prepare"), "sft-9f3a-" + _h("sft-9f3a"),
                            "exp1_eval-" + _h("exp1/eval"), "exp2_eval-" + _h("exp2/eval")))


def _h(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:8]


def test_shared_key_with_a_different_command_is_rejected(tmp_path, fake):
    jobs = [Job("exp1/sft", ["sft", "--lr", "1"], share_key="sft"), Job("exp2/sft", ["sft", "--lr", "2"], share_key="sft")]
    with pytest.raises(LaunchError) as err:
        submit(jobs, tmp_path / "state")
    assert str(err.value) == "job exp2/sft: shares 'sft' with exp1/sft but its argv differ"
    assert sbatch_calls(fake) == []


def test_done_jobs_are_not_submitted_and_dependents_do_not_wait_for_them(tmp_path, fake):
    jobs = diamond(tmp_path / "work")
    jobs[3].done = True  # exp1/prepare
    result = submit(jobs, tmp_path / "state")
    assert result == SubmitResult(submitted={"exp1/train/sft": "101", "exp1/eval/base": "102", "exp1/report": "103"},
                                  done=["exp1/prepare"])
    assert [any(a.startswith("--dependency") for a in c) for c in sbatch_calls(fake)] == [False, False, True]


def _marker(state: Path, stem: str, job_id: str, code: int | None) -> None:
    (state / "markers" / f"{stem}.{job_id}.start").write_text("1\n")
    if code is not None:
        (state / "markers" / f"{stem}.{job_id}.exit").write_text(f"{code}\n")


def test_rerun_keeps_running_jobs_resubmits_failed_ones_and_replaces_blocked_dependents(tmp_path, fake):
    state = tmp_path / "state"
    submit(diamond(tmp_path / "work"), state)  # prepare 101, sft 102, eval 103, report 104
    _marker(state, "exp1_prepare-059fab57", "101", 0)
    _marker(state, "exp1_train_sft-838026de", "102", 1)
    (fake / "squeue.txt").write_text("103|RUNNING|None\n104|PENDING|DependencyNeverSatisfied\n")
    out = io.StringIO()
    rows = status(state, out=out)
    assert {k: (r.state, r.exit_code) for k, r in rows.items()} == {
        "exp1/prepare": ("done", 0), "exp1/eval/base": ("running", None), "exp1/train/sft": ("failed", 1),
        "exp1/report": ("blocked", None)}
    sft_err = f"{state}/logs/exp1_train_sft-838026de.102.err"
    assert out.getvalue() == (
        "KEY             JOB  STATE    DETAIL\n"
        "exp1/prepare    101  done\n"
        "exp1/eval/base  103  running\n"
        f"exp1/train/sft  102  failed   exit 1, see {sft_err}\n"
        "exp1/report     104  blocked  never runs: waits on exp1/train/sft (failed)\n"
        "1 blocked, 1 done, 1 failed, 1 running\n")

    result = submit(diamond(tmp_path / "work"), state)
    assert result == SubmitResult(submitted={"exp1/train/sft": "105", "exp1/report": "106"},
                                  queued={"exp1/eval/base": "103"}, done=["exp1/prepare"],
                                  cancelled={"exp1/report": "104"})
    assert (fake / "scancel.log").read_text() == "104\n"
    calls = sbatch_calls(fake)
    assert "--dependency=afterok:105:103" in calls[5]
    jobs = json.loads((state / "jobs.json").read_text())["jobs"]
    assert (jobs["exp1/train/sft"]["history"], jobs["exp1/report"]["history"]) == (["102"], ["104"])


def test_status_tells_died_cancelled_and_pending_apart(tmp_path, fake):
    state = tmp_path / "state"
    submit([Job("a", ["true"]), Job("b", ["true"]), Job("c", ["true"]), Job("d", ["true"], deps=["c"])], state)
    _marker(state, "a-ca978112", "101", None)  # started, never wrote an exit code: killed
    (fake / "squeue.txt").write_text("104|PENDING|Dependency\n")  # b (102) left without starting; c (103) too
    rows = status(state, out=None)
    assert {k: (r.state, r.detail) for k, r in rows.items()} == {
        "a": ("died", f"killed without an exit code (time limit, memory, scancel?), see {state}/logs/a-ca978112.101.err"),
        "b": ("cancelled", "left the queue without running"),
        "c": ("cancelled", "left the queue without running"),
        "d": ("pending", "Dependency"),
    }
    # and a rerun resubmits a, b, c and replaces d, which waits on c's old id
    result = submit([Job("a", ["true"]), Job("b", ["true"]), Job("c", ["true"]), Job("d", ["true"], deps=["c"])], state)
    assert result == SubmitResult(submitted={"a": "105", "b": "106", "c": "107", "d": "108"}, cancelled={"d": "104"})


def test_same_key_with_a_new_command_cancels_the_queued_old_job(tmp_path, fake):
    state = tmp_path / "state"
    submit([Job("a", ["train", "--lr", "1"])], state)
    (fake / "squeue.txt").write_text("101|PENDING|Priority\n")
    result = submit([Job("a", ["train", "--lr", "2"])], state)
    assert result == SubmitResult(submitted={"a": "102"}, cancelled={"a": "101"})


def test_status_of_an_empty_state_dir_says_so(tmp_path, fake):
    out = io.StringIO()
    assert status(tmp_path / "state", out=out) == {}
    assert out.getvalue() == "no jobs recorded\n"


# ------------------------------------------------------------------------------------------------ real cluster


@pytest.fixture(scope="module")
def cluster():
    """One real single-node Slurm for this module; skipped with the reason when it cannot start."""
    from slurm_cluster import SlurmUnavailable, start_cluster

    try:
        c = start_cluster()
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm cluster: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        yield c
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        c.stop()


def traced(key: str, trace: Path, extra: str = "") -> list[str]:
    """A command that logs `<key> start <t>`, sleeps 1 s, runs `extra`, then logs `<key> end <t>`."""
    script = ('echo "$1 start $(date +%s.%N)" >> "$2"; sleep 1; ' + (extra + "; " if extra else "")
              + 'echo "$1 end $(date +%s.%N)" >> "$2"')
    return ["bash", "-c", script, "_", key, str(trace)]


def read_trace(trace: Path) -> dict[tuple[str, str], float]:
    if not trace.exists():
        return {}
    return {(k, what): float(t) for k, what, t in (ln.split() for ln in trace.read_text().splitlines())}


def wait_gone(state: Path, timeout_s: float = 30) -> None:
    """Until Slurm lists none of the recorded jobs (so a blocked job's kill-on-invalid-dep has happened)."""
    ids = [r["job_id"] for r in json.loads((state / "jobs.json").read_text())["jobs"].values()]
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "jobs still queued"
        time.sleep(0.2)


def test_cluster_runs_a_diamond_in_dependency_order_and_a_rerun_submits_nothing(cluster, tmp_path):
    state, trace = tmp_path / "state", tmp_path / "trace.txt"
    token_file = tmp_path / "token.txt"
    jobs = [
        Job("a", traced("a", trace), workdir=tmp_path, resources={"cpus": 1, "mem_gb": 0.1, "time_min": 5}),
        Job("b", traced("b", trace), deps=["a"], workdir=tmp_path),
        Job("c", traced("c", trace), deps=["a"], workdir=tmp_path),
        Job("d", traced("d", trace, f'printf %s "$MY_TOKEN" > {token_file}'), deps=["b", "c"], workdir=tmp_path,
            env={"MY_TOKEN": SECRET, "PLAIN": "x"}),
    ]
    t0 = time.monotonic()
    result = submit(jobs, state)
    assert list(result.submitted) == ["a", "b", "c", "d"]
    rows = wait(state, timeout_s=40, poll_s=0.3)
    turnaround = time.monotonic() - t0
    assert {k: (r.state, r.exit_code) for k, r in rows.items()} == {
        "a": ("done", 0), "b": ("done", 0), "c": ("done", 0), "d": ("done", 0)}
    t = read_trace(trace)
    assert t[("a", "end")] < t[("b", "start")] and t[("a", "end")] < t[("c", "start")]
    assert max(t[("b", "end")], t[("c", "end")]) < t[("d", "start")]
    assert len(t) == 8  # each job ran exactly once
    assert token_file.read_text() == SECRET  # the secret reached the job through sbatch's environment
    assert [p.name for p in state.rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")] == []
    assert turnaround < 30

    again = submit(jobs, state)
    assert again == SubmitResult(done=["a", "b", "c", "d"])


def test_cluster_failed_job_blocks_its_dependents_and_a_rerun_after_the_fix_resubmits_only_those(cluster, tmp_path):
    state, trace, fixed = tmp_path / "state", tmp_path / "trace.txt", tmp_path / "fixed"
    jobs = [
        Job("a", traced("a", trace), workdir=tmp_path),
        Job("b", traced("b", trace, f"test -f {fixed} || exit 3"), deps=["a"], workdir=tmp_path),
        Job("c", traced("c", trace), deps=["b"], workdir=tmp_path),
        Job("d", traced("d", trace), deps=["c"], workdir=tmp_path),
        Job("e", traced("e", trace), deps=["a"], workdir=tmp_path),
    ]
    first = submit(jobs, state)
    wait(state, timeout_s=40, poll_s=0.3)
    wait_gone(state)
    out = io.StringIO()
    rows = status(state, out=out)
    assert {k: (r.state, r.exit_code, r.detail) for k, r in rows.items()} == {
        "a": ("done", 0, ""),
        "b": ("failed", 3, f"exit 3, see {state}/logs/b-3e23e816.{first.submitted['b']}.err"),
        "e": ("done", 0, ""),
        "c": ("blocked", None, "never runs: waits on b (failed)"),
        "d": ("blocked", None, "never runs: waits on c (blocked)"),
    }
    assert out.getvalue().splitlines()[-1] == "2 blocked, 2 done, 1 failed"
    assert sorted(k for k, what in read_trace(trace) if what == "start") == ["a", "b", "e"]  # c, d never ran

    fixed.touch()
    second = submit(jobs, state)
    assert (list(second.submitted), second.queued, second.done, second.cancelled) == (["b", "c", "d"], {}, ["a", "e"], {})
    rows = wait(state, timeout_s=40, poll_s=0.3)
    assert {k: r.state for k, r in rows.items()} == {"a": "done", "b": "done", "e": "done", "c": "done", "d": "done"}
    t = read_trace(trace)
    assert t[("b", "end")] < t[("c", "start")] < t[("c", "end")] < t[("d", "start")]
    history = json.loads((state / "jobs.json").read_text())["jobs"]["b"]["history"]
    assert history == [first.submitted["b"]]
    assert submit(jobs, state) == SubmitResult(done=["a", "b", "e", "c", "d"])  # topological order


def test_cluster_job_cancelled_while_running_shows_as_died_and_is_resubmitted(cluster, tmp_path):
    state = tmp_path / "state"
    first = submit([Job("long", ["sleep", "60"], workdir=tmp_path)], state)
    job_id = first.submitted["long"]
    deadline = time.monotonic() + 20
    while status(state, out=None)["long"].state != "running" or not list((state / "markers").glob("*.start")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], check=True)
    rows = wait(state, timeout_s=20, poll_s=0.3)
    assert (rows["long"].state, rows["long"].exit_code) == ("died", None)
    second = submit([Job("long", ["true"], workdir=tmp_path)], state)  # same key, new command
    assert list(second.submitted) == ["long"] and second.cancelled == {}
    assert wait(state, timeout_s=20, poll_s=0.3)["long"].state == "done"


def test_cluster_that_cannot_start_is_reported_with_the_daemons_fatal_log_line(tmp_path):
    """What the skip message of the cluster tests says when a daemon dies: the fatal line of its log."""
    from slurm_cluster import SlurmUnavailable, ensure_packages, start_cluster

    if os.geteuid() != 0:
        pytest.skip(f"starting Slurm daemons needs root; this is uid {os.geteuid()}")
    try:
        ensure_packages()
    except SlurmUnavailable as e:
        pytest.skip(f"no Slurm packages: {e}")
    with pytest.raises(SlurmUnavailable) as err:
        start_cluster(conf_overrides={"SelectType": "select/bogus"})
    parts = str(err.value).split(" | ")  # each daemon that died by the time we looked, with its fatal line
    assert 1 <= len(parts) <= 2, str(err.value)
    for part in parts:
        assert re.fullmatch(r"(slurmctld exited with code 1: slurmctld\.log: \[[0-9T:.-]+\] |slurmd exited with code 1: "
                            r"slurmd\.stdout: slurmd: )fatal: Can't find plugin for select/bogus", part), part


def test_cluster_needs_root_and_says_so(monkeypatch):
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.SlurmUnavailable) as err:
        slurm_cluster.start_cluster()
    assert str(err.value) == "the test Slurm cluster runs its daemons as root; this is uid 1000"
