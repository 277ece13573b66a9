"""Node identity on the server: enrollment verifiers and signed-request checks.

Enrollment binds a node id to an Ed25519 request key. What vouches for the key
is a ``KeyEnrollmentVerifier``: with a TPM, the attestation verifier checks that
the node's attestation key certified it; without one, ``UnattestedTokenVerifier``
accepts a shared enrollment token and marks the node "unattested" everywhere it
is shown. Afterwards each node request is checked for a valid signature by the
enrolled key, a timestamp within ``MAX_SKEW_S`` and a nonce not seen before.
The nonce cache here is per replica; the store's unique (node, nonce) index
catches a report replayed to another replica. It is partitioned by node: a node
that floods fills only its own partition, never the room other nodes' nonces need.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fleet.errors import GpuwardError, InvalidDocument
from fleet.nodeauth import MAX_SKEW_S, KeyEnrollmentRequest, RequestSignature, signed_message
from keys import ed25519
from server.limits import RateLimiter
from server.store import EnrolledNode, Store

UNATTESTED = "unattested"
TOKEN_EVIDENCE = "enrollment-token"  # noqa: S105 (an evidence type, not a secret)
# How long a nonce is remembered: as long as a request carrying it stays fresh.
NONCE_LIFETIME_S = 2 * MAX_SKEW_S
# A node's nonces come from three rate-limit buckets (requests, director reads,
# enrollments), so its partition holds what the three admit in a lifetime.
NONCE_BUCKETS = 3
_SWEEP_EVERY = 10_000


class NodeAuthError(GpuwardError):
    """A node request that must be refused; ``status`` is the HTTP status to answer,
    ``reason`` the metrics' name for it where the status does not say (``server.metrics``)."""

    def __init__(self, message: str, status: int = 401, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Attestation:
    attested: bool  # True only when hardware (a TPM) vouched for the key
    method: str  # shown to people: "unattested", "tpm2", ...
    tpm: str | None = None  # the enrolled AK record (JSON) to store with the node


class KeyEnrollmentVerifier(Protocol):
    async def verify(self, request: KeyEnrollmentRequest) -> Attestation:
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

    async def verify(self, request: KeyEnrollmentRequest) -> Attestation:
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

    def __init__(self, verifiers: Mapping[str, KeyEnrollmentVerifier]) -> None:
        self._verifiers = dict(verifiers)

    async def verify(self, request: KeyEnrollmentRequest) -> Attestation:
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

    async def verify(self, request: KeyEnrollmentRequest) -> Attestation:
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
    """Nonces seen in the last ``NONCE_LIFETIME_S``, the longest a request stays fresh,
    in one partition per node of at most ``per_node`` nonces.

    Entries expire in insertion order (each lives the same time from receipt),
    so expiry pops from a partition's front. A full partition refuses its own
    node's requests rather than forgetting a nonce that could then be replayed;
    the rate limit, charged before a nonce is claimed, keeps an honest node far
    below it. Memory is at most enrolled nodes times ``per_node``.
    """

    def __init__(self, clock: Callable[[], float], per_node: int) -> None:
        self._clock = clock
        self._per_node = per_node
        self._seen: dict[str, OrderedDict[str, float]] = {}
        self._claims = 0

    def seen(self, node_id: str, nonce: str) -> bool:
        return nonce in self._fresh(node_id, self._clock())

    def claim(self, node_id: str, nonce: str) -> None:
        now = self._clock()
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            for idle in list(self._seen):
                self._fresh(idle, now)
        partition = self._fresh(node_id, now)
        if nonce in partition:
            raise NodeAuthError("replayed request (nonce already used)", reason="replayed")
        if len(partition) >= self._per_node:
            raise NodeAuthError(
                f"node {node_id} has sent {self._per_node} requests in the last "
                f"{NONCE_LIFETIME_S}s; retry later",
                429,
            )
        partition[nonce] = now + NONCE_LIFETIME_S
        self._seen[node_id] = partition

    def _fresh(self, node_id: str, now: float) -> OrderedDict[str, float]:
        """``node_id``'s partition with its expired nonces dropped (an empty one is
        forgotten, so that nodes gone quiet cost nothing)."""
        partition = self._seen.get(node_id, OrderedDict())
        while partition:
            nonce, expires = next(iter(partition.items()))
            if expires > now:
                break
            del partition[nonce]
        if not partition:
            self._seen.pop(node_id, None)
        return partition


class RequestVerifier:
    """Checks a signed node request; returns the enrolled node it comes from."""

    def __init__(self, store: Store, clock: Callable[[], float], limiter: RateLimiter) -> None:
        self._store = store
        self._clock = clock
        self._nonces = NonceCache(clock, NONCE_BUCKETS * limiter.most_in(NONCE_LIFETIME_S))

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
        """Refuse the request unless ``node``'s key signed it and its nonce is new.

        Nothing is recorded yet: the caller charges the node's rate limit first and
        then ``claim``s the nonce, so that a flood is refused before it costs memory,
        and a replay (of a captured request) is refused before it costs the node's
        own rate."""
        verify_signature(node.public_key, sig, method, path, body)
        if self._nonces.seen(sig.node_id, sig.nonce):
            raise NodeAuthError("replayed request (nonce already used)", reason="replayed")

    def claim(self, sig: RequestSignature) -> None:
        """Record the nonce of a verified request, once its rate limit is charged."""
        self._nonces.claim(sig.node_id, sig.nonce)
