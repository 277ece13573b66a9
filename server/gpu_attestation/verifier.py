"""One GPU's attestation evidence, verified offline, to a verdict per check and per
measurement index.

The checks, in the order NVIDIA's verifier makes them (``verifier/cc_admin.py``
in the ``nv-local-gpu-verifier`` wheel), each recorded in the verdict:

1. the report parses (``spdm``);
2. its certificate chain leads to NVIDIA's device root (``certs``);
3. the leaf certificate carries the firmware id (FWID) the report states;
4. the leaf's key signed the report (ECDSA P-384 over SHA-384);
5. the report answers the caller's nonce;
6. the driver RIM and the VBIOS RIM for the report's versions verify (``rim``);
7. certificate revocation of every certificate below the roots, from the OCSP
   responses published with the RIMs (``ocsp``); a certificate without one is
   ``unknown`` unless the caller waived revocation, explicitly and visibly;
8. every active reference value of both RIMs matches the measurement at its index.

Where a check cannot be made, the ones that depend on it are ``unknown``; the
verdict is ``fail`` when a check failed, ``unknown`` when one could not be made,
``pass`` only when all passed. One deliberate difference from NVIDIA's code:
NVIDIA's verifier means to skip index 35 when NVDEC0 is disabled, but its test
compares bytes to an enum and never skips it; this verifier compares index 35
always too, which can only refuse more, never pass more.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fleet.gpu_attestation import (
    CERTIFICATE_CHAIN,
    CHECKS,
    DRIVER,
    DRIVER_RIM,
    FWID,
    MAX_MEASUREMENT_BYTES,
    MEASUREMENTS,
    NONCE,
    REPORT,
    REVOCATION,
    SIGNATURE,
    VBIOS,
    VBIOS_RIM,
    GpuAttestationVerdict,
    GpuCheck,
    GpuEvidence,
    GpuMeasurementVerdict,
    GpuOutcome,
    MeasurementOutcome,
)
from server.gpu_attestation import certs, ocsp, rim, spdm
from server.gpu_attestation.errors import EvidenceRefused, GpuEvidenceError
from server.gpu_rims import PublishedGpuRims, published_gpu_rims

log = structlog.get_logger(__name__)

# tcg-dice-TcbInfo (and the older id NVIDIA's verifier also accepts).
TCB_INFO_OIDS = frozenset({"2.23.133.5.4.1", "2.23.133.5.4.1.1"})
# Hopper's TcbInfo ends with its FWID: an OCTET STRING of 48 bytes.
_FWID_TAIL = bytes([0x04, spdm.FWID_LENGTH])


@dataclass(frozen=True)
class GpuTrust:
    """The roots evidence must chain to: NVIDIA's, unless a test or a lab says otherwise."""

    device_root: x509.Certificate
    rim_root: x509.Certificate

    @classmethod
    def nvidia(cls) -> GpuTrust:
        return cls(certs.nvidia_root(certs.DEVICE_ROOT), certs.nvidia_root(certs.RIM_ROOT))


@dataclass(frozen=True)
class RimSources:
    """Where the RIMs come from: a pool chosen from by version (a directory, the
    TUF targets), or one RIM named for a component, used whatever its version
    (as NVIDIA's ``--driver_rim``/``--vbios_rim``), the mismatch then a failed check."""

    pool: tuple[rim.RimFile, ...] = ()
    driver: rim.RimFile | None = None
    vbios: rim.RimFile | None = None
    responses: tuple[ocsp.OcspAnswer, ...] = ()  # OCSP, for the device and RIM chains


@dataclass
class _Checks:
    checks: dict[str, GpuCheck] = field(default_factory=dict)

    def record(self, name: str, outcome: GpuOutcome, detail: str) -> bool:
        self.checks[name] = GpuCheck(name, outcome, detail)
        return outcome is GpuOutcome.PASS

    def overall(self) -> GpuOutcome:
        outcomes = {c.outcome for c in self.checks.values()}
        if GpuOutcome.FAIL in outcomes:
            return GpuOutcome.FAIL
        if outcomes == {GpuOutcome.PASS} and set(self.checks) == set(CHECKS):
            return GpuOutcome.PASS
        return GpuOutcome.UNKNOWN


MAX_RIMS = 4096


