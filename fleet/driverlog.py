"""The measured driver: the applier's measurement log, and its replay.

After the applier commits a driver bundle (and again at every boot, for the
bundle the active slot holds) it extends the driver PCR (sha256 bank, PCR 15
by default: 14 holds shim's MOK measurements) with the digest of one event
naming the bundle, and appends that event to its own log: JSON lines, one
event per line, the log of the current boot only. The server replays the log
sent with an attested report against the quoted PCR, exactly as firmware logs
are replayed, and so knows which bundle is active: an event removed, added or
edited changes the replay.

An event's digest is SHA-256 of the canonical JSON of what it measures (PCR,
bundle path, bundle SHA-256, driver version), so no field of the claim can be
changed without changing the PCR; the time is informative only.

Pure, like the rest of ``fleet``: both the applier (writing) and the server
(verifying) use these definitions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fleet.attestation import MAX_DRIVER_LOG_BYTES, AttestationError, canonical_json
from fleet.errors import InvalidDocument
from fleet.schema import Reader

SCHEMA_VERSION = 1
BANK = "sha256"
DIGEST_BYTES = 32
DEFAULT_DRIVER_PCR = 15
# PCRs the driver may not share: firmware and boot loader (0-9), IMA (10), shim's
# MOK lists (14). Extending one would break the replay of the firmware log.
RESERVED_PCRS = frozenset({*range(11), 14})
MAX_PCR = 23  # a PC Client TPM has 24 PCRs
MAX_EVENTS = 256
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
ZERO = bytes(DIGEST_BYTES)


def driver_pcr_problem(pcr: int) -> str | None:
    """Why ``pcr`` cannot hold the driver measurements; None when it can."""
    if not 0 <= pcr <= MAX_PCR:
        return f"PCR {pcr} does not exist (0-{MAX_PCR}); use {DEFAULT_DRIVER_PCR}"
    if pcr in RESERVED_PCRS:
        return (
            f"PCR {pcr} is measured by firmware, the boot loader, IMA or shim; use "
            f"{DEFAULT_DRIVER_PCR} (or another of 11-{MAX_PCR} but 14)"
        )
    return None


class DriverLogError(AttestationError):
    """A driver measurement log that is malformed or does not prove what it claims."""


@dataclass(frozen=True)
class DriverEvent:
    """One measurement: this bundle became (or, after a boot, still is) the active driver."""

    pcr: int
    target_path: str
    sha256: str  # the bundle's, as signed in the TUF metadata
    driver_version: str
    measured_at: int = 0  # seconds since the epoch; not covered by the digest

    def measured(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "target_path": self.target_path,
            "sha256": self.sha256,
            "driver_version": self.driver_version,
        }

    @property
    def digest(self) -> bytes:
        """What the PCR is extended with."""
        return hashlib.sha256(canonical_json(self.measured())).digest()

    def same_bundle(self, other: DriverEvent) -> bool:
        return self.measured() == other.measured()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "bank": BANK,
            "digest": self.digest.hex(),
            "event": self.measured(),
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> DriverEvent:
        r = Reader(
            doc, where, allowed=frozenset({"schema", "bank", "digest", "event", "measured_at"})
        )
        if r.integer("schema") != SCHEMA_VERSION:
            raise InvalidDocument(f"{where}: unsupported schema version; upgrade gpuward")
        r.text("bank", choices=frozenset({BANK}))
        e = Reader(
            r.raw("event"),
            f"{where}.event",
            allowed=frozenset({"pcr", "target_path", "sha256", "driver_version"}),
        )
        event = cls(
            pcr=e.integer("pcr", maximum=23),
            target_path=e.text("target_path", max_len=512),
            sha256=e.text("sha256", pattern=_SHA256_HEX, max_len=64),
            driver_version=e.text("driver_version", pattern=_VERSION, max_len=16),
            measured_at=r.integer("measured_at"),
        )
        if r.text("digest", pattern=_SHA256_HEX, max_len=64) != event.digest.hex():
            raise DriverLogError(
                f"{where}: its digest is not the SHA-256 of the event it records: the log "
                "was edited"
            )
        return event


def extend(value: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend in the sha256 bank."""
    return hashlib.sha256(value + digest).digest()


def replay(events: tuple[DriverEvent, ...], pcr: int) -> bytes:
    """The value ``pcr`` holds after these events, from its reset value (zeros)."""
    value = ZERO
    for event in events:
        if event.pcr == pcr:
            value = extend(value, event.digest)
    return value


def encode(events: tuple[DriverEvent, ...]) -> bytes:
    return b"".join(json.dumps(e.to_dict(), sort_keys=True).encode() + b"\n" for e in events)


def parse(data: bytes) -> tuple[DriverEvent, ...]:
    """Every event of a log; raises ``DriverLogError`` or ``InvalidDocument``."""
    if len(data) > MAX_DRIVER_LOG_BYTES:
        raise DriverLogError(f"driver log: larger than {MAX_DRIVER_LOG_BYTES} bytes")
    lines = data.splitlines()
    if len(lines) > MAX_EVENTS:
        raise DriverLogError(f"driver log: more than {MAX_EVENTS} events")
    events = []
    for number, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise DriverLogError(f"driver log line {number}: not JSON ({exc})") from None
        events.append(DriverEvent.from_dict(doc, f"driver log line {number}"))
    return tuple(events)


def active_bundle(data: bytes | None, pcr: int, quoted: bytes) -> DriverEvent | None:
    """The bundle the quoted driver PCR proves active: the log's last event for it.

    None when nothing was measured since boot. Raises ``DriverLogError`` when the
    log does not replay to the quoted value: an event was removed, added or edited.
    """
    events = parse(data) if data else ()
    ours = tuple(e for e in events if e.pcr == pcr)
    if len(ours) != len(events):
        raise DriverLogError(f"driver log: it measures PCRs other than the driver PCR {pcr}")
    if replay(ours, pcr) != quoted:
        raise DriverLogError(
            f"the driver log ({len(ours)} events) does not replay to the quoted "
            f"{BANK} PCR {pcr}: an event was removed, added or edited, or the PCR was "
            "extended outside the log"
        )
    return ours[-1] if ours else None
