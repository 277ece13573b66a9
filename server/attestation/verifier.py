"""Quote verification: is this evidence fresh, from this node's TPM, and does it
prove this report and these PCRs, explained by this event log?

``check_quote`` is the hot path, run for every report of every node: a redeemed
challenge, a few ``struct`` reads, two SHA-256 and one RSA verification. Cheap
checks come first so that a replayed or mismatched quote costs no RSA operation.
``check_event_log`` compares a replayed log (``ReplayedLog``: ``fleet.eventlog``'s
parse and replay, done once per distinct log) with the quoted PCRs; a server
keeps replayed logs by digest and skips the replay while nodes keep sending the
same ``event_log_sha256``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from fleet.attestation import (
    BANKS,
    AttestationError,
    AttestationEvidence,
    AttestedReport,
    Challenge,
    PcrSelection,
    SessionKeyCertification,
    quote_qualifying_data,
    report_digest,
    session_key_digest,
)
from fleet.eventlog import EventLog, parse, replay
from keys import ed25519
from server.attestation.challenges import Challenges
from server.attestation.enrollment import EnrolledTpm
from server.attestation.policy import BootPolicy, PolicyResult, evaluate
from server.attestation.tpm import ALG_SHA256, parse_quote, parse_rsassa_signature

REPORT = "report"
SESSION_KEY = "session-key"
MASK_CACHE_SIZE = 64
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class QuoteError(AttestationError):
    """The quote does not prove what it claims; the message names the failed check."""


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote that passed: the TPM's clock says whether the node rebooted since."""

    node_id: str
    pcrs: Mapping[str, Mapping[int, bytes]]
    reset_count: int  # TPM resets (reboots) since the TPM was cleared
    restart_count: int
    clock_ms: int
    firmware_version: int
    # The node's next challenge, put in place of the one this quote answered when
    # the caller asked for one (``next_ttl_s``): one trip to the store for both.
    next_challenge: Challenge | None = None


@dataclass(frozen=True)
class ReplayedLog:
    """An event log parsed and replayed: the same for every node that booted alike,
    so a server keeps one per digest. Raises ``EventLogError`` for a malformed log."""

    raw: bytes
    sha256: str
    log: EventLog
    pcrs: Mapping[str, Mapping[int, bytes]]  # bank -> PCR -> replayed value

    @classmethod
    def of(cls, raw: bytes, sha256: str) -> ReplayedLog:
        """``sha256``: the hex digest of ``raw``, which the caller has checked."""
        log = parse(raw)
        return cls(raw, sha256, log, replay(log))


@dataclass(frozen=True)
class VerifiedLog:
    """An event log whose replay matched the quote, and the PCRs it was checked on.

    Events in other PCRs were not checked against anything: policy ignores them.
    """

    replayed: ReplayedLog
    verified: Mapping[str, frozenset[int]]  # bank -> PCRs where replay == quote

    @property
    def log(self) -> EventLog:
        return self.replayed.log

    @property
    def sha256(self) -> str:
        return self.replayed.sha256


@dataclass(frozen=True)
class ReportVerdict:
    quote: VerifiedQuote
    log: VerifiedLog | None
    policy: PolicyResult | None

    @property
    def passed(self) -> bool:
        return self.log is not None and (self.policy is None or self.policy.passed)


@dataclass(frozen=True)
class CertifiedSessionKey:
    """An Ed25519 key a node's TPM vouched for; it signs the node's later requests."""

    node_id: str
    public_key: bytes
    reset_count: int  # a quote with a higher reset count means the node rebooted

    def verify(self, message: bytes, signature: bytes) -> None:
        if not ed25519.verify(self.public_key, message, signature):
            raise AttestationError(
                f"{self.node_id}: bad session-key signature; certify a new session key"
            )


def _masks(selection: PcrSelection) -> tuple[tuple[int, int], ...]:
    """The selection as the quote encodes it: (hash alg, PCR bit mask) per bank."""
    return tuple((BANKS[bank][0], sum(1 << p for p in pcrs)) for bank, pcrs in selection.banks)


