"""Simulated GPUs for hosts without any (the demo, CI, a developer laptop).

The simulated driver is whatever bundle the ``active`` slot holds, as if the
switch had loaded its kernel module, and it runs with the settings that bundle
declares (``fleet.driver_settings``), as if the switch had applied them; drivers
listed as unhealthy in the config make every GPU report an XID, so rollback can
be shown without hardware.
"""

from __future__ import annotations

import time
import uuid

from fleet.driver_settings import DriverSettings, EffectiveSettings, GpuModes, parameter
from fleet.gpu import XidEvent
from fleet.gpu_rules import GpuState, Snapshot
from fleet.report import GpuHealth
from node.config import SimulatedGpus
from node.gpu_health import ProbeResult
from node.slots import Slots

UNHEALTHY_XID = 79  # GPU has fallen off the bus


class SimulatedProbe:
    def __init__(self, node_id: str, slots: Slots, gpus: SimulatedGpus) -> None:
        self._node_id = node_id
        self._slots = slots
        self._gpus = gpus

    def probe(self) -> ProbeResult:
        content = self._slots.content(self._slots.active())
        driver = content.manifest.driver_version if content else None
        problems: tuple[str, ...] = ()
        if driver in self._gpus.unhealthy_drivers:
            problems = (f"XID {UNHEALTHY_XID}: GPU has fallen off the bus (simulated)",)
        gpus = tuple(
            GpuHealth(
                index=i,
                name=self._gpus.name,
                uuid=simulated_uuid(self._node_id, i),
                driver_version=driver,
                healthy=not problems,
                problems=problems,
            )
            for i in range(self._gpus.count)
        )
        return ProbeResult(driver_version=driver, gpus=gpus)


def simulated_uuid(node_id: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node_id}.{index}')}"


def simulated_settings(
    node_id: str, gpus: SimulatedGpus, declared: DriverSettings
) -> EffectiveSettings:
    """What simulated GPUs run with: exactly what the active bundle declares."""
    return EffectiveSettings(
        params={parameter(name).shown_as: value for name, value in declared.parameters},
        gpus=tuple(
            GpuModes(
                index=i,
                uuid=simulated_uuid(node_id, i),
                persistence_mode=declared.persistence_mode,
                ecc=declared.ecc,
                ecc_pending=declared.ecc,
                mig=declared.mig,
                mig_pending=declared.mig,
                compute_mode=declared.compute_mode,
            )
            for i in range(gpus.count)
        ),
    )


class SimulatedGate:
    """The applier's health gate on simulated GPUs: an unhealthy driver raises XID 79."""

    def __init__(self, node_id: str, slots: Slots, gpus: SimulatedGpus) -> None:
        self._probe = SimulatedProbe(node_id, slots, gpus)
        self._gpus = gpus

    def look(self, xid_window_s: float | None) -> Snapshot:
        seen = self._probe.probe()
        states = tuple(GpuState(g.index, g.uuid, 0) for g in seen.gpus)
        xids: tuple[XidEvent, ...] = ()
        if xid_window_s is not None and seen.driver_version in self._gpus.unhealthy_drivers:
            xids = tuple(XidEvent(time.time(), g.index, g.uuid, UNHEALTHY_XID) for g in seen.gpus)
        return Snapshot(seen.driver_version, states, xids)
