"""A real one-node Slurm cluster for tests: munged + slurmctld + slurmd under a temp dir, started and stopped here.

`start_cluster()` installs the Debian packages `slurm-wlm` and `munge` when `slurmctld` is missing (apt-get,
as root; `apt-get update` only if the install fails without it), writes a munge key and a one-node
`slurm.conf` (free ports, every state/spool/log/pid file under the temp dir, munge on its own socket), starts
the three daemons in the foreground as our child processes and waits until `sinfo` shows the node idle.
`SlurmCluster.stop()` cancels the jobs, stops the daemons, ends the job processes they left (found by our
`SLURM_CONF` in their environment) and removes the temp dir.

Nothing here touches the system's own Slurm/munge config (/etc/slurm, /etc/munge): clients reach this cluster
only through `SLURM_CONF=<tmp>/slurm.conf` (`cluster.env`). When anything cannot be set up, `SlurmUnavailable`
carries a one-line reason with the relevant line of the daemon's log, for the tests' skip message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")
START_TIMEOUT_S = 30.0


class SlurmUnavailable(RuntimeError):
    """Why a cluster could not be started (one line, for pytest.skip)."""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    host: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # install_s, start_s (measured here)

    @property
    def env(self) -> dict[str, str]:
        """The environment for client commands (sbatch, squeue, ...) that talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def stop(self) -> None:
        """Cancel jobs, stop the daemons we started, end job processes they left, remove the temp dir."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pid in _job_processes(self.conf):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _job_processes(conf: Path) -> list[int]:
    """slurmstepd and job processes of *this* cluster: their environment carries our SLURM_CONF.

    slurmstepd daemonizes (its parent is init), so it is not a child of our slurmd; the job's own processes
    also have SLURM_JOB_ID. The test process itself has SLURM_CONF but no SLURM_JOB_ID and is not slurmstepd.
    """
    ours = f"SLURM_CONF={conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if ours in environ and (comm == "slurmstepd" or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
            pids.append(int(entry.name))
    return pids


def ensure_packages() -> float:
    """Install slurm-wlm and munge with apt-get when a daemon is missing; returns seconds spent (0 if present)."""
    if all(shutil.which(d) for d in DAEMONS):
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"Slurm is not installed and we are not root (uid {os.geteuid()}): "
                               f"apt-get install {' '.join(PACKAGES)}")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get to install it")
    t0 = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:  # usually stale package lists on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {_last_line(proc.stderr or proc.stdout)}")
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        raise SlurmUnavailable(f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing)} is not on PATH")
    return time.monotonic() - t0


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048


def _log_reason(path: Path) -> str:
    """The most telling line of a daemon log: the last fatal/error line, else the last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"{path.name}: no log"
    for word in ("fatal", "error"):
        hits = [ln for ln in lines if word in ln.lower() and "pmix" not in ln.lower() and "state file" not in ln.lower()
                and "trying backup" not in ln.lower() and "mailprog" not in ln.lower()]
        if hits:
            return f"{path.name}: {hits[-1]}"
    return f"{path.name}: {lines[-1]}" if lines else f"{path.name}: empty log"


def write_conf(root: Path, host: str, ctld_port: int, slurmd_port: int, cpus: int, mem_mb: int,
               overrides: Mapping[str, str] | None = None) -> Path:
    """A one-node slurm.conf with every path under `root` (munge on `root/munge/munge.socket`).

    `overrides` replaces the value of a top-level `Key=value` line (tests use it to break the config on purpose).
    """
    conf = root / "slurm.conf"
    lines = [
        "ClusterName=rutune-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "MailProg=/bin/true",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        # schedule right after each submit/completion: ~0.5 s per dependency hop instead of ~3 s (measured)
        "SchedulerParameters=sched_min_interval=100000,batch_sched_delay=0",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    for key, value in (overrides or {}).items():
        lines = [f"{key}={value}" if ln.split("=", 1)[0] == key else ln for ln in lines]
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start_cluster(conf_overrides: Mapping[str, str] | None = None) -> SlurmCluster:
    """Install if needed, start munged/slurmctld/slurmd, wait for an idle node; raises SlurmUnavailable."""
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"the test Slurm cluster runs its daemons as root; this is uid {os.geteuid()}")
    install_s = ensure_packages()
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="rutune-slurm-"))
    root.chmod(0o755)  # munged refuses a socket whose parent dirs are not searchable by all
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o755)
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    conf = write_conf(root, host, ctld_port, slurmd_port, cpus=min(2, os.cpu_count() or 1),
                      mem_mb=min(1024, _mem_mb() // 2), overrides=conf_overrides)
    cluster = SlurmCluster(root, conf, host, timings={"install_s": install_s})
    try:
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_sock = root / "munge" / "munge.socket"
        cluster.procs["munged"] = _spawn(root, "munged", [
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_sock}",
            f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/munged.seed"], cluster.env)
        _wait_for(lambda: munge_sock.exists(), cluster, "munged", root / "log" / "munged.log")
        cluster.procs["slurmctld"] = _spawn(root, "slurmctld", ["slurmctld", "-D", "-c"], cluster.env)
        cluster.procs["slurmd"] = _spawn(root, "slurmd", ["slurmd", "-D", "-N", host], cluster.env)

        def idle() -> bool:
            try:  # sinfo keeps retrying a controller that is not up yet (or died): ask briefly, often
                proc = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False, timeout=3)
            except subprocess.TimeoutExpired:
                return False
            return proc.returncode == 0 and proc.stdout.strip() == "idle"

        _wait_for(idle, cluster, "slurmd", root / "log" / "slurmd.log", other_log=root / "log" / "slurmctld.log")
    except BaseException:
        cluster.stop()
        raise
    cluster.timings["start_s"] = time.monotonic() - t0
    return cluster


@contextlib.contextmanager
def running_cluster() -> Iterator[SlurmCluster]:
    """A started cluster with `SLURM_CONF` pointing at it for this process (restored and stopped at the end);
    raises SlurmUnavailable like `start_cluster`."""
    cluster = start_cluster()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        cluster.stop()


def _spawn(root: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    out = open(root / "log" / f"{name}.stdout", "w")
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    finally:
        out.close()


def _wait_for(ready, cluster: SlurmCluster, name: str, log: Path, other_log: Path | None = None) -> None:
    """Poll `ready()` for START_TIMEOUT_S; if a daemon exits or time runs out, raise with its log's reason."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [(dname, proc.returncode) for dname, proc in cluster.procs.items() if proc.poll() is not None]
        if dead:
            reasons = []
            for dname, code in dead:
                dlog = cluster.root / "log" / f"{dname}.log"
                if not dlog.exists() or dlog.stat().st_size == 0:  # died before opening its log file
                    dlog = cluster.root / "log" / f"{dname}.stdout"
                reasons.append(f"{dname} exited with code {code}: {_log_reason(dlog)}")
            raise SlurmUnavailable(" | ".join(reasons))
        if ready():
            return
        time.sleep(0.2)
    reasons = [_log_reason(log)] + ([_log_reason(other_log)] if other_log else [])
    raise SlurmUnavailable(f"{name} not ready after {START_TIMEOUT_S:.0f} s: {' | '.join(reasons)}")
