"""Measured-boot policy: generated from real logs, edited, evaluated; the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.errors import InvalidDocument
from fleet.eventlog import EventLog, parse
from server.attestation.policy import BootPolicy, evaluate, from_eventlog
from tests.attest.conftest import LOG_DIR

RHEL = LOG_DIR / "rhel95-secureboot.bin"
ALL_PCRS = {"sha256": frozenset(range(24)), "sha1": frozenset(range(24))}


def _log(path: Path) -> EventLog:
    return parse(path.read_bytes())


def test_reference_state_of_a_secure_boot_log() -> None:
    policy = from_eventlog(_log(RHEL))
    assert policy.secure_boot and policy.bank == "sha256"
    assert all(len(policy.variables[name]) == 1 for name in ("PK", "KEK", "db", "dbx"))
    assert len(policy.boot_applications) == 3  # shim, grub, kernel
    assert policy.kernel_cmdlines[0].startswith("(hd0,gpt2)/vmlinuz-5.14.0-503.11.1.el9_5")
    assert evaluate(policy, _log(RHEL), ALL_PCRS).passed


@pytest.mark.parametrize("log_path", sorted(LOG_DIR.glob("*.bin")), ids=lambda p: p.stem)
def test_every_log_passes_its_own_policy(log_path: Path) -> None:
    log = _log(log_path)
    result = evaluate(from_eventlog(log), log, ALL_PCRS)
    assert result.passed, result.reasons


def test_every_departure_is_reported() -> None:
    policy = from_eventlog(_log(RHEL))
    edited = dataclasses.replace(
        policy,
        boot_applications=policy.boot_applications[1:],  # shim no longer allowed
        variables={**policy.variables, "dbx": ("00" * 32,)},  # an update the node lacks
        kernel_cmdlines=("quiet",),
    )
    reasons = evaluate(edited, _log(RHEL), ALL_PCRS).reasons
    assert len(reasons) == 3, reasons
    assert any("shimx64.efi" in r for r in reasons)
    assert any("dbx" in r for r in reasons)
    assert any("kernel command line" in r for r in reasons)


def test_secure_boot_off_fails_a_secure_boot_policy() -> None:
    policy = from_eventlog(_log(RHEL))
    reasons = evaluate(policy, _log(LOG_DIR / "fedora37-systemd-boot.bin"), ALL_PCRS).reasons
    assert "Secure Boot is not on" in reasons


def test_events_in_unverified_pcrs_do_not_count() -> None:
    policy = from_eventlog(_log(RHEL))
    reasons = evaluate(policy, _log(RHEL), {"sha256": frozenset({0, 1, 2, 3})}).reasons
    assert any("PCR 7" in r for r in reasons)
    assert any("PCR 4" in r for r in reasons)
    assert any("no kernel command line" in r for r in reasons)


def test_variable_data_must_match_its_digest() -> None:
    data = bytearray(RHEL.read_bytes())
    log = parse(bytes(data))
    pk = next(
        e for e in log.events if e.decoded is not None and getattr(e.decoded, "name", "") == "PK"
    )
    at = pk.offset + len(pk.data) // 2 + 100  # inside the PK's data, not its digest
    data[at] ^= 0xFF
    reasons = evaluate(from_eventlog(log), parse(bytes(data)), ALL_PCRS).reasons
    assert any("PK data does not match its digest" in r for r in reasons), reasons


def test_policy_file_round_trips_and_is_strict() -> None:
    policy = from_eventlog(_log(RHEL))
    assert BootPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    with pytest.raises(InvalidDocument, match="unknown field"):
        BootPolicy.from_dict({**policy.to_dict(), "secure_bot": True})
    with pytest.raises(InvalidDocument, match="hex"):
        BootPolicy.from_dict({**policy.to_dict(), "boot_applications": ["SHIM"]})


def _gpuward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuward", *args], capture_output=True, text=True, check=False
    )


def test_cli_writes_an_editable_policy(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    done = _gpuward("policy", "from-eventlog", str(RHEL), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "Secure Boot on, 3 boot application(s)" in done.stdout
    assert BootPolicy.from_dict(json.loads(out.read_text())) == from_eventlog(_log(RHEL))


def test_cli_refuses_a_garbage_log_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff" * 100)
    done = _gpuward("policy", "from-eventlog", str(garbage))
    assert done.returncode == 1
    assert done.stderr.startswith("gpuward: error: ") and "event log rejected" in done.stderr
    assert "Traceback" not in done.stderr
