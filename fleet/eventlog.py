"""TCG measured-boot event logs: a strict parser and a PCR replay.

A node sends its firmware event log (``binary_bios_measurements``) beside a TPM
quote; the server replays the log and accepts it only if the replay equals the
quoted PCRs, then judges the events themselves against measured-boot policy.
The log is untrusted input from the network, so this parser checks every length
field against the bytes that remain and against fixed maxima, and reports any
malformed or truncated log as one ``EventLogError`` naming the byte offset and
the event index, never as an ``IndexError`` or ``struct.error``.

Pure and stdlib only (it parses bytes, nothing else): the server's verifier and
the ``gpuward eventlog`` command both use it, and the parser is shared so the two
can never disagree about a log.

Two formats, told apart by the first event:

* crypto-agile (TCG PC Client Platform Firmware Profile, TPM 2.0): a legacy
  ``TCG_PCR_EVENT`` header carrying the "Spec ID Event03" structure, which
  declares the digest algorithms and their sizes, then ``TCG_PCR_EVENT2``
  events with one digest per declared bank;
* legacy SHA1 (TCG 1.2 style): ``TCG_PCR_EVENT`` records with one SHA1 digest.

``replay`` reproduces what ``tpm2_eventlog`` (tpm2-tools) computes, quirks
included, so that its output is a reference we can test against.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fleet.errors import GpuwardError

# Bounds on untrusted input. Real logs hold hundreds of events and tens of KiB;
# the largest event is usually a signature database of a few KiB to tens of KiB.
# A verifier keeps each node's last verified log, so these bound what one node
# can make the server store, not only what it parses: 1 MiB is several times the
# largest real log.
MAX_LOG_BYTES = 1024 * 1024
MAX_EVENTS = 100_000
MAX_EVENT_DATA = 256 * 1024
# EV_NO_ACTION events are not extended into any PCR, so no quote vouches for
# their bytes: firmware writes a few of tens of bytes (Spec ID, StartupLocality,
# SP800-155, NV index records). More than this in all is padding, refused rather
# than stripped: the log a node names by digest must be the log the server keeps.
MAX_NO_ACTION_BYTES = 16 * 1024
MAX_ALGORITHMS = 16
MAX_DIGEST_SIZE = 64
# TPM2_MAX_PCRS in tss2, the bound tpm2_eventlog enforces.
PCR_COUNT = 32

FORMAT_CRYPTO_AGILE = "crypto-agile"
FORMAT_SHA1 = "sha1"

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
HCRTM_DATA = b"HCRTM"

EV_PREBOOT_CERT = 0x0
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_S_CRTM_CONTENTS = 0x7
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0

EVENT_TYPE_NAMES: Mapping[int, str] = {
    EV_PREBOOT_CERT: "EV_PREBOOT_CERT",
    EV_POST_CODE: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    EV_NO_ACTION: "EV_NO_ACTION",
    EV_SEPARATOR: "EV_SEPARATOR",
    EV_ACTION: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    EV_S_CRTM_CONTENTS: "EV_S_CRTM_CONTENTS",
    EV_S_CRTM_VERSION: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    EV_IPL: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    EV_EFI_VARIABLE_DRIVER_CONFIG: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    EV_EFI_VARIABLE_BOOT: "EV_EFI_VARIABLE_BOOT",
    EV_EFI_BOOT_SERVICES_APPLICATION: "EV_EFI_BOOT_SERVICES_APPLICATION",
    EV_EFI_BOOT_SERVICES_DRIVER: "EV_EFI_BOOT_SERVICES_DRIVER",
    EV_EFI_RUNTIME_SERVICES_DRIVER: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    EV_EFI_ACTION: "EV_EFI_ACTION",
    EV_EFI_PLATFORM_FIRMWARE_BLOB: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    EV_EFI_VARIABLE_BOOT2: "EV_EFI_VARIABLE_BOOT2",
    0x8000000D: "EV_EFI_GPT_EVENT2",
    EV_EFI_HCRTM_EVENT: "EV_EFI_HCRTM_EVENT",
    EV_EFI_VARIABLE_AUTHORITY: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
    0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}


@dataclass(frozen=True)
class Algorithm:
    """A TPM hash algorithm: its TPM_ALG_ID, the bank name tpm2-tools uses, its size."""

    alg_id: int
    name: str
    digest_size: int
    hashlib_name: str


# Banks in the order tpm2_eventlog prints them.
KNOWN_ALGORITHMS: Mapping[int, Algorithm] = {
    a.alg_id: a
    for a in (
        Algorithm(0x0004, "sha1", 20, "sha1"),
        Algorithm(0x000B, "sha256", 32, "sha256"),
        Algorithm(0x000C, "sha384", 48, "sha384"),
        Algorithm(0x000D, "sha512", 64, "sha512"),
        Algorithm(0x0012, "sm3_256", 32, "sm3"),
        Algorithm(0x0027, "sha3_256", 32, "sha3_256"),
        Algorithm(0x0028, "sha3_384", 48, "sha3_384"),
        Algorithm(0x0029, "sha3_512", 64, "sha3_512"),
    )
}
_BANK_ORDER = {a.name: i for i, a in enumerate(KNOWN_ALGORITHMS.values())}
_SHA1 = KNOWN_ALGORITHMS[0x0004]


_CORRUPT = (
    "the log is corrupt or truncated: collect it again from "
    "/sys/kernel/security/tpm0/binary_bios_measurements"
)


class EventLogError(GpuwardError):
    """The event log is malformed or truncated; ``offset`` and ``index`` say where."""

    def __init__(self, offset: int, index: int, problem: str, advice: str = _CORRUPT) -> None:
        super().__init__(
            f"event log rejected at byte {offset} (event {index}): {problem}; {advice}"
        )
        self.offset = offset
        self.index = index
        self.problem = problem


def type_name(event_type: int) -> str:
    """The TCG name of an event type, or its number in hex when it has none."""
    return EVENT_TYPE_NAMES.get(event_type) or f"0x{event_type:08x}"


def bank_name(alg_id: int) -> str:
    """The tpm2-tools bank name of an algorithm, or its id in hex when unknown."""
    known = KNOWN_ALGORITHMS.get(alg_id)
    return known.name if known else f"0x{alg_id:04x}"


# Typed decodings of event data. Each has ``kind`` (for JSON), ``summary()`` (one
# line for people) and ``to_dict()``.


@dataclass(frozen=True)
class SpecIdEvent:
    """The "Spec ID Event03" structure that opens a crypto-agile log."""

    platform_class: int
    spec_version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    algorithms: Mapping[int, int]  # TPM_ALG_ID -> digest size, in declared order
    vendor_info: bytes

    kind = "spec_id"

    @property
    def digest_sizes(self) -> dict[str, int]:
        """Bank name -> digest size."""
        return {bank_name(alg_id): size for alg_id, size in self.algorithms.items()}

    def summary(self) -> str:
        banks = ", ".join(f"{b} ({n} bytes)" for b, n in self.digest_sizes.items())
        major, minor, errata = self.spec_version
        return f"Spec ID Event03, TCG PFP {major}.{minor} errata {errata}: {banks}"

    def to_dict(self) -> dict[str, Any]:
        major, minor, errata = self.spec_version
        return {
            "kind": self.kind,
            "platform_class": self.platform_class,
            "spec_version": {"major": major, "minor": minor, "errata": errata},
            "uintn_size": self.uintn_size,
            "digest_sizes": self.digest_sizes,
            "vendor_info": self.vendor_info.hex(),
        }


@dataclass(frozen=True)
class StartupLocality:
    """The locality the TPM was started from; 3 makes PCR 0 start at 0x00..03."""

    locality: int

    kind = "startup_locality"

    def summary(self) -> str:
        return f"StartupLocality {self.locality}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "locality": self.locality}


@dataclass(frozen=True)
class NoAction:
    """Any other EV_NO_ACTION event (e.g. "SP800-155 Event", "NvIndexInstance")."""

    signature: str | None

    kind = "no_action"

    def summary(self) -> str:
        return f"no action: {self.signature}" if self.signature else "no action"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "signature": self.signature}


@dataclass(frozen=True)
class EfiVariable:
    """A UEFI variable measurement (UEFI_VARIABLE_DATA)."""

    guid: str
    name: str
    data: bytes

    kind = "efi_variable"

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def summary(self) -> str:
        return f"{self.name} {{{self.guid}}}, {len(self.data)} bytes"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "guid": self.guid,
            "name": self.name,
            "data_length": len(self.data),
            "data_sha256": self.data_sha256,
        }


@dataclass(frozen=True)
class ImageLoad:
    """A UEFI image measurement (UEFI_IMAGE_LOAD_EVENT): an application or driver."""

    location: int
    length: int
    link_time_address: int
    device_path: bytes

    kind = "image_load"

    @property
    def file_path(self) -> str | None:
        """The file the image came from (the device path's File Path nodes), if any."""
        return _file_path(self.device_path)

    def summary(self) -> str:
        where = self.file_path or f"device path {len(self.device_path)} bytes"
        return f"image at 0x{self.location:x}, {self.length} bytes, {where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "location": self.location,
            "length": self.length,
            "link_time_address": self.link_time_address,
            "device_path_length": len(self.device_path),
            "device_path": self.device_path.hex(),
            "file_path": self.file_path,
        }


