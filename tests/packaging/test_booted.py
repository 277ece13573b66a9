"""The whole loop as a user installs it: the .deb packages on a booted Debian 12.

One container (systemd as PID 1, Debian's own Python 3.11.2) is the operator's
workstation, the update server and a GPU host at once, and every step is the
README's install section, command for command, with systemd starting every
gpuward process: the server from /etc/gpuward/server.toml, the agent, and the
root applier through ``gpuward-apply.path``. The tests share that container
and run in order, as a host lives: first update committed, a failing driver
rolled back, a tampered spool refused, a power cut between switch and commit,
and last the purge, which must leave nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.booted import Container, booted, wait_for
from tests.packaging.conftest import Built, Chroot, unpacked

NODE = "gpu-node-0042"
GOOD, BAD, THIRD = "580.65.06", "580.82.07", "580.95.05"
PASSPHRASE = "correct-horse-battery-staple-42"
WORKSTATION = {"GPUWARD_KEY_PASSPHRASE": PASSPHRASE}
USB = "/media/usb"
# The smoke test the power-cut test holds between switch and commit.
SMOKE = "/usr/local/bin/gpu-smoke-test"
# On disk, not under /run: the test reads them from outside the container.
SMOKE_HOLD, SMOKE_STARTED = "/etc/gpuward/hold-smoke-test", "/var/lib/smoke-test-started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    c.run("gpuward", "repo", "add", f"/root/nvidia-{version}.bundle", "--repo", "/srv/gpuward/repo",
          env=WORKSTATION)  # fmt: skip
    c.run("gpuward", "mirror", "export", "--repo", "/srv/gpuward/repo", "--to", f"{USB}/update.tar")
    c.run("gpuward", "mirror", "import", f"{USB}/update.tar",
          "--repo", "/var/lib/gpuward-server/repo")  # fmt: skip
    c.run("rm", f"{USB}/update.tar")


class Host:
    """The booted container, and the operator's token for the server's API."""

    def __init__(self, rootfs: Chroot, logs: Path, boots: contextlib.ExitStack) -> None:
        self.rootfs = rootfs
        self.logs = logs
        self.boots = boots
        self.port = free_port()
        self.token = ""
        self.c = self.boot()

    def boot(self) -> Container:
        console = self.logs / f"console-{len(list(self.logs.iterdir()))}.log"
        return self.boots.enter_context(booted(self.rootfs.root, console))

    def power_cut_and_boot(self) -> None:
        self.c.power_cut()
        self.c = self.boot()

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


@pytest.fixture(scope="module")
def rootfs(
    chroot_tarball: Path, built: Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    """Debian 12 (minbase, systemd) whose only apt source is the signed gpuward repository."""
    with unpacked(chroot_tarball, tmp_path_factory.mktemp("booted") / "root") as tree:
        tree.trust_repository(built.apt, built.keyring)
        tree.run("apt-get", "update")
        yield tree


@pytest.fixture(scope="module")
def host(rootfs: Chroot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    with contextlib.ExitStack() as boots:
        yield Host(rootfs, tmp_path_factory.mktemp("consoles"), boots)


def test_server_starts_from_server_toml_through_its_unit(host: Host) -> None:
    c = host.c
    # The operator's workstation (README "Install"): keys, a first bundle, the
    # server's part of the repository carried over on removable media.
    c.run("apt-get", "install", "-y", "gpuward-common")
    c.run("mkdir", "-p", USB)  # the removable media
    c.run("gpuward", "keys", "init", "/srv/gpuward/repo", env=WORKSTATION)
    payload(c, GOOD)
    c.run("gpuward", "repo", "add", f"/root/nvidia-{GOOD}.bundle", "--repo", "/srv/gpuward/repo",
          env=WORKSTATION)  # fmt: skip
    c.run("gpuward", "repo", "export-server", "--repo", "/srv/gpuward/repo",
          "--to", f"{USB}/gpuward-server")  # fmt: skip

    # The server host.
    c.run("apt-get", "install", "-y", "gpuward-server")
    # Installed but not configured: skipped, and the journal says why.
    c.run("systemctl", "start", "gpuward-server")
    assert c.run("systemctl", "is-active", "gpuward-server", check=False).stdout.strip() == (
        "inactive"
    )
    assert "ConditionPathExists=/etc/gpuward/server.toml" in c.journal("-u", "gpuward-server")

    c.run("gpuward", "repo", "export-server", "--repo", f"{USB}/gpuward-server/repo",
          "--to", "/var/lib/gpuward-server")  # fmt: skip
    token = secrets.token_urlsafe(24)
    c.run("install", "-m", "0640", "-g", "gpuward-server", "/dev/stdin",
          "/etc/gpuward/server-enrollment-token", input=token)  # fmt: skip
    c.path("/etc/gpuward/server.toml").write_text(
        'repo = "/var/lib/gpuward-server/repo"\n'
        'db = "/var/lib/gpuward-server/server.db"\n'
        'host = "127.0.0.1"\n'
        f"port = {host.port}\n"
        'unattested_enrollment_token_file = "/etc/gpuward/server-enrollment-token"\n'
        "report_interval = 5\n"
    )
    c.run("systemctl", "start", "gpuward-server")
    host.token = c.run(
        "gpuward", "server", "token", "create", "--role", "admin",
        "--db", "/var/lib/gpuward-server/server.db", "--name", "test-operator", "--json",
    ).stdout  # fmt: skip
    host.token = json.loads(host.token)["token"]
    wait_for(
        "the server to answer",
        lambda: c.run("gpuward", "nodes", "list", "--server", host.server, "--json",
                      check=False, env={"GPUWARD_TOKEN": host.token}).returncode == 0,
    )  # fmt: skip
    # Its files are the service's: it wrote its report key and database itself.
    owned = c.sh("stat -c '%U' /var/lib/gpuward-server/server.db /var/lib/gpuward-server/repo")
    assert set(owned.split()) == {"gpuward-server"}
    assert c.run("systemctl", "is-active", "gpuward-server").stdout.strip() == "active"

    # The GPU host.
    c.run("apt-get", "install", "-y", "gpuward-agent")
    assert c.run("systemctl", "is-active", "gpuward-apply.path").stdout.strip() == "active"
    c.run("cp", "/srv/gpuward/repo/metadata/1.root.json", "/etc/gpuward/root.json")
    c.run("install", "-m", "0640", "-g", "gpuward", "/dev/stdin", "/etc/gpuward/enrollment-token",
          input=token)  # fmt: skip
    c.path(SMOKE).write_text(
        f"#!/bin/sh\ntouch {SMOKE_STARTED}\nwhile [ -e {SMOKE_HOLD} ]; do sleep 0.2; done\n"
    )
    c.path(SMOKE).chmod(0o755)
    c.path("/etc/gpuward/agent.toml").write_text(
        f'node_id = "{NODE}"\n'
        f'server_url = "{host.server}"\n'
        'trusted_root = "/etc/gpuward/root.json"\n'
        'branch = "R580"\n'
        "interval_s = 2\n"
        'health_backend = "simulated"\n'
        'pool = "prod"\n'
        'enrollment_token_file = "/etc/gpuward/enrollment-token"\n'
        "[simulated]\n"
        f'unhealthy_drivers = ["{BAD}"]\n'
        "[applier]\n"
        "xid_window_s = 0\n"
        f'smoke_test = ["{SMOKE}"]\n'
    )
    enrolled = c.run("gpuward", "agent", "enroll", "--config", "/etc/gpuward/agent.toml")
    assert f"{NODE}: enrolled in pool prod (unattested)" in enrolled.stdout
    assert c.sh("stat -c '%U %a' /var/lib/gpuward/node.key").split() == ["gpuward", "600"]


def test_agent_stages_and_the_applier_unit_commits(host: Host) -> None:
    c = host.c
    since = c.since_now()
    c.run("systemctl", "start", "gpuward-agent")
    wait_for(
        f"the node to report {GOOD} committed",
        lambda: host.latest().get("driver_version") == GOOD,
    )
    latest = host.latest()
    assert latest["update"] in ("committed", "up-to-date")
    assert latest["active_slot"] == "a"
    assert c.path("/var/lib/gpuward-applier/slots/active").readlink() == Path("a")
    # systemd's path unit started the root applier, which committed with Debian's Python.
    applier = c.journal("-u", "gpuward-apply", since)
    assert '"event": "update_committed"' in applier
    python = c.run("readlink", "-f", "/opt/gpuward/bin/python3").stdout.strip()
    assert python == "/usr/bin/python3.11"
    assert c.run(python, "-c", "import sys; print(sys.version.split()[0])").stdout.strip() == (
        "3.11.2"
    )
    # A healthy cycle writes nothing at error priority, from any process.
    wait_for("the next report", lambda: host.latest().get("update") == "up-to-date")
    assert c.journal("-p", "err", since) == ""
    assert c.run("systemctl", "is-failed", "gpuward-apply", check=False).stdout.strip() != "failed"


def test_a_driver_that_fails_its_health_gate_rolls_back_through_the_units(host: Host) -> None:
    c = host.c
    publish(c, BAD)
    wait_for(
        f"the node to report {BAD} rolled back",
        lambda: host.latest().get("update") == "rolled-back",
    )
    latest = host.latest()
    assert latest["driver_version"] == GOOD
    assert latest["active_slot"] == "a"
    # The fleet view shows both outcomes, in the node's history.
    history = [entry["report"] for entry in host.node()["history"]]
    updates = [(r["update"], r["driver_version"]) for r in history]
    assert ("rolled-back", GOOD) in updates
    assert ("committed", GOOD) in updates
    # A rollback is what the applier is for: the unit did not fail.
    assert c.run("systemctl", "is-failed", "gpuward-apply", check=False).stdout.strip() != "failed"
    assert c.run("systemctl", "is-system-running", check=False).stdout.strip() == "running"


def test_a_tampered_spool_is_refused_at_error_priority(host: Host) -> None:
    c = host.c
    since = c.since_now()
    # The agent's account (what a compromised agent holds) hands the applier a
    # signed target description with other bytes.
    c.run(
        "runuser", "-u", "gpuward", "--", "/opt/gpuward/bin/python3", "-c",
        "import json, pathlib\n"
        "meta = json.loads(pathlib.Path('/var/lib/gpuward/tuf/image/R580.json').read_text())\n"
        f"path = 'drivers/R580/nvidia-{GOOD}.bundle'\n"
        "info = meta['signed']['targets'][path]\n"
        "spool = pathlib.Path('/var/lib/gpuward/spool')\n"
        "(spool / 'bundle').write_bytes(b'\\0' * info['length'])\n"
        "(spool / 'target.json').write_text(json.dumps({'path': path, 'info': info}))\n",
    )  # fmt: skip
    wait_for(
        "the refusal at error priority",
        lambda: "spool_refused" in c.journal("-p", "err", since),
    )
    wait_for("the applier to empty the spool",
             lambda: not any(c.path("/var/lib/gpuward/spool").iterdir()))  # fmt: skip
    # Nothing else went wrong: the error-priority entries are the applier's alone.
    entries = c.run("journalctl", "--no-pager", "-o", "json", "-p", "err", since).stdout
    units = {json.loads(line).get("_SYSTEMD_UNIT") for line in entries.splitlines()}
    assert units == {"gpuward-apply.service"}, entries
    assert c.path("/var/lib/gpuward-applier/slots/active").readlink() == Path("a")


def test_power_cut_between_switch_and_commit_ends_on_one_complete_slot(host: Host) -> None:
    c = host.c
    c.path(SMOKE_STARTED).unlink(missing_ok=True)  # every health gate so far ran it
    c.path(SMOKE_HOLD).touch()
    publish(c, THIRD)
    wait_for("the applier's smoke test (after the switch)",
             lambda: c.path(SMOKE_STARTED).exists())  # fmt: skip
    assert host.journal_state()["state"] == "verifying"
    assert c.path("/var/lib/gpuward-applier/slots/active").readlink() == Path("b")
    c.path(SMOKE_HOLD).unlink()  # on disk: the next boot's smoke test passes
    host.power_cut_and_boot()

    # At boot the agent's unit pulls in the applier first, which resumes.
    wait_for(
        "a report after the reboot",
        lambda: (
            host.latest().get("update") in ("committed", "rolled-back", "up-to-date")
            and host.journal_state().get("state") in ("committed", "rolled-back", "idle")
        ),
    )
    slots = host.c.path("/var/lib/gpuward-applier/slots")
    active = (slots / "active").readlink().name
    manifest = json.loads((slots / active / "manifest.json").read_text())
    # One complete slot: every file its signed manifest lists, with its digest.
    for file in manifest["files"]:
        data = (slots / active / "payload" / file["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == file["sha256"], file
    latest = host.latest()
    assert latest["active_slot"] == active
    assert latest["driver_version"] == manifest["driver_version"]


def test_purge_leaves_nothing_behind(host: Host) -> None:
    c = host.c
    c.run("systemctl", "stop", "gpuward-server")
    c.run("apt-get", "purge", "-y", "gpuward-agent", "gpuward-server", "gpuward-common")
    assert c.run("dpkg-query", "-W", "gpuward-*", check=False).returncode != 0
    named = c.run(
        "find", "/", "-xdev", "(", "-path", "/srv/gpuward", "-o", "-path", USB, ")", "-prune",
        "-o", "-name", "*gpuward*", "-print",
    ).stdout.split()  # fmt: skip
    own_source = ("/srv/gpuward-apt", "/etc/apt/keyrings/gpuward.gpg", "/var/lib/apt/lists/")
    assert [p for p in named if not p.startswith(own_source)] == []
    assert c.run("getent", "passwd", "gpuward", check=False).returncode != 0
    assert c.run("getent", "passwd", "gpuward-server", check=False).returncode != 0
    # No unit left loaded, failed or not: systemd collects a unit that is gone
    # and unreferenced on its next pass, so this waits for that pass.
    wait_for(
        "systemd to unload every gpuward unit",
        lambda: c.run("systemctl", "list-units", "--all", "--no-legend", "gpuward*").stdout == "",
        timeout=30,
    )
    assert c.run("systemctl", "--failed", "--no-legend").stdout.strip() == ""
