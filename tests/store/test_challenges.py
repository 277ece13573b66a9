"""Challenges kept in the store, on SQLite and PostgreSQL: single-use under a
race, expired ones refused and purged, the pending count capped per purpose,
and each node's last verified event log kept across server restarts."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from fleet.attestation import Challenge
from server.attestation.challenges import (
    ChallengeError,
    Challenges,
    ChallengesFull,
    ChallengeStore,
    MemoryChallengeStore,
)
from server.store import Store, open_store
from server.store.sql import SqlStore
from tests.simnode import FakeClock
from tests.store.old_schema import old_database
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


def _log(text: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(text).hexdigest(), text


def test_verified_event_logs_are_kept_per_node(db_url: str) -> None:
    first, second = _log(b"first log"), _log(b"second log")

    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        assert await store.event_log("n1") is None
        await store.keep_event_log("n1", first[1])
        assert await store.event_log_sha256("n1") == first[0]  # read, and kept in memory (SQLite)
        await store.keep_event_log("n1", second[1])
        assert await store.event_log("n1") == second
        assert await store.event_log_sha256("n1") == second[0]
        assert await store.remove_node("n1")
        assert await store.event_log("n1") is None
        assert await store.event_log_sha256("n1") is None

    run(db_url, body)
    # Kept in the database: a restarted server (or another replica) has it too.
    run(db_url, lambda s: s.keep_event_log("n2", b"log"))
    assert run(db_url, lambda s: s.event_log("n2")) == _log(b"log")


async def _texts(store: Store) -> list[str]:
    """The digests of the event logs the database holds (each once)."""
    assert isinstance(store, SqlStore)
    rows = await store.db.query("SELECT sha256 FROM event_log_texts ORDER BY sha256")
    return [digest for (digest,) in rows]


def test_nodes_that_boot_alike_share_one_log(db_url: str) -> None:
    shared, other = _log(b"the same boot" * 1000), _log(b"another boot")

    async def body(store: Store) -> None:
        for node_id in ("n1", "n2"):
            await store.enroll(node(node_id))
            await store.keep_event_log(node_id, shared[1])
        assert await _texts(store) == [shared[0]]
        assert await store.event_log("n2") == shared
        assert await store.remove_node("n1")
        assert await _texts(store) == [shared[0]]
        assert await store.event_log("n2") == shared
        assert await store.remove_node("n2")
        assert await _texts(store) == []

        await store.enroll(node("n3"))
        await store.keep_event_log("n3", shared[1])
        await store.keep_event_log("n3", other[1])  # a changed log drops the old one
        assert await _texts(store) == [other[0]]
        await store.keep_event_log("n3", other[1])  # kept again: still once
        assert await _texts(store) == [other[0]]

    run(db_url, body)


def test_logs_are_filed_under_their_own_digest(db_url: str) -> None:
    """The attack: a node names a good log's digest and sends other bytes. The store
    takes no digest from its caller, so the bytes never stand in for the good log."""
    good, forged = _log(b"a good boot"), b"forged bytes"

    async def body(store: Store) -> None:
        await store.enroll(node("victim"))
        await store.enroll(node("attacker"))
        await store.keep_event_log("attacker", forged)
        await store.keep_event_log("victim", good[1])
        assert await store.event_log("victim") == good
        assert await store.event_log_sha256("attacker") == _log(forged)[0]

    run(db_url, body)


def test_migration_keeps_each_distinct_log_once(db_url: str) -> None:
    shared, own = _log(b"the same boot"), _log(b"its own boot")
    rows = [("n1", *shared), ("n2", *shared), ("n3", *own)]
    insert = "INSERT INTO event_logs (node_id, sha256, log) VALUES (?, ?, ?)"
    asyncio.run(old_database(db_url, "event_log_texts", insert, rows))

    async def body(store: Store) -> None:
        assert await _texts(store) == sorted([shared[0], own[0]])
        for node_id, digest, text in rows:
            assert await store.event_log(node_id) == (digest, text)
        for node_id in ("n1", "n2", "n3"):
            await store.remove_node(node_id)
        assert await _texts(store) == []

    run(db_url, body)


Body = Callable[[ChallengeStore], Coroutine[Any, Any, None]]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def on_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Body], None]:
    """Runs a test body on each challenge store: in memory, and on each backend."""
    if request.param == "memory":
        return lambda body: asyncio.run(body(MemoryChallengeStore()))
    url = (
        f"sqlite://{tmp_path / 'fleet.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    return lambda body: run(url, body)


def test_a_node_holds_one_report_challenge(on_store: Callable[[Body], None]) -> None:
    """Asking again replaces the node's pending challenge, wherever it came from."""

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        first = await challenges.issue_replacing("n1", "report")
        second = await challenges.issue_replacing("n1", "report", ttl_s=10 * TTL_S)
        other = await challenges.issue_replacing("n2", "report")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(first.nonce, "n1", "report")
        await challenges.redeem(second.nonce, "n1", "report")
        await challenges.redeem(other.nonce, "n2", "report")
        assert second.expires_at - first.expires_at >= 9 * TTL_S

    on_store(body)


