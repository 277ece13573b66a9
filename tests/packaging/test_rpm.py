"""The .rpm packages: contents, scriptlets and signatures, checked with rpm itself.

Signatures are checked against a private rpm database holding only the test
key, never the host's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import Built, SigningKey, run


def rpm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def rpmdb(tmp_path: Path, signing_key: SigningKey) -> Path:
    """An rpm database that trusts the signing key and nothing else."""
    db = tmp_path / "rpmdb"
    db.mkdir()
    public = signing_key.export(tmp_path / "key.asc", armor=True)
    run("rpm", "--dbpath", str(db), "--initdb")
    run("rpm", "--dbpath", str(db), "--import", str(public))
    return db


def test_contents(built: Built) -> None:
    common = rpm("-qpl", str(built.rpm("gpuward-common"))).stdout.splitlines()
    assert {"/usr/bin/gpuward", "/opt/gpuward/bin/gpuward", "/opt/gpuward/pyvenv.cfg"} <= set(
        common
    )
    assert any(p.startswith("/opt/gpuward/lib/python3.11/site-packages/agent/") for p in common)
    assert rpm("-qpl", str(built.rpm("gpuward-agent"))).stdout.splitlines() == [
        "/etc/gpuward",
        "/etc/gpuward/agent.toml",
        "/usr/lib/systemd/system/gpuward-agent.service",
        "/usr/lib/systemd/system/gpuward-apply.path",
        "/usr/lib/systemd/system/gpuward-apply.service",
        "/usr/lib/systemd/system/gpuward-apply.timer",
        "/usr/lib/systemd/system/gpuward-firewall.service",
        "/usr/lib/systemd/system/gpuward-firewall.timer",
        "/usr/lib/sysusers.d/gpuward-agent.conf",
        "/usr/lib/tmpfiles.d/gpuward-agent.conf",
    ]
    assert rpm("-qpl", str(built.rpm("gpuward-server"))).stdout.splitlines() == [
        "/etc/gpuward",
        "/usr/lib/systemd/system/gpuward-server.service",
        "/usr/lib/sysusers.d/gpuward-server.conf",
        "/usr/lib/tmpfiles.d/gpuward-server.conf",
        "/usr/share/gpuward",
        "/usr/share/gpuward/prometheus",
        "/usr/share/gpuward/prometheus/gpuward-rules.test.yml",
        "/usr/share/gpuward/prometheus/gpuward-rules.yml",
    ]
    # The configuration is a config file that an upgrade never overwrites.
    config = rpm("-qpc", str(built.rpm("gpuward-agent"))).stdout.split()
    assert config == ["/etc/gpuward/agent.toml"]
    noreplace = rpm(
        "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]", str(built.rpm("gpuward-agent"))
    )
    assert "cn /etc/gpuward/agent.toml" in noreplace.stdout


def test_scripts(built: Built) -> None:
    scripts = rpm("-qp", "--scripts", str(built.rpm("gpuward-agent"))).stdout
    sections = scripts.split("scriptlet (using /bin/sh):")
    assert [s.strip().splitlines()[-1] for s in sections[:-1]] == [
        "postinstall",
        "preuninstall",
        "postuninstall",
    ]
    post, preun, postun = sections[1:]
    assert "systemd-sysusers gpuward-agent.conf" in post
    assert "systemd-tmpfiles --create gpuward-agent.conf" in post
    assert "systemctl enable gpuward-agent.service gpuward-apply.path gpuward-apply.timer" in post
    # The services are enabled, never started by the package; on a running system
    # the triggers waiting for work (the applier's path and timer) start at once.
    assert "for unit in gpuward-apply.path gpuward-apply.timer; do" in post
    assert "systemctl start gpuward-agent" not in scripts
    assert "systemctl --no-reload disable gpuward-agent.service" in preun
    assert "rm -rf /var/lib/gpuward" in postun  # only under dpkg's purge, which rpm never passes
    assert 'if [ "$1" = purge ]; then' in postun


def test_signatures_check_against_the_signing_key(built: Built, rpmdb: Path) -> None:
    for package in built.rpms():
        checked = rpm("--dbpath", str(rpmdb), "-K", str(package))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.strip().endswith("digests signatures OK"), checked.stdout


def test_signature_check_fails_without_the_key_or_after_tampering(
    built: Built, rpmdb: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "emptydb"
    empty.mkdir()
    run("rpm", "--dbpath", str(empty), "--initdb")
    package = built.rpm("gpuward-agent")
    unknown = rpm("--dbpath", str(empty), "-K", str(package))
    assert unknown.returncode != 0
    assert "NOT OK" in unknown.stdout

    tampered = tmp_path / package.name
    data = bytearray(package.read_bytes())
    data[-100] ^= 0xFF  # inside the compressed payload
    tampered.write_bytes(bytes(data))
    broken = rpm("--dbpath", str(rpmdb), "-K", str(tampered))
    assert broken.returncode != 0
    assert "NOT OK" in broken.stdout