class GpuEvidenceVerifier:
    """The server's: judges the GPU evidence in attested reports against the RIMs and
    OCSP responses published in its image repository (``server.gpu_rims``, read again
    at each publication) and those of a folder (read at start), the roots it trusts,
    and its revocation setting."""

    def __init__(
        self,
        rims: Sequence[rim.RimFile],
        trust: GpuTrust,
        *,
        waive_revocation: bool,
        published: Callable[[], PublishedGpuRims] | None = None,
    ):
        self._rims = tuple(rims)
        self._trust = trust
        self._waive = waive_revocation
        self._published = published

    def _sources(self) -> RimSources:
        """Published RIMs first, then configured ones not among them: the same bytes
        in both are one RIM, not two claiming a version."""
        found = PublishedGpuRims() if self._published is None else self._published()
        published = {r.data for r in found.rims}
        pool = found.rims + tuple(r for r in self._rims if r.data not in published)
        return RimSources(pool=pool, responses=found.responses)

    @classmethod
    def load(
        cls,
        rims: Path | None,
        device_root: Path | None,
        rim_root: Path | None,
        *,
        waive_revocation: bool,
        repo: Path | None = None,
    ) -> GpuEvidenceVerifier:
        """GpuEvidenceError (a GpuwardError) naming the file that cannot be used.
        ``repo``: the image repository whose published RIMs are used too."""
        nvidia = GpuTrust.nvidia()
        trust = GpuTrust(
            nvidia.device_root if device_root is None else _root(device_root),
            nvidia.rim_root if rim_root is None else _root(rim_root),
        )
        files: list[rim.RimFile] = []
        if rims is not None:
            if not rims.is_dir():
                raise GpuEvidenceError(f"gpu_rims {rims} is not a folder of RIMs (*.swidtag)")
            paths = sorted(p for p in rims.glob("*.swidtag") if p.is_file())
            if len(paths) > MAX_RIMS:
                raise GpuEvidenceError(f"{rims} holds more than {MAX_RIMS} RIMs")
            files = [rim.RimFile(p.name, _bounded(p, rim.MAX_RIM_BYTES)) for p in paths]
        log.info(
            "gpu_attestation_ready",
            configured_rims=len(files),
            published_from=None if repo is None else str(repo),
            waive_revocation=waive_revocation,
        )
        published = None if repo is None else functools.partial(published_gpu_rims, repo)
        return cls(files, trust, waive_revocation=waive_revocation, published=published)

    def verify(self, evidence: GpuEvidence, nonce: bytes, at: datetime) -> GpuAttestationVerdict:
        """The verdict on one GPU's evidence from a report quoted over ``nonce``."""
        verdict = verify_evidence(
            evidence.report, evidence.cert_chain, self._sources(), nonce=nonce, at=at,
            trust=self._trust, waive_revocation=self._waive,
        )  # fmt: skip
        return dataclasses.replace(verdict, uuid=evidence.uuid)


