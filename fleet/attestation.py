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
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from fleet.errors import GpuwardError, InvalidDocument
from fleet.eventlog import KNOWN_ALGORITHMS, MAX_LOG_BYTES, PCR_COUNT
from fleet.inventory import NODE_ID
from fleet.report import HealthReport
from fleet.schema import Reader
from fleet.wire import (
    Bytes,
    Convert,
    Document,
    Field,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    Ref,
    Text,
    Wire,
    optional,
)

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
    data: bytes = Bytes(max_bytes, exact).read(r.raw(key), r.where, key)
    return data


_NODE_ID = Text(max_len=128, pattern=NODE_ID)
_NONCE = Bytes(NONCE_BYTES, exact=NONCE_BYTES)
_SHA256 = Text(max_len=64, pattern=_SHA256_HEX)
_BANK = Text(choices=frozenset(BANKS))
_PCR_NUMBERS = frozenset(map(str, range(PCR_COUNT)))
# A PCR value in hex, as long as some bank's digest; __post_init__ checks it is its bank's.
_PCR_HEX = re.compile(
    "|".join(f"[0-9a-f]{{{2 * size}}}" for size in sorted({s for _, s in BANKS.values()}))
)


def _selection(banks: Mapping[str, tuple[int, ...]]) -> PcrSelection:
    selection = PcrSelection.of(banks)
    if selection.to_dict() != {bank: list(pcrs) for bank, pcrs in banks.items()}:
        raise InvalidDocument("list each bank's PCRs once, in increasing order")
    return selection


def _pcr_values(doc: Mapping[str, Mapping[str, str]]) -> dict[str, dict[int, bytes]]:
    return {
        bank: {int(pcr): bytes.fromhex(value) for pcr, value in values.items()}
        for bank, values in doc.items()
    }


def _pcr_texts(pcrs: Mapping[str, Mapping[int, bytes]]) -> dict[str, dict[str, str]]:
    return {
        bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
        for bank, values in pcrs.items()
    }


@dataclass(frozen=True)
class PcrSelection(Wire):
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

    WIRE = Convert(
        MapOf(
            _BANK,
            ListOf(Integer(maximum=PCR_COUNT - 1), PCR_COUNT, min_items=1),
            len(BANKS),
            min_items=1,
        ),
        decode=_selection,
        encode=lambda selection: dict(selection.banks),
        examples=({"sha256": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14]}, {"sha1": [7], "sha256": [0, 1]}),
        description="the PCRs a quote covers: bank -> PCR numbers, each list increasing",
    )