class QuoteVerifier:
    """Checks evidence against a node's enrolled AK.

    ``required`` is the least PCR selection a quote must cover.
    """

    def __init__(self, challenges: Challenges, required: PcrSelection) -> None:
        self._challenges = challenges
        self._required = required
        self._mask_cache: dict[PcrSelection, tuple[tuple[int, int], ...]] = {}

    async def check_quote(
        self,
        node: EnrolledTpm,
        evidence: AttestationEvidence,
        bound_digest: bytes,
        purpose: str = REPORT,
        next_ttl_s: float | None = None,
    ) -> VerifiedQuote:
        """Signature, nonce, qualifying data, PCR selection and PCR digest.

        ``next_ttl_s``: issue the node's next challenge of ``purpose``, living that
        long, as its challenge is taken (``Challenges.redeem_replacing``).
        """
        following = None
        if next_ttl_s is None:
            await self._challenges.redeem(evidence.nonce, node.node_id, purpose)
        else:
            following = await self._challenges.redeem_replacing(
                evidence.nonce, node.node_id, purpose, ttl_s=next_ttl_s
            )
        quote = parse_quote(evidence.quote)
        expected = quote_qualifying_data(evidence.nonce, bound_digest)
        if not hmac.compare_digest(quote.extra_data, expected):
            raise QuoteError(
                f"{node.node_id}: the quote's qualifying data is not SHA-256(challenge || "
                "digest): it was made for another challenge or another report"
            )
        selection = evidence.selection
        masks = self._mask_cache.get(selection)
        if masks is None:
            if not selection.covers(self._required):
                raise QuoteError(
                    f"{node.node_id}: the quote covers {selection.text()}, "
                    f"not all of the required {self._required.text()}"
                )
            masks = _masks(selection)
            if len(self._mask_cache) < MASK_CACHE_SIZE:  # selections come from the network
                self._mask_cache[selection] = masks
        if quote.selection != masks:
            raise QuoteError(f"{node.node_id}: the quote's PCR selection is not the reported one")
        values = hashlib.sha256(b"".join(evidence.pcr_values())).digest()
        if not hmac.compare_digest(quote.pcr_digest, values):
            raise QuoteError(
                f"{node.node_id}: the reported PCR values are not the ones the TPM quoted"
            )
        hash_alg, signature = parse_rsassa_signature(evidence.signature)
        if hash_alg != ALG_SHA256:
            raise QuoteError(f"{node.node_id}: the quote is not signed with SHA-256")
        try:
            node.ak_key.verify(signature, evidence.quote, _PKCS1V15, _SHA256)
        except InvalidSignature:
            raise QuoteError(
                f"{node.node_id}: the quote's signature does not verify with the node's AK"
            ) from None
        return VerifiedQuote(
            node.node_id,
            evidence.pcrs,
            quote.reset_count,
            quote.restart_count,
            quote.clock,
            quote.firmware_version,
            following,
        )

    def check_event_log(
        self, evidence: AttestationEvidence, log: bytes | ReplayedLog
    ) -> VerifiedLog:
        """Compare ``log``'s replay with the quoted PCRs it covers.

        ``log`` is the evidence's own log, or one the server kept (replayed) whose
        digest the evidence names. Raises ``EventLogError`` for a malformed log.
        """
        digest = hashlib.sha256(log).hexdigest() if isinstance(log, bytes) else log.sha256
        if evidence.event_log_sha256 != digest:
            raise QuoteError("the event log is not the one the evidence names")
        if isinstance(log, bytes):
            log = ReplayedLog.of(log, digest)
        replayed = log.pcrs
        verified: dict[str, frozenset[int]] = {}
        wrong = []
        for bank, quoted in evidence.pcrs.items():
            covered = replayed.get(bank, {})
            for pcr in sorted(covered.keys() & quoted.keys()):
                if not hmac.compare_digest(covered[pcr], quoted[pcr]):
                    wrong.append(f"{bank}:{pcr}")
            verified[bank] = frozenset(covered.keys() & quoted.keys())
        if wrong:
            raise QuoteError(
                f"the replayed event log does not give the quoted PCRs {', '.join(wrong)}: "
                "the log was edited, or the PCRs were extended outside it"
            )
        if not any(verified.values()):
            raise QuoteError("the event log covers none of the quoted PCRs")
        return VerifiedLog(log, verified)

    async def verify_report(
        self,
        node: EnrolledTpm,
        attested: AttestedReport,
        known_log: bytes | ReplayedLog | None = None,
        policy: BootPolicy | None = None,
        next_ttl_s: float | None = None,
    ) -> ReportVerdict:
        """The full check of a posted report: quote, log, policy.

        ``known_log`` is a log the server kept, used when the evidence names its log
        by digest only, or instead of replaying the evidence's own log again when
        it is that log. With no log at all, the verdict has no log and does
        not pass: the report is bound and fresh, but the boot is unexplained.
        ``policy`` judges the verified log (none: the log is checked, not judged).
        ``next_ttl_s``: as ``check_quote``'s.
        """
        quote = await self.check_quote(
            node, attested.evidence, report_digest(attested.report), next_ttl_s=next_ttl_s
        )
        evidence = attested.evidence
        kept = isinstance(known_log, ReplayedLog) and known_log.sha256 == evidence.event_log_sha256
        log = known_log if evidence.event_log is None or kept else evidence.event_log
        if log is None:
            return ReportVerdict(quote, None, None)
        verified = self.check_event_log(attested.evidence, log)
        judged = None if policy is None else evaluate(policy, verified.log, verified.verified)
        return ReportVerdict(quote, verified, judged)

    async def verify_session_key(
        self, node: EnrolledTpm, certification: SessionKeyCertification
    ) -> CertifiedSessionKey:
        if certification.node_id != node.node_id:
            raise QuoteError(f"a session key for {certification.node_id} sent as {node.node_id}")
        quote = await self.check_quote(
            node,
            certification.evidence,
            session_key_digest(certification.public_key),
            purpose=SESSION_KEY,
        )
        return CertifiedSessionKey(node.node_id, certification.public_key, quote.reset_count)