@dataclass(frozen=True)
class FirmwareBlob:
    """A firmware volume measurement (UEFI_PLATFORM_FIRMWARE_BLOB)."""

    base: int
    length: int

    kind = "firmware_blob"

    def summary(self) -> str:
        return f"firmware blob at 0x{self.base:x}, {self.length} bytes"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "length": self.length}


@dataclass(frozen=True)
class Separator:
    """EV_SEPARATOR: 0 marks the end of pre-OS measurements, anything else an error."""

    value: int | None  # None when the data is not the usual 4-byte value

    kind = "separator"

    def summary(self) -> str:
        if self.value is None:
            return "separator"
        return "separator" if self.value == 0 else f"separator, error value 0x{self.value:08x}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class EventText:
    """Event data that is text: boot loader command lines, EFI actions, CRTM versions."""

    text: str

    kind = "text"

    def summary(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text}


Decoded = (
    SpecIdEvent
    | StartupLocality
    | NoAction
    | EfiVariable
    | ImageLoad
    | FirmwareBlob
    | Separator
    | EventText
)


@dataclass(frozen=True)
class Event:
    """One measurement: what was extended into which PCR, and the data it describes."""

    index: int
    offset: int
    pcr: int
    event_type: int
    digests: Mapping[str, bytes]  # bank name -> digest, in log order
    data: bytes
    decoded: Decoded | None

    @property
    def type_name(self) -> str:
        return type_name(self.event_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "offset": self.offset,
            "pcr": self.pcr,
            "type": self.event_type,
            "type_name": self.type_name,
            "digests": {bank: d.hex() for bank, d in self.digests.items()},
            "data": self.data.hex(),
            "decoded": self.decoded.to_dict() if self.decoded else None,
        }


