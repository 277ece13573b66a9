"""``gpuward eventlog``, run as a person runs it: one clear line on any error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LOG_DIR = Path(__file__).resolve().parents[3] / "shared/testdata/eventlogs"


def gpuward(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuward", *args], capture_output=True, text=True, check=False
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpuward: error: ")
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("command", ["show", "replay"])
def test_missing_file(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nope.bin"
    result = gpuward("eventlog", command, str(missing), "--json")
    _assert_one_line_error(result, "No such file", str(missing))


@pytest.mark.parametrize("command", ["show", "replay"])
def test_garbage_file(tmp_path: Path, command: str) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not an event log, just text\n" * 10)
    result = gpuward("eventlog", command, str(garbage))
    _assert_one_line_error(result, str(garbage), "rejected at byte 0 (event 0)")


def test_truncated_file(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes((LOG_DIR / "rhel95-secureboot.bin").read_bytes()[:5000])
    result = gpuward("eventlog", "replay", str(truncated), "--json")
    _assert_one_line_error(result, "(event 6)", "needs 4080 bytes but 3498 remain")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    _assert_one_line_error(gpuward("eventlog", "show", str(empty)), "empty")


def test_show_lists_every_event() -> None:
    result = gpuward("eventlog", "show", str(LOG_DIR / "fedora37-systemd-boot.bin"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "crypto-agile log, 28 events, banks sha256" in lines[0]
    assert lines[1].split() == ["#", "PCR", "TYPE", "SHA256", "DATA"]
    assert len(lines) == 2 + 28
    assert lines[2 + 15].split()[:4] == ["15", "4", "EV_EFI_ACTION", "3d6772b4f84ed475"]
    assert lines[2 + 15].endswith("Calling EFI Application from Boot Option")


def test_show_json_has_everything() -> None:
    path = LOG_DIR / "gce-ubuntu2104-multibank.bin"
    result = gpuward("eventlog", "show", str(path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "crypto-agile"
    assert doc["digest_sizes"] == {"sha1": 20, "sha256": 32, "sha384": 48}
    assert len(doc["events"]) == 112
    event = doc["events"][5]
    assert set(event) == {
        "index",
        "offset",
        "pcr",
        "type",
        "type_name",
        "digests",
        "data",
        "decoded",
    }
    assert set(event["digests"]) == {"sha1", "sha256", "sha384"}
    assert event["decoded"]["name"] == "KEK"
    assert event["decoded"]["data_length"] == 1560


def test_replay_readable_table() -> None:
    result = gpuward("eventlog", "replay", str(LOG_DIR / "uefi-sha1-only.bin"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["BANK", "PCR", "VALUE"]
    assert lines[1].split() == ["sha1", "0", "3dcaea25dc86554d94b94aa5bc8f735a49212af8"]
    assert len(lines) == 1 + 8
