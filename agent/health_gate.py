"""The applier's health gate: is the node better off on the new driver than before?

The applier looks at the GPUs twice. Just before the switch it records a
baseline (GPU count, each GPU's UUID and uncorrectable ECC count) in its
journal, so a crash between switch and verdict still compares against the
same baseline. After the switch it watches for XIDs for a while, then looks
again. The switch is kept only if NVML reports the expected driver, every GPU
of the baseline is still there, no XID arrived and no uncorrectable ECC error
appeared since the switch; ``judge`` lists every reason it is not.

NVML is read directly here (not through ``agent.health``'s probe): the gate
needs counters and events the report's probe does not keep.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any, Protocol

import pynvml
import structlog

from agent.nvml import NvmlUnavailable, explain, nvml_session, read_sample
from fleet.gpu import XidEvent
from fleet.gpu_rules import classify_xid, gate_problems

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class GpuState:
    index: int
    uuid: str
    # The aggregate counter: it survives the driver reload a switch may cause.
    ecc_uncorrected: int | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """What NVML showed at one moment; ``error`` when it could not look at all."""

    driver_version: str | None
    gpus: tuple[GpuState, ...]
    xids: tuple[XidEvent, ...] = ()  # raised while the gate watched
    error: str | None = None

    def baseline(self) -> dict[str, Any]:
        """The part the journal keeps across a crash: what "before" means."""
        return {
            "driver_version": self.driver_version,
            "error": self.error,
            "gpus": [
                {"index": g.index, "uuid": g.uuid, "ecc_uncorrected": g.ecc_uncorrected}
                for g in self.gpus
            ],
        }

    @classmethod
    def from_baseline(cls, doc: dict[str, Any]) -> Snapshot:
        return cls(
            driver_version=doc["driver_version"],
            gpus=tuple(
                GpuState(int(g["index"]), str(g["uuid"]), g["ecc_uncorrected"]) for g in doc["gpus"]
            ),
            error=doc["error"],
        )


class GateProbe(Protocol):
    def look(self, xid_window_s: float | None) -> Snapshot:
        """Watch for XIDs for ``xid_window_s`` (None: not at all), then read every GPU.

        Must not raise: failures go in ``Snapshot.error``.
        """
        ...


def judge(before: Snapshot | None, after: Snapshot, expected_driver: str) -> list[str]:
    """Every reason to roll back; empty when the switch may be committed.

    ``before`` is None, or has an error, when there was nothing to compare with
    (a first install: no driver, so NVML saw no GPU).
    """
    if after.error is not None:
        return [after.error]
    reasons = []
    if after.driver_version != expected_driver:
        reasons.append(
            f"NVML reports driver {after.driver_version or 'none'}, expected {expected_driver}"
        )
    if not after.gpus:
        reasons.append("no GPU visible")
    earlier = {} if before is None or before.error else {g.uuid: g for g in before.gpus}
    now = {g.uuid for g in after.gpus}
    if earlier and len(after.gpus) != len(earlier):
        missing = sorted(set(earlier) - now)
        reasons.append(
            f"NVML sees {len(after.gpus)} GPUs, {len(earlier)} before the switch"
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    for gpu in after.gpus:
        reasons.extend(f"GPU {gpu.index} ({gpu.uuid}): {p}" for p in gpu.problems)
        old = earlier.get(gpu.uuid)
        if old is not None and old.ecc_uncorrected is not None and gpu.ecc_uncorrected is not None:
            new = gpu.ecc_uncorrected - old.ecc_uncorrected
            if new > 0:
                reasons.append(
                    f"GPU {gpu.index} ({gpu.uuid}): {new} new uncorrectable ECC error(s) "
                    "since the switch"
                )
    for event in after.xids:
        kind = classify_xid(event.xid)
        reasons.append(
            f"GPU {event.gpu_index if event.gpu_index is not None else '?'} "
            f"({event.gpu_uuid or 'unknown'}): XID {event.xid} since the switch "
            f"({kind.description})"
        )
    return reasons


class NvmlGate:
    """The gate's eyes on a real host (or on the tests' fake libnvidia-ml)."""

    def look(self, xid_window_s: float | None) -> Snapshot:
        try:
            with nvml_session():
                xids = () if xid_window_s is None else self._watch(xid_window_s)
                return self._read(xids)
        except NvmlUnavailable as error:
            return Snapshot(None, (), error=str(error))
        except pynvml.NVMLError as error:
            return Snapshot(None, (), error=explain(error, "the health gate"))
        except Exception as error:
            # Between switch and verdict a bug must fail the gate (and roll back),
            # never leave the node on an unjudged driver.
            log.exception("health_gate_crashed")
            return Snapshot(None, (), error=f"health gate crashed: {error!r}")

    @staticmethod
    def _read(xids: tuple[XidEvent, ...]) -> Snapshot:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as error:
                gpus.append(GpuState(index, "unknown", None, (explain(error, "opening it"),)))
                continue
            sample = read_sample(index, handle)
            gpus.append(
                GpuState(
                    index,
                    sample.uuid or "unknown",
                    sample.ecc_uncorrected_aggregate,
                    gate_problems(sample),
                )
            )
        return Snapshot(pynvml.nvmlSystemGetDriverVersion(), tuple(gpus), xids)

    @staticmethod
    def _watch(window_s: float) -> tuple[XidEvent, ...]:
        """The XIDs NVML raises within ``window_s``: it reports only those after
        registration, which is why the gate watches after the switch."""
        event_set = pynvml.nvmlEventSetCreate()
        try:
            devices: dict[int | None, tuple[int | None, str | None]] = {}
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                try:
                    pynvml.nvmlDeviceRegisterEvents(
                        handle, pynvml.nvmlEventTypeXidCriticalError, event_set
                    )
                except pynvml.NVMLError_NotSupported:
                    log.warning("health_gate_xids_unsupported", gpu=index)
                    continue
                devices[_address(handle)] = (index, pynvml.nvmlDeviceGetUUID(handle))
            seen: list[XidEvent] = []
            deadline = time.monotonic() + window_s
            while True:
                left_ms = max(0, int((deadline - time.monotonic()) * 1000))
                try:
                    data = pynvml.nvmlEventSetWait_v2(event_set, left_ms)
                except pynvml.NVMLError_Timeout:
                    if left_ms == 0:
                        return tuple(seen)
                    continue
                if data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                    gpu, uuid = devices.get(_address(data.device), (None, None))
                    seen.append(XidEvent(time.time(), gpu, uuid, int(data.eventData)))
        finally:
            pynvml.nvmlEventSetFree(event_set)


def _address(pointer: Any) -> int | None:
    """An NVML handle's address: how an event names its device."""
    value: int | None = ctypes.cast(pointer, ctypes.c_void_p).value
    return value