def _bounded(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise GpuEvidenceError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise GpuEvidenceError(f"{path} is larger than {limit} bytes")
    return data


def _root(path: Path) -> x509.Certificate:
    return certs.load_root(_bounded(path, certs.MAX_PEM_BYTES), str(path))


def verify_evidence(
    report_bytes: bytes,
    chain_pem: bytes,
    rims: RimSources,
    *,
    nonce: bytes | None,
    at: datetime,
    trust: GpuTrust,
    waive_revocation: bool = False,
) -> GpuAttestationVerdict:
    """The verdict on one GPU's evidence, judged at ``at``."""
    verdict = _Checks()
    try:
        report = spdm.parse_report(report_bytes)
        versions = (report.driver_version, report.vbios_version)
    except GpuEvidenceError as exc:
        verdict.record(REPORT, GpuOutcome.FAIL, str(exc))
        return _finish(verdict, at, None, None, ())
    verdict.record(
        REPORT, GpuOutcome.PASS,
        f"SPDM 1.1 measurements: {len(report.measurements)} blocks, driver {versions[0]}, "
        f"VBIOS {versions[1]}",
    )  # fmt: skip
    device = _device_chain(verdict, chain_pem, trust, at)
    leaf = None if device is None else device.certs[0]
    _fwid(verdict, report, leaf)
    _signature(verdict, report, leaf)
    _nonce(verdict, report, nonce)
    driver = _rim(verdict, DRIVER_RIM, "driver", versions[0], rims.driver, rims.pool, trust, at)
    vbios = _rim(verdict, VBIOS_RIM, "VBIOS", versions[1], rims.vbios, rims.pool, trust, at)
    chains = [] if device is None else [device]
    chains += [
        ocsp.CertChain(f"RIM {found.name}", found.chain, trust.rim_root)
        for found in (driver, vbios)
        if found is not None
    ]
    verdict.record(REVOCATION, *ocsp.judge(chains, rims.responses, at, waive=waive_revocation))
    measurements = _measurements(verdict, report, driver, vbios)
    return _finish(verdict, at, report, versions, measurements)


def _finish(
    verdict: _Checks,
    at: datetime,
    report: spdm.SpdmReport | None,
    versions: tuple[str, str] | None,
    measurements: Sequence[GpuMeasurementVerdict],
) -> GpuAttestationVerdict:
    return GpuAttestationVerdict(
        verdict=verdict.overall(),
        verified_at=int(at.timestamp()),
        driver_version=versions[0] if versions else None,
        vbios_version=versions[1] if versions else None,
        nonce=report.nonce.hex() if report else None,
        checks=tuple(verdict.checks[name] for name in CHECKS if name in verdict.checks),
        measurements=tuple(measurements),
    )


def _device_chain(
    verdict: _Checks, chain_pem: bytes, trust: GpuTrust, at: datetime
) -> ocsp.CertChain | None:
    try:
        chain = certs.load_pem_chain(chain_pem, "the certificate chain")
        leaf = certs.verify_chain(chain, trust.device_root, at, "the device certificate chain")
        certs.p384_key(leaf, "the device certificate")
    except (GpuEvidenceError, EvidenceRefused) as exc:
        verdict.record(CERTIFICATE_CHAIN, GpuOutcome.FAIL, str(exc))
        return None
    verdict.record(
        CERTIFICATE_CHAIN,
        GpuOutcome.PASS,
        f"{certs.describe(leaf)} chains to {certs.describe(trust.device_root)} "
        f"at {at:%Y-%m-%d %H:%M:%S} UTC",
    )
    return ocsp.CertChain("the device certificate chain", tuple(chain), trust.device_root)


def _fwid(verdict: _Checks, report: spdm.SpdmReport, leaf: x509.Certificate | None) -> None:
    if leaf is None:
        verdict.record(FWID, GpuOutcome.UNKNOWN, "no trusted device certificate to compare with")
        return
    try:
        stated = report.fwid
    except GpuEvidenceError as exc:
        verdict.record(FWID, GpuOutcome.FAIL, str(exc))
        return
    if stated is None:
        verdict.record(
            FWID, GpuOutcome.FAIL, "the report states no FWID to bind it to the device certificate"
        )
        return
    carried = [
        e.value.value
        for e in leaf.extensions
        if e.oid.dotted_string in TCB_INFO_OIDS and isinstance(e.value, x509.UnrecognizedExtension)
    ]
    if len(carried) != 1 or not carried[0].endswith(_FWID_TAIL + stated):
        verdict.record(
            FWID,
            GpuOutcome.FAIL,
            f"the device certificate does not carry the report's FWID {stated.hex()}: the "
            "report comes from other firmware, or the chain from another GPU",
        )
        return
    verdict.record(FWID, GpuOutcome.PASS, f"the device certificate carries FWID {stated.hex()}")


def _signature(verdict: _Checks, report: spdm.SpdmReport, leaf: x509.Certificate | None) -> None:
    if leaf is None:
        verdict.record(SIGNATURE, GpuOutcome.UNKNOWN, "no trusted device key to check it with")
        return
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # certs.p384_key checked it
    half = spdm.SIGNATURE_LENGTH // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        verdict.record(
            SIGNATURE,
            GpuOutcome.FAIL,
            f"the report is not signed by {certs.describe(leaf)}: altered after the GPU signed "
            "it, or sent with another GPU's certificates",
        )
        return
    verdict.record(SIGNATURE, GpuOutcome.PASS, f"signed by {certs.describe(leaf)} (ECDSA P-384)")


