"""The verdict on an attested report: what the server keeps with it and shows.

The server judges each attested report (``server.report_attestation``) and
stores the verdict beside the report as JSON; the fleet view, the dashboard and
compliance reports read it back. Every one of them reads it through
``AttestationVerdict.from_dict``, so a stored verdict that is not one (a
database edited by hand, or damaged) is refused with a message naming where it
was read, rather than surfacing as a ``KeyError`` in a page or a report.

Verdicts written before the boot policy, Secure Boot and the measured driver
were judged lack ``policy``, ``secure_boot`` and ``driver``: they read as not
judged, not measured. Those written before GPU attestation lack ``gpus``: no GPU
evidence judged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fleet.driverlog import DRIVER, MAX_EVENTS, MAX_PCR, DriverEvent
from fleet.errors import InvalidDocument
from fleet.gpu_attestation import GpuAttestationVerdict
from fleet.inventory import MAX_GPUS
from fleet.wire import (
    Boolean,
    Document,
    Field,
    Integer,
    ListOf,
    Nullable,
    Ref,
    Text,
    Wire,
    optional,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DRIVER_VERSION = re.compile(r"\d{3,4}\.\d{1,3}(?:\.\d{1,3})?")
# A reason names an event and may quote what it measured (a kernel command line).
MAX_REASON = 1024 * 1024
# One reason per event of the boot's event log (fleet.eventlog.MAX_EVENTS) at most,
# and a few on the driver log.
MAX_REASONS = 100_000 + 64


@dataclass(frozen=True)
class AttestedDriver(Wire):
    """The driver bundle the driver PCR proves active: the applier's measurement of
    it, as replayed from the node's driver log."""

    pcr: int
    seq: int  # the event's number in its boot's driver log
    reset_count: int  # the TPM's, when measured: which boot measured it
    target_path: str
    sha256: str  # the bundle's, as signed in the TUF metadata
    driver_version: str
    measured_at: int  # seconds since the epoch

    @property
    def kind(self) -> str:
        return DRIVER

    WIRE = Document(
        Field("kind", Text(choices=frozenset({DRIVER})), derived=True),
        Field("pcr", Integer(maximum=MAX_PCR)),
        Field("seq", Integer(maximum=MAX_EVENTS), description="its number in its boot's log"),
        Field("reset_count", Integer(maximum=2**32 - 1), description="the boot that measured it"),
        Field("target_path", Text(max_len=512)),
        Field("sha256", Text(max_len=64, pattern=_SHA256_HEX)),
        Field("driver_version", Text(max_len=16, pattern=_DRIVER_VERSION)),
        Field("measured_at", Integer(), description="seconds since the epoch"),
        where="attested driver",
    )

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


@dataclass(frozen=True)
class AttestationVerdict(Wire):
    """The server's verdict on a node's latest attested report."""

    passed: bool  # quote and event log verified, and the policy (if any) passed
    reset_count: int  # the TPM's count of reboots: a change means the node rebooted
    event_log_sha256: str | None
    policy: str | None  # the policy that judged the boot; None: not judged
    reasons: tuple[str, ...]  # why it did not pass
    secure_boot: bool | None = None  # as the verified log measured it; None: not measured
    driver: AttestedDriver | None = None  # the bundle the driver PCR proves active
    # each GPU's verdict, in the order of the report's GPU evidence; empty: none sent
    gpus: tuple[GpuAttestationVerdict, ...] = ()

    WIRE = Document(
        Field("passed", Boolean(), description="quote and log verified, and the policy passed"),
        Field("reset_count", Integer(maximum=2**32 - 1), description="the TPM's reboot count"),
        Field("event_log_sha256", Nullable(Text(max_len=64, pattern=_SHA256_HEX))),
        optional("policy", Text(max_len=128), "the policy that judged the boot; null: none"),
        Field("reasons", ListOf(Text(max_len=MAX_REASON), MAX_REASONS)),
        optional("secure_boot", Boolean(), "as the verified log measured it; null: not measured"),
        optional(
            "driver",
            Ref(AttestedDriver),
            "the bundle the driver PCR proves active; null: none measured since boot",
        ),
        Field(
            "gpus",
            ListOf(Ref(GpuAttestationVerdict), MAX_GPUS),
            default=(),
            omit_default=True,
            description="each GPU's verdict on the evidence the report carried",
        ),
        where="attestation verdict",
    )

    def to_json(self) -> str:
        """The form the store keeps."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> AttestationVerdict:
        """A verdict as the store keeps it; ``InvalidDocument`` naming ``where`` if it
        is not one."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InvalidDocument(f"{where}: not JSON ({exc})") from None
        return cls.from_dict(doc, where)
