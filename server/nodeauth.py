"""Node identity on the server: enrollment verifiers and signed-request checks.

Enrollment binds a node id to an Ed25519 request key. What vouches for the key
is an ``EnrollmentVerifier``: with a TPM, the attestation verifier checks that
the node's attestation key certified it; without one, ``UnattestedTokenVerifier``
accepts a shared enrollment token and marks the node "unattested" everywhere it
is shown. Afterwards each node request is checked for a valid signature by the
enrolled key, a timestamp within ``MAX_SKEW_S`` and a nonce not seen before.
The nonce cache here is per replica; the store's unique (node, nonce) index
catches a report replayed to another replica.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fleet.errors import GpuwardError, InvalidDocument
from fleet.nodeauth import MAX_SKEW_S, EnrollmentRequest, RequestSignature, signed_message
from keys import ed25519
from server.store import EnrolledNode, Store

UNATTESTED = "unattested"
TOKEN_EVIDENCE = "enrollment-token"  # noqa: S105 (an evidence type, not a secret)
MAX_NONCES = 1_000_000


class NodeAuthError(GpuwardError):
    """A node request that must be refused; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Attestation:
    attested: bool  # True only when hardware (a TPM) vouched for the key
    method: str  # shown to people: "unattested", "tpm2", ...
    tpm: str | None = None  # the enrolled AK record (JSON) to store with the node


class EnrollmentVerifier(Protocol):
    async def verify(self, request: EnrollmentRequest) -> Attestation:
        """Accept the request's key for its node id, or raise ``NodeAuthError``."""
        ...


class UnattestedTokenVerifier:
    """The no-TPM mode: a node that knows the shared enrollment token is enrolled.

    Anyone holding the token can enroll a node id that is not yet enrolled, so
    nodes enrolled this way are shown as unattested; use it for labs and for
    hosts without a TPM.
    """

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise GpuwardError("the enrollment token must be at least 16 characters")
        self._token = token.encode()

    async def verify(self, request: EnrollmentRequest) -> Attestation:
        given = request.evidence.get("token")
        if request.evidence.get("type") != TOKEN_EVIDENCE or not isinstance(given, str):
            raise NodeAuthError(
                "this server enrolls with an enrollment token: evidence must be "
                '{"type": "enrollment-token", "token": ...}',
                403,
            )
        if not hmac.compare_digest(given.encode(), self._token):
            raise NodeAuthError("wrong enrollment token", 403)
        return Attestation(attested=False, method=UNATTESTED)


class ByEvidence:
    """Several enrollment modes at once: the evidence's "type" picks the verifier."""

    def __init__(self, verifiers: Mapping[str, EnrollmentVerifier]) -> None:
        self._verifiers = dict(verifiers)

    async def verify(self, request: EnrollmentRequest) -> Attestation:
        kind = request.evidence.get("type")
        verifier = self._verifiers.get(kind) if isinstance(kind, str) else None
        if verifier is None:
            raise NodeAuthError(
                f"this server enrolls with evidence of type {', '.join(sorted(self._verifiers))}",
                403,
            )
        return await verifier.verify(request)


class NoEnrollment:
    """A server started without any verifier refuses every enrollment, saying why."""

    async def verify(self, request: EnrollmentRequest) -> Attestation:
        raise NodeAuthError(
            "this server accepts no enrollments: start it with an attestation verifier, or "
            "with --unattested-enrollment-token-file for the no-TPM mode",
            403,
        )


def verify_signature(
    public_key: bytes, sig: RequestSignature, method: str, path: str, body: bytes
) -> None:
    message = signed_message(method, path, sig.node_id, sig.timestamp, sig.nonce, body)
    if not ed25519.verify(public_key, message, sig.signature):
        raise NodeAuthError("bad request signature")


class NonceCache:
    """Nonces seen in the last ``2 * MAX_SKEW_S``, the longest a request stays fresh.

    Entries expire in insertion order (each lives the same time from receipt),
    so expiry pops from the front. When full, requests are refused rather than
    forgetting a nonce that could then be replayed.
    """

    def __init__(self, clock: Callable[[], float], capacity: int = MAX_NONCES) -> None:
        self._clock = clock
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def claim(self, node_id: str, nonce: str) -> None:
        now = self._clock()
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]
        if (node_id, nonce) in self._seen:
            raise NodeAuthError("replayed request (nonce already used)")
        if len(self._seen) >= self._capacity:
            raise NodeAuthError("too many requests in flight; retry later", 503)
        self._seen[(node_id, nonce)] = now + 2 * MAX_SKEW_S


class RequestVerifier:
    """Checks a signed node request; returns the enrolled node it comes from."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._nonces = NonceCache(clock)

    def parse(self, headers: Mapping[str, str]) -> RequestSignature:
        try:
            sig = RequestSignature.from_headers(headers)
        except InvalidDocument as exc:
            raise NodeAuthError(str(exc)) from None
        if abs(self._clock() - sig.timestamp) > MAX_SKEW_S:
            raise NodeAuthError(
                f"stale request: timestamp more than {MAX_SKEW_S}s from the server's clock "
                "(check the node's time sync)"
            )
        return sig

    async def sender(self, sig: RequestSignature) -> EnrolledNode:
        """The enrolled node a request's signature names, looked up before its body is
        read: a caller that is not enrolled is refused before the server reads (up to
        megabytes of) what it sends."""
        node = await self._store.enrolled(sig.node_id)
        if node is None:
            raise NodeAuthError(f"node {sig.node_id} is not enrolled; run 'gpuward agent enroll'")
        return node

    def check(
        self, node: EnrolledNode, sig: RequestSignature, method: str, path: str, body: bytes
    ) -> None:
        """Refuse the request unless ``node``'s key signed it and its nonce is new."""
        verify_signature(node.public_key, sig, method, path, body)
        self._nonces.claim(sig.node_id, sig.nonce)

    def claim(self, sig: RequestSignature) -> None:
        """Record the nonce of a request verified another way (enrollment)."""
        self._nonces.claim(sig.node_id, sig.nonce)
