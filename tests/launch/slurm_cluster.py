"""A real one-node SLURM cluster on localhost for tests: munged + slurmctld + slurmd as root.

Two partitions on the node: ``debug`` (default) and ``urgent``, whose jobs preempt ``debug``'s
(``preempt/partition_prio``, ``PreemptMode=REQUEUE``).

Everything lives in one private directory (config, state, spool, logs, munge socket and key), on
free ports, so it neither needs nor touches /etc/slurm or a system munged. Debian's ``slurm-wlm``
and ``munge`` are installed with apt when missing.

By hand (as root)::

    python tests/launch/slurm_cluster.py /tmp/slurm     # starts it; Ctrl-C stops it
    SLURM_CONF=/tmp/slurm/slurm.conf sinfo
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")


class ClusterError(RuntimeError):
    pass


def _missing_binaries() -> list[str]:
    paths = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=paths) is None]


def ensure_installed(log=print) -> float:
    """Install slurm-wlm and munge with apt-get when missing. Returns the seconds it took (0 if present)."""
    missing = _missing_binaries()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise ClusterError(f"SLURM binaries {missing} are missing and installing them needs root "
                           f"(apt-get install -y {' '.join(PACKAGES)})")
    if shutil.which("apt-get") is None:
        raise ClusterError(f"SLURM binaries {missing} are missing and apt-get is not available: "
                           f"install {' '.join(PACKAGES)} (Debian/Ubuntu packages) by hand")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
    still = _missing_binaries()
    if still:
        raise ClusterError(f"apt-get installed {PACKAGES} but {still} are still missing")
    elapsed = time.monotonic() - start
    log(f"installed {' '.join(PACKAGES)} in {elapsed:.1f} s")
    return elapsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


class LocalSlurm:
    """munged, slurmctld and slurmd for NodeName=localhost, all under ``root``."""

    def __init__(self, root: Path, cpus: int | None = None, partition: str = "debug",
                 urgent_partition: str = "urgent"):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.partition = partition
        # Jobs there preempt the default partition's jobs (PreemptMode=REQUEUE: SLURM requeues them).
        self.urgent_partition = urgent_partition
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"

    # -- environment for clients (sbatch, squeue, ...) --------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        if "/usr/sbin" not in path.split(":"):
            path += ":/usr/sbin:/sbin"
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}\n"
                               f"{self.logs_tail()}")
        return proc

    # -- set-up --------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=nvlmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
PlugStackConfig={r}/plugstack.conf
KillWait=30
MinJobAge=600
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName={self.urgent_partition} Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
""")
        (r / "plugstack.conf").write_text("")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start(self, timeout: float = 60) -> LocalSlurm:
        if os.geteuid() != 0:
            raise ClusterError("the local SLURM cluster runs slurmd as root: run the tests as root")
        self._write_config()
        key = self.root / "munge" / "munge.key"
        subprocess.run([_sbin("mungekey"), "--create", "--force", f"--keyfile={key}"], check=True,
                       capture_output=True)
        os.chmod(key, 0o600)
        self._spawn("munged", [_sbin("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.root}/munge/munged.pid",
                               f"--seed-file={self.root}/munge/munged.seed",
                               f"--log-file={self.root}/log/munged.log"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged to create its socket")
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0
                   and "UP" in self.run("scontrol", "ping", check=False).stdout, timeout, "slurmctld")
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "slurmd to register the node as idle")
        return self

    def _node_idle(self) -> bool:
        proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        state = proc.stdout.strip().lower()
        if "drain" in state or "down" in state:
            # A node that registered with fewer resources than configured, or an old state: clear it.
            self.run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
        return proc.returncode == 0 and state.startswith("idle")

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                                       f"{self.logs_tail()}")
            if ok():
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs_tail()}")

    def logs_tail(self, chars: int = 2000) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace")[-chars:]
            if text.strip():
                parts.append(f"--- {f.name} ---\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        # Cancel what is left and let the jobs finish completing while slurmd and slurmctld still run
        # (a job step whose daemons are gone lingers), then stop the daemons, slurmd first.
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", check=False, timeout=30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                proc = self.run("squeue", "-h", "-o", "%i", check=False, timeout=30)
                if proc.returncode != 0 or not proc.stdout.strip():
                    break
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Kill processes of this cluster that outlived its daemons (slurmstepd and job processes).

        They are recognised by SLURM_CONF=<this cluster's slurm.conf> in their environment, which
        slurmd passes to slurmstepd and every job inherits, and by being a slurmstepd or part of a
        job (SLURM_JOB_ID set): a shell that merely exported SLURM_CONF is left alone.
        """
        marker = f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            in_job = comm == "slurmstepd" or any(e.startswith(b"SLURM_JOB_ID=") for e in environ)
            if marker in environ and in_job:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)

    # -- jobs ----------------------------------------------------------------------------------------
    def sbatch(self, *args: str, cwd: Path | None = None) -> int:
        proc = subprocess.run(["sbatch", "--parsable", *args], env=self.env, capture_output=True, text=True,
                              cwd=cwd, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs_tail()}")
        return int(proc.stdout.strip().split(";")[0])

    def job_state(self, job_id: int) -> tuple[str, str, int]:
        """(state, reason, restart count) from scontrol; MinJobAge keeps finished jobs visible."""
        proc = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        fields = dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)
        return fields.get("JobState", "UNKNOWN"), fields.get("Reason", ""), int(fields.get("Restarts", "0"))

    def job_processes(self, job_id: int, settle_s: float = 15) -> list[str]:
        """``pid comm`` of live processes of a job (SLURM_JOB_ID in their environment), after giving
        them ``settle_s`` seconds to go once the job has ended."""
        marker = f"SLURM_JOB_ID={job_id}".encode()
        deadline = time.monotonic() + settle_s
        while True:
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text()
                    environ = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if marker in environ and stat[stat.rfind(")") + 2:].split()[0] != "Z":
                    found.append(f"{entry.name} {stat[stat.find('(') + 1:stat.rfind(')')]}")
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def wait_job(self, job_id: int, timeout: float, done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                          "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                                                          "DEADLINE", "PREEMPTED")) -> str:
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            state = self.job_state(job_id)[0]
            if state in done:
                return state
            time.sleep(1)
        raise ClusterError(f"job {job_id} still {state} after {timeout:.0f} s\n{self.logs_tail()}")


def _main() -> None:
    def _stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT may be ignored when started in the background
        signal.signal(sig, _stop)
    ensure_installed()
    cluster = LocalSlurm(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/nvlm-slurm"))
    try:
        cluster.start()
        print(f"SLURM up: export SLURM_CONF={cluster.conf}   (Ctrl-C or SIGTERM stops it)", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not interrupt the tear-down
        cluster.stop()


if __name__ == "__main__":
    _main()
