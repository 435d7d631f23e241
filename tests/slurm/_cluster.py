"""A one-node SLURM cluster on localhost for tests: munged, slurmctld and slurmd in a private directory.

Everything (key, sockets, state, spool, logs, ports) lives in one temporary directory, so the
cluster neither needs nor touches ``/etc/slurm``, ``/etc/munge`` or a system munged. The daemons
run as root (slurmd must start jobs as their submitting user); :func:`unavailable` says why the
cluster cannot be made here (not root, or Debian's ``slurm-wlm`` / ``munge`` not installed).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalSlurm", "unavailable"]

_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def unavailable() -> str:
    """Why a local SLURM cluster cannot be started here ("" when it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs as their user); .ci/run installs it as root"
    missing = [p for p in _PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return ("Debian's slurm-wlm and munge are not installed (missing " + ", ".join(missing)
                + "); .ci/run installs them when it runs as root")
    return ""


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hardware() -> tuple[int, int]:
    """(CPUs, RealMemory MB) of this node as slurmd reports them (``slurmd -C``)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = re.search(r"CPUs=(\d+)", out)
    mem = re.search(r"RealMemory=(\d+)", out)
    return (int(cpus.group(1)) if cpus else (os.cpu_count() or 1)), (int(mem.group(1)) if mem else 1024)


@dataclass
class LocalSlurm:
    """A started one-node SLURM cluster (see :meth:`start`); :meth:`stop` ends its daemons.

    Attributes
    ----------
    root : Path -- the private directory.
    conf : Path -- its ``slurm.conf`` (``SLURM_CONF`` for the client commands).
    partition : str -- the one partition ("debug").
    cpus : int -- CPUs of the node (at least 2: two one-CPU jobs fit at once).
    env : dict -- ``os.environ`` plus ``SLURM_CONF``, for the client commands.
    """

    root: Path
    conf: Path
    partition: str = "debug"
    cpus: int = 2
    env: dict = field(default_factory=dict)
    _procs: list = field(default_factory=list)

    @classmethod
    def start(cls, root: str | os.PathLike, timeout: float = 60.0) -> "LocalSlurm":
        """Write the configuration, start munged, slurmctld and slurmd, wait until the node is idle.

        Raises
        ------
        RuntimeError
            When a daemon does not come up in ``timeout`` seconds (the message has its log's tail).
        """
        root = Path(root).absolute()
        for sub in ("munge", "state", "spool", "log", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = root / "munge" / "munge.socket"
        cpus, mem = _hardware()
        cpus = max(cpus, 2)
        host = socket.gethostname().split(".")[0]
        conf = root / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=subtomo-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=60",
            "SlurmdTimeout=60",
            "SlurmctldTimeout=60",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        env = dict(os.environ, SLURM_CONF=str(conf))
        self = cls(root=root, conf=conf, cpus=cpus, env=env)
        try:
            self._daemon([_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                          f"--pid-file={root / 'run' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                          f"--seed-file={root / 'munge' / 'munged.seed'}"], "munged.out")
            self._wait(lambda: sock.exists(), timeout, "munged", root / "log" / "munged.log")
            self._daemon([_which("slurmctld"), "-D", "-i", "-f", str(conf)], "slurmctld.out")
            self._wait(lambda: self._run(["sinfo", "-h"]).returncode == 0, timeout, "slurmctld",
                       root / "log" / "slurmctld.log")
            self._daemon([_which("slurmd"), "-D", "-f", str(conf)], "slurmd.out")
            self._wait(lambda: "idle" in self._run(["sinfo", "-h", "-o", "%T"]).stdout, timeout, "slurmd",
                       root / "log" / "slurmd.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _daemon(self, argv: list[str], out: str) -> None:
        fh = open(self.root / "log" / out, "wb")
        self._procs.append(subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True))
        fh.close()

    def _wait(self, ready, timeout: float, name: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self._procs and self._procs[-1].poll() is not None:
                break
            time.sleep(0.5)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RuntimeError(f"{name} did not come up; log tail:\n{tail}")

    def _run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of the jobs slurmctld knows (``squeue``)."""
        out = self._run(["squeue", "-h", "-o", "%i %T"]).stdout
        return [tuple(line.split()[:2]) for line in out.splitlines() if line.strip()]

    def scancel(self, job_id: str) -> None:
        """Cancel one job (``scancel``); raises CalledProcessError when scancel fails."""
        res = self._run(["scancel", str(job_id)])
        res.check_returncode()

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (in that order)."""
        if self._procs:
            try:
                self._run(["scancel", "--quiet", "--user", "root"], timeout=15)
            except Exception:
                pass
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._procs.clear()