@dataclass(frozen=True)
class EventLog:
    """A parsed log. In crypto-agile logs ``events[0]`` is the Spec ID header."""

    format: str
    spec_id: SpecIdEvent | None
    digest_sizes: Mapping[str, int]  # bank name -> digest size, as declared
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "spec_id": self.spec_id.to_dict() if self.spec_id else None,
            "digest_sizes": dict(self.digest_sizes),
            "events": [e.to_dict() for e in self.events],
        }


# Parsing.

_LEGACY_HEADER = struct.Struct("<II20s")  # pcrIndex, eventType, SHA1 digest
_EVENT2_HEADER = struct.Struct("<III")  # PCRIndex, EventType, DigestCount
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")
_SPEC_ID_ALG = struct.Struct("<HH")
_VARIABLE_HEADER = struct.Struct("<IHH8sQQ")  # EFI_GUID, name length, data length
_IMAGE_LOAD = struct.Struct("<QQQQ")
_FIRMWARE_BLOB = struct.Struct("<QQ")
_ZERO_SHA1 = bytes(20)


def parse(data: bytes | bytearray | memoryview) -> EventLog:
    """Parse a binary event log; raise ``EventLogError`` for anything malformed."""
    buf = memoryview(data).cast("B")
    if len(buf) == 0:
        raise EventLogError(0, 0, "the log is empty")
    if len(buf) > MAX_LOG_BYTES:
        raise EventLogError(0, 0, f"the log is {len(buf)} bytes, over {MAX_LOG_BYTES}")
    first, offset = _legacy_event(buf, 0, 0)
    if first.event_type != EV_NO_ACTION or not first.data.startswith(SPEC_ID_SIGNATURE):
        events = [first]
        while offset < len(buf):
            event, offset = _legacy_event(buf, offset, len(events))
            events.append(event)
        _check_no_action(events)
        return EventLog(FORMAT_SHA1, None, {_SHA1.name: _SHA1.digest_size}, tuple(events))
    spec_id = _spec_id(first, offset - len(first.data))
    events = [replace(first, decoded=spec_id), *_events2(buf, offset, spec_id.algorithms)]
    _check_no_action(events)
    return EventLog(FORMAT_CRYPTO_AGILE, spec_id, spec_id.digest_sizes, tuple(events))