def test_replacing_challenges_are_not_counted_against_the_cap(
    on_store: Callable[[Body], None],
) -> None:
    """Enrolled nodes' report challenges are bounded by the nodes, not by the cap
    that unauthenticated enrollment challenges fill; nor do they fill it."""

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S, max_pending=2)
        held = [await challenges.issue_replacing(f"n{i}", "report") for i in range(5)]
        await challenges.issue("x0", "enroll")
        await challenges.issue("x1", "enroll")
        with pytest.raises(ChallengesFull):
            await challenges.issue("x2", "enroll")
        for i, issued in enumerate(held):
            await challenges.redeem(issued.nonce, f"n{i}", "report")

    on_store(body)


def test_one_node_asking_many_times_at_once_holds_one(on_store: Callable[[Body], None]) -> None:
    """Issued together (one batch in the store), only one stays redeemable."""

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await asyncio.gather(
            *(challenges.issue_replacing("n1", "report") for _ in range(6))
        )
        redeemed = await asyncio.gather(
            *(challenges.redeem(c.nonce, "n1", "report") for c in issued), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in redeemed) == 1

    on_store(body)


def test_an_expired_replacing_challenge_is_refused(on_store: Callable[[Body], None]) -> None:
    clock = FakeClock()

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S, clock=clock)
        issued = await challenges.issue_replacing("n1", "report", ttl_s=3 * TTL_S)
        clock.advance(3 * TTL_S)
        with pytest.raises(ChallengeError, match="expired"):
            await challenges.redeem(issued.nonce, "n1", "report")

    on_store(body)


def test_a_node_s_challenge_presented_by_another_stays_for_it(
    on_store: Callable[[Body], None],
) -> None:
    """Another node that saw the nonce can neither use it nor spend it."""

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await challenges.issue_replacing("n1", "report")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(issued.nonce, "n2", "report")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(issued.nonce, "n1", "enroll")
        await challenges.redeem(issued.nonce, "n1", "report")
        with pytest.raises(ChallengeError, match="already used"):
            await challenges.redeem(issued.nonce, "n1", "report")

    on_store(body)


def test_removing_a_node_drops_its_challenge(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await challenges.issue_replacing("n1", "report")
        assert await store.remove_node("n1")
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem(issued.nonce, "n1", "report")

    run(db_url, body)


def test_a_report_challenge_taken_leaves_the_next_in_its_place(
    on_store: Callable[[Body], None],
) -> None:
    """One step takes the node's challenge and issues its next: the one taken is
    gone at once, and the next is as single-use, and as much the node's own."""

    async def body(store: ChallengeStore) -> None:
        challenges = Challenges(store, ttl_s=TTL_S)
        issued = await challenges.issue_replacing("n1", "report")
        following = await challenges.redeem_replacing(
            issued.nonce, "n1", "report", ttl_s=10 * TTL_S
        )
        assert following.nonce != issued.nonce
        assert following.expires_at - issued.expires_at >= 9 * TTL_S
        for replayed in (issued.nonce, issued.nonce):
            with pytest.raises(ChallengeError, match="unknown or already used"):
                await challenges.redeem_replacing(replayed, "n1", "report", ttl_s=TTL_S)
        # The failed tries issued nothing: the next one stays, for n1 only.
        with pytest.raises(ChallengeError, match="unknown"):
            await challenges.redeem_replacing(following.nonce, "n2", "report", ttl_s=TTL_S)
        await challenges.redeem(following.nonce, "n1", "report")
        with pytest.raises(ChallengeError, match="already used"):
            await challenges.redeem(following.nonce, "n1", "report")

    on_store(body)


def test_one_challenge_taken_at_once_with_successors_is_taken_once(db_url: str) -> None:
    """Two replicas take one node's challenge at once, each issuing a next one:
    one succeeds, and only its next one is kept."""

    async def body(first: Store) -> None:
        second = await open_store(db_url)
        try:
            issued = await Challenges(first, ttl_s=TTL_S).issue_replacing("n1", "report")
            takers = [Challenges(s, ttl_s=TTL_S) for s in (first, second) for _ in range(4)]
            results = await asyncio.gather(
                *(c.redeem_replacing(issued.nonce, "n1", "report", ttl_s=TTL_S) for c in takers),
                return_exceptions=True,
            )
            (following,) = [r for r in results if isinstance(r, Challenge)]
            assert all(isinstance(r, ChallengeError) for r in results if r is not following)
            await Challenges(second, ttl_s=TTL_S).redeem(following.nonce, "n1", "report")
        finally:
            await second.close()

    run(db_url, body)
