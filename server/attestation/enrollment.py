"""Enrollment: accept a node's attestation key only if a genuine TPM holds it.

1. The EK certificate chains to a CA the operator allows (TPM vendors' CAs; the
   swtpm local CA in tests), and certifies the very EK public key the node sent.
   That EK is the one of the server's EK type (``EK_TYPES``): a TPM holds one EK
   per template, but many TPMs carry certificates for two (RSA and ECC), and a
   TPM must vouch for one node only, so the server accepts one template.
2. The AK is a restricted, TPM-resident signing key, and the name the node gave
   is the name of that key.
3. TPM2_MakeCredential wraps a random secret to the EK for the AK's name; only
   the TPM holding the EK's private key can unwrap it, and only while an object
   with that name is loaded in it (TPM2_ActivateCredential). The node must send
   the secret back, within the challenge's lifetime, once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleet.attestation import (
    MAX_TPM_BLOB_BYTES,
    AttestationError,
    CredentialAnswer,
    CredentialChallenge,
    TpmEnrollmentRequest,
    encode_bytes,
    read_bytes,
)
from fleet.inventory import NODE_ID
from fleet.schema import Reader, canonical_json
from server.attestation.challenges import Challenges
from server.attestation.tpm import (
    ALG_ECC,
    ALG_NULL,
    ALG_RSA,
    ALG_RSASSA,
    ALG_SHA256,
    DECRYPT,
    ECC_NIST_P256,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN,
    TpmPublic,
    make_credential,
    parse_public,
)

log = structlog.get_logger(__name__)

PURPOSE = "enroll"
MAX_CHAIN = 5
SECRET_BYTES = 32
AK_REQUIRED = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN
EK_REQUIRED = FIXED_TPM | FIXED_PARENT | RESTRICTED | DECRYPT
# PolicySecret(TPM_RH_ENDORSEMENT) in SHA-256: the authPolicy of the TCG EK
# Credential Profile's low-range templates (L-1 RSA 2048, L-2 ECC P-256). The
# high-range templates (0x01c00012 and up) have other policies and other keys.
EK_POLICY_A_SHA256 = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)


@dataclass(frozen=True)
class EkType:
    """A TCG low-range EK template, named as the agent's ``ek_types`` name it."""

    name: str
    key_type: int
    rsa_bits: int  # 0 for ECC
    curve: int  # 0 for RSA

    def matches(self, ek: TpmPublic) -> bool:
        return (ek.type, ek.rsa_bits, ek.curve, ek.auth_policy) == (
            self.key_type, self.rsa_bits, self.curve, EK_POLICY_A_SHA256
        )  # fmt: skip


EK_TYPES = {
    t.name: t
    for t in (
        EkType("EK-RSA2048", ALG_RSA, 2048, 0),
        EkType("EK-ECC256", ALG_ECC, 0, ECC_NIST_P256),
    )
}
DEFAULT_EK_TYPE = "EK-RSA2048"


def ek_type_problem(name: str) -> str | None:
    """What is wrong with an EK type name, if anything (for the server's settings)."""
    if name in EK_TYPES:
        return None
    return f"must be one of {', '.join(EK_TYPES)}"


class EnrollmentError(AttestationError):
    """An enrollment request or answer was refused; the message says why."""


@dataclass(frozen=True)
class EnrolledTpm:
    """What the server keeps about an enrolled node: the AK its quotes must verify with."""

    node_id: str
    ak_public: bytes  # TPM2B_PUBLIC
    ek_certificate_sha256: str
    enrolled_at: int
    # Who the EK certificate names, for people and compliance reports.
    ek_certificate_subject: str | None = None  # RFC 4514
    ek_certificate_serial: str | None = None  # hexadecimal
    # SHA-256 of the EK's SubjectPublicKeyInfo (DER): with the certificate's digest,
    # what binds the TPM to this node alone (``server.store``). None in records
    # made before it was kept.
    ek_public_sha256: str | None = None

    @cached_property
    def ak(self) -> TpmPublic:
        return parse_public(self.ak_public, "AK public area")

    @cached_property
    def ak_key(self) -> rsa.RSAPublicKey:
        """The AK as a ``cryptography`` key, built once per object: keep the object."""
        key = self.ak.key
        if not isinstance(key, rsa.RSAPublicKey):
            raise EnrollmentError(f"{self.node_id}: the stored AK is not an RSA key")
        return key

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "ak_public": encode_bytes(self.ak_public),
            "ek_certificate_sha256": self.ek_certificate_sha256,
            "enrolled_at": self.enrolled_at,
            "ek_certificate_subject": self.ek_certificate_subject,
            "ek_certificate_serial": self.ek_certificate_serial,
            "ek_public_sha256": self.ek_public_sha256,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "enrolled node") -> EnrolledTpm:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "node_id",
                    "ak_public",
                    "ek_certificate_sha256",
                    "enrolled_at",
                    "ek_certificate_subject",
                    "ek_certificate_serial",
                    "ek_public_sha256",
                }
            ),
        )
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            ak_public=read_bytes(r, "ak_public", max_bytes=MAX_TPM_BLOB_BYTES),
            ek_certificate_sha256=r.text("ek_certificate_sha256", max_len=64),
            enrolled_at=r.integer("enrolled_at"),
            ek_certificate_subject=r.optional_text("ek_certificate_subject", max_len=1024),
            ek_certificate_serial=r.optional_text("ek_certificate_serial", max_len=64),
            ek_public_sha256=r.optional_text("ek_public_sha256", max_len=64),
        )


