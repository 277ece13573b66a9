"""The README's install section as steps on a booted container.

The operator's workstation, the update server and a GPU host are one booted
Debian 12 here, and each step is what README "Install" tells a person to type,
command for command (only names, ports and the simulated GPUs differ), so a
test that passes through these steps has walked the path a user walks.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from pathlib import Path
from typing import Any

from tests.netutil import free_port, wait_for
from tests.packaging.booted import Container, booted
from tests.packaging.conftest import Chroot

NODE = "gpu-node-0042"
PASSPHRASE = "correct-horse-battery-staple-42"
WORKSTATION = {"GPUWARD_KEY_PASSPHRASE": PASSPHRASE}
# Each root key's holder, their removable media and their own passphrase (README "Install").
HOLDERS = {name: (f"/media/{name}", f"{name}-{PASSPHRASE}") for name in ("alice", "bob", "carol")}
USB = "/media/usb"  # the removable media between workstation and server
REPO = "/srv/gpuward/repo"  # the workstation's repository


def payload(c: Container, version: str) -> None:
    """A driver bundle as an operator builds it: here a stand-in NVML library."""
    c.sh(
        f"mkdir -p /root/nvidia-{version}/lib && "
        f"echo 'NVML {version}' > /root/nvidia-{version}/lib/libnvidia-ml.so.1"
    )
    c.run(
        "gpuward", "bundle", "build", f"/root/nvidia-{version}/", "--driver-version", version,
        "--branch", "R580", "--payload-kind", "files", "--dkms",
        "-o", f"/root/nvidia-{version}.bundle",
    )  # fmt: skip


def publish(c: Container, version: str) -> None:
    """README: a later bundle reaches the server as it reaches a mirror."""
    payload(c, version)
    c.run("gpuward", "repo", "add", f"/root/nvidia-{version}.bundle", "--repo", REPO,
          env=WORKSTATION)  # fmt: skip
    c.run("gpuward", "mirror", "export", "--repo", REPO, "--to", f"{USB}/update.tar")
    c.run("gpuward", "mirror", "import", f"{USB}/update.tar",
          "--repo", "/var/lib/gpuward-server/repo")  # fmt: skip
    c.run("rm", f"{USB}/update.tar")


class Host:
    """The booted container (booted again after a power cut), and the operator's
    token for the server's API."""

    def __init__(
        self,
        rootfs: Chroot,
        logs: Path,
        boots: contextlib.ExitStack,
        binds: tuple[tuple[Path, str], ...] = (),
    ) -> None:
        self.rootfs = rootfs
        self.logs = logs
        self.boots = boots
        self.binds = binds
        self.port = free_port()
        self.token = ""
        self.c = self.boot()

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def boot(self) -> Container:
        console = self.logs / f"console-{len(list(self.logs.iterdir()))}.log"
        return self.boots.enter_context(booted(self.rootfs.root, console, self.binds))

    def power_cut_and_boot(self) -> None:
        self.c.power_cut()
        self.c = self.boot()

    def node(self) -> dict[str, Any]:
        shown = self.c.run(
            "gpuward", "nodes", "show", NODE, "--server", self.server, "--json", "--limit", "500",
            env={"GPUWARD_TOKEN": self.token},
        )  # fmt: skip
        return dict(json.loads(shown.stdout))

    def latest(self) -> dict[str, Any]:
        return dict(self.node()["report"] or {})

    def journal_state(self) -> dict[str, Any]:
        path = self.c.path("/var/lib/gpuward-applier/journal.json")
        return dict(json.loads(path.read_text())) if path.exists() else {}

    # README "Install", in its order.

    def workstation(self, first: str) -> None:
        """Keys, a first bundle, and the server's part on removable media."""
        c = self.c
        c.run("apt-get", "install", "-y", "gpuward-common")
        c.run("mkdir", "-p", USB)
        holders = [a for n, (d, _) in HOLDERS.items() for a in ("--root-holder", f"{n}={d}")]
        own = {f"GPUWARD_KEY_PASSPHRASE_{n.upper()}": p for n, (_, p) in HOLDERS.items()}
        c.run("gpuward", "keys", "init", REPO, *holders, env={**WORKSTATION, **own})
        payload(c, first)
        c.run("gpuward", "repo", "add", f"/root/nvidia-{first}.bundle", "--repo", REPO,
              env=WORKSTATION)  # fmt: skip
        c.run("gpuward", "repo", "export-server", "--repo", REPO, "--to", f"{USB}/gpuward-server")

    def install_server(self) -> None:
        self.c.run("apt-get", "install", "-y", "gpuward-server")

    def configure_server(self, settings: str) -> str:
        """The server's part in place, its settings, started; returns the
        enrollment token the nodes present."""
        c = self.c
        c.run("gpuward", "repo", "export-server", "--repo", f"{USB}/gpuward-server/repo",
              "--to", "/var/lib/gpuward-server")  # fmt: skip
        token = secrets.token_urlsafe(24)
        c.run("install", "-m", "0640", "-g", "gpuward-server", "/dev/stdin",
              "/etc/gpuward/server-enrollment-token", input=token)  # fmt: skip
        c.run("cp", "/opt/gpuward/share/doc/server.toml.example", "/etc/gpuward/server.toml")
        c.path("/etc/gpuward/server.toml").write_text(  # the operator's edit
            'repo = "/var/lib/gpuward-server/repo"\n'
            'db = "/var/lib/gpuward-server/server.db"\n'
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            "report_interval = 5\n" + settings
        )
        c.run("systemctl", "start", "gpuward-server")
        created = c.run(
            "gpuward", "server", "token", "create", "--role", "admin",
            "--db", "/var/lib/gpuward-server/server.db", "--name", "test-operator", "--json",
        )  # fmt: skip
        self.token = json.loads(created.stdout)["token"]
        wait_for(
            "the server to answer",
            lambda: c.run("gpuward", "nodes", "list", "--server", self.server, "--json",
                          check=False, env={"GPUWARD_TOKEN": self.token}).returncode == 0,
        )  # fmt: skip
        return token

    def install_node(self, token: str, settings: str) -> str:
        """The agent's package, its root of trust, token and settings, enrolled;
        returns what ``gpuward agent enroll`` printed."""
        c = self.c
        c.run("apt-get", "install", "-y", "gpuward-agent")
        c.run("cp", f"{REPO}/metadata/1.root.json", "/etc/gpuward/root.json")
        c.run("install", "-m", "0640", "-g", "gpuward", "/dev/stdin",
              "/etc/gpuward/enrollment-token", input=token)  # fmt: skip
        c.path("/etc/gpuward/agent.toml").write_text(  # the operator's edit
            f'node_id = "{NODE}"\n'
            f'server_url = "{self.server}"\n'
            'trusted_root = "/etc/gpuward/root.json"\n'
            'branch = "R580"\n'
            "interval_s = 2\n"
            'health_backend = "simulated"\n'
            'pool = "prod"\n'
            'enrollment_token_file = "/etc/gpuward/enrollment-token"\n' + settings
        )
        return c.run("gpuward", "agent", "enroll", "--config", "/etc/gpuward/agent.toml").stdout
