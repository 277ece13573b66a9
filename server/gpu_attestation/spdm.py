"""The GPU's attestation report: an SPDM 1.1 GET_MEASUREMENTS request and the
signed MEASUREMENTS response, as NVML returns them, parsed strictly.

The report comes from a node, so every length is checked against what is left
before it is used: a truncated report, a length field that points past the end,
a measurement block that says one size and holds another, or bytes left over
after the signature are refused with the offset and field named. Nothing here
trusts the content; ``server.gpu_attestation.verifier`` checks the signature over
``signed_bytes`` before any field is believed.

Layout (DMTF DSP0274 1.1, as NVIDIA's drivers produce it, and as NVIDIA's own
verifier reads it)::

    request  (37 bytes): version 0x11 | code 0xE0 | param1 | param2 | nonce (32) | slot id
    response: version 0x11 | code 0x60 | param1 | param2 | number of blocks (1)
              | record length (3, LE) | record | nonce (32) | opaque length (2, LE)
              | opaque data | signature (96: ECDSA P-384 r || s)
    record: blocks of index (1) | specification (1, 0x01 = DMTF) | size (2, LE)
              | DMTF value type (1) | value size (2, LE) | value
    opaque data: fields of type (2, LE) | size (2, LE) | value
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass

from server.gpu_attestation.errors import GpuEvidenceError

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_LENGTH = 37
NONCE_LENGTH = 32
SIGNATURE_LENGTH = 96  # ECDSA P-384, r || s
DMTF_SPECIFICATION = 0x01
# param1 bit 0 of the request: a signature was requested; param2 0xFF: all blocks.
SIGNATURE_REQUESTED = 0x01
ALL_MEASUREMENTS = 0xFF
# A Hopper report is 4117 bytes; NVML's buffer holds at most 8 KiB.
MAX_REPORT_BYTES = 64 * 1024

# Opaque data fields NVIDIA's GPUs fill in (NVIDIA's verifier, OPAQUE_DATA_TYPES).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_CHIP_SKU = 15
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_FWID = 20
VBIOS_VERSION_LENGTH = 8
FWID_LENGTH = 48

_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]+")


@dataclass(frozen=True)
class SpdmReport:
    """A parsed attestation report; nothing in it is verified yet."""

    request: bytes
    response: bytes
    nonce: bytes  # the requester's: the verifier's challenge
    measurements: dict[int, bytes]  # SPDM block index (from 1) -> measurement value
    opaque: dict[int, bytes]  # opaque field type -> value
    signature: bytes  # raw r || s

    @property
    def signed_bytes(self) -> bytes:
        """What the GPU signed: the request and the response up to its signature."""
        return self.request + self.response[:-SIGNATURE_LENGTH]

    @property
    def driver_version(self) -> str:
        raw = self._field(OPAQUE_DRIVER_VERSION, "driver version").rstrip(b"\0")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise GpuEvidenceError("the report's driver version is not ASCII") from None
        if not re.fullmatch(r"\d{1,4}(?:\.\d{1,4}){1,3}", text):
            raise GpuEvidenceError(f"the report's driver version {text[:40]!r} is malformed")
        return text

    @property
    def vbios_version(self) -> str:
        """As NVIDIA writes it: ``96.00.9f.00.01`` from the field's 8 bytes (the
        little-endian 32-bit word, then the fifth byte)."""
        raw = self._field(OPAQUE_VBIOS_VERSION, "VBIOS version")
        if len(raw) != VBIOS_VERSION_LENGTH:
            raise GpuEvidenceError(
                f"the report's VBIOS version field is {len(raw)} bytes, not {VBIOS_VERSION_LENGTH}"
            )
        digits = f"{struct.unpack_from('<I', raw)[0]:08x}{raw[4]:02x}"
        return ".".join(digits[i : i + 2] for i in range(0, len(digits), 2))

    @property
    def fwid(self) -> bytes | None:
        """The firmware id the device certificate must carry; None: the report has none."""
        raw = self.opaque.get(OPAQUE_FWID)
        if raw is not None and len(raw) != FWID_LENGTH:
            raise GpuEvidenceError(f"the report's FWID is {len(raw)} bytes, not {FWID_LENGTH}")
        return raw

    def _field(self, kind: int, name: str) -> bytes:
        try:
            return self.opaque[kind]
        except KeyError:
            raise GpuEvidenceError(f"the report has no {name} (opaque field {kind})") from None


def read_report(data: bytes) -> bytes:
    """A report file's bytes: raw, or as hex text (NVIDIA's samples, ``nvidia-smi``'s
    dumps), which may hold whitespace."""
    if len(data) > 2 * MAX_REPORT_BYTES + 4096:
        raise GpuEvidenceError(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    if _HEX_TEXT.fullmatch(data):
        try:
            return binascii.unhexlify(b"".join(data.split()))
        except binascii.Error:
            raise GpuEvidenceError("the report is hex text of odd length") from None
    return data


class _SpdmCursor:
    """Reads fields in order, refusing any that would run past the end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self.data) - self.offset:
            raise GpuEvidenceError(
                f"{self.what} is truncated: {field} at offset {self.offset} needs {n} bytes, "
                f"{len(self.data) - self.offset} left"
            )
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def byte(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u24(self, field: str) -> int:
        return int.from_bytes(self.take(3, field), "little")

    def done(self) -> None:
        if self.offset != len(self.data):
            raise GpuEvidenceError(
                f"{self.what} has {len(self.data) - self.offset} bytes after its end "
                f"(offset {self.offset})"
            )


def parse_report(data: bytes) -> SpdmReport:
    """The report in ``data``; GpuEvidenceError naming the field if it is not one."""
    if len(data) > MAX_REPORT_BYTES:
        raise GpuEvidenceError(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    if len(data) <= REQUEST_LENGTH:
        raise GpuEvidenceError(
            f"the report is {len(data)} bytes: too short for a GET_MEASUREMENTS request "
            "and its response"
        )
    request, response = data[:REQUEST_LENGTH], data[REQUEST_LENGTH:]
    nonce = _parse_request(request)
    cursor = _SpdmCursor(response, "the MEASUREMENTS response")
    _header(cursor, MEASUREMENTS, "MEASUREMENTS response")
    count = cursor.byte("number of blocks")
    record = _SpdmCursor(
        cursor.take(cursor.u24("record length"), "measurement record"), "the record"
    )
    measurements = _parse_blocks(record, count)
    cursor.take(NONCE_LENGTH, "responder nonce")
    opaque = _parse_opaque(
        _SpdmCursor(cursor.take(cursor.u16("opaque length"), "opaque data"), "the opaque data")
    )
    signature = cursor.take(SIGNATURE_LENGTH, "signature")
    cursor.done()
    return SpdmReport(request, response, nonce, measurements, opaque, signature)


def _header(cursor: _SpdmCursor, code: int, name: str) -> tuple[int, int]:
    version = cursor.byte("SPDM version")
    if version != SPDM_VERSION_1_1:
        raise GpuEvidenceError(f"the {name} is SPDM version {version:#04x}, not 1.1 (0x11)")
    found = cursor.byte("request/response code")
    if found != code:
        raise GpuEvidenceError(f"the {name} has code {found:#04x}, not {code:#04x}")
    return cursor.byte("param1"), cursor.byte("param2")


def _parse_request(request: bytes) -> bytes:
    cursor = _SpdmCursor(request, "the GET_MEASUREMENTS request")
    param1, param2 = _header(cursor, GET_MEASUREMENTS, "GET_MEASUREMENTS request")
    if not param1 & SIGNATURE_REQUESTED:
        raise GpuEvidenceError("the GET_MEASUREMENTS request did not ask for a signature")
    if param2 != ALL_MEASUREMENTS:
        raise GpuEvidenceError(
            f"the GET_MEASUREMENTS request asked for block {param2}, not all blocks (0xff)"
        )
    nonce = cursor.take(NONCE_LENGTH, "nonce")
    cursor.byte("slot id")
    cursor.done()
    return nonce


def _parse_blocks(record: _SpdmCursor, count: int) -> dict[int, bytes]:
    if count == 0:
        raise GpuEvidenceError("the MEASUREMENTS response holds no measurement blocks")
    blocks: dict[int, bytes] = {}
    for n in range(count):
        index = record.byte(f"block {n} index")
        if index == 0 or index == ALL_MEASUREMENTS:
            raise GpuEvidenceError(f"measurement block {n} has the reserved index {index}")
        if index in blocks:
            raise GpuEvidenceError(f"measurement block index {index} appears twice")
        specification = record.byte(f"block {index} specification")
        if specification != DMTF_SPECIFICATION:
            raise GpuEvidenceError(
                f"measurement block {index} is not in the DMTF format "
                f"(specification {specification:#04x})"
            )
        body = _SpdmCursor(
            record.take(record.u16(f"block {index} size"), f"block {index}"), f"block {index}"
        )
        body.byte(f"block {index} value type")
        blocks[index] = body.take(body.u16(f"block {index} value size"), f"block {index} value")
        body.done()
    record.done()
    return blocks


def _parse_opaque(opaque: _SpdmCursor) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    while opaque.offset < len(opaque.data):
        kind = opaque.u16("opaque field type")
        if kind in fields:
            raise GpuEvidenceError(f"opaque field {kind} appears twice")
        fields[kind] = opaque.take(opaque.u16(f"opaque field {kind} size"), f"opaque field {kind}")
    return fields
