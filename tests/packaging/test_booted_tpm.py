"""A node enrolling with its TPM, from the packages, on a booted Debian 12.

The TPM is a swtpm on the host whose socket folder is bound into the
container: the agent (an unprivileged, sandboxed unit) and the root applier
(no network at all: a TCP TPM would be out of its reach, a socket is what
/dev/tpmrm0 is to it) both use it, as on a GPU host. Its PCRs hold a recorded
firmware event log, which the agent sends with its first quote. The server
trusts swtpm's local CA as a TPM vendor's EK CA.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attest.conftest import LOCAL_CA, LOG_DIR, replay_log
from tests.netutil import wait_for
from tests.packaging.conftest import Built, unpacked
from tests.packaging.installed import Host

DRIVER = "580.65.06"
EVENT_LOG = LOG_DIR / "rhel95-secureboot.bin"
TPM_DIR = "/run/gpuward-test-tpm"  # where the container sees the swtpm's sockets


@pytest.fixture(scope="module")
def swtpm(
    tpm_templates: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A swtpm serving on a Unix socket in a folder of its own; its PCRs replay a
    firmware log."""
    folder = tmp_path_factory.mktemp("swtpm")
    shutil.copytree(tpm_templates["a"], folder / "state")
    sockets = folder / "sockets"
    sockets.mkdir(mode=0o755)
    process = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2",
            "--server", f"type=unixio,path={sockets / 'tpm'},mode=0666",
            "--ctrl", f"type=unixio,path={sockets / 'tpm.ctrl'},mode=0666",
            "--tpmstate", f"dir={folder / 'state'}",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for("the swtpm's socket", lambda: (sockets / "tpm.ctrl").exists(), timeout_s=10)
        replay_log(f"path={sockets / 'tpm'}", EVENT_LOG)
        yield sockets
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def tpm_host(
    chroot_tarball: Path,
    built: Built,
    swtpm: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Host]:
    with (
        unpacked(chroot_tarball, tmp_path_factory.mktemp("booted-tpm") / "root") as tree,
        contextlib.ExitStack() as boots,
    ):
        tree.trust_repository(built.apt, built.keyring)
        tree.run("apt-get", "update")
        yield Host(tree, tmp_path_factory.mktemp("consoles"), boots, ((swtpm, TPM_DIR),))


def test_the_packaged_agent_enrolls_with_its_tpm_and_attests_every_report(
    tpm_host: Host,
) -> None:
    host, c = tpm_host, tpm_host.c
    host.workstation(DRIVER)
    host.install_server()
    c.run("mkdir", "-p", "/etc/gpuward/ek-cas")
    for cert in ("swtpm-localca-rootca-cert.pem", "issuercert.pem"):
        shutil.copyfile(LOCAL_CA / cert, c.path(f"/etc/gpuward/ek-cas/{cert}"))
    token = host.configure_server(
        'ek_ca = ["/etc/gpuward/ek-cas/"]\n'
        'tpm_enrollment_token_file = "/etc/gpuward/server-enrollment-token"\n'
    )
    shutil.copyfile(EVENT_LOG, c.path("/etc/gpuward/eventlog.bin"))
    enrolled = host.install_node(
        token,
        "[attestation]\n"
        f'tcti = "swtpm:path={TPM_DIR}/tpm"\n'
        'event_log = "/etc/gpuward/eventlog.bin"\n'
        "[applier]\n"
        "xid_window_s = 0\n",
    )
    assert "gpu-node-0042: enrolled in pool prod (tpm2)" in enrolled

    c.run("systemctl", "start", "gpuward-agent")
    wait_for(
        f"an attested report of {DRIVER} committed",
        lambda: (
            host.latest().get("driver_version") == DRIVER
            and (host.node().get("report_attestation") or {}).get("passed") is True
        ),
    )
    node = host.node()
    assert (node["attested"], node["attestation"]) == (True, "tpm2")
    # Every report since enrollment was quoted, and each quote verified.
    history = node["history"]
    assert history and all(entry["attestation"]["passed"] for entry in history), history
    # The root applier measured the committed driver into the TPM through the
    # same socket; the passing verdicts replayed its signed log against the quotes.
    applier = [json.loads(line) for line in c.journal("-u", "gpuward-apply").splitlines()
               if line.startswith("{")]  # fmt: skip
    measured = [e["bundle"] for e in applier if e["event"] == "driver_measured" and e["bundle"]]
    assert measured == [f"drivers/R580/nvidia-{DRIVER}.bundle"]
