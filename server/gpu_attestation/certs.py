"""Certificate chains to NVIDIA's roots: the GPU's device chain and a RIM's signer.

Each link is checked with ``cryptography``'s ``verify_directly_issued_by`` (the
issuer's name and its signature over the certificate), and the path rules around
it are kept here: every certificate valid at the instant asked about, every
issuer a CA allowed to sign certificates within its path length, no critical
extension nobody understands, the chain ending at the pinned root. Why not
``cryptography.x509.verification``: it applies the Web PKI profile, and NVIDIA's
RIM signing CAs encode dates before 2050 as GeneralizedTime, which that profile
refuses (``validity dates between 1950 and 2049 must be UtcTime``), so it cannot
accept the chain NVIDIA's own verifier accepts.

The instant is a parameter: a report verified now is judged now; NVIDIA's sample
evidence, whose RIM signers have expired since, is judged when it was made, as
the test that uses it says.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.gpu_attestation.errors import EvidenceRefused, GpuEvidenceError

# NVIDIA's device chains hold five certificates with the root; RIM chains four.
MAX_CHAIN = 8
MAX_PEM_BYTES = 64 * 1024
DEVICE_ROOT = "nvidia_device_root.pem"
RIM_ROOT = "nvidia_rim_root.pem"
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


@functools.cache
def nvidia_root(name: str) -> x509.Certificate:
    """One of NVIDIA's roots, as NVIDIA ships them with its verifier (``roots/``)."""
    data = resources.files("server.gpu_attestation").joinpath("roots", name).read_bytes()
    return x509.load_pem_x509_certificate(data)


def load_root(data: bytes, what: str) -> x509.Certificate:
    certs = load_pem_chain(data, what)
    if len(certs) != 1:
        raise GpuEvidenceError(f"{what} holds {len(certs)} certificates, not one root")
    return certs[0]


def load_pem_chain(data: bytes, what: str) -> list[x509.Certificate]:
    """The PEM certificates in ``data``, in order; GpuEvidenceError if there are none,
    too many, or one does not parse."""
    if len(data) > MAX_PEM_BYTES:
        raise GpuEvidenceError(f"{what} is larger than {MAX_PEM_BYTES} bytes")
    if data.count(b"-----BEGIN CERTIFICATE-----") > MAX_CHAIN:
        raise GpuEvidenceError(f"{what} holds more than {MAX_CHAIN} certificates")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise GpuEvidenceError(f"{what} is not a PEM certificate chain ({exc})") from None
    return certs


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def p384_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    """The certificate's key, which must be ECDSA P-384 (what Hopper and RIMs sign with)."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceRefused(f"{what} ({describe(cert)}) does not hold an ECDSA P-384 key")
    return key


def verify_chain(
    chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime, what: str
) -> x509.Certificate:
    """The leaf of ``chain`` (leaf first), once the chain leads to ``root`` at ``at``;
    EvidenceRefused naming the certificate otherwise. A root at the end of ``chain``
    must be ``root`` itself."""
    certs = list(chain)
    if certs and certs[-1].subject == certs[-1].issuer and len(certs) > 1:
        if _der(certs[-1]) != _der(root):
            raise EvidenceRefused(
                f"{what} ends at {describe(certs[-1])}, not at the pinned root {describe(root)}"
            )
        certs.pop()
    if not certs:
        raise EvidenceRefused(f"{what} holds no certificate below the root")
    if len(certs) > MAX_CHAIN:
        raise EvidenceRefused(f"{what} is longer than {MAX_CHAIN} certificates")
    for cert in [*certs, root]:
        _check_validity(cert, at, what)
        _check_critical_extensions(cert, what)
    for position, cert in enumerate(certs):
        issuer = certs[position + 1] if position + 1 < len(certs) else root
        _check_issuer(issuer, below=position, what=what)
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise EvidenceRefused(
                f"{what}: {describe(cert)} is not issued by {describe(issuer)} "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
            ) from None
    leaf = certs[0]
    usage = _extension(leaf, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise EvidenceRefused(f"{what}: {describe(leaf)} may not sign (key usage)")
    return leaf


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _check_validity(cert: x509.Certificate, at: datetime, what: str) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= at <= end:
        state = "expired on" if at > end else "not valid before"
        date = end if at > end else start
        raise EvidenceRefused(
            f"{what}: {describe(cert)} {state} {date:%Y-%m-%d %H:%M:%S} UTC "
            f"(judged at {at:%Y-%m-%d %H:%M:%S} UTC)"
        )


def _check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    for extension in cert.extensions:
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            raise EvidenceRefused(
                f"{what}: {describe(cert)} has a critical extension nobody here understands "
                f"({extension.oid.dotted_string})"
            )


def _check_issuer(issuer: x509.Certificate, *, below: int, what: str) -> None:
    """``issuer`` signs a certificate with ``below`` intermediates under it."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise EvidenceRefused(f"{what}: {describe(issuer)} is not a CA but issues a certificate")
    if constraints.path_length is not None and below > constraints.path_length:
        raise EvidenceRefused(
            f"{what}: {describe(issuer)} allows {constraints.path_length} intermediates "
            f"below it, not {below}"
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise EvidenceRefused(f"{what}: {describe(issuer)} may not sign certificates")


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
