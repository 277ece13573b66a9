"""Single-use, expiring server challenges.

A quote proves freshness only if its nonce came from the server, recently, and was
never accepted before. ``Challenges`` issues and redeems them; where they are kept
is a ``ChallengeStore``: in memory for one process, or the fleet store's database
when several server replicas share the work (its ``take`` must then be one atomic
delete-and-return, e.g. ``DELETE ... RETURNING``, so two replicas cannot both
redeem one challenge).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleet.attestation import NONCE_BYTES, AttestationError, Challenge

DEFAULT_TTL_S = 120
MAX_PENDING = 100_000


class ChallengeError(AttestationError):
    """A challenge is unknown, already used, expired, or not this node's."""


@dataclass(frozen=True)
class PendingChallenge:
    subject: str  # the node the challenge was issued to
    purpose: str  # "enroll", "report" or "session-key": a nonce serves one purpose
    payload: bytes  # what the issuer needs back when it is redeemed
    expires_at: float


class ChallengeStore(Protocol):
    def put(self, nonce: bytes, pending: PendingChallenge) -> None:
        """Keep ``pending`` under ``nonce``; may raise ``ChallengeError`` when full."""

    def take(self, nonce: bytes) -> PendingChallenge | None:
        """Remove and return the challenge, atomically; None if there is none."""


class MemoryChallengeStore:
    """A ``ChallengeStore`` for a single server process."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = MAX_PENDING) -> None:
        self._pending: dict[bytes, PendingChallenge] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._limit = limit

    def put(self, nonce: bytes, pending: PendingChallenge) -> None:
        with self._lock:
            if len(self._pending) >= self._limit:
                now = self._clock()
                self._pending = {n: p for n, p in self._pending.items() if p.expires_at > now}
            if len(self._pending) >= self._limit:
                raise ChallengeError(
                    f"{self._limit} challenges are pending; try again when some expire"
                )
            self._pending[nonce] = pending

    def take(self, nonce: bytes) -> PendingChallenge | None:
        with self._lock:
            return self._pending.pop(nonce, None)


class Challenges:
    """Issues and redeems challenges; ``clock`` is injectable for expiry tests."""

    def __init__(
        self,
        store: ChallengeStore,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, subject: str, purpose: str, payload: bytes = b"") -> Challenge:
        nonce = os.urandom(NONCE_BYTES)
        expires_at = self._clock() + self._ttl_s
        self._store.put(nonce, PendingChallenge(subject, purpose, payload, expires_at))
        return Challenge(nonce, int(expires_at))

    def redeem(self, nonce: bytes, subject: str, purpose: str) -> bytes:
        """The payload of a live challenge issued to ``subject`` for ``purpose``.

        The challenge is gone afterwards, whether or not it was valid: a nonce is
        accepted at most once, even under a race.
        """
        pending = self._store.take(nonce)
        if pending is None:
            raise ChallengeError(
                "unknown or already used challenge (a replayed quote?); ask for a new one"
            )
        if pending.subject != subject or pending.purpose != purpose:
            raise ChallengeError(
                f"the challenge was issued to {pending.subject} for {pending.purpose}, "
                f"not to {subject} for {purpose}; ask for a new one"
            )
        if self._clock() >= pending.expires_at:
            raise ChallengeError("the challenge expired; ask for a new one")
        return pending.payload
