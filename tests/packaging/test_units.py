"""The systemd units' exposure, as ``systemd-analyze security --offline=yes`` scores it.

Issue 10's limits: agent and server at most 2.0. The applier's bound, and the
firewall unit's, are the ones SECURITY.md documents, read from its table here,
and every exposure item the applier keeps must be justified there by name.
``systemd-analyze verify`` needs /usr/bin/gpuward to exist: here it runs on the
unit files in a root holding the host's units and a stand-in executable;
tests/packaging/test_deb.py runs it again where the package installed them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from node.firewall.policy import DEFAULTS as FIREWALL_DEFAULTS
from server.config_file import DEFAULT_PATH as SERVER_CONFIG
from tests.packaging.conftest import REPO

UNITS = REPO / "systemd"
SECURITY_MD = (REPO / "SECURITY.md").read_text()
ISSUE_LIMIT = {"gpuward-agent.service": 2.0, "gpuward-server.service": 2.0}
# "| `gpuward-agent.service` | gpuward | 1.2 | 2.0 | ...": unit, runs as, measured, bound.
ROW = re.compile(r"^\| `(gpuward-[a-z-]+\.service)` \| [^|]+ \| [\d.]+ \| ([\d.]+) \|", re.M)
DOCUMENTED_BOUND = {unit: float(bound) for unit, bound in ROW.findall(SECURITY_MD)}


def security(unit: str) -> str:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", unit],
        cwd=UNITS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def exposure(report: str, unit: str) -> float:
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", report)
    assert found, report
    return float(found.group(1))


def test_every_service_has_a_documented_bound() -> None:
    services = sorted(p.name for p in UNITS.glob("*.service"))
    assert sorted(DOCUMENTED_BOUND) == services
    for unit, limit in ISSUE_LIMIT.items():
        assert DOCUMENTED_BOUND[unit] <= limit


@pytest.mark.parametrize("unit", sorted(DOCUMENTED_BOUND))
def test_exposure_within_bound(unit: str) -> None:
    assert exposure(security(unit), unit) <= DOCUMENTED_BOUND[unit]


def test_each_exposure_the_applier_keeps_is_justified() -> None:
    report = security("gpuward-apply.service")
    kept = [line.split()[1] for line in report.splitlines() if line.startswith("✗")]
    assert kept, report
    section = SECURITY_MD.split("### The applier's remaining exposure", 1)[1].split("\n## ", 1)[0]
    section = section.replace("\\|", "|")  # a table cell spells | as \|
    unjustified = [item for item in kept if f"`{item}`" not in section]
    assert unjustified == []


def test_the_applier_has_no_network_and_only_its_path_unit_and_timer_start_it() -> None:
    applier = (UNITS / "gpuward-apply.service").read_text()
    assert "\nPrivateNetwork=yes\n" in applier
    assert "\nUser=" not in applier  # root, on purpose (the firewall unit too: its own test)
    assert "[Install]" not in applier
    path = (UNITS / "gpuward-apply.path").read_text()
    assert "\nDirectoryNotEmpty=/var/lib/gpuward/spool\n" in path
    assert "\nUnit=gpuward-apply.service\n" in path
    # At every boot: the boot counter counts starts, and the driver is measured again.
    timer = (UNITS / "gpuward-apply.timer").read_text()
    assert "\nOnBootSec=" in timer and "\nWantedBy=timers.target\n" in timer


def test_the_agent_cannot_write_the_slots() -> None:
    """The slots live outside the agent's StateDirectory, created root-owned."""
    agent = (UNITS / "gpuward-agent.service").read_text()
    assert "\nStateDirectory=gpuward\n" in agent and "\nProtectSystem=strict\n" in agent
    tmpfiles = (UNITS / "gpuward-agent.tmpfiles").read_text()
    assert "\nd /var/lib/gpuward-applier/slots 0755 root root -\n" in tmpfiles


def test_the_server_runs_from_its_config_file_and_writes_only_its_state() -> None:
    """Unconfigured, it is skipped rather than restarted every 5 s; configured, its
    sandbox lets it write exactly its StateDirectory, where the repository it
    re-signs, its database and its report key live (test_config checks the example)."""
    unit = (UNITS / "gpuward-server.service").read_text()
    assert f"\nConditionPathExists={SERVER_CONFIG}\n" in unit
    assert f" server run --config {SERVER_CONFIG}\n" in unit
    assert "EnvironmentFile" not in unit and "${" not in unit
    assert "\nProtectSystem=strict\n" in unit and "\nReadWritePaths=" not in unit
    assert "\nStateDirectory=gpuward-server\n" in unit
    assert f"\nConfigurationDirectory={SERVER_CONFIG.parent.name}\n" in unit
    assert "\nLimitNOFILE=65536\n" in unit
    tmpfiles = (UNITS / "gpuward-server.tmpfiles").read_text()
    assert "server.env" not in tmpfiles


def test_units_verify(tmp_path: Path) -> None:
    """Every unit file passes ``systemd-analyze verify`` without a warning."""
    root = tmp_path / "root"
    system = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", system, symlinks=True)  # the targets
    units = sorted(p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer", ".path"))
    for unit in units:
        shutil.copyfile(UNITS / unit, system / unit)
    stand_in = root / "usr/bin/gpuward"
    stand_in.parent.mkdir(parents=True)
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    done = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            *(f"/usr/lib/systemd/system/{u}" for u in units),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_firewall_unit_leaves_a_root_owned_result_on_schedule() -> None:
    """Root (so its result is root's alone) with CAP_NET_ADMIN and nothing else,
    writing where the agent's config looks, as often as the agent expects."""
    unit = (UNITS / "gpuward-firewall.service").read_text()
    assert "\nUser=" not in unit and "DynamicUser" not in unit
    assert "\nCapabilityBoundingSet=CAP_NET_ADMIN\n" in unit
    assert " firewall apply --config /etc/gpuward/agent.toml --write-state " in unit
    state_file = Path(FIREWALL_DEFAULTS["state_file"])
    assert f"\nRuntimeDirectory={state_file.parent.name}\n" in unit
    assert state_file.parent.parent == Path("/run")
    assert "\nRuntimeDirectoryPreserve=yes\n" in unit
    timer = (UNITS / "gpuward-firewall.timer").read_text()
    assert "\nOnBootSec=" in timer
    minutes = int(re.findall(r"^OnUnitActiveSec=(\d+)min$", timer, re.M)[0])
    assert minutes * 60 == FIREWALL_DEFAULTS["check_interval_s"]