@dataclass(frozen=True)
class TpmEnrollmentRequest(Wire):
    """A node's first message: who it is and the keys of its TPM."""

    node_id: str
    ek_certificate: bytes  # DER, as read from the TPM's NV index
    ek_public: bytes  # TPM2B_PUBLIC
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes  # TPM2B_NAME contents: nameAlg || H(TPMT_PUBLIC)

    WIRE = Document(
        Field("node_id", _NODE_ID),
        Field("ek_certificate", Bytes(MAX_CERT_BYTES, description="DER")),
        Field("ek_public", Bytes(MAX_TPM_BLOB_BYTES, description="TPM2B_PUBLIC")),
        Field("ak_public", Bytes(MAX_TPM_BLOB_BYTES, description="TPM2B_PUBLIC")),
        Field("ak_name", Bytes(MAX_NAME_BYTES, description="TPM2B_NAME contents")),
        name="TpmEnrollmentRequest",
        where="enrollment request",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class CredentialChallenge(Wire):
    """The server's answer to an enrollment request: TPM2_MakeCredential output.

    ``challenge`` names the pending enrollment; the node returns it with the secret.
    """

    challenge: bytes
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET
    expires_at: int  # seconds since the epoch

    WIRE = Document(
        Field("challenge", _NONCE),
        Field("credential_blob", Bytes(MAX_TPM_BLOB_BYTES, description="TPM2B_ID_OBJECT")),
        Field("encrypted_secret", Bytes(MAX_TPM_BLOB_BYTES, description="TPM2B_ENCRYPTED_SECRET")),
        Field("expires_at", Integer(), description="seconds since the epoch"),
        where="credential challenge",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class CredentialAnswer(Wire):
    """The secret TPM2_ActivateCredential recovered, for the named challenge."""

    node_id: str
    challenge: bytes
    secret: bytes

    WIRE = Document(
        Field("node_id", _NODE_ID),
        Field("challenge", _NONCE),
        Field("secret", Bytes(64)),
        where="credential answer",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class Challenge(Wire):
    """A single-use server nonce for the next quote, and when it stops being accepted."""

    nonce: bytes
    expires_at: int

    WIRE = Document(
        Field("nonce", _NONCE),
        Field("expires_at", Integer(), description="seconds since the epoch"),
        where="challenge",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class ReportChallenge(Wire):
    """What a TPM-enrolled node quotes its next report over: the challenge, and the
    digest of the event log the server holds for it (None: none), so the node sends
    its log only when the server's differs.

    Answers ``GET /v1/challenge``, and comes with every accepted attested report
    as the next one: in the steady state a report takes one request, not two.
    """

    challenge: Challenge
    event_log_sha256: str | None

    WIRE = Document(
        Field("challenge", Ref(Challenge)),
        Field("event_log_sha256", Nullable(_SHA256)),
        where="report challenge",
    )


@dataclass(frozen=True)
class AttestationEvidence(Wire):
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

    WIRE = Document(
        Field("nonce", _NONCE),
        Field("quote", Bytes(MAX_TPM_BLOB_BYTES, description="TPMS_ATTEST")),
        Field("signature", Bytes(MAX_TPM_BLOB_BYTES, description="TPMT_SIGNATURE")),
        Field("selection", Ref(PcrSelection)),
        Field(
            "pcrs",
            Convert(
                MapOf(
                    _BANK,
                    MapOf(Text(choices=_PCR_NUMBERS), Text(pattern=_PCR_HEX), PCR_COUNT),
                    len(BANKS),
                ),
                decode=_pcr_values,
                encode=_pcr_texts,
                examples=({"sha256": {"0": "00" * 32}},),
                description="bank -> PCR number -> value in hex: every selected PCR",
            ),
        ),
        Field("event_log", Nullable(Bytes(MAX_LOG_BYTES))),
        Field("event_log_sha256", Nullable(_SHA256)),
        optional("driver_log", Bytes(MAX_DRIVER_LOG_BYTES)),
        where="evidence",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class SessionKeyCertification(Wire):
    """An Ed25519 public key vouched for by a quote whose qualifying data is
    ``quote_qualifying_data(challenge, session_key_digest(public_key))``.

    Once the server accepts it, the node signs later requests with the session key
    instead of spending a TPM operation on each.
    """

    node_id: str
    public_key: bytes  # raw Ed25519 public key, 32 bytes
    evidence: AttestationEvidence

    WIRE = Document(
        Field("node_id", _NODE_ID),
        Field("public_key", Bytes(32, exact=32, description="raw Ed25519 public key")),
        Field("evidence", Ref(AttestationEvidence)),
        where="session key certification",
        version=SCHEMA_VERSION,
    )


@dataclass(frozen=True)
class AttestedReport(Wire):
    """A health report and the quote that binds it: what an agent posts each cycle."""

    report: HealthReport
    evidence: AttestationEvidence

    @property
    def digest(self) -> bytes:
        return report_digest(self.report)

    WIRE = Document(
        Field("report", Ref(HealthReport)),
        Field("evidence", Ref(AttestationEvidence)),
        where="attested report",
        version=SCHEMA_VERSION,
    )


class AttestationError(GpuwardError):
    """Evidence failed a check, or the TPM refused an operation; the message says which."""
