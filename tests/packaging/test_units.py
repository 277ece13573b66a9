"""The systemd units' exposure, as ``systemd-analyze security --offline=yes`` scores it.

Issue 10's limits: agent and server at most 2.0. The applier's bound, and the
firewall unit's, are the ones SECURITY.md documents, read from its table here,
and every exposure item the applier keeps must be justified there by name.
(``systemd-analyze verify`` needs /usr/bin/gpuward to exist, so it runs where
the package installed it: tests/packaging/test_deb.py.)
"""

from __future__ import annotations

import re
import subprocess

import pytest

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


def test_the_applier_has_no_network_and_only_the_path_unit_starts_it() -> None:
    applier = (UNITS / "gpuward-apply.service").read_text()
    assert "\nPrivateNetwork=yes\n" in applier
    assert "\nUser=" not in applier  # root, on purpose, and the only unit that is
    assert "[Install]" not in applier
    path = (UNITS / "gpuward-apply.path").read_text()
    assert "\nDirectoryNotEmpty=/var/lib/gpuward/spool\n" in path
    assert "\nUnit=gpuward-apply.service\n" in path
