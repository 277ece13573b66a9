"""What the agent knows about one GPU, as plain data.

NVML is read on the node (``node.nvml``), but the records it produces are
judged by pure rules (``fleet.gpu_rules``), sent in reports and shown by the
server, so they live here with no dependency on NVML. Every measurement is
``None`` when it is unknown: the GPU or its driver does not support the query.
That is not the same as zero and never counts as a problem by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fleet.errors import InvalidDocument
from fleet.schema import Reader

# Bounds on what a report from the network may carry per GPU.
MAX_PROCESSES = 256
MAX_ERRORS = 32
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
class GpuProcess:
    pid: int
    used_memory_bytes: int | None  # None where the driver cannot attribute memory


@dataclass(frozen=True, kw_only=True)
class GpuSample:
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
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["clock_events"] = (
            None
            if self.clock_events is None
            else {"mask": self.clock_events.mask, "reasons": list(self.clock_events.reasons)}
        )
        doc["processes"] = None if self.processes is None else [asdict(p) for p in self.processes]
        doc["errors"] = list(self.errors)
        return doc

    @classmethod
    def from_dict(cls, doc: object, where: str) -> GpuSample:
        """The inverse of ``to_dict``, strict: samples arrive in reports from the network."""
        r = Reader(doc, where, allowed=frozenset(f.name for f in fields(cls)))
        raw: dict[str, Any] = dict(doc)  # type: ignore[call-overload]  # Reader checked
        measured = {
            f.name: r.optional_integer(f.name)
            for f in fields(cls)
            if f.name not in _NOT_PLAIN_COUNTS
        }
        events = raw.get("clock_events")
        rows = raw.get("remapped_rows")
        processes = raw.get("processes")
        return cls(
            index=r.integer("index", maximum=MAX_GPU_INDEX),
            uuid=r.optional_text("uuid", max_len=128),
            name=r.optional_text("name", max_len=128),
            **measured,
            clock_events=None if events is None else _clock_events(events, f"{where}.clock_events"),
            remapped_rows=None if rows is None else _remapped_rows(rows, f"{where}.remapped_rows"),
            retired_pages_pending=r.optional_boolean("retired_pages_pending"),
            processes=None
            if processes is None
            else tuple(
                _process(p, r.item_where("processes", i))
                for i, p in enumerate(r.items("processes", max_items=MAX_PROCESSES))
            ),
            errors=_texts(r, "errors"),
        )


MAX_GPU_INDEX = 64
_NOT_PLAIN_COUNTS = frozenset(
    {
        "index",
        "uuid",
        "name",
        "clock_events",
        "remapped_rows",
        "retired_pages_pending",
        "processes",
        "errors",
    }
)


def _texts(r: Reader, key: str) -> tuple[str, ...]:
    items = r.items(key, max_items=MAX_ERRORS, default=[])
    if not all(isinstance(i, str) and len(i) <= _MAX_TEXT for i in items):
        raise InvalidDocument(f"{r.where}: {key!r} must be short strings")
    return tuple(items)


def _clock_events(doc: object, where: str) -> ClockEvents:
    r = Reader(doc, where, allowed=frozenset({"mask", "reasons"}))
    # The reasons are derived from the mask; what the sender wrote there is not trusted.
    return ClockEvents(r.integer("mask"))


def _remapped_rows(doc: object, where: str) -> RemappedRows:
    r = Reader(doc, where, allowed=frozenset(f.name for f in fields(RemappedRows)))
    return RemappedRows(
        correctable=r.integer("correctable"),
        uncorrectable=r.integer("uncorrectable"),
        pending=r.boolean("pending"),
        failure=r.boolean("failure"),
    )


def _process(doc: object, where: str) -> GpuProcess:
    r = Reader(doc, where, allowed=frozenset({"pid", "used_memory_bytes"}))
    return GpuProcess(r.integer("pid"), r.optional_integer("used_memory_bytes"))


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
class XidEvent:
    """One XID the driver raised, as the agent received it."""

    at: float  # seconds since the epoch, when the agent received the event
    gpu_index: int | None  # None: NVML named a device the listener did not register
    gpu_uuid: str | None
    xid: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: object, where: str) -> XidEvent:
        r = Reader(doc, where, allowed=frozenset({"at", "gpu_index", "gpu_uuid", "xid"}))
        return cls(
            at=r.number("at"),
            gpu_index=r.optional_integer("gpu_index", maximum=MAX_GPU_INDEX),
            gpu_uuid=r.optional_text("gpu_uuid", max_len=128),
            xid=r.integer("xid", maximum=2**31 - 1),
        )
