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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netutil import wait_for
from tests.packaging.conftest import APT_DIR, KEYRING, SOURCES, Built, Chroot, unpacked
from tests.packaging.installed import Host, publish

GOOD, BAD, THIRD = "580.65.06", "580.82.07", "580.95.05"
# The smoke test the power-cut test holds between switch and commit. On disk,
# not under /run: the test reads them from outside the container.
SMOKE = "/usr/local/bin/gpu-smoke-test"
SMOKE_HOLD, SMOKE_STARTED = "/etc/gpuward/hold-smoke-test", "/var/lib/smoke-test-started"


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
    host.workstation(GOOD)
    host.install_server()
    # Installed but not configured: skipped, and the journal says why.
    c.run("systemctl", "start", "gpuward-server")
    assert c.run("systemctl", "is-active", "gpuward-server", check=False).stdout.strip() == (
        "inactive"
    )
    assert "ConditionPathExists=/etc/gpuward/server.toml" in c.journal("-u", "gpuward-server")
    token = host.configure_server(
        'unattested_enrollment_token_file = "/etc/gpuward/server-enrollment-token"\n'
    )
    # Its files are the service's: it wrote its report key and database itself.
    owned = c.sh("stat -c '%U' /var/lib/gpuward-server/server.db /var/lib/gpuward-server/repo")
    assert set(owned.split()) == {"gpuward-server"}
    assert c.run("systemctl", "is-active", "gpuward-server").stdout.strip() == "active"

    c.path(SMOKE).parent.mkdir(parents=True, exist_ok=True)
    c.path(SMOKE).write_text(
        f"#!/bin/sh\ntouch {SMOKE_STARTED}\nwhile [ -e {SMOKE_HOLD} ]; do sleep 0.2; done\n"
    )
    c.path(SMOKE).chmod(0o755)
    enrolled = host.install_node(
        token,
        "[simulated]\n"
        f'unhealthy_drivers = ["{BAD}"]\n'
        "[applier]\n"
        "xid_window_s = 0\n"
        f'smoke_test = ["{SMOKE}"]\n',
    )
    assert "gpu-node-0042: enrolled in pool prod (unattested)" in enrolled
    assert c.run("systemctl", "is-active", "gpuward-apply.path").stdout.strip() == "active"
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
        "find", "/", "-xdev", "(", "-path", "/srv/gpuward", "-o", "-path", "/media/usb", ")",
        "-prune",
        "-o", "-name", "*gpuward*", "-print",
    ).stdout.split()  # fmt: skip
    own_source = (APT_DIR, KEYRING, SOURCES, "/var/lib/apt/lists/")
    assert [p for p in named if not p.startswith(own_source)] == []
    assert c.run("getent", "passwd", "gpuward", check=False).returncode != 0
    assert c.run("getent", "passwd", "gpuward-server", check=False).returncode != 0
    # No unit left loaded, failed or not: systemd collects a unit that is gone
    # and unreferenced on its next pass, so this waits for that pass.
    wait_for(
        "systemd to unload every gpuward unit",
        lambda: c.run("systemctl", "list-units", "--all", "--no-legend", "gpuward*").stdout == "",
        timeout_s=30,
    )
    assert c.run("systemctl", "--failed", "--no-legend").stdout.strip() == ""