def _check_no_action(events: list[Event]) -> None:
    """Refuse a log whose unmeasured (EV_NO_ACTION) events carry more than firmware writes."""
    total = 0
    for event in events:
        if event.event_type == EV_NO_ACTION:
            total += len(event.data)
            if total > MAX_NO_ACTION_BYTES:
                raise EventLogError(
                    event.offset,
                    event.index,
                    f"EV_NO_ACTION events carry over {MAX_NO_ACTION_BYTES} bytes; firmware "
                    "writes a few dozen, and no quote covers them",
                    "the log was padded after boot and is refused: send the log exactly as "
                    "/sys/kernel/security/tpm0/binary_bios_measurements holds it",
                )


def _short(buf: memoryview, offset: int, size: int, index: int, what: str) -> EventLogError:
    remaining = max(len(buf) - offset, 0)
    return EventLogError(offset, index, f"{what} needs {size} bytes but {remaining} remain")


def _event_data(buf: memoryview, offset: int, index: int) -> tuple[bytes, int]:
    """The ``UINT32 size; BYTE data[size]`` that ends both event formats."""
    if len(buf) - offset < 4:
        raise _short(buf, offset, 4, index, "the event size")
    (size,) = _U32.unpack_from(buf, offset)
    if size > MAX_EVENT_DATA:
        raise EventLogError(offset, index, f"event size {size} exceeds {MAX_EVENT_DATA}")
    offset += 4
    end = offset + size
    if end > len(buf):
        raise _short(buf, offset, size, index, "the event data")
    return buf[offset:end].tobytes(), end


def _legacy_event(buf: memoryview, offset: int, index: int) -> tuple[Event, int]:
    if index >= MAX_EVENTS:
        raise EventLogError(offset, index, f"more than {MAX_EVENTS} events")
    if len(buf) - offset < _LEGACY_HEADER.size:
        raise _short(buf, offset, _LEGACY_HEADER.size, index, "the event header")
    pcr, event_type, digest = _LEGACY_HEADER.unpack_from(buf, offset)
    if pcr >= PCR_COUNT:
        raise EventLogError(offset, index, f"PCR index {pcr} is not below {PCR_COUNT}")
    data, end = _event_data(buf, offset + _LEGACY_HEADER.size, index)
    decoded = _decode(event_type, data, offset, index)
    return Event(index, offset, pcr, event_type, {_SHA1.name: digest}, data, decoded), end


def _events2(buf: memoryview, offset: int, algorithms: Mapping[int, int]) -> list[Event]:
    """The TCG_PCR_EVENT2 records after the Spec ID header. The hot path: one
    loop, bounds checked before every read."""
    events: list[Event] = []
    end = len(buf)
    unpack_header = _EVENT2_HEADER.unpack_from
    unpack_u16 = _U16.unpack_from
    header_size = _EVENT2_HEADER.size
    names = {alg_id: bank_name(alg_id) for alg_id in algorithms}
    index = 1
    while offset < end:
        if index >= MAX_EVENTS:
            raise EventLogError(offset, index, f"more than {MAX_EVENTS} events")
        if end - offset < header_size:
            raise _short(buf, offset, header_size, index, "the event header")
        pcr, event_type, count = unpack_header(buf, offset)
        if pcr >= PCR_COUNT:
            raise EventLogError(offset, index, f"PCR index {pcr} is not below {PCR_COUNT}")
        if count > len(algorithms):
            raise EventLogError(
                offset,
                index,
                f"digest count {count} exceeds the {len(algorithms)} algorithm(s) "
                "declared in the Spec ID event",
            )
        pos = offset + header_size
        digests: dict[str, bytes] = {}
        for _ in range(count):
            if end - pos < 2:
                raise _short(buf, pos, 2, index, "a digest's algorithm id")
            (alg_id,) = unpack_u16(buf, pos)
            size = algorithms.get(alg_id)
            if size is None:
                raise EventLogError(
                    pos, index, f"algorithm 0x{alg_id:04x} is not declared in the Spec ID event"
                )
            name = names[alg_id]
            if name in digests:
                raise EventLogError(pos, index, f"two {name} digests in one event")
            pos += 2
            if end - pos < size:
                raise _short(buf, pos, size, index, f"the {name} digest")
            digests[name] = buf[pos : pos + size].tobytes()
            pos += size
        data, next_offset = _event_data(buf, pos, index)
        decoded = _decode(event_type, data, offset, index)
        events.append(Event(index, offset, pcr, event_type, digests, data, decoded))
        offset = next_offset
        index += 1
    return events


