"""The applier's half of the measured driver: extend the driver PCR, log the event.

Each boot's log (``fleet.driverlog``) opens with a key event naming the
applier's measurement key, then one event per bundle made active, each signed
with that key, numbered, and tagged with the TPM's reset count, so the server
can tell the applier's measurements from anything else that extends the PCR.

The log must always replay to the PCR, across crashes and reboots, or the
server refuses the node's reports. So before appending an event the applier
works out where the pair stands from the PCR itself: equal to the log's replay
(nothing pending: extend); one extend of this very event ahead (a crash came
between extend and append: append; the signature is deterministic, so the
event is rebuilt byte for byte). A log whose reset count is not the TPM's is
an earlier boot's: the reboot reset the PCR and the log starts afresh. Anything
else means something else extends the PCR, and is an error.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.attestation import MAX_DRIVER_LOG_BYTES
from fleet.driverlog import ZERO, DriverEvent, DriverLogError, encode, extend, parse, replay
from fleet.errors import GpuwardError, InvalidDocument
from keys.driver_key import public_bytes
from keys.durable_files import atomic_write, read_bounded
from node.crash_points import crash_point

if TYPE_CHECKING:  # tpm2-pytss: imported only on hosts that attest
    from node.attest.attestor import Attestor

log = structlog.get_logger(__name__)


class MeasurementError(GpuwardError):
    """The driver PCR and the measurement log cannot be made to agree."""


def read_log(path: Path) -> tuple[DriverEvent, ...]:
    if not path.exists():
        return ()
    try:
        return parse(read_bounded(path, MAX_DRIVER_LOG_BYTES, "driver measurement log"))
    except (InvalidDocument, DriverLogError) as exc:
        raise MeasurementError(
            f"driver measurement log {path} is unreadable ({exc}); move it aside and reboot "
            "so the PCR and a fresh log start over together"
        ) from None


def _write_log(path: Path, events: tuple[DriverEvent, ...]) -> None:
    # World-readable: the unprivileged agent sends it with its attested reports.
    atomic_write(path, encode(events), mode=0o644)


def _unexplained(pcr: int, path: Path) -> MeasurementError:
    return MeasurementError(
        f"PCR {pcr} holds a value its log {path} does not explain: something "
        "else extends that PCR (set [attestation] driver_pcr to a free one) or the log "
        "was lost; reboot to start both afresh"
    )


def _append(
    attestor: Attestor, path: Path, base: tuple[DriverEvent, ...], event: DriverEvent
) -> tuple[tuple[DriverEvent, ...], bool]:
    """``base`` and ``event`` in the PCR and the log; True if it extended."""
    value = attestor.read_pcr(event.pcr)
    logged = replay(base, event.pcr)
    events = (*base, event)
    if value == extend(logged, event.digest):
        _write_log(path, events)  # extended before a crash, never logged
        log.info("driver_measurement_logged", kind=event.kind, seq=event.seq, pcr=event.pcr)
        return events, False
    if value != logged:
        raise _unexplained(event.pcr, path)
    attestor.extend_pcr(event.pcr, event.digest)
    crash_point("measure:extended")
    _write_log(path, events)
    crash_point("measure:logged")
    log.info(
        "driver_measured",
        kind=event.kind,
        bundle=event.target_path,
        sha256=event.sha256,
        pcr=event.pcr,
        seq=event.seq,
    )
    return events, True


def measure(
    attestor: Attestor, path: Path, key: Ed25519PrivateKey, pcr: int, bundle: DriverEvent | None
) -> bool:
    """Make the PCR and the log at ``path`` hold this boot's key event and end with
    ``bundle`` (when one is active), signed with ``key``; True if it extended."""
    reset_count = attestor.reset_count()
    now = int(time.time())
    try:
        events = read_log(path)
    except MeasurementError:
        if attestor.read_pcr(pcr) != ZERO:
            raise
        # Nothing measured since boot: a log in an older format (an upgrade) or
        # damaged explains nothing that counts any more.
        log.warning("driver_log_restarted", path=str(path))
        events = ()
    extended = False
    if not events or events[0].reset_count != reset_count:
        key_event = DriverEvent.key(pcr, reset_count, public_bytes(key), now)
        events, extended = _append(attestor, path, (), _signed(key, key_event))
    if bundle is None or events[-1].same_bundle(bundle):
        if attestor.read_pcr(pcr) != replay(events, pcr):
            raise _unexplained(pcr, path)
        return extended
    event = dataclasses.replace(
        bundle, pcr=pcr, seq=len(events), reset_count=reset_count, measured_at=now
    )
    return _append(attestor, path, events, _signed(key, event))[1] or extended


def _signed(key: Ed25519PrivateKey, event: DriverEvent) -> DriverEvent:
    # Ed25519 is deterministic: the same event gets the same signature after a crash.
    return dataclasses.replace(event, signature=key.sign(event.signed_bytes()).hex())
