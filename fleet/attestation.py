"""What a node sends to prove its report, and what the server sends back.

Enrollment binds a node's attestation key (AK) to the endorsement key (EK) of its
TPM: the node sends its EK certificate, EK and AK public areas; the server answers
with a credential only that TPM can decrypt, and only if the AK named in it is
loaded beside the EK (TPM2_ActivateCredential); the node returns the secret.

After enrollment every report carries ``AttestationEvidence``: a TPM quote over
the node's PCRs whose qualifying data is ``SHA-256(challenge || report digest)``,
so one quote proves freshness (the server's single-use challenge), the platform
state (the PCRs, explained by the event log) and the report (its digest), at the
cost of one TPM operation per report.

Byte strings travel as standard base64. Everything arrives from the network, so
``from_dict`` is strict: unknown keys, wrong types and oversized fields are
rejected by ``fleet.schema.Reader`` with a message naming the field. TPM
structures stay in their marshalled form (TPM2B_PUBLIC, TPMS_ATTEST,
TPMT_SIGNATURE) so that what is verified is exactly what the TPM produced.

Pure and stdlib only: both the agent and the server use these definitions, and
``report_digest`` and ``quote_qualifying_data`` are the single definition of what
a quote binds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from fleet.errors import GpuwardError, InvalidDocument
from fleet.eventlog import KNOWN_ALGORITHMS, MAX_LOG_BYTES, PCR_COUNT
from fleet.report import NODE_ID, HealthReport
from fleet.schema import Reader

SCHEMA_VERSION = 1
NONCE_BYTES = 32  # server challenges; SHA-256 sized, as TPM2B_DATA of a SHA-256 AK allows
MAX_CERT_BYTES = 8 * 1024
MAX_TPM_BLOB_BYTES = 2 * 1024  # TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, credentials
MAX_NAME_BYTES = 2 + 64  # nameAlg + the largest digest
MAX_DRIVER_LOG_BYTES = 64 * 1024  # the applier's measurement log (fleet.driverlog)

# Bank name (as fleet.eventlog names them) -> TPM_ALG_ID and digest size.
BANKS: Mapping[str, tuple[int, int]] = {
    a.name: (a.alg_id, a.digest_size) for a in KNOWN_ALGORITHMS.values()
}
_SELECTION_TEXT = re.compile(r"[a-z0-9_]+:\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
SESSION_KEY_CONTEXT = b"gpuward session key v1\x00"


def report_digest(report: HealthReport) -> bytes:
    """SHA-256 of the report's canonical JSON: what a quote binds."""
    return hashlib.sha256(report.canonical_json).digest()


def session_key_digest(public_key: bytes) -> bytes:
    """What a quote binds when it certifies an Ed25519 session key, domain-separated
    from report digests so one can never be passed off as the other."""
    return hashlib.sha256(SESSION_KEY_CONTEXT + public_key).digest()


