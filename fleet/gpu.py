"""What the agent knows about one GPU, as plain data.

NVML is read on the node (``node.nvml``), but the records it produces are
judged by pure rules (``fleet.gpu_rules``), sent in reports and shown by the
server, so they live here with no dependency on NVML. Every measurement is
``None`` when it is unknown: the GPU or its driver does not support the query.
That is not the same as zero and never counts as a problem by itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from fleet.wire import Boolean, Document, Field, Integer, ListOf, Number, Ref, Text, Wire, optional

# Bounds on what a report from the network may carry per GPU.
MAX_PROCESSES = 256
MAX_ERRORS = 32
MAX_GPU_INDEX = 64
_MAX_TEXT = 512

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

# nvmlDeviceGpuRecoveryAction_t (nvml.h): the driver's own verdict on what a GPU
# needs after a fault, read as the field value NVML_FI_DEV_GET_GPU_RECOVERY_ACTION.
# nvidia-ml-py has 0 to 4 since 12.570 and 5 to 7 in 13.x; the values are nvml.h's,
# kept here so the rules need no NVML. The names are what reports and rules use.
RECOVERY_ACTIONS: dict[int, str] = {
    0: "none",
    1: "gpu_reset",
    2: "node_reboot",
    3: "drain_p2p",
    4: "drain_and_reset",
    5: "recover_imex_domain",
    6: "bus_reset",
    7: "system_reboot",
}
NO_RECOVERY_ACTION = RECOVERY_ACTIONS[0]
# Any name a newer agent may send, so an older server still reads its reports.
_RECOVERY_ACTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def recovery_action_name(value: int) -> str:
    # A newer driver may report an action this table predates: keep it visible.
    return RECOVERY_ACTIONS.get(value, f"unknown_{value}")


@dataclass(frozen=True)
class ClockEvents(Wire):
    """The clock-event-reasons bitmask, decoded."""

    mask: int

    WIRE = Document(
        Field("mask", Integer()),
        # Derived from the mask; what a sender writes there is not trusted.
        Field(
            "reasons",
            ListOf(Text(max_len=64), 16),
            default=(),
            derived=True,
            description="the mask's reasons by name, for people; readers ignore it",
        ),
        where="clock_events",
    )

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
class RemappedRows(Wire):
    """Row remapping (Ampere and later): spare memory rows replacing failing ones."""

    correctable: int
    uncorrectable: int
    pending: bool  # a remap waits for the next GPU reset
    failure: bool  # no spare row was left: the GPU needs service

    WIRE = Document(
        Field("correctable", Integer()),
        Field("uncorrectable", Integer()),
        Field("pending", Boolean(), description="a remap waits for the next GPU reset"),
        Field("failure", Boolean(), description="no spare row was left: the GPU needs service"),
        where="remapped_rows",
    )


@dataclass(frozen=True)
class GpuProcess(Wire):
    pid: int
    used_memory_bytes: int | None  # None where the driver cannot attribute memory

    WIRE = Document(
        Field("pid", Integer()),
        optional("used_memory_bytes", Integer()),
        where="process",
    )


def _count(name: str) -> Field:
    """A measurement: None (missing or null) when the GPU cannot report it."""
    return optional(name, Integer())


@dataclass(frozen=True, kw_only=True)
class GpuSample(Wire):
    """One look at a GPU's health. ``errors`` lists queries that failed outright.

    Power is in milliwatts and clocks in MHz, as NVML reports them.
    """

    index: int
    uuid: str | None = None
    name: str | None = None
    temperature_c: int | None = None
    power_mw: int | None = None
    power_limit_mw: int | None = None
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    clock_events: ClockEvents | None = None
    ecc_corrected_volatile: int | None = None
    ecc_uncorrected_volatile: int | None = None
    ecc_corrected_aggregate: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    remapped_rows: RemappedRows | None = None
    retired_pages_sbe: int | None = None  # retired for multiple single-bit errors
    retired_pages_dbe: int | None = None  # retired for a double-bit error
    retired_pages_pending: bool | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None
    pcie_replays: int | None = None
    gpu_util_pct: int | None = None
    mem_util_pct: int | None = None
    processes: tuple[GpuProcess, ...] | None = None
    # The driver's recovery action (``RECOVERY_ACTIONS``); None where the driver
    # predates it or the GPU does not offer it.
    recovery_action: str | None = None
    errors: tuple[str, ...] = ()

    WIRE = Document(
        Field("index", Integer(maximum=MAX_GPU_INDEX)),
        optional("uuid", Text(max_len=128)),
        optional("name", Text(max_len=128)),
        _count("temperature_c"),
        _count("power_mw"),
        _count("power_limit_mw"),
        _count("sm_clock_mhz"),
        _count("sm_clock_max_mhz"),
        _count("mem_clock_mhz"),
        _count("mem_clock_max_mhz"),
        optional("clock_events", Ref(ClockEvents)),
        _count("ecc_corrected_volatile"),
        _count("ecc_uncorrected_volatile"),
        _count("ecc_corrected_aggregate"),
        _count("ecc_uncorrected_aggregate"),
        optional("remapped_rows", Ref(RemappedRows)),
        _count("retired_pages_sbe"),
        _count("retired_pages_dbe"),
        optional("retired_pages_pending", Boolean()),
        _count("pcie_gen"),
        _count("pcie_gen_max"),
        _count("pcie_width"),
        _count("pcie_width_max"),
        _count("pcie_replays"),
        _count("gpu_util_pct"),
        _count("mem_util_pct"),
        optional("processes", ListOf(Ref(GpuProcess), MAX_PROCESSES)),
        optional(
            "recovery_action",
            Text(max_len=64, pattern=_RECOVERY_ACTION_NAME),
            "what the driver asks for to recover the GPU: none, gpu_reset, node_reboot, "
            "drain_p2p, drain_and_reset, ...; absent where the driver does not offer it",
        ),
        Field("errors", ListOf(Text(max_len=_MAX_TEXT), MAX_ERRORS), default=()),
        where="sample",
    )


# nvmlDeviceArchitecture_t values.
ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
    13: "rubin",
}


def architecture_name(value: int) -> str:
    return ARCHITECTURES.get(value, f"unknown ({value})")


def cuda_version_text(value: int) -> str:
    """NVML encodes the CUDA driver API version as 1000 * major + 10 * minor."""
    return f"{value // 1000}.{value % 1000 // 10}"


@dataclass(frozen=True, kw_only=True)
class GpuInventory:
    """What a GPU is; it changes only when hardware, firmware or MIG mode does."""

    index: int
    uuid: str | None = None
    serial: str | None = None
    name: str | None = None
    pci_bus_id: str | None = None
    pci_device_id: int | None = None  # device id << 16 | vendor id (0x10DE)
    architecture: str | None = None
    compute_capability: str | None = None
    vbios: str | None = None
    memory_total_bytes: int | None = None
    mig_enabled: bool | None = None
    mig_pending: bool | None = None  # MIG mode after the next GPU reset
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["errors"] = list(self.errors)
        return doc


@dataclass(frozen=True)
class HostGpus:
    """Everything the collector saw on one host at one moment."""

    driver_version: str
    cuda_driver_version: str | None
    inventory: tuple[GpuInventory, ...]
    samples: tuple[GpuSample, ...]
    errors: tuple[str, ...] = ()  # failed system-wide queries


@dataclass(frozen=True)
class XidEvent(Wire):
    """One XID the driver raised, as the agent received it."""

    at: float  # seconds since the epoch, when the agent received the event
    gpu_index: int | None  # None: NVML named a device the listener did not register
    gpu_uuid: str | None
    xid: int

    WIRE = Document(
        Field("at", Number(), description="when the agent received it, seconds since the epoch"),
        optional("gpu_index", Integer(maximum=MAX_GPU_INDEX)),
        optional("gpu_uuid", Text(max_len=128)),
        Field("xid", Integer(maximum=2**31 - 1)),
        where="xid",
    )
