"""The .deb packages, installed with apt from a signed repository into Debian 12.

Issue 10: install, run, remove (configuration and state stay), purge (nothing
stays). "Nothing" is checked as a whole-tree comparison of the chroot before
installing and after purging, not as a list of the paths we thought of.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.packaging.conftest import APT_DIR, KEYRING, SOURCES, Built, Chroot, SigningKey

# Paths that change whenever apt or dpkg runs, whatever the package: their
# databases, caches and logs, and shadow's backups of the account files.
CHURN = (
    "/var/lib/apt/",
    "/var/lib/dpkg/",
    "/var/cache/",
    "/var/log/",
    "/tmp/",
    "/root/",
    "/srv/gpuward-apt/",
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/ld.so.cache",
)
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")

SIMULATED_AGENT = """\
node_id = "chroot-node"
server_url = "http://127.0.0.1:9"
trusted_root = "/etc/gpuward/root.json"
branch = "R580"
health_backend = "simulated"
"""


def tree(chroot: Chroot) -> dict[str, str]:
    """Every path in the chroot outside ``CHURN``, with its type, mode and owner."""
    listing = chroot.run(
        "find", "/", "-xdev", "-path", "/proc", "-prune", "-o", "-path", "/dev", "-prune",
        "-o", "-printf", "%p\t%y %m %u:%g\n",
    ).stdout  # fmt: skip
    entries = dict(line.split("\t", 1) for line in listing.splitlines())
    return {
        path: what
        for path, what in entries.items()
        if not any(path == c.rstrip("/") or path.startswith(c) for c in CHURN)
    }


def account_lines(chroot: Chroot) -> dict[str, list[str]]:
    return {f: chroot.path(f).read_text().splitlines() for f in ACCOUNT_FILES}


def install_from_repo(chroot: Chroot, built: Built, *packages: str) -> None:
    chroot.trust_repository(built.apt, built.keyring)
    chroot.run("apt-get", "update")
    chroot.run("apt-get", "install", "-y", "--no-install-recommends", *packages)


def test_agent_installs_runs_removes_and_purges(chroot: Chroot, built: Built) -> None:
    chroot.trust_repository(built.apt, built.keyring)
    chroot.run("apt-get", "update")
    before, accounts_before = tree(chroot), account_lines(chroot)

    installed = chroot.run("apt-get", "install", "-y", "--no-install-recommends", "gpuward-agent")
    assert "gpuward-common" in installed.stdout  # pulled in as a dependency
    assert chroot.run("gpuward", "--version").stdout.strip() == "gpuward 0.1.0"

    # The account, the directories and the config's permissions are in place.
    passwd = chroot.run("getent", "passwd", "gpuward").stdout.split(":")
    assert passwd[5:] == ["/var/lib/gpuward", "/usr/sbin/nologin\n"]
    after = tree(chroot)
    assert after["/var/lib/gpuward/spool"] == "d 750 gpuward:gpuward"
    # The slots and the applier's journal are root's, outside the agent's folder.
    assert after["/var/lib/gpuward-applier"] == "d 755 root:root"
    assert after["/var/lib/gpuward-applier/slots"] == "d 755 root:root"
    assert after["/etc/gpuward/agent.toml"] == "f 640 root:gpuward"
    assert after["/usr/bin/gpuward"].startswith("l ")
    # Enabled, and nothing started: the chroot has no init, and the package
    # does not try to start anything without one.
    wants = {p for p in after if "/etc/systemd/system/" in p and "gpuward" in p}
    assert wants == {
        "/etc/systemd/system/multi-user.target.wants/gpuward-agent.service",
        "/etc/systemd/system/paths.target.wants/gpuward-apply.path",
        "/etc/systemd/system/timers.target.wants/gpuward-apply.timer",
    }

    # The service account reads a simulated-GPU config and judges health.
    chroot.path("/tmp/agent.toml").write_text(SIMULATED_AGENT)
    health = chroot.run(
        "runuser", "-u", "gpuward", "--", "gpuward", "agent", "health",
        "--config", "/tmp/agent.toml", "--json",
        check=False,
    )  # fmt: skip
    assert health.returncode == 3, health.stderr  # 3: not healthy, as no driver is active yet
    report = json.loads(health.stdout)
    assert report["healthy"] is False
    assert report["reasons"] == ["no driver bundle is active"]

    # Remove: the administrator's configuration and the agent's state stay.
    chroot.path("/etc/gpuward/agent.toml").write_text(SIMULATED_AGENT)
    chroot.path("/var/lib/gpuward/state.json").write_text("{}")
    chroot.run("apt-get", "remove", "-y", "gpuward-agent")
    assert chroot.path("/etc/gpuward/agent.toml").read_text() == SIMULATED_AGENT
    assert chroot.path("/var/lib/gpuward/state.json").exists()
    assert chroot.run("getent", "passwd", "gpuward").returncode == 0
    assert not chroot.path("/usr/lib/systemd/system/gpuward-agent.service").exists()

    # Purge (gpuward-common goes as an orphaned dependency): nothing stays.
    chroot.run("apt-get", "purge", "-y", "--autoremove", "gpuward-agent")
    assert chroot.run("dpkg-query", "-W", "gpuward-*", check=False).returncode != 0
    left = tree(chroot)
    assert {p: w for p, w in left.items() if before.get(p) != w} == {}
    # No Debian package owns /opt, so dpkg takes it away once the last package
    # installed there leaves it empty, as it does for any package under /opt.
    assert {p for p in before if p not in left} == {"/opt"}
    assert not [p for p in before if p.startswith("/opt/")]
    assert account_lines(chroot) == accounts_before
    # Also in the paths the comparison leaves out (logs, caches), apart from
    # this test's own apt source.
    named = chroot.run("find", "/", "-xdev", "-name", "*gpuward*").stdout.split()
    own_source = (APT_DIR, KEYRING, SOURCES, "/var/lib/apt/lists/_srv_gpuward-apt_")
    assert [p for p in named if not p.startswith(own_source)] == []


def test_units_verify_where_installed(chroot: Chroot, built: Built) -> None:
    """``systemd-analyze verify`` on the units as installed, with /usr/bin/gpuward present."""
    install_from_repo(chroot, built, "gpuward-agent", "gpuward-server")
    units = sorted(p.name for p in chroot.path("/usr/lib/systemd/system").glob("gpuward-*"))
    assert units == [
        "gpuward-agent.service",
        "gpuward-apply.path",
        "gpuward-apply.service",
        "gpuward-apply.timer",
        "gpuward-firewall.service",
        "gpuward-firewall.timer",
        "gpuward-server.service",
    ]
    verified = chroot.run(
        "systemd-analyze", "verify", *(f"/usr/lib/systemd/system/{u}" for u in units)
    )
    assert verified.stdout == verified.stderr == ""
    # Both services share one gpuward-common; each has its own account.
    assert chroot.run("getent", "passwd", "gpuward-server").returncode == 0
    # The server's settings ship as an example only: the unit waits for the operator's file.
    assert "repo = " in chroot.path("/opt/gpuward/share/doc/server.toml.example").read_text()
    assert not chroot.path("/etc/gpuward/server.toml").exists()


def test_common_depends_on_every_library_its_environment_links(
    chroot: Chroot, built: Built
) -> None:
    """Every shared library the packaged venv's extensions load from the system
    comes from a package in gpuward-common's dependencies (tpm2-pytss's TPM
    stack was missing once: ``import tpm2_pytss`` failed where installed)."""
    install_from_repo(chroot, built, "gpuward-common")
    linked = chroot.run(
        "sh", "-c", "find /opt/gpuward -name '*.so*' -type f -exec ldd {} + 2>/dev/null",
        check=False,
    ).stdout  # fmt: skip
    assert "not found" not in linked
    system = sorted(
        {
            line.split("=>")[1].split()[0]
            for line in linked.splitlines()
            if "=> /" in line and "/opt/gpuward/" not in line.split("=>")[1]
        }
    )
    assert any("libtss2-esys" in lib for lib in system), system
    owners = set()
    for lib in system:
        found = chroot.run("dpkg", "-S", f"*/{Path(lib).name}").stdout
        owners |= {line.split(":")[0] for line in found.splitlines()}
    closure = chroot.run(
        "apt-cache", "depends", "--recurse", "--installed", "--no-recommends", "--no-suggests",
        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "gpuward-common",
    ).stdout  # fmt: skip
    needed = {line.strip() for line in closure.splitlines() if not line.startswith(" ")}
    assert owners <= needed, sorted(owners - needed)
    assert chroot.run("/opt/gpuward/bin/python", "-c", "import tpm2_pytss").returncode == 0


def test_apt_refuses_a_repository_signed_by_another_key(
    chroot: Chroot, built: Built, other_key: SigningKey, tmp_path: Path
) -> None:
    stranger = other_key.export(tmp_path / "stranger.gpg")
    chroot.trust_repository(built.apt, stranger)
    update = chroot.run("apt-get", "update", check=False)
    assert "NO_PUBKEY" in update.stderr or "not signed" in update.stderr, update.stderr
    install = chroot.run("apt-get", "install", "-y", "gpuward-agent", check=False)
    assert install.returncode != 0
    assert not chroot.path("/opt/gpuward").exists()