def quote_qualifying_data(challenge: bytes, bound_digest: bytes) -> bytes:
    """The qualifying data (extraData) of a quote: SHA-256(challenge || bound digest)."""
    return hashlib.sha256(challenge + bound_digest).digest()


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def read_bytes(r: Reader, key: str, *, max_bytes: int, exact: int | None = None) -> bytes:
    """A base64 field, decoded strictly and bounded before decoding."""
    text = r.text(key, max_len=4 * ((max_bytes + 2) // 3))
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDocument(f"{r.where}: {key!r} is not valid base64") from None
    if exact is not None and len(data) != exact:
        raise InvalidDocument(f"{r.where}: {key!r} must be {exact} bytes, not {len(data)}")
    if len(data) > max_bytes:
        raise InvalidDocument(f"{r.where}: {key!r} is longer than {max_bytes} bytes")
    return data


@dataclass(frozen=True)
class PcrSelection:
    """Which PCRs of which banks a quote covers, banks in TPM_ALG_ID order.

    That order is also the order of the quote's TPML_PCR_SELECTION and of the PCR
    values its digest covers, so agent and server agree on it by construction.
    """

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        seen = [bank for bank, _ in self.banks]
        if sorted(seen, key=lambda b: BANKS[b][0]) != seen or len(set(seen)) != len(seen):
            raise InvalidDocument("PCR selection: banks must be distinct, in TPM_ALG_ID order")
        for bank, pcrs in self.banks:
            if not pcrs or list(pcrs) != sorted(set(pcrs)) or pcrs[-1] >= PCR_COUNT:
                raise InvalidDocument(f"PCR selection: {bank} needs sorted PCRs 0 to 31")

    @classmethod
    def of(cls, banks: Mapping[str, Iterable[int]]) -> PcrSelection:
        """From bank name -> PCR indices, in any order; unknown banks are errors."""
        for bank in banks:
            if bank not in BANKS:
                raise InvalidDocument(f"PCR selection: unknown bank {bank!r}")
        return cls(
            tuple(
                (bank, tuple(sorted(set(banks[bank]))))
                for bank in sorted(banks, key=lambda b: BANKS[b][0])
                if banks[bank]
            )
        )

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """From the tpm2-tools syntax with ranges: ``sha256:0-9,14+sha1:0-7``."""
        banks: dict[str, set[int]] = {}
        for part in text.split("+"):
            if not _SELECTION_TEXT.fullmatch(part):
                raise InvalidDocument(
                    f"PCR selection {text!r}: write it as BANK:PCRS, e.g. sha256:0-9,14"
                )
            bank, pcrs = part.split(":")
            chosen = banks.setdefault(bank, set())
            for item in pcrs.split(","):
                first, _, last = item.partition("-")
                chosen.update(range(int(first), int(last or first) + 1))
        if any(p >= PCR_COUNT for pcrs in banks.values() for p in pcrs):
            raise InvalidDocument(f"PCR selection {text!r}: PCRs go from 0 to {PCR_COUNT - 1}")
        return cls.of(banks)

    def text(self) -> str:
        return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in self.banks)

    def covers(self, other: PcrSelection) -> bool:
        """Whether every PCR of ``other`` is in this selection."""
        mine = dict(self.banks)
        return all(set(pcrs) <= set(mine.get(bank, ())) for bank, pcrs in other.banks)

    def to_dict(self) -> dict[str, list[int]]:
        return {bank: list(pcrs) for bank, pcrs in self.banks}

    @classmethod
    def from_dict(cls, doc: object, where: str) -> PcrSelection:
        r = Reader(doc, where, allowed=frozenset(BANKS))
        if not isinstance(doc, Mapping) or not doc:
            raise InvalidDocument(f"{where}: select at least one bank")
        banks: dict[str, list[int]] = {}
        for bank in doc:
            pcrs = r.items(bank, max_items=PCR_COUNT)
            if not all(isinstance(p, int) and not isinstance(p, bool) for p in pcrs):
                raise InvalidDocument(f"{where}: {bank} must list PCR numbers")
            banks[bank] = pcrs
        selection = cls.of(banks)
        if selection.to_dict() != banks:
            raise InvalidDocument(f"{where}: list each bank's PCRs once, in increasing order")
        return selection


@dataclass(frozen=True)
class TpmEnrollmentRequest:
    """A node's first message: who it is and the keys of its TPM."""

    node_id: str
    ek_certificate: bytes  # DER, as read from the TPM's NV index
    ek_public: bytes  # TPM2B_PUBLIC
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes  # TPM2B_NAME contents: nameAlg || H(TPMT_PUBLIC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "node_id": self.node_id,
            "ek_certificate": encode_bytes(self.ek_certificate),
            "ek_public": encode_bytes(self.ek_public),
            "ak_public": encode_bytes(self.ak_public),
            "ak_name": encode_bytes(self.ak_name),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "enrollment request") -> TpmEnrollmentRequest:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {"schema", "node_id", "ek_certificate", "ek_public", "ak_public", "ak_name"}
            ),
        )
        _schema(r)
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            ek_certificate=read_bytes(r, "ek_certificate", max_bytes=MAX_CERT_BYTES),
            ek_public=read_bytes(r, "ek_public", max_bytes=MAX_TPM_BLOB_BYTES),
            ak_public=read_bytes(r, "ak_public", max_bytes=MAX_TPM_BLOB_BYTES),
            ak_name=read_bytes(r, "ak_name", max_bytes=MAX_NAME_BYTES),
        )


@dataclass(frozen=True)
class CredentialChallenge:
    """The server's answer to an enrollment request: TPM2_MakeCredential output.

    ``challenge`` names the pending enrollment; the node returns it with the secret.
    """

    challenge: bytes
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET
    expires_at: int  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "challenge": encode_bytes(self.challenge),
            "credential_blob": encode_bytes(self.credential_blob),
            "encrypted_secret": encode_bytes(self.encrypted_secret),
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "credential challenge") -> CredentialChallenge:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {"schema", "challenge", "credential_blob", "encrypted_secret", "expires_at"}
            ),
        )
        _schema(r)
        return cls(
            challenge=read_bytes(r, "challenge", max_bytes=NONCE_BYTES, exact=NONCE_BYTES),
            credential_blob=read_bytes(r, "credential_blob", max_bytes=MAX_TPM_BLOB_BYTES),
            encrypted_secret=read_bytes(r, "encrypted_secret", max_bytes=MAX_TPM_BLOB_BYTES),
            expires_at=r.integer("expires_at"),
        )


