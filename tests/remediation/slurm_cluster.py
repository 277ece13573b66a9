"""A real Slurm cluster on loopback: munged, slurmctld, and one slurmd per node.

Debian's slurm-wlm runs several slurmd on one host, each for its node name
(``slurmd -N``) on its own port, so a test gets a cluster whose nodes drain,
resume and show reasons exactly as a production controller does. Every daemon
runs in the foreground under this process, with its own munge key and socket,
so nothing touches the host's Slurm or munge.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.netutil import free_port, wait_for

SCONTROL = "/usr/bin/scontrol"


@dataclass(frozen=True)
class NodeState:
    state: str  # sinfo's long state: idle, drained, draining, down ...
    reason: str  # "none" when none


@dataclass
class SlurmCluster:
    base: Path
    nodes: tuple[str, ...]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def state(self, node: str) -> NodeState:
        line = self.run("sinfo", "--noheader", "--Node", "--nodes", node, "--format", "%T|%E")
        state, _, reason = line.strip().partition("|")
        return NodeState(state.rstrip("*"), reason)

    def states(self) -> dict[str, str]:
        return {node: self.state(node).state for node in self.nodes}

    def reset(self) -> None:
        """Every node back in service, as a new test expects."""
        for node in self.nodes:
            if self.state(node).state != "idle":
                self.run(SCONTROL, "update", f"NodeName={node}", "State=RESUME")
        wait_for("every Slurm node idle", lambda: set(self.states().values()) == {"idle"}, 60)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _config(base: Path, nodes: Sequence[str], socket_path: Path) -> str:
    lines = [
        "ClusterName=gpuwardtest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={socket_path}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={base}/state",
        f"SlurmdSpoolDir={base}/spool/%n",
        f"SlurmctldPidFile={base}/slurmctld.pid",
        f"SlurmdPidFile={base}/slurmd-%n.pid",
        f"SlurmctldLogFile={base}/slurmctld.log",
        f"SlurmdLogFile={base}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/linear",
        "MpiDefault=none",
        "ReturnToService=2",
    ]
    for node in nodes:
        lines.append(
            f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 "
            f"Port={free_port()} CPUs=1 State=UNKNOWN"
        )
    lines.append(f"PartitionName=gpu Nodes={','.join(nodes)} Default=YES State=UP")
    return "\n".join(lines) + "\n"


def slurm_cluster(nodes: Sequence[str]) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and a slurmd per node; yield once every node is idle."""
    # munged insists every folder above its socket is searchable by all, which
    # pytest's private temporary folders are not.
    base = Path(tempfile.mkdtemp(prefix="gpuward-slurm-", dir="/tmp"))
    base.chmod(0o755)
    cluster = SlurmCluster(base, tuple(nodes))
    munge = pwd.getpwnam("munge")
    munge_dir = base / "munge"
    munge_dir.mkdir(mode=0o755)
    os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    os.chown(key, munge.pw_uid, munge.pw_gid)
    socket_path = munge_dir / "munge.socket"
    for folder in ("state", "spool", *(f"spool/{n}" for n in nodes)):
        (base / folder).mkdir()
    cluster.conf.write_text(_config(base, nodes, socket_path))
    try:
        cluster.processes.append(
            subprocess.Popen(
                [
                    "/usr/sbin/runuser", "-u", "munge", "--",
                    "/usr/sbin/munged", "--foreground",
                    f"--socket={socket_path}", f"--key-file={key}",
                    f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                    f"--seed-file={munge_dir}/munged.seed",
                ]
            )
        )  # fmt: skip
        wait_for("munged's socket", socket_path.exists, 30)
        daemon = ["-D", "-f", str(cluster.conf)]
        cluster.processes.append(subprocess.Popen(["/usr/sbin/slurmctld", "-i", *daemon]))
        for node in nodes:
            cluster.processes.append(subprocess.Popen(["/usr/sbin/slurmd", "-N", node, *daemon]))
        wait_for(
            "every slurmd registered with slurmctld",
            lambda: _ready(cluster),
            90,
        )
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _ready(cluster: SlurmCluster) -> bool:
    done = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format", "%N %T"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return False
    states = dict(line.split() for line in done.stdout.splitlines())
    return all(states.get(node) == "idle" for node in cluster.nodes)