def _spec_id(header: Event, where: int) -> SpecIdEvent:
    """Decode the Spec ID Event03 structure; ``where`` is the offset of its data."""
    data = header.data
    if header.pcr != 0 or header.digests[_SHA1.name] != _ZERO_SHA1:
        raise EventLogError(0, 0, "the Spec ID event must be in PCR 0 with a zero digest")
    if len(data) < _SPEC_ID_FIXED.size + 1:
        raise EventLogError(where, 0, f"Spec ID event data is only {len(data)} bytes")
    _, platform_class, minor, major, errata, uintn_size, count = _SPEC_ID_FIXED.unpack_from(data)
    if not 1 <= count <= MAX_ALGORITHMS:
        raise EventLogError(
            where, 0, f"the Spec ID event declares {count} algorithms, not 1 to {MAX_ALGORITHMS}"
        )
    algs_end = _SPEC_ID_FIXED.size + count * _SPEC_ID_ALG.size
    if len(data) < algs_end + 1:
        raise EventLogError(where, 0, f"the Spec ID event is too short for {count} algorithms")
    sizes: dict[int, int] = {}
    for alg_id, size in _SPEC_ID_ALG.iter_unpack(data[_SPEC_ID_FIXED.size : algs_end]):
        name = bank_name(alg_id)
        known = KNOWN_ALGORITHMS.get(alg_id)
        if alg_id in sizes:
            raise EventLogError(where, 0, f"the Spec ID event declares {name} twice")
        if known and size != known.digest_size:
            raise EventLogError(
                where, 0, f"the Spec ID event gives {name} {size} bytes, not {known.digest_size}"
            )
        if not 1 <= size <= MAX_DIGEST_SIZE:
            raise EventLogError(where, 0, f"the Spec ID event gives {name} {size} bytes")
        sizes[alg_id] = size
    vendor_size = data[algs_end]
    # tpm2_eventlog finds the next event after the vendor info, not after
    # eventDataSize: insist that both agree, so both parsers see the same events.
    if len(data) != algs_end + 1 + vendor_size:
        raise EventLogError(
            where,
            0,
            f"the Spec ID event is {len(data)} bytes but its fields take "
            f"{algs_end + 1 + vendor_size}",
        )
    return SpecIdEvent(
        platform_class=platform_class,
        spec_version=(major, minor, errata),
        uintn_size=uintn_size,
        algorithms=sizes,
        vendor_info=data[algs_end + 1 :],
    )


_TEXT_TYPES = frozenset({EV_POST_CODE, EV_ACTION, EV_S_CRTM_VERSION, EV_IPL, EV_EFI_ACTION})
_VARIABLE_TYPES = frozenset(
    {
        EV_EFI_VARIABLE_DRIVER_CONFIG,
        EV_EFI_VARIABLE_BOOT,
        EV_EFI_VARIABLE_BOOT2,
        EV_EFI_VARIABLE_AUTHORITY,
    }
)
_IMAGE_TYPES = frozenset(
    {
        EV_EFI_BOOT_SERVICES_APPLICATION,
        EV_EFI_BOOT_SERVICES_DRIVER,
        EV_EFI_RUNTIME_SERVICES_DRIVER,
    }
)
_BLOB_TYPES = frozenset({EV_S_CRTM_CONTENTS, EV_EFI_PLATFORM_FIRMWARE_BLOB})


