"""The verdict on an attested report: what the server keeps with it and shows.

The server judges each attested report (``server.report_attestation``) and
stores the verdict beside the report as JSON; the fleet view, the dashboard and
compliance reports read it back. Every one of them reads it through
``AttestationVerdict.from_dict``, so a stored verdict that is not one (a
database edited by hand, or damaged) is refused with a message naming where it
was read, rather than surfacing as a ``KeyError`` in a page or a report.

Verdicts written before the boot policy, Secure Boot and the measured driver
were judged lack ``policy``, ``secure_boot`` and ``driver``: they read as not
judged, not measured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fleet.driverlog import DRIVER, MAX_EVENTS, MAX_PCR, DriverEvent
from fleet.errors import InvalidDocument
from fleet.schema import Reader

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DRIVER_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
# A reason names an event and may quote what it measured (a kernel command line).
MAX_REASON = 1024 * 1024
# One reason per event of the boot's event log (fleet.eventlog.MAX_EVENTS) at most,
# and a few on the driver log.
MAX_REASONS = 100_000 + 64


@dataclass(frozen=True)
class AttestedDriver:
    """The driver bundle the driver PCR proves active: the applier's measurement of
    it, as replayed from the node's driver log."""

    pcr: int
    seq: int  # the event's number in its boot's driver log
    reset_count: int  # the TPM's, when measured: which boot measured it
    target_path: str
    sha256: str  # the bundle's, as signed in the TUF metadata
    driver_version: str
    measured_at: int  # seconds since the epoch

    @classmethod
    def of(cls, event: DriverEvent) -> AttestedDriver:
        return cls(
            event.pcr,
            event.seq,
            event.reset_count,
            event.target_path,
            event.sha256,
            event.driver_version,
            event.measured_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": DRIVER,
            "pcr": self.pcr,
            "seq": self.seq,
            "reset_count": self.reset_count,
            "target_path": self.target_path,
            "sha256": self.sha256,
            "driver_version": self.driver_version,
            "measured_at": self.measured_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> AttestedDriver:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "kind",
                    "pcr",
                    "seq",
                    "reset_count",
                    "target_path",
                    "sha256",
                    "driver_version",
                    "measured_at",
                }
            ),
        )
        r.text("kind", choices=frozenset({DRIVER}))
        return cls(
            pcr=r.integer("pcr", maximum=MAX_PCR),
            seq=r.integer("seq", maximum=MAX_EVENTS),
            reset_count=r.integer("reset_count", maximum=2**32 - 1),
            target_path=r.text("target_path", max_len=512),
            sha256=r.text("sha256", pattern=_SHA256_HEX, max_len=64),
            driver_version=r.text("driver_version", pattern=_DRIVER_VERSION, max_len=16),
            measured_at=r.integer("measured_at"),
        )


@dataclass(frozen=True)
class AttestationVerdict:
    """What is kept with an attested report, and shown per node."""

    passed: bool  # quote and event log verified, and the policy (if any) passed
    reset_count: int  # the TPM's count of reboots: a change means the node rebooted
    event_log_sha256: str | None
    policy: str | None  # the policy that judged the boot; None: not judged
    reasons: tuple[str, ...]  # why it did not pass
    secure_boot: bool | None = None  # as the verified log measured it; None: not measured
    driver: AttestedDriver | None = None  # the bundle the driver PCR proves active

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reset_count": self.reset_count,
            "event_log_sha256": self.event_log_sha256,
            "policy": self.policy,
            "reasons": list(self.reasons),
            "secure_boot": self.secure_boot,
            "driver": None if self.driver is None else self.driver.to_dict(),
        }

    def to_json(self) -> str:
        """The form the store keeps."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, doc: object, where: str) -> AttestationVerdict:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "passed",
                    "reset_count",
                    "event_log_sha256",
                    "policy",
                    "reasons",
                    "secure_boot",
                    "driver",
                }
            ),
        )
        driver = r.optional_raw("driver")
        return cls(
            passed=r.boolean("passed"),
            reset_count=r.integer("reset_count", maximum=2**32 - 1),
            event_log_sha256=r.nullable_text("event_log_sha256", pattern=_SHA256_HEX),
            policy=r.optional_text("policy", max_len=128),
            reasons=_reasons(r),
            secure_boot=r.optional_boolean("secure_boot"),
            driver=None if driver is None else AttestedDriver.from_dict(driver, f"{where}.driver"),
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> AttestationVerdict:
        """A verdict as the store keeps it; ``InvalidDocument`` naming ``where`` if it
        is not one."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InvalidDocument(f"{where}: not JSON ({exc})") from None
        return cls.from_dict(doc, where)


def _reasons(r: Reader) -> tuple[str, ...]:
    reasons = r.items("reasons", max_items=MAX_REASONS)
    if not all(isinstance(reason, str) and len(reason) <= MAX_REASON for reason in reasons):
        raise InvalidDocument(
            f"{r.where}: 'reasons' must list strings of at most {MAX_REASON} characters"
        )
    return tuple(reasons)
