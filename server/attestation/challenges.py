"""Single-use, expiring server challenges.

A quote proves freshness only if its nonce came from the server, recently, and was
never accepted before. ``Challenges`` issues and redeems them; where they are kept
is a ``ChallengeStore``: the fleet store's database (``server.store``), which
several server replicas share, so a challenge issued by one replica is redeemed
at another, once (``take_challenge`` is one atomic ``DELETE ... RETURNING``); or
``MemoryChallengeStore``, for a verifier without a database (the benchmark, the
verifier's own tests).

The number of pending challenges is capped per purpose: enrollment challenges
are issued before the caller proves anything, so a flood of them fills its own
purpose's quota and is refused (``ChallengesFull``), never the report
challenges of enrolled nodes. Those are not counted but held one per node
(``issue_replacing``): asking again replaces the node's pending one, so what is
pending is bounded by the enrolled nodes, each of which holds its next
challenge from one report to the next. A node's sole challenge is taken only
by that node: presented by another, it stays for its own. Taking it may put the
node's next one in its place in the same step (``redeem_replacing``): a report
costs one trip to the store for both, and the nonce taken is still gone at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleet.attestation import NONCE_BYTES, AttestationError, Challenge

DEFAULT_TTL_S = 120
MAX_PENDING = 10_000  # per purpose


class ChallengeError(AttestationError):
    """A challenge is unknown, already used, expired, or not this node's."""


class ChallengesFull(ChallengeError):
    """Too many challenges of one purpose are pending; retry when some expire."""


@dataclass(frozen=True)
class PendingChallenge:
    subject: str  # the node the challenge was issued to
    purpose: str  # "enroll", "report" or "session-key": a nonce serves one purpose
    payload: bytes  # what the issuer needs back when it is redeemed
    expires_at: float


# A sole challenge's successor, kept as it is taken: (nonce, challenge).
Successor = tuple[bytes, PendingChallenge]


class ChallengeStore(Protocol):
    async def add_challenge(
        self, nonce: bytes, pending: PendingChallenge, now: float, limit: int
    ) -> bool:
        """Drop the challenges expired at ``now`` and keep ``pending`` under ``nonce``,
        unless ``limit`` challenges of its purpose are pending: then False."""
        ...

    async def replace_challenge(self, nonce: bytes, pending: PendingChallenge) -> None:
        """Keep ``pending`` under ``nonce`` as its subject's sole challenge of its
        purpose, in place of the one before."""
        ...

    async def take_sole_challenge(
        self, subject: str, purpose: str, nonce: bytes, successor: Successor | None = None
    ) -> PendingChallenge | None:
        """Remove and return ``subject``'s sole challenge of ``purpose`` if its nonce
        is ``nonce``, and keep ``successor`` (nonce, challenge) in its place,
        atomically; None (it stays, and no successor is kept) otherwise."""
        ...

    async def take_challenge(self, nonce: bytes) -> PendingChallenge | None:
        """Remove and return the challenge, atomically; None if there is none."""
        ...


class MemoryChallengeStore:
    """A ``ChallengeStore`` for one process without a database."""

    def __init__(self) -> None:
        self._pending: dict[bytes, PendingChallenge] = {}
        self._counts: Counter[str] = Counter()
        self._sole: dict[tuple[str, str], tuple[bytes, PendingChallenge]] = {}
        self._lock = threading.Lock()

    async def add_challenge(
        self, nonce: bytes, pending: PendingChallenge, now: float, limit: int
    ) -> bool:
        with self._lock:
            if self._counts[pending.purpose] >= limit:
                # Purging costs a pass over all: only when a quota looks full.
                self._pending = {n: p for n, p in self._pending.items() if p.expires_at > now}
                self._counts = Counter(p.purpose for p in self._pending.values())
                if self._counts[pending.purpose] >= limit:
                    return False
            self._pending[nonce] = pending
            self._counts[pending.purpose] += 1
            return True

    async def replace_challenge(self, nonce: bytes, pending: PendingChallenge) -> None:
        with self._lock:
            self._sole[(pending.subject, pending.purpose)] = (nonce, pending)

    async def take_sole_challenge(
        self, subject: str, purpose: str, nonce: bytes, successor: Successor | None = None
    ) -> PendingChallenge | None:
        with self._lock:
            found = self._sole.get((subject, purpose))
            if found is None or found[0] != nonce:
                return None
            if successor is None:
                del self._sole[(subject, purpose)]
            else:
                self._sole[(subject, purpose)] = successor
            return found[1]

    async def take_challenge(self, nonce: bytes) -> PendingChallenge | None:
        with self._lock:
            pending = self._pending.pop(nonce, None)
            if pending is not None:
                self._counts[pending.purpose] -= 1
            return pending


