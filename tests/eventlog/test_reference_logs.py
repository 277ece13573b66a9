"""Real event logs, checked against tpm2_eventlog's output for the same files.

Each ``NAME.bin`` in the shared test data has ``NAME.tpm2_eventlog.yaml`` beside it,
written by tpm2-tools, an independent implementation: its events and its final
``pcrs:`` block are the reference for our parser and replay.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.eventlog import FORMAT_CRYPTO_AGILE, FORMAT_SHA1, EventLog, parse, replay

LOG_DIR = Path(__file__).resolve().parents[3] / "shared/testdata/eventlogs"
LOGS = sorted(LOG_DIR.glob("*.bin"))


def _yaml(log: Path) -> str:
    return log.with_name(log.stem + ".tpm2_eventlog.yaml").read_text()


def yaml_pcrs(text: str) -> dict[str, dict[str, str]]:
    """The trailing ``pcrs:`` block: bank -> PCR (decimal string) -> lowercase hex."""
    pcrs: dict[str, dict[str, str]] = {}
    bank = None
    for line in text[text.index("\npcrs:\n") :].splitlines()[2:]:
        if m := re.fullmatch(r"  (\w+):", line):
            bank = pcrs.setdefault(m[1], {})
        elif (m := re.fullmatch(r"    (\d+) *: 0x([0-9a-f]+)", line)) and bank is not None:
            bank[m[1]] = m[2]
        else:
            raise AssertionError(f"unexpected line in pcrs block: {line!r}")
    return pcrs


def yaml_events(text: str) -> list[dict[str, object]]:
    """PCR, type, size and digests of every event, from the event-level lines only.

    Both yaml versions put these fields at two spaces of indentation (version 1
    has no ``- EventNum`` list items), and nothing nested under ``Event:`` does.
    """
    events: list[dict[str, object]] = []
    algorithm = None
    for line in text[: text.index("\npcrs:\n")].splitlines():
        if m := re.fullmatch(r"  PCRIndex: (\d+)", line):
            events.append({"pcr": int(m[1]), "digests": {}})
        elif m := re.fullmatch(r"  EventType: (\w+)", line):
            events[-1]["type"] = m[1]
        elif m := re.fullmatch(r"  EventSize: (\d+)", line):
            events[-1]["size"] = int(m[1])
        elif m := re.fullmatch(r'  Digest: "([0-9a-f]+)"', line):
            # Only the Spec ID header has a bare digest: the legacy SHA1 one.
            events[-1]["digests"] = {"sha1": m[1]}
        elif m := re.fullmatch(r"  - AlgorithmId: (\w+)", line):
            algorithm = m[1]
        elif (m := re.fullmatch(r'    Digest: "([0-9a-f]+)"', line)) and algorithm:
            digests = events[-1]["digests"]
            assert isinstance(digests, dict)
            digests[algorithm] = m[1]
            algorithm = None
    return events


def _log_id(path: Path) -> str:
    return path.stem


def test_testdata_is_there() -> None:
    # Without this, a missing shared/ folder would leave every test below with
    # no parameters and nothing would fail.
    assert len(LOGS) >= 5, f"expected the shared event logs in {LOG_DIR}"


@pytest.mark.parametrize("path", LOGS, ids=_log_id)
def test_replay_equals_tpm2_eventlog(path: Path) -> None:
    expected = yaml_pcrs(_yaml(path))
    got = {
        bank: {str(pcr): value.hex() for pcr, value in values.items()}
        for bank, values in replay(parse(path.read_bytes())).items()
    }
    # Same banks, same PCRs (tpm2_eventlog lists only PCRs the log touched),
    # same values.
    assert got == expected


@pytest.mark.parametrize("path", LOGS, ids=_log_id)
def test_events_equal_tpm2_eventlog(path: Path) -> None:
    log = parse(path.read_bytes())
    expected = yaml_events(_yaml(path))
    got = [
        {
            "pcr": e.pcr,
            "type": e.type_name,
            "size": len(e.data),
            "digests": {bank: d.hex() for bank, d in e.digests.items()},
        }
        for e in log.events
    ]
    assert len(got) == len(expected)
    assert got == expected
    assert [e.index for e in log.events] == list(range(len(log.events)))


@pytest.mark.parametrize("path", LOGS, ids=_log_id)
def test_cli_replay_equals_tpm2_eventlog(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuward", "eventlog", "replay", str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == {"pcrs": yaml_pcrs(_yaml(path))}


def _by_name(name: str) -> EventLog:
    return parse((LOG_DIR / f"{name}.bin").read_bytes())


def test_formats_and_banks() -> None:
    multibank = _by_name("gce-ubuntu2104-multibank")
    assert multibank.format == FORMAT_CRYPTO_AGILE
    assert dict(multibank.digest_sizes) == {"sha1": 20, "sha256": 32, "sha384": 48}
    assert multibank.spec_id is not None
    assert multibank.spec_id.spec_version == (2, 0, 0)
    assert multibank.events[0].decoded == multibank.spec_id

    legacy = _by_name("uefi-sha1-only")
    assert legacy.format == FORMAT_SHA1
    assert legacy.spec_id is None
    assert dict(legacy.digest_sizes) == {"sha1": 20}


def test_typed_decodings_of_a_secure_boot_log() -> None:
    log = _by_name("rhel95-secureboot")
    summaries = [(e.type_name, e.decoded.to_dict() if e.decoded else None) for e in log.events]

    secure_boot = next(
        d
        for t, d in summaries
        if t == "EV_EFI_VARIABLE_DRIVER_CONFIG" and d and d["name"] == "SecureBoot"
    )
    assert secure_boot["guid"] == "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    assert secure_boot["data_length"] == 1
    secure_boot_event = next(
        e for e in log.events if e.decoded and e.decoded.to_dict() == secure_boot
    )
    assert secure_boot_event.data.endswith(b"\x01")  # Secure Boot on

    assert ("EV_S_CRTM_VERSION", {"kind": "text", "text": "edk2-20240524-7.el9"}) in summaries
    assert ("EV_EFI_ACTION", {"kind": "text", "text": "Exit Boot Services Invocation"}) in summaries
    assert ("EV_IPL", {"kind": "text", "text": "MokList"}) in summaries
    assert [d for t, d in summaries if t == "EV_SEPARATOR"] == [
        {"kind": "separator", "value": 0}
    ] * 8

    images = [d for t, d in summaries if t == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert len(images) == 3
    assert all(d and d["kind"] == "image_load" and d["length"] > 0 for d in images)
    assert [d["device_path_length"] for d in images if d] == [122, 56, 0]
    assert [d["file_path"] for d in images if d] == [
        "\\EFI\\redhat\\shimx64.efi",
        "\\EFI\\redhat\\grubx64.efi",
        None,  # the kernel, loaded from memory by grub
    ]

    grub = [d["text"] for t, d in summaries if t == "EV_IPL" and d and "grub_cmd" in str(d["text"])]
    assert grub, "grub's commands are measured as text into PCR 8"


def test_systemd_boot_measures_utf16_text() -> None:
    log = _by_name("fedora37-systemd-boot")
    command_lines = [e.decoded for e in log.events if e.pcr == 12]
    assert [d.to_dict() for d in command_lines if d] == [
        {"kind": "text", "text": " console=ttyS0 console=tty0 efi=debug "}
    ] * 2
