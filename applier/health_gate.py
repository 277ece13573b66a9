"""The applier's eyes for its health gate: NVML before and after the switch.

The applier looks at the GPUs twice. Just before the switch it records a
baseline (GPU count, each GPU's UUID and uncorrectable ECC count) in its
journal, so a crash between switch and verdict still compares against the
same baseline. After the switch it watches for XIDs for a while, then looks
again. ``fleet.gpu_rules.switch_problems`` judges the two looks, by the same
rules as the agent's inline mode.

NVML is read directly here (not through ``node.gpu_health``'s probe): the gate
needs counters and events the report's probe does not keep.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Protocol

import pynvml
import structlog

from fleet.gpu import XidEvent
from fleet.gpu_rules import GpuState, Snapshot, gate_problems
from node.nvml import NvmlUnavailable, explain, nvml_session, read_sample

log = structlog.get_logger(__name__)


class GateProbe(Protocol):
    def look(self, xid_window_s: float | None) -> Snapshot:
        """Watch for XIDs for ``xid_window_s`` (None: not at all), then read every GPU.

        Must not raise: failures go in ``Snapshot.error``.
        """
        ...


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