@dataclass(frozen=True)
class CredentialAnswer:
    """The secret TPM2_ActivateCredential recovered, for the named challenge."""

    node_id: str
    challenge: bytes
    secret: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "node_id": self.node_id,
            "challenge": encode_bytes(self.challenge),
            "secret": encode_bytes(self.secret),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "credential answer") -> CredentialAnswer:
        r = Reader(doc, where, allowed=frozenset({"schema", "node_id", "challenge", "secret"}))
        _schema(r)
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            challenge=read_bytes(r, "challenge", max_bytes=NONCE_BYTES, exact=NONCE_BYTES),
            secret=read_bytes(r, "secret", max_bytes=64),
        )


@dataclass(frozen=True)
class Challenge:
    """A single-use server nonce for the next quote, and when it stops being accepted."""

    nonce: bytes
    expires_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "nonce": encode_bytes(self.nonce),
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "challenge") -> Challenge:
        r = Reader(doc, where, allowed=frozenset({"schema", "nonce", "expires_at"}))
        _schema(r)
        return cls(
            nonce=read_bytes(r, "nonce", max_bytes=NONCE_BYTES, exact=NONCE_BYTES),
            expires_at=r.integer("expires_at"),
        )


@dataclass(frozen=True)
class ReportChallenge:
    """What a TPM-enrolled node quotes its next report over: the challenge, and the
    digest of the event log the server holds for it (None: none), so the node sends
    its log only when the server's differs.

    Answers ``GET /v1/challenge``, and comes with every accepted attested report
    as the next one: in the steady state a report takes one request, not two.
    """

    challenge: Challenge
    event_log_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"challenge": self.challenge.to_dict(), "event_log_sha256": self.event_log_sha256}

    @classmethod
    def from_dict(cls, doc: object, where: str = "report challenge") -> ReportChallenge:
        r = Reader(doc, where, allowed=frozenset({"challenge", "event_log_sha256"}))
        return cls(
            Challenge.from_dict(r.raw("challenge"), f"{where}: challenge"),
            r.nullable_text("event_log_sha256", pattern=_SHA256_HEX),
        )


@dataclass(frozen=True)
class AttestationEvidence:
    """One quote and what explains it.

    ``pcrs`` holds the value of every selected PCR (bank -> PCR -> value); the
    quote signs only their digest, so the server recomputes it from these values.
    ``event_log`` is the firmware log as read on the node; a node may leave it out
    and send only ``event_log_sha256`` when the server already holds that log.
    ``driver_log`` is the applier's measurement log (``fleet.driverlog``), small,
    so always sent whole: it explains the driver PCR.
    """

    nonce: bytes
    quote: bytes  # TPMS_ATTEST, as the TPM marshalled it
    signature: bytes  # TPMT_SIGNATURE
    selection: PcrSelection
    pcrs: Mapping[str, Mapping[int, bytes]]
    event_log: bytes | None = None
    event_log_sha256: str | None = None
    driver_log: bytes | None = None

    def __post_init__(self) -> None:
        expected = {bank: set(pcrs) for bank, pcrs in self.selection.banks}
        if {bank: set(values) for bank, values in self.pcrs.items()} != expected:
            raise InvalidDocument("evidence: pcrs must hold exactly the selected PCRs")
        for bank, values in self.pcrs.items():
            size = BANKS[bank][1]
            if any(len(v) != size for v in values.values()):
                raise InvalidDocument(f"evidence: {bank} PCR values must be {size} bytes")
        if self.event_log is not None:
            digest = hashlib.sha256(self.event_log).hexdigest()
            if self.event_log_sha256 not in (None, digest):
                raise InvalidDocument("evidence: event_log_sha256 is not the log's SHA-256")
            object.__setattr__(self, "event_log_sha256", digest)

    def pcr_values(self) -> list[bytes]:
        """The PCR values in the order the quote's PCR digest covers them."""
        return [self.pcrs[bank][pcr] for bank, pcrs in self.selection.banks for pcr in pcrs]

    def without_log(self) -> AttestationEvidence:
        """The same evidence naming its log by digest only."""
        return replace(self, event_log=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "nonce": encode_bytes(self.nonce),
            "quote": encode_bytes(self.quote),
            "signature": encode_bytes(self.signature),
            "selection": self.selection.to_dict(),
            "pcrs": {
                bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
                for bank, values in self.pcrs.items()
            },
            "event_log": None if self.event_log is None else encode_bytes(self.event_log),
            "event_log_sha256": self.event_log_sha256,
            "driver_log": None if self.driver_log is None else encode_bytes(self.driver_log),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "evidence") -> AttestationEvidence:
        r = Reader(
            doc,
            where,
            allowed=frozenset(
                {
                    "schema",
                    "nonce",
                    "quote",
                    "signature",
                    "selection",
                    "pcrs",
                    "event_log",
                    "event_log_sha256",
                    "driver_log",
                }
            ),
        )
        _schema(r)
        selection = PcrSelection.from_dict(r.raw("selection"), f"{where}.selection")
        log = None
        if r.raw("event_log") is not None:
            log = read_bytes(r, "event_log", max_bytes=MAX_LOG_BYTES)
        driver_log = None
        if cast(Mapping[str, Any], doc).get("driver_log") is not None:  # Reader checked doc
            driver_log = read_bytes(r, "driver_log", max_bytes=MAX_DRIVER_LOG_BYTES)
        return cls(
            nonce=read_bytes(r, "nonce", max_bytes=NONCE_BYTES, exact=NONCE_BYTES),
            quote=read_bytes(r, "quote", max_bytes=MAX_TPM_BLOB_BYTES),
            signature=read_bytes(r, "signature", max_bytes=MAX_TPM_BLOB_BYTES),
            selection=selection,
            pcrs=_pcr_values(r.raw("pcrs"), f"{where}.pcrs"),
            event_log=log,
            event_log_sha256=r.nullable_text("event_log_sha256", pattern=_SHA256_HEX),
            driver_log=driver_log,
        )