class EkTrust:
    """The CAs allowed to vouch for EKs: self-signed roots, and intermediates that
    must chain to one of them."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        certificates = list(certificates)
        self.roots = [c for c in certificates if c.issuer == c.subject]
        self.intermediates = [c for c in certificates if c.issuer != c.subject]
        if not self.roots:
            raise EnrollmentError(
                "the EK CA allowlist has no root (self-signed) certificate; add the TPM "
                "vendors' root CAs"
            )

    @classmethod
    def load(cls, paths: Iterable[Path]) -> EkTrust:
        """From PEM files, or folders of them (files without a certificate are skipped,
        so swtpm's CA folder, which holds its private keys too, can be named as is)."""
        certificates: list[x509.Certificate] = []
        for path in paths:
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for file in files:
                data = file.read_bytes()
                if b"-----BEGIN CERTIFICATE-----" in data:
                    certificates.extend(x509.load_pem_x509_certificates(data))
        return cls(certificates)

    def verify(self, leaf: x509.Certificate, at: datetime) -> list[x509.Certificate]:
        """The chain from ``leaf`` to an allowed root, each link checked at ``at``."""
        chain = [leaf]
        while len(chain) <= MAX_CHAIN:
            cert = chain[-1]
            _check_validity(cert, at)
            if cert in self.roots:
                return chain
            issuer = self._issuer(cert)
            if issuer is None:
                raise EnrollmentError(
                    f"the EK certificate chain ({_names(chain)}) does not lead to an allowed "
                    "CA; if this TPM vendor is trusted, add its CA certificates to the allowlist"
                )
            _check_ca(issuer)
            chain.append(issuer)
        raise EnrollmentError(f"the EK certificate chain is longer than {MAX_CHAIN}")

    def _issuer(self, cert: x509.Certificate) -> x509.Certificate | None:
        for candidate in (*self.roots, *self.intermediates):
            if candidate.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None


def _names(chain: list[x509.Certificate]) -> str:
    return " <- ".join(c.subject.rfc4514_string() or "(empty subject)" for c in chain)


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise EnrollmentError(
            f"certificate {cert.subject.rfc4514_string() or '(EK)'} is not valid at "
            f"{at.isoformat()} (valid {cert.not_valid_before_utc.isoformat()} to "
            f"{cert.not_valid_after_utc.isoformat()}); check the server's clock"
        )


def _check_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise EnrollmentError(
            f"{cert.subject.rfc4514_string()} issued an EK certificate but is not a CA"
        )


def _check_ak(ak: TpmPublic, name: bytes) -> None:
    problems = []
    if ak.type != ALG_RSA or ak.rsa_bits < 2048:
        problems.append("not an RSA key of at least 2048 bits")
    if not ak.has(AK_REQUIRED) or ak.attributes & DECRYPT:
        problems.append("not a restricted, TPM-generated, non-duplicable signing key")
    if ak.scheme != (ALG_RSASSA, ALG_SHA256):
        problems.append("its scheme is not RSASSA-SHA256")
    if ak.name_alg != ALG_SHA256:
        problems.append("its name algorithm is not SHA-256")
    if not problems and not hmac.compare_digest(ak.name, name):
        problems.append("the AK name sent is not the name of the AK public area sent")
    if problems:
        raise EnrollmentError(f"AK refused: {'; '.join(problems)}")


def ek_public_sha256(ek: TpmPublic) -> str:
    """The digest the server binds a TPM by: SHA-256 of its EK's SubjectPublicKeyInfo."""
    return hashlib.sha256(_spki(ek.key)).hexdigest()


def ek_digests(request: TpmEnrollmentRequest) -> tuple[str, str]:
    """(certificate SHA-256, public key SHA-256) of the EK a request names, before
    anything about it is checked: what the store's binding is looked up by."""
    ek = parse_public(request.ek_public, "EK public area")
    return hashlib.sha256(request.ek_certificate).hexdigest(), ek_public_sha256(ek)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_ek(ek: TpmPublic, cert: x509.Certificate, ek_type: EkType) -> None:
    if not ek.has(EK_REQUIRED) or ek.attributes & SIGN or ek.symmetric[0] == ALG_NULL:
        raise EnrollmentError("EK refused: not a restricted, non-duplicable decryption key")
    if _spki(ek.key) != _spki(cert.public_key()):
        raise EnrollmentError(
            "EK refused: the EK public key is not the key its certificate certifies"
        )
    if not ek_type.matches(ek):
        raise EnrollmentError(
            f"EK refused: this server enrolls TPMs by their {ek_type.name} endorsement key "
            "(the TCG low-range template), one EK per TPM so that a TPM vouches for one "
            f'node; set [attestation] ek_types = ["{ek_type.name}"] on the node, or, if '
            "the fleet's TPMs lack that EK certificate, set the server's ek_type"
        )


class TpmEnrollmentVerifier:
    """Two steps: ``begin`` checks a request and returns a credential challenge;
    ``finish`` checks the answer and returns the node to store."""

    def __init__(
        self,
        trust: EkTrust,
        challenges: Challenges,
        clock: Callable[[], float] = time.time,
        ek_type: str = DEFAULT_EK_TYPE,
    ) -> None:
        self._trust = trust
        self._challenges = challenges
        self._clock = clock
        self._ek_type = EK_TYPES[ek_type]

    async def begin(self, request: TpmEnrollmentRequest) -> CredentialChallenge:
        try:
            cert = x509.load_der_x509_certificate(request.ek_certificate)
        except ValueError:
            raise EnrollmentError("the EK certificate is not valid DER") from None
        self._trust.verify(cert, datetime.fromtimestamp(self._clock(), UTC))
        ek = parse_public(request.ek_public, "EK public area")
        _check_ek(ek, cert, self._ek_type)
        ak = parse_public(request.ak_public, "AK public area")
        _check_ak(ak, request.ak_name)
        secret = os.urandom(SECRET_BYTES)
        blob, encrypted_secret = make_credential(ek, secret, request.ak_name)
        node = EnrolledTpm(
            node_id=request.node_id,
            ak_public=request.ak_public,
            ek_certificate_sha256=hashlib.sha256(request.ek_certificate).hexdigest(),
            enrolled_at=int(self._clock()),
            ek_certificate_subject=cert.subject.rfc4514_string(),
            ek_certificate_serial=format(cert.serial_number, "x"),
            ek_public_sha256=ek_public_sha256(ek),
        )
        # Only the secret's hash is kept, so a leak of the pending challenges
        # (a database, in a multi-replica server) reveals no live secret.
        payload = canonical_json(
            {"node": node.to_dict(), "secret_sha256": hashlib.sha256(secret).hexdigest()}
        )
        challenge = await self._challenges.issue(request.node_id, PURPOSE, payload)
        log.info("attest.enroll_begin", node=request.node_id, ek=node.ek_certificate_sha256)
        return CredentialChallenge(challenge.nonce, blob, encrypted_secret, challenge.expires_at)

    async def finish(self, answer: CredentialAnswer) -> EnrolledTpm:
        redeemed = await self._challenges.redeem(answer.challenge, answer.node_id, PURPOSE)
        payload = json.loads(redeemed)
        expected = bytes.fromhex(payload["secret_sha256"])
        if not hmac.compare_digest(hashlib.sha256(answer.secret).digest(), expected):
            raise EnrollmentError(
                "the credential was not activated by the TPM that holds this EK and AK; "
                "enroll again from the node itself"
            )
        node = EnrolledTpm.from_dict(payload["node"])
        log.info("attest.enrolled", node=node.node_id, ek=node.ek_certificate_sha256)
        return node