def _decode(event_type: int, data: bytes, offset: int, index: int) -> Decoded | None:
    """Decode the data of the event types we know; malformed structures are errors.

    The structures tpm2_eventlog checks are checked at least as strictly here, so
    that no log it rejects is accepted.
    """
    if event_type in _TEXT_TYPES:
        text = _text(data)
        return EventText(text) if text else None
    if event_type in _VARIABLE_TYPES:
        return _variable(data, offset, index)
    if event_type in _IMAGE_TYPES:
        return _image_load(data, offset, index)
    if event_type == EV_SEPARATOR:
        return Separator(_U32.unpack(data)[0] if len(data) == 4 else None)
    if event_type == EV_NO_ACTION:
        return _no_action(data, offset, index)
    if event_type in _BLOB_TYPES:
        if len(data) < _FIRMWARE_BLOB.size:
            raise EventLogError(offset, index, f"firmware blob data is only {len(data)} bytes")
        return FirmwareBlob(*_FIRMWARE_BLOB.unpack_from(data))
    if event_type == EV_EFI_HCRTM_EVENT:
        if data != HCRTM_DATA:
            raise EventLogError(offset, index, 'EV_EFI_HCRTM_EVENT data must be "HCRTM"')
        return EventText(HCRTM_DATA.decode())
    return None


def _text(data: bytes) -> str | None:
    """The text in ``data`` if it is printable UTF-8 or ASCII UTF-16LE (NUL-terminated or not).

    Boot loaders differ: grub measures UTF-8, systemd-boot UTF-16. UTF-16 must be
    ASCII so that binary data (a GUID, a blob address) is not taken for text.
    """
    stripped = data.rstrip(b"\x00")
    try:
        text = stripped.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if text.isprintable():
            return text
    if len(data) % 2 == 0:
        try:
            text = data.decode("utf-16-le").rstrip("\x00")
        except UnicodeDecodeError:
            return None
        if text.isascii() and text.isprintable():
            return text
    return None


