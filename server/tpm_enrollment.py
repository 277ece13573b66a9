"""TPM enrollment over HTTP: the node's request key, vouched for by its TPM.

Credential activation needs two round trips, so enrollment is two requests:

1. ``POST /v1/enroll/tpm/begin`` with the node's EK certificate, EK and AK
   (``fleet.attestation.TpmEnrollmentRequest``). The server checks the EK chain and
   the AK and answers a credential only that TPM can activate, and a challenge
   for the quote that certifies the request key.
2. ``POST /v1/enroll`` (signed by the request key, as every enrollment) with
   evidence ``{"type": "tpm2", "credential": CredentialAnswer, "session_key":
   SessionKeyCertification}``: the activated secret proves the AK lives in the
   TPM holding the certified EK; the quote over the challenge and the request
   key proves that AK vouches for this very key.

Challenges are single-use and expire (``server.attestation.challenges``); they
are kept in the store, so the two requests may reach two replicas.

``begin`` is answered before the caller has proved anything but the enrollment
token, and costs a certificate chain check and an RSA encryption: the HTTP
layer admits it only with the token, within a per-address rate limit, with a
small body, and the pending enrollment challenges are capped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from fleet.attestation import (
    AttestationError,
    Challenge,
    CredentialAnswer,
    CredentialChallenge,
    PcrSelection,
    SessionKeyCertification,
    TpmEnrollmentRequest,
)
from fleet.errors import InvalidDocument
from fleet.nodeauth import KeyEnrollmentRequest
from server.attestation.challenges import Challenges
from server.attestation.enrollment import DEFAULT_EK_TYPE, EkTrust, TpmEnrollmentVerifier
from server.attestation.verifier import SESSION_KEY, QuoteVerifier
from server.nodeauth import Attestation, NodeAuthError

log = structlog.get_logger(__name__)

EVIDENCE_TYPE = "tpm2"


@dataclass(frozen=True)
class TpmBegin:
    """The answer to ``begin``: the credential to activate, the challenge to quote."""

    credential: CredentialChallenge
    session_key_challenge: Challenge

    def to_dict(self) -> dict[str, Any]:
        return {
            "credential": self.credential.to_dict(),
            "session_key_challenge": self.session_key_challenge.to_dict(),
        }


class TpmEnrollment:
    """The ``KeyEnrollmentVerifier`` of nodes with a TPM whose EK chains to ``trust``.

    ``required`` is the least PCR selection the certifying quote must cover;
    ``ek_type`` the one EK template accepted (``server.attestation.enrollment``).
    """

    def __init__(
        self,
        trust: EkTrust,
        challenges: Challenges,
        required: PcrSelection,
        clock: Callable[[], float],
        ek_type: str = DEFAULT_EK_TYPE,
    ) -> None:
        self._challenges = challenges
        self._enrollment = TpmEnrollmentVerifier(trust, challenges, clock, ek_type)
        self._quotes = QuoteVerifier(challenges, required)

    async def begin(self, request: TpmEnrollmentRequest) -> TpmBegin:
        """Raises ``AttestationError`` when the EK or AK is refused, ``ChallengesFull``
        when too many enrollments are pending."""
        credential = await self._enrollment.begin(request)
        challenge = await self._challenges.issue(request.node_id, SESSION_KEY)
        return TpmBegin(credential, challenge)

    async def verify(self, request: KeyEnrollmentRequest) -> Attestation:
        try:
            answer = CredentialAnswer.from_dict(request.evidence.get("credential"))
            certification = SessionKeyCertification.from_dict(request.evidence.get("session_key"))
        except InvalidDocument as exc:
            raise NodeAuthError(
                f"TPM enrollment evidence must be {{'type': 'tpm2', 'credential': ..., "
                f"'session_key': ...}}: {exc}",
                403,
            ) from None
        if not (request.node_id == answer.node_id == certification.node_id):
            raise NodeAuthError("the TPM evidence was made for another node id", 403)
        if certification.public_key != request.public_key:
            raise NodeAuthError(
                "the TPM certified another key than the one enrolled; certify the request key",
                403,
            )
        try:
            node = await self._enrollment.finish(answer)
            await self._quotes.verify_session_key(node, certification)
        except AttestationError as exc:
            log.warning("tpm_enrollment_refused", node=request.node_id, reason=str(exc))
            raise NodeAuthError(f"TPM enrollment refused: {exc}", 403) from None
        return Attestation(
            attested=True, method=EVIDENCE_TYPE, tpm=json.dumps(node.to_dict(), sort_keys=True)
        )
