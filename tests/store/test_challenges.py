"""Challenges kept in the store, on SQLite and PostgreSQL: single-use under a
race, expired ones refused and purged, the pending count capped per purpose,
and each node's last verified event log kept across server restarts."""

from __future__ import annotations

import asyncio
import os

import pytest

from server.attestation.challenges import ChallengeError, Challenges, ChallengesFull
from server.store import Store, open_store
from tests.simnode import FakeClock
from tests.store.test_store import node, run

TTL_S = 120.0


def test_a_challenge_is_taken_once(db_url: str) -> None:
    async def body(store: Store) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await challenges.issue("n1", "enroll", b"payload")
        assert await challenges.redeem(issued.nonce, "n1", "enroll") == b"payload"
        with pytest.raises(ChallengeError, match="already used"):
            await challenges.redeem(issued.nonce, "n1", "enroll")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(os.urandom(32), "n1", "enroll")

    run(db_url, body)


def test_a_misdirected_redemption_spends_the_challenge(db_url: str) -> None:
    """Presented for another node or purpose, it is refused and gone: an attacker
    who saw the nonce cannot probe with it, nor the node then use it."""

    async def body(store: Store) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await challenges.issue("n1", "report")
        with pytest.raises(ChallengeError, match="issued to n1 for report"):
            await challenges.redeem(issued.nonce, "n2", "report")
        with pytest.raises(ChallengeError, match="already used"):
            await challenges.redeem(issued.nonce, "n1", "report")

    run(db_url, body)


def test_racing_redemptions_succeed_once(db_url: str) -> None:
    """Two stores (two replicas' connections) redeem one challenge at once."""

    async def body(first: Store) -> None:
        second = await open_store(db_url)
        try:
            issued = await Challenges(first, ttl_s=TTL_S).issue("n1", "report", b"x")
            takers = [Challenges(s, ttl_s=TTL_S) for s in (first, second) for _ in range(4)]
            results = await asyncio.gather(
                *(c.redeem(issued.nonce, "n1", "report") for c in takers),
                return_exceptions=True,
            )
        finally:
            await second.close()
        assert results.count(b"x") == 1
        assert all(isinstance(r, ChallengeError) for r in results if r != b"x")

    run(db_url, body)


def test_expired_challenges_are_refused_and_purged(db_url: str) -> None:
    clock = FakeClock()

    async def body(store: Store) -> None:
        challenges = Challenges(store, ttl_s=TTL_S, max_pending=2, clock=clock)
        old = await challenges.issue("n1", "report")
        stale = await challenges.issue("n2", "report")
        clock.advance(TTL_S)
        with pytest.raises(ChallengeError, match="expired"):
            await challenges.redeem(old.nonce, "n1", "report")
        # The next issue purges what expired: the quota has room again, and the
        # purged challenge is gone (unknown), not merely refused as expired.
        await challenges.issue("n3", "report")
        await challenges.issue("n4", "report")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(stale.nonce, "n2", "report")

    run(db_url, body)


def test_pending_challenges_are_capped_per_purpose(db_url: str) -> None:
    """A flood of enrollment challenges fills the enrollment quota only: report
    challenges of enrolled nodes are still issued, and a redeemed or expired
    enrollment challenge makes room again."""
    clock = FakeClock()

    async def body(store: Store) -> None:
        challenges = Challenges(store, ttl_s=TTL_S, max_pending=3, clock=clock)
        flood = [await challenges.issue(f"x{i}", "enroll") for i in range(3)]
        with pytest.raises(ChallengesFull, match="3 enroll challenges are pending"):
            await challenges.issue("x3", "enroll")
        await challenges.issue("n1", "report")
        await challenges.redeem(flood[0].nonce, "x0", "enroll")
        await challenges.issue("x4", "enroll")
        with pytest.raises(ChallengesFull):
            await challenges.issue("x5", "enroll")
        clock.advance(TTL_S)
        await challenges.issue("x6", "enroll")

    run(db_url, body)


def test_the_cap_holds_for_challenges_issued_together(db_url: str) -> None:
    """Challenges issued at once are written in one batch: the cap counts each."""

    async def body(store: Store) -> None:
        challenges = Challenges(store, ttl_s=TTL_S, max_pending=3)
        results = await asyncio.gather(
            *(challenges.issue(f"x{i}", "enroll") for i in range(5)), return_exceptions=True
        )
        assert sum(isinstance(r, ChallengesFull) for r in results) == 2
        issued = [r for r in results if not isinstance(r, BaseException)]
        assert len({c.nonce for c in issued}) == 3

    run(db_url, body)


def test_verified_event_logs_are_kept_per_node(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        assert await store.event_log("n1") is None
        await store.keep_event_log("n1", "aa", b"first log")
        assert await store.event_log_sha256("n1") == "aa"  # read, and kept in memory (SQLite)
        await store.keep_event_log("n1", "bb", b"second log")
        assert await store.event_log("n1") == ("bb", b"second log")
        assert await store.event_log_sha256("n1") == "bb"
        assert await store.remove_node("n1")
        assert await store.event_log("n1") is None
        assert await store.event_log_sha256("n1") is None

    run(db_url, body)
    # Kept in the database: a restarted server (or another replica) has it too.
    run(db_url, lambda s: s.keep_event_log("n2", "cc", b"log"))
    assert run(db_url, lambda s: s.event_log("n2")) == ("cc", b"log")
