"""GPU attestation evidence and the verdict on it, as they cross the wire.

Hopper and later GPUs sign an SPDM measurement report; the server (and
``gpuward gpu-attest verify``) checks it offline against NVIDIA's device root
and NVIDIA's Reference Integrity Manifests (``server.gpu_attestation``). The
evidence (``GpuEvidence``) rides in the node's health report, answering the
report's TPM challenge, so the quote that binds the report binds it too; the
verdict leaves the server in the API, in ``--json`` output, and beside the
node's report in the fleet store.

A verdict is ``pass`` only when every check passed. A check that could not be
made (no RIM for the firmware, no nonce to judge freshness, a certificate
without an OCSP response and revocation not waived) makes it ``unknown``, never
``pass``; any failed check (a revoked certificate or a stale response included)
makes it ``fail``. Measurements are numbered as RIMs and NVIDIA's verifier
number them: from 0, one less than the SPDM measurement block's index.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from fleet.errors import GpuwardError
from fleet.inventory import MAX_GPUS
from fleet.wire import Bytes, Choice, Document, Field, Integer, ListOf, Ref, Text, Wire, optional


class GpuOutcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 (an outcome, not a password)
    FAIL = "fail"
    UNKNOWN = "unknown"


class MeasurementOutcome(enum.StrEnum):
    MATCH = "match"  # equals one of the RIM's values for its index
    MISMATCH = "mismatch"  # equals none of them
    UNKNOWN = "unknown"  # no trusted RIM says what it should be


# The checks a verdict reports, in the order they are made.
REPORT = "report"
CERTIFICATE_CHAIN = "certificate_chain"
FWID = "fwid"
SIGNATURE = "signature"
NONCE = "nonce"
DRIVER_RIM = "driver_rim"
VBIOS_RIM = "vbios_rim"
REVOCATION = "revocation"
MEASUREMENTS = "measurements"
CHECKS = (
    REPORT,
    CERTIFICATE_CHAIN,
    FWID,
    SIGNATURE,
    NONCE,
    DRIVER_RIM,
    VBIOS_RIM,
    REVOCATION,
    MEASUREMENTS,
)

DRIVER = "driver"
VBIOS = "vbios"
# SPDM numbers measurement blocks 1 to 254; RIMs number them from 0.
MAX_INDEX = 253
MAX_MEASUREMENT_BYTES = 64
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_VERSION = re.compile(r"[0-9A-Za-z.]{1,32}")
MAX_DETAIL = 2048
# NVML's buffers: NVML_CC_GPU_ATTESTATION_REPORT_SIZE, NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE.
MAX_REPORT_BYTES = 0x2000
MAX_CERT_CHAIN_BYTES = 0x1400
_UUID = re.compile(r"GPU-[0-9A-Za-z-]{1,64}")
# Where the image repository publishes the RIMs and OCSP responses the server judges
# with (``gpuward repo add-rims``), as TUF targets of the targets role.
GPU_RIM_TARGETS = "gpu-rims/"
RIM_SUFFIX = ".swidtag"
OCSP_SUFFIX = ".der"
MAX_GPU_RIM_FILE_BYTES = 1024 * 1024
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def gpu_rim_target(name: str) -> str:
    """The target path a RIM or OCSP response file named ``name`` is published at."""
    if not _FILE_NAME.fullmatch(name) or not name.endswith((RIM_SUFFIX, OCSP_SUFFIX)):
        raise GpuwardError(
            f"{name!r}: publish RIMs as NAME{RIM_SUFFIX} and OCSP responses as NAME{OCSP_SUFFIX} "
            "(letters, digits, '.', '_', '-')"
        )
    return GPU_RIM_TARGETS + name


@dataclass(frozen=True)
class GpuEvidence(Wire):
    """One GPU's attestation evidence, as NVML returns it: its SPDM report answering
    the report challenge's nonce, and its certificate chain."""

    index: int
    uuid: str
    report: bytes  # the SPDM GET_MEASUREMENTS request and signed response
    cert_chain: bytes  # PEM, leaf first

    WIRE = Document(
        Field("index", Integer(maximum=MAX_GPUS)),
        Field("uuid", Text(max_len=72, pattern=_UUID)),
        Field("report", Bytes(MAX_REPORT_BYTES, description="SPDM GET_MEASUREMENTS exchange")),
        Field("cert_chain", Bytes(MAX_CERT_CHAIN_BYTES, description="PEM, leaf first")),
        where="GPU evidence",
    )


@dataclass(frozen=True)
class GpuCheck(Wire):
    """One step of the verification and how it went."""

    name: str
    outcome: GpuOutcome
    detail: str  # what was checked, or why it failed or could not be made

    WIRE = Document(
        Field("name", Text(choices=frozenset(CHECKS))),
        Field("outcome", Choice(GpuOutcome)),
        Field("detail", Text(max_len=MAX_DETAIL)),
        where="GPU check",
    )


@dataclass(frozen=True)
class GpuMeasurementVerdict(Wire):
    """One measurement of the report against the RIM value for its index."""

    index: int  # as RIMs number it: the SPDM block index minus one
    source: str | None  # the RIM that holds its reference value; None: no RIM does
    outcome: MeasurementOutcome
    measured: str | None  # the report's value, hex; None: the report has no such block

    WIRE = Document(
        Field("index", Integer(maximum=MAX_INDEX), description="SPDM block index minus one"),
        optional("source", Text(choices=frozenset({DRIVER, VBIOS})), "the RIM that covers it"),
        Field("outcome", Choice(MeasurementOutcome)),
        optional("measured", Text(max_len=2 * MAX_MEASUREMENT_BYTES, pattern=_HEX)),
        where="GPU measurement",
    )


@dataclass(frozen=True)
class GpuAttestationVerdict(Wire):
    """The verdict on one GPU's SPDM attestation report, certificate chain and RIMs."""

    verdict: GpuOutcome
    verified_at: int  # seconds since the epoch: the instant certificates were judged at
    driver_version: str | None  # as the signed report states it; None: unreadable report
    vbios_version: str | None
    nonce: str | None  # the report's nonce, hex
    checks: tuple[GpuCheck, ...]
    measurements: tuple[GpuMeasurementVerdict, ...]
    uuid: str | None = None  # the GPU's, as its node reported it; None: files on their own

    WIRE = Document(
        Field("verdict", Choice(GpuOutcome)),
        Field("verified_at", Integer(), description="seconds since the epoch"),
        optional("driver_version", Text(max_len=32, pattern=_VERSION)),
        optional("vbios_version", Text(max_len=32, pattern=_VERSION)),
        optional("nonce", Text(max_len=64, pattern=_HEX)),
        Field("checks", ListOf(Ref(GpuCheck), len(CHECKS))),
        Field("measurements", ListOf(Ref(GpuMeasurementVerdict), MAX_INDEX + 1)),
        optional("uuid", Text(max_len=72, pattern=_UUID), "the GPU's, as its node reported it"),
        where="GPU attestation verdict",
    )

    def mismatched(self) -> tuple[int, ...]:
        """The indexes whose measurement no RIM value matches."""
        return tuple(m.index for m in self.measurements if m.outcome is MeasurementOutcome.MISMATCH)

    def reasons(self) -> tuple[str, ...]:
        """Why it did not pass: the detail of each check that did not."""
        return tuple(
            f"{c.name}: {c.detail}" for c in self.checks if c.outcome is not GpuOutcome.PASS
        )
