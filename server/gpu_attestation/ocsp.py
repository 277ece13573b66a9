"""Certificate revocation from OCSP responses carried offline, not fetched.

NVIDIA's verifier asks NVIDIA's OCSP service whether each certificate of the
device chain and of the RIM signing chains is revoked; an air-gapped server
cannot ask. The operator fetches the responses where the network is and
publishes them with the RIMs (``gpuward repo add-rims --ocsp``), through the
signed channel, so a mirror inside the air gap carries them. Each response is
believed only as an OCSP client would believe it: signed by the certificate's
issuer or by a responder the issuer delegated to (a certificate it issued with
the OCSP-signing extended key usage), its certificate id (issuer name and key
hashes, serial) naming exactly this certificate under exactly this issuer, and
current at the verification instant (``thisUpdate`` <= instant <= ``nextUpdate``).

A revoked certificate, a response that is stale or not signed as above, fails
the check whatever the operator waived: a waiver covers the absence of an
answer, never a bad one. A certificate with no response is ``unknown`` unless
the operator waived revocation; the verdict names which certificates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from fleet.gpu_attestation import GpuOutcome
from server.gpu_attestation.certs import describe
from server.gpu_attestation.errors import GpuEvidenceError

MAX_RESPONSE_BYTES = 64 * 1024  # NVIDIA's are about 2 KiB
MAX_RESPONSES = 4096
WAIVED = "not checked, waived by the caller: no OCSP responses are available offline"
NOT_CHECKED = (
    "not checked: no OCSP responses are available offline (publish them with "
    "'gpuward repo add-rims --ocsp', or waive explicitly: gpu_revocation = \"waived\", "
    "gpuward gpu-attest verify --no-revocation-check)"
)


@dataclass(frozen=True)
class OcspAnswer:
    """One successful OCSP response and the file or target it came from."""

    name: str
    response: ocsp.OCSPResponse


@dataclass(frozen=True)
class CertChain:
    """A chain that verified, leaf first, and the root it leads to."""

    what: str
    certs: tuple[x509.Certificate, ...]
    root: x509.Certificate

    def links(self) -> list[tuple[x509.Certificate, x509.Certificate]]:
        """(certificate, issuer) for every certificate below the root."""
        below = [c for c in self.certs if c != self.root]
        return list(zip(below, [*below[1:], self.root], strict=True))


def load_responses(files: Sequence[tuple[str, bytes]]) -> tuple[OcspAnswer, ...]:
    """The OCSP responses (DER) in ``files``; GpuEvidenceError naming the file that
    is not a successful one."""
    if len(files) > MAX_RESPONSES:
        raise GpuEvidenceError(f"more than {MAX_RESPONSES} OCSP responses; keep the current ones")
    return tuple(load_response(name, data) for name, data in files)


def load_response(name: str, data: bytes) -> OcspAnswer:
    if len(data) > MAX_RESPONSE_BYTES:
        raise GpuEvidenceError(f"OCSP response {name} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as exc:
        raise GpuEvidenceError(f"{name} is not a DER OCSP response ({exc})") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise GpuEvidenceError(
            f"OCSP response {name} is {response.response_status.name.lower()}, not "
            "successful: fetch it again"
        )
    return OcspAnswer(name, response)


def judge(
    chains: Sequence[CertChain],
    responses: Sequence[OcspAnswer],
    at: datetime,
    *,
    waive: bool,
) -> tuple[GpuOutcome, str]:
    """The revocation check's outcome and detail for every certificate below the
    roots of ``chains``, judged at ``at``."""
    if not responses:
        return (GpuOutcome.PASS, WAIVED) if waive else (GpuOutcome.UNKNOWN, NOT_CHECKED)
    good: list[str] = []
    failed: list[str] = []
    unanswered: list[str] = []
    seen: set[x509.Certificate] = set()  # both RIMs share their signer's chain
    for chain in chains:
        for cert, issuer in chain.links():
            if cert in seen:
                continue
            seen.add(cert)
            outcome, detail = _status(cert, issuer, responses, at)
            {GpuOutcome.PASS: good, GpuOutcome.FAIL: failed, GpuOutcome.UNKNOWN: unanswered}[
                outcome
            ].append(f"{describe(cert)} ({chain.what}): {detail}")
    if failed:
        return GpuOutcome.FAIL, "; ".join(failed)
    checked = f"checked: {len(good)} certificates good per OCSP at {at:%Y-%m-%d %H:%M:%S} UTC"
    if unanswered and waive:
        return GpuOutcome.PASS, f"{checked}; not checked, waived by the caller: " + "; ".join(
            unanswered
        )
    if unanswered:
        return GpuOutcome.UNKNOWN, (
            "; ".join(unanswered) + ": publish a current OCSP response for each "
            "('gpuward repo add-rims --ocsp'), or waive revocation explicitly"
        )
    if not good:
        return GpuOutcome.UNKNOWN, "no trusted certificate to check revocation of"
    return GpuOutcome.PASS, checked


def _status(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    responses: Sequence[OcspAnswer],
    at: datetime,
) -> tuple[GpuOutcome, str]:
    """What the responses about ``cert`` (issued by ``issuer``) say at ``at``."""
    about = [
        (answer, single)
        for answer in responses
        for single in answer.response.responses
        if single.serial_number == cert.serial_number and _names(single, cert, issuer)
    ]
    if not about:
        return GpuOutcome.UNKNOWN, "no OCSP response"
    current = []
    for answer, single in about:
        forged = _signature_problem(answer, issuer, at)
        if forged is not None:
            return GpuOutcome.FAIL, f"OCSP response {answer.name} {forged}"
        if single.certificate_status is ocsp.OCSPCertStatus.REVOKED:
            revoked = single.revocation_time_utc
            return GpuOutcome.FAIL, (
                f"revoked{'' if revoked is None else f' on {revoked:%Y-%m-%d}'} "
                f"(OCSP response {answer.name})"
            )
        this, after = single.this_update_utc, single.next_update_utc
        if this <= at and after is not None and at <= after:
            current.append((answer, single))
    if not current:
        answer, single = max(about, key=lambda found: found[1].this_update_utc)
        after = single.next_update_utc
        window = f"{single.this_update_utc:%Y-%m-%d %H:%M} to " + (
            "no nextUpdate" if after is None else f"{after:%Y-%m-%d %H:%M}"
        )
        return GpuOutcome.FAIL, (
            f"OCSP response {answer.name} is not current at {at:%Y-%m-%d %H:%M} UTC "
            f"({window}): fetch a fresh one and publish it"
        )
    answer, single = max(current, key=lambda found: found[1].this_update_utc)
    if single.certificate_status is ocsp.OCSPCertStatus.UNKNOWN:
        return GpuOutcome.UNKNOWN, f"the responder does not know it (OCSP response {answer.name})"
    return GpuOutcome.PASS, f"good (OCSP response {answer.name})"


def _names(
    single: ocsp.OCSPSingleResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> bool:
    """Whether the response's certificate id is ``cert`` under ``issuer``: the same
    serial under another issuer is another certificate."""
    try:
        expected = (
            ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single.hash_algorithm).build()
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False  # a hash no OCSP client here computes: names nothing it could check
    return (
        expected.issuer_name_hash == single.issuer_name_hash
        and expected.issuer_key_hash == single.issuer_key_hash
    )


def _signature_problem(answer: OcspAnswer, issuer: x509.Certificate, at: datetime) -> str | None:
    """None when the issuer, or a responder it delegated to, signed the response."""
    response = answer.response
    signer = issuer if _responder_is(response, issuer) else None
    if signer is None:
        for cert in response.certificates:
            if _responder_is(response, cert) and _delegated(cert, issuer, at):
                signer = cert
                break
    if signer is None:
        return (
            f"is not signed by {describe(issuer)} or a responder it delegated to: "
            "another authority's answer"
        )
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(
                response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm
            )
        else:
            return f"is signed with a key type not checked here ({type(key).__name__})"
    except InvalidSignature:
        return f"does not verify with {describe(signer)}'s key: altered or forged"
    return None


def _responder_is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return response.responder_key_hash == digest


def _delegated(responder: x509.Certificate, issuer: x509.Certificate, at: datetime) -> bool:
    """``responder`` was issued by ``issuer`` to sign OCSP responses, and is valid at ``at``."""
    try:
        responder.verify_directly_issued_by(issuer)
        usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, x509.ExtensionNotFound):
        return False
    valid = responder.not_valid_before_utc <= at <= responder.not_valid_after_utc
    return valid and ExtendedKeyUsageOID.OCSP_SIGNING in usage