def _variable(data: bytes, offset: int, index: int) -> EfiVariable:
    if len(data) < _VARIABLE_HEADER.size:
        raise EventLogError(offset, index, f"UEFI variable data is only {len(data)} bytes")
    guid1, guid2, guid3, guid4, name_chars, data_length = _VARIABLE_HEADER.unpack_from(data)
    name_end = _VARIABLE_HEADER.size + 2 * name_chars
    if name_end + data_length > len(data):
        raise EventLogError(
            offset,
            index,
            f"UEFI variable name ({name_chars} characters) and data ({data_length} bytes) "
            f"overrun the {len(data)} bytes of event data",
        )
    try:
        name = data[_VARIABLE_HEADER.size : name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        raise EventLogError(offset, index, "UEFI variable name is not valid UTF-16") from None
    return EfiVariable(
        # EFI_GUID: three little-endian fields, then eight bytes as they are.
        guid=f"{guid1:08x}-{guid2:04x}-{guid3:04x}-{guid4[:2].hex()}-{guid4[2:].hex()}",
        name=name,
        data=data[name_end : name_end + data_length],
    )


def _image_load(data: bytes, offset: int, index: int) -> ImageLoad:
    if len(data) < _IMAGE_LOAD.size:
        raise EventLogError(offset, index, f"UEFI image load data is only {len(data)} bytes")
    location, length, link_time_address, path_length = _IMAGE_LOAD.unpack_from(data)
    if _IMAGE_LOAD.size + path_length > len(data):
        raise EventLogError(
            offset,
            index,
            f"UEFI image device path ({path_length} bytes) overruns the "
            f"{len(data)} bytes of event data",
        )
    return ImageLoad(
        location=location,
        length=length,
        link_time_address=link_time_address,
        device_path=data[_IMAGE_LOAD.size : _IMAGE_LOAD.size + path_length],
    )


_DEVICE_PATH_NODE = struct.Struct("<BBH")  # type, subtype, length including this header
_MEDIA_FILE_PATH = (0x04, 0x04)
_END_OF_PATH = 0x7F


def _file_path(device_path: bytes) -> str | None:
    """Join the File Path nodes of a UEFI device path; None if it has none or is malformed.

    Best effort, for people and policy: the digest, not this text, is what was
    measured, so a malformed device path is not an error.
    """
    parts = []
    offset = 0
    while offset + _DEVICE_PATH_NODE.size <= len(device_path):
        node_type, subtype, length = _DEVICE_PATH_NODE.unpack_from(device_path, offset)
        if length < _DEVICE_PATH_NODE.size or offset + length > len(device_path):
            return None
        if node_type == _END_OF_PATH:
            break
        if (node_type, subtype) == _MEDIA_FILE_PATH:
            node = device_path[offset + _DEVICE_PATH_NODE.size : offset + length]
            try:
                parts.append(node.decode("utf-16-le").rstrip("\x00"))
            except UnicodeDecodeError:
                return None
        offset += length
    return "".join(parts) or None


def _no_action(data: bytes, offset: int, index: int) -> StartupLocality | NoAction:
    if data.startswith(STARTUP_LOCALITY_SIGNATURE):
        if len(data) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
            raise EventLogError(offset, index, f"StartupLocality data is {len(data)} bytes, not 17")
        locality = data[-1]
        if locality > 4:
            raise EventLogError(offset, index, f"StartupLocality {locality} is not 0 to 4")
        return StartupLocality(locality)
    return NoAction(_text(data[:16]))


# Replay.


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """The PCR values the log's events produce: bank name -> PCR index -> value.

    Follows tpm2_eventlog exactly, so that its output is a reference:

    * EV_NO_ACTION events are not extended. In crypto-agile logs they still list
      their PCR (tpm2_eventlog marks a PCR as used for every digest it walks); in
      SHA1 logs they do not. The Spec ID header itself lists nothing.
    * A StartupLocality event in PCR 0, before any H-CRTM event, sets the last
      byte of PCR 0 to the locality (locality 3: PCR 0 starts at 0x00..03) in
      each bank the event carries a digest for.
    * An EV_EFI_HCRTM_EVENT in PCR 0 sets the last byte of PCR 0 to 4 before it is
      extended (TPM 2.0 Library Part 1, H-CRTM before TPM2_Startup).
    * Only PCRs that some event touched appear. tpm2_eventlog replays the sha1,
      sha256, sha384, sha512 and sm3_256 banks; the SHA-3 banks are replayed here
      too, and banks of algorithms we do not know are left out.
    """
    hashes = {bank: _hash_function(bank) for bank in log.digest_sizes if bank in _BANK_ORDER}
    zeros = {bank: bytes(log.digest_sizes[bank]) for bank in hashes}
    values: dict[str, dict[int, bytes]] = {bank: {} for bank in hashes}
    crypto_agile = log.format == FORMAT_CRYPTO_AGILE
    found_hcrtm = False
    for event in log.events[1:] if crypto_agile else log.events:
        kind = event.event_type
        pcr = event.pcr
        if kind == EV_NO_ACTION and not crypto_agile:
            continue
        extend = kind != EV_NO_ACTION
        hcrtm = kind == EV_EFI_HCRTM_EVENT and pcr == 0
        found_hcrtm = found_hcrtm or hcrtm
        locality = 0
        if not extend and pcr == 0 and not found_hcrtm:
            decoded = event.decoded
            locality = decoded.locality if isinstance(decoded, StartupLocality) else 0
        for bank, digest in event.digests.items():
            hash_function = hashes.get(bank)
            if hash_function is None:
                continue
            bank_values = values[bank]
            value = bank_values.get(pcr, zeros[bank])
            if hcrtm:
                value = value[:-1] + b"\x04"
            elif locality:
                value = value[:-1] + bytes((locality,))
            if extend:
                value = hash_function(value + digest).digest()
            bank_values[pcr] = value
    return {
        bank: dict(sorted(values[bank].items()))
        for bank in sorted(values, key=_BANK_ORDER.__getitem__)
        if values[bank]
    }


def _hash_function(bank: str) -> Callable[[bytes], hashlib._Hash]:
    algorithm = next(a for a in KNOWN_ALGORITHMS.values() if a.name == bank)
    name = algorithm.hashlib_name
    if name not in hashlib.algorithms_available:
        raise GpuwardError(
            f"cannot replay the {bank} bank: this Python's OpenSSL has no {name}; "
            "install an OpenSSL build with it, or drop the bank from the verifier's policy"
        )
    constructor: Callable[[bytes], hashlib._Hash] | None = getattr(hashlib, name, None)
    if constructor is None:
        return lambda data: hashlib.new(name, data)
    return constructor