def _nonce(verdict: _Checks, report: spdm.SpdmReport, nonce: bytes | None) -> None:
    if nonce is None:
        verdict.record(
            NONCE,
            GpuOutcome.UNKNOWN,
            f"no nonce given: the report answers {report.nonce.hex()}, whose freshness is "
            "not judged",
        )
    elif hmac.compare_digest(nonce, report.nonce):
        verdict.record(NONCE, GpuOutcome.PASS, f"the report answers nonce {nonce.hex()}")
    else:
        verdict.record(
            NONCE,
            GpuOutcome.FAIL,
            f"the report answers nonce {report.nonce.hex()}, not {nonce.hex()}: replayed or stale",
        )


def _rim(
    verdict: _Checks,
    check: str,
    component: str,
    version: str,
    named: rim.RimFile | None,
    pool: Sequence[rim.RimFile],
    trust: GpuTrust,
    at: datetime,
) -> rim.Rim | None:
    """The verified RIM for ``component`` (None when there is none to trust)."""
    if named is not None:
        chosen = named
    else:
        found = rim.candidates(pool, version)
        if not found:
            verdict.record(
                check,
                GpuOutcome.UNKNOWN,
                f"no {component} RIM for {version} among {len(pool)} RIMs",
            )
            return None
        if len(found) > 1:
            names = ", ".join(f.name for f in found)
            verdict.record(
                check,
                GpuOutcome.UNKNOWN,
                f"{len(found)} RIMs claim {component} {version} ({names}): keep the one to trust",
            )
            return None
        chosen = found[0]
    try:
        verified = rim.verify_rim(chosen, trust.rim_root, at)
    except (GpuEvidenceError, EvidenceRefused) as exc:
        verdict.record(check, GpuOutcome.FAIL, str(exc))
        return None
    if verified.version != version.lower():
        verdict.record(
            check,
            GpuOutcome.FAIL,
            f"RIM {chosen.name} is for {component} {verified.version}, the report states {version}",
        )
        return verified  # compared all the same, as NVIDIA's verifier does
    verdict.record(
        check,
        GpuOutcome.PASS,
        f"RIM {chosen.name} for {component} {version}, signed by {verified.signer}, "
        f"{len(verified.values)} active reference values",
    )
    return verified


def _measurements(
    verdict: _Checks, report: spdm.SpdmReport, driver: rim.Rim | None, vbios: rim.Rim | None
) -> list[GpuMeasurementVerdict]:
    references: dict[int, tuple[str, rim.ReferenceValue]] = {}
    for source, found in ((DRIVER, driver), (VBIOS, vbios)):
        for index, value in (found.values if found else {}).items():
            if index in references:
                verdict.record(
                    MEASUREMENTS,
                    GpuOutcome.FAIL,
                    f"index {index} has reference values in both RIMs: they do not belong together",
                )
                return []
            references[index] = (source, value)
    results = []
    for index, (source, reference) in sorted(references.items()):
        measured = report.measurements.get(index + 1)  # SPDM numbers blocks from 1
        matches = measured is not None and any(
            len(measured) == reference.size and hmac.compare_digest(measured, value)
            for value in reference.values
        )
        outcome = MeasurementOutcome.MATCH if matches else MeasurementOutcome.MISMATCH
        results.append(GpuMeasurementVerdict(index, source, outcome, _hex(measured)))
    if driver is None or vbios is None:
        # A missing RIM's indexes are not known: every block no present RIM covers is unknown.
        results += [
            GpuMeasurementVerdict(block - 1, None, MeasurementOutcome.UNKNOWN, _hex(value))
            for block, value in sorted(report.measurements.items())
            if block - 1 not in references and block - 1 <= rim.MAX_INDEX
        ]
        results.sort(key=lambda m: m.index)
    mismatched = [m.index for m in results if m.outcome is MeasurementOutcome.MISMATCH]
    unknown = [m.index for m in results if m.outcome is MeasurementOutcome.UNKNOWN]
    if mismatched:
        verdict.record(
            MEASUREMENTS,
            GpuOutcome.FAIL,
            f"measurements at index {', '.join(map(str, mismatched))} match no RIM value",
        )
    elif unknown or driver is None or vbios is None:
        verdict.record(
            MEASUREMENTS,
            GpuOutcome.UNKNOWN,
            f"{len(references)} measurements match; {len(unknown)} have no trusted RIM to "
            "judge them",
        )
    else:
        verdict.record(
            MEASUREMENTS, GpuOutcome.PASS, f"all {len(references)} reference values match"
        )
    return results


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None and len(value) <= MAX_MEASUREMENT_BYTES else None
