"""What the agent knows about one GPU, as plain data.

NVML is read on the node (``agent.nvml``), but the records it produces are
judged by pure rules (``fleet.gpu_rules``), sent in reports and shown by the
server, so they live here with no dependency on NVML. Every measurement is
``None`` when it is unknown: the GPU or its driver does not support the query.
That is not the same as zero and never counts as a problem by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# nvmlClocksEventReason* bits (nvml.h); the names are what reports and rules use.
CLOCK_EVENT_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
_KNOWN_CLOCK_EVENT_MASK = sum(bit for bit, _ in CLOCK_EVENT_BITS)

# Reasons the hardware itself pulled the clocks down: a failing cooler, a power
# supply asserting the brake, an external slowdown signal. Software caps and
# idling are normal operation.
HARDWARE_CLOCK_EVENTS = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})
THERMAL_CLOCK_EVENTS = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown"})


@dataclass(frozen=True)
class ClockEvents:
    """The clock-event-reasons bitmask, decoded."""

    mask: int

    @property
    def reasons(self) -> tuple[str, ...]:
        names = [name for bit, name in CLOCK_EVENT_BITS if self.mask & bit]
        unknown = self.mask & ~_KNOWN_CLOCK_EVENT_MASK
        if unknown:
            # A newer driver may set bits this table predates: keep them visible.
            names.append(f"unknown_{unknown:#x}")
        return tuple(names)

    def __contains__(self, reason: object) -> bool:
        return reason in self.reasons


@dataclass(frozen=True)
class RemappedRows:
    """Row remapping (Ampere and later): spare memory rows replacing failing ones."""

    correctable: int
    uncorrectable: int
    pending: bool  # a remap waits for the next GPU reset
    failure: bool  # no spare row was left: the GPU needs service


@dataclass(frozen=True)
class GpuSample:
    """One look at a GPU's health. ``errors`` lists queries that failed outright."""

    index: int
    uuid: str | None
    name: str | None
    clock_events: ClockEvents | None
    ecc_uncorrected_volatile: int | None
    remapped_rows: RemappedRows | None
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["clock_events"] = (
            None
            if self.clock_events is None
            else {"mask": self.clock_events.mask, "reasons": list(self.clock_events.reasons)}
        )
        doc["errors"] = list(self.errors)
        return doc