_PCR_NUMBERS = frozenset(map(str, range(PCR_COUNT)))


def _pcr_values(doc: object, where: str) -> dict[str, dict[int, bytes]]:
    Reader(doc, where, allowed=frozenset(BANKS))
    values: dict[str, dict[int, bytes]] = {}
    for bank, bank_doc in cast(Mapping[str, object], doc).items():  # Reader checked it
        size = BANKS[bank][1]
        hexes = Reader(bank_doc, f"{where}.{bank}", allowed=_PCR_NUMBERS)
        pattern = re.compile(f"[0-9a-f]{{{2 * size}}}")
        values[bank] = {
            int(pcr): bytes.fromhex(hexes.text(pcr, max_len=2 * size, pattern=pattern))
            for pcr in cast(Mapping[str, object], bank_doc)
        }
    return values


@dataclass(frozen=True)
class SessionKeyCertification:
    """An Ed25519 public key vouched for by a quote whose qualifying data is
    ``quote_qualifying_data(challenge, session_key_digest(public_key))``.

    Once the server accepts it, the node signs later requests with the session key
    instead of spending a TPM operation on each.
    """

    node_id: str
    public_key: bytes  # raw Ed25519 public key, 32 bytes
    evidence: AttestationEvidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "node_id": self.node_id,
            "public_key": encode_bytes(self.public_key),
            "evidence": self.evidence.to_dict(),
        }

    @classmethod
    def from_dict(
        cls, doc: object, where: str = "session key certification"
    ) -> SessionKeyCertification:
        r = Reader(doc, where, allowed=frozenset({"schema", "node_id", "public_key", "evidence"}))
        _schema(r)
        return cls(
            node_id=r.text("node_id", pattern=NODE_ID, max_len=128),
            public_key=read_bytes(r, "public_key", max_bytes=32, exact=32),
            evidence=AttestationEvidence.from_dict(r.raw("evidence"), f"{where}.evidence"),
        )


@dataclass(frozen=True)
class AttestedReport:
    """A health report and the quote that binds it: what an agent posts each cycle."""

    report: HealthReport
    evidence: AttestationEvidence

    @property
    def digest(self) -> bytes:
        return report_digest(self.report)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "report": self.report.to_dict(),
            "evidence": self.evidence.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str = "attested report") -> AttestedReport:
        r = Reader(doc, where, allowed=frozenset({"schema", "report", "evidence"}))
        _schema(r)
        return cls(
            report=HealthReport.from_dict(r.raw("report"), f"{where}.report"),
            evidence=AttestationEvidence.from_dict(r.raw("evidence"), f"{where}.evidence"),
        )


def _schema(r: Reader) -> None:
    if r.integer("schema") != SCHEMA_VERSION:
        raise InvalidDocument(f"{r.where}: unsupported schema version; upgrade gpuward")


class AttestationError(GpuwardError):
    """Evidence failed a check, or the TPM refused an operation; the message says which."""
