"""Real kernel nftables in network namespaces this suite creates.

Three namespaces joined by veth pairs: a "node" where the firewall is applied,
an "update server" and an "internet" host. Only namespaces created here are
touched (named ``gw-test-<random>``); the veth pairs are created directly inside
them, never in the host's namespace, and all of it is removed at teardown,
also when a test fails. Traffic goes only between these namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.firewall.nft import Nft
from node.firewall.policy import FirewallPolicy

PEER = str(Path(__file__).with_name("peer.py"))
SERVER_IP = "10.91.1.2"  # the update server, as the node sees it
INTERNET_IP = "10.91.2.2"  # a host the node must not reach
NODE_IP_TOWARDS_INTERNET = "10.91.2.1"
UPDATE_PORT = 8443
NOBODY = 65534
DROP_TIMEOUT_S = 1.0  # a dropped SYN never answers: this is how long a drop costs
REACH_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0


BASE_POLICY = {"resolvers": [SERVER_IP], "update_endpoints": [f"{SERVER_IP}:{UPDATE_PORT}"]}


def policy(**fields: Any) -> FirewallPolicy:
    """The base policy (resolver and update server on the server host), plus ``fields``."""
    return FirewallPolicy.from_dict({**BASE_POLICY, **fields})


def config_text(fields: dict[str, Any]) -> str:
    """An agent config file whose [firewall] table holds ``fields``.

    JSON spells strings, numbers and lists of them as TOML does; ``allow``
    entries become [[firewall.allow]] tables.
    """
    lines = ["[firewall]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items() if k != "allow"]
    for entry in fields.get("allow", []):
        lines += ["[[firewall.allow]]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def fake_dns(table: dict[str, list[str]]) -> Any:
    def resolver(name: str) -> list[str]:
        if name not in table:
            raise OSError(f"no such name {name}")
        return table[name]

    return resolver


@dataclass
class Net:
    node: str
    server: str
    internet: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def nft(self) -> Nft:
        return Nft(prefix=("ip", "netns", "exec", self.node))

    def serve(self, namespace: str, proto: str, host: str, port: int) -> None:
        """Start a peer answering ``ok`` and wait (bounded) until it listens."""
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                namespace,
                sys.executable,
                PEER,
                "serve",
                proto,
                host,
                str(port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
        assert ready and process.stdout.readline().strip() == "ready", "peer did not start"

    def reaches(
        self,
        proto: str,
        host: str,
        port: int,
        *,
        uid: int | None = None,
        prefix: Sequence[str] | None = None,
        timeout: float = REACH_TIMEOUT_S,
    ) -> bool:
        """Whether a connection from the node gets its ``ok`` back."""
        command = [*(prefix or ("ip", "netns", "exec", self.node))]
        if uid is not None:
            command += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        command += [sys.executable, PEER, "connect", proto, host, str(port), str(timeout)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 10)
        return done.returncode == 0

    def blocked(self, proto: str, host: str, port: int, **kwargs: Any) -> bool:
        return not self.reaches(proto, host, port, timeout=DROP_TIMEOUT_S, **kwargs)

    def nft_cli(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.node, "nft", *args).stdout

    def handle_of(self, comment: str) -> tuple[str, str, str]:
        """``CHAIN handle N`` of the live rule carrying ``comment``, for nft delete rule."""
        for obj in self.nft.list_table() or []:
            rule = obj.get("rule")
            if rule and rule.get("comment") == comment:
                return rule["chain"], "handle", str(rule["handle"])
        raise AssertionError(f"no live rule with comment {comment!r}")

    def counter(self, comment: str) -> int:
        for obj in self.nft.list_table() or []:
            rule = obj.get("rule")
            if rule and rule.get("comment") == comment:
                return sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        raise AssertionError(f"no live rule with comment {comment!r}")


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.fail("network namespaces and nftables need root: run the suite as root")
    tag = secrets.token_hex(3)
    names = [f"gw-test-{tag}-{role}" for role in ("node", "srv", "inet")]
    created: list[str] = []
    node, server, internet = names
    topology = Net(node, server, internet)
    try:
        for name in names:
            run("ip", "netns", "add", name)
            created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        for peer, node_ip, peer_ip in (
            (server, "10.91.1.1", SERVER_IP),
            (internet, NODE_IP_TOWARDS_INTERNET, INTERNET_IP),
        ):
            node_end = f"gw{peer_ip.split('.')[2]}"
            run(
                "ip",
                "-n",
                node,
                "link",
                "add",
                node_end,
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                peer,
            )
            run("ip", "-n", node, "addr", "add", f"{node_ip}/24", "dev", node_end)
            run("ip", "-n", peer, "addr", "add", f"{peer_ip}/24", "dev", "eth0")
            run("ip", "-n", node, "link", "set", node_end, "up")
            run("ip", "-n", peer, "link", "set", "eth0", "up")
        yield topology
    finally:
        for process in topology.processes:
            process.kill()
            process.wait(timeout=10)
        for name in created:
            run("ip", "netns", "del", name, check=False)


@dataclass
class CgroupSandbox:
    """A real cgroup v2 leaf, and a mount namespace where nft finds it.

    nft resolves ``socket cgroupv2`` paths below /sys/fs/cgroup; on a hybrid
    host cgroup v2 is mounted elsewhere, so nft runs in a private mount
    namespace with the cgroup v2 tree bound there. The host's mounts are
    untouched.
    """

    name: str  # the path below the cgroup v2 root
    host_path: Path
    cgroup_root: Path
    holder: subprocess.Popen[str]

    def nft_prefix(self, netns: str) -> tuple[str, ...]:
        return ("nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--net=/run/netns/{netns}")

    def inside(self, netns: str) -> tuple[str, ...]:
        """A command prefix that runs in ``netns`` as a member of this cgroup."""
        procs = self.host_path / "cgroup.procs"
        return (
            "nsenter",
            f"--net=/run/netns/{netns}",
            "sh",
            "-c",
            f'echo $$ > {procs} && exec "$@"',
            "sh",
        )


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mountpoint)
    return None


@pytest.fixture
def cgroup_sandbox() -> Iterator[CgroupSandbox]:
    root = _cgroup2_mount()
    if root is None:
        pytest.fail("this kernel has no cgroup v2 hierarchy mounted; the cgroup tests need one")
    name = f"gw-test-{secrets.token_hex(3)}"
    host_path = root / name
    host_path.mkdir()
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"], text=True
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        own = os.readlink("/proc/self/ns/mnt")
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == own:
            assert time.monotonic() < deadline, "unshare did not enter a new mount namespace"
            time.sleep(0.01)
        if root != Path("/sys/fs/cgroup"):
            run(
                "nsenter",
                f"--mount=/proc/{holder.pid}/ns/mnt",
                "mount",
                "--bind",
                str(root),
                "/sys/fs/cgroup",
            )
        yield CgroupSandbox(name=name, host_path=host_path, cgroup_root=root, holder=holder)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        host_path.rmdir()
