"""The applier's half of the measured driver: extend the driver PCR, log the event.

The log (``fleet.driverlog``) must always replay to the PCR, across crashes
and reboots, or the server refuses the node's reports. So before acting the
applier works out where the pair stands from the PCR itself, which only it
extends: equal to the log's replay (nothing pending); one extend ahead (a crash
came between extend and append: append); zero while the log is not (a reboot
reset the PCR: the log starts afresh, and the active bundle is measured again).
Anything else means something else extends the PCR, and is an error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agent.crash import crash_point
from fleet.attestation import MAX_DRIVER_LOG_BYTES
from fleet.driverlog import DriverEvent, DriverLogError, encode, extend, parse, replay
from fleet.errors import GpuwardError, InvalidDocument
from keys.storage import atomic_write, read_bounded

if TYPE_CHECKING:  # tpm2-pytss: imported only on hosts that attest
    from agent.attest.attestor import Attestor

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


def measure(attestor: Attestor, path: Path, event: DriverEvent) -> bool:
    """Make the PCR and the log at ``path`` end with ``event``; True if it extended."""
    events = read_log(path)
    value = attestor.read_pcr(event.pcr)
    # The log as it stands, or (after a reboot reset the PCR) a fresh one.
    for base in (events, ()):
        logged = replay(base, event.pcr)
        if value == extend(logged, event.digest):
            _write_log(path, (*base, event))  # extended before a crash, never logged
            log.info("driver_measurement_logged", bundle=event.target_path, pcr=event.pcr)
            return False
        if value == logged:
            break
    else:
        raise MeasurementError(
            f"PCR {event.pcr} holds a value its log {path} does not explain: something "
            "else extends that PCR (set [attestation] driver_pcr to a free one) or the log "
            "was lost; reboot to start both afresh"
        )
    if base and base[-1].same_bundle(event):
        return False
    attestor.extend_pcr(event.pcr, event.digest)
    crash_point("measure:extended")
    _write_log(path, (*base, event))
    crash_point("measure:logged")
    log.info(
        "driver_measured",
        bundle=event.target_path,
        sha256=event.sha256,
        pcr=event.pcr,
        events=len(base) + 1,
    )
    return True


def event_for(pcr: int, target_path: str, sha256: str, driver_version: str) -> DriverEvent:
    return DriverEvent(pcr, target_path, sha256, driver_version, int(time.time()))