class Challenges:
    """Issues and redeems challenges; ``clock`` is injectable for expiry tests."""

    def __init__(
        self,
        store: ChallengeStore,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._max_pending = max_pending
        self._clock = clock

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def issue(self, subject: str, purpose: str, payload: bytes = b"") -> Challenge:
        """Raises ``ChallengesFull`` when ``max_pending`` of ``purpose`` are pending."""
        nonce = os.urandom(NONCE_BYTES)
        now = self._clock()
        expires_at = now + self._ttl_s
        pending = PendingChallenge(subject, purpose, payload, expires_at)
        if not await self._store.add_challenge(nonce, pending, now, self._max_pending):
            raise ChallengesFull(
                f"{self._max_pending} {purpose} challenges are pending; try again when some "
                f"expire (within {self._ttl_s:.0f}s)"
            )
        return Challenge(nonce, int(expires_at))

    async def issue_replacing(
        self, subject: str, purpose: str, *, ttl_s: float | None = None
    ) -> Challenge:
        """``subject``'s one pending challenge of ``purpose``, replacing any issued
        before: for callers already authenticated, so not counted against a cap.
        ``ttl_s``: its lifetime, when not the default."""
        nonce, pending = self._sole(subject, purpose, ttl_s)
        await self._store.replace_challenge(nonce, pending)
        return Challenge(nonce, int(pending.expires_at))

    def _sole(self, subject: str, purpose: str, ttl_s: float | None) -> Successor:
        expires_at = self._clock() + (self._ttl_s if ttl_s is None else ttl_s)
        return os.urandom(NONCE_BYTES), PendingChallenge(subject, purpose, b"", expires_at)

    async def redeem(self, nonce: bytes, subject: str, purpose: str) -> bytes:
        """The payload of a live challenge issued to ``subject`` for ``purpose``.

        The challenge is gone afterwards, whether or not it was valid: a nonce is
        accepted at most once, even under a race between replicas. (A subject's
        sole challenge is found only when ``subject`` presents it.)
        """
        return (await self._take(nonce, subject, purpose, None)).payload

    async def redeem_replacing(
        self, nonce: bytes, subject: str, purpose: str, *, ttl_s: float
    ) -> Challenge:
        """``redeem``, and ``subject``'s next challenge of ``purpose`` (as
        ``issue_replacing`` with ``ttl_s``), put in place of the one taken in the
        same step. Kept whenever the one taken was ``subject``'s for ``purpose``,
        expired or not: a node refused asks for a fresh one, which replaces it."""
        successor = self._sole(subject, purpose, ttl_s)
        await self._take(nonce, subject, purpose, successor)
        return Challenge(successor[0], int(successor[1].expires_at))

    async def _take(
        self, nonce: bytes, subject: str, purpose: str, successor: Successor | None
    ) -> PendingChallenge:
        pending = await self._store.take_sole_challenge(subject, purpose, nonce, successor)
        replaced = pending is not None  # by the successor, if any
        if pending is None:
            pending = await self._store.take_challenge(nonce)
        if pending is None:
            raise ChallengeError(
                "unknown or already used challenge (a replayed quote?); ask for a new one"
            )
        if pending.subject != subject or pending.purpose != purpose:
            raise ChallengeError(
                f"the challenge was issued to {pending.subject} for {pending.purpose}, "
                f"not to {subject} for {purpose}; ask for a new one"
            )
        if successor is not None and not replaced:  # one issued by ``issue``
            await self._store.replace_challenge(*successor)
        if self._clock() >= pending.expires_at:
            raise ChallengeError("the challenge expired; ask for a new one")
        return pending
