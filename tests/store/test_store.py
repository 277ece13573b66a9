"""The store's contract, run unchanged against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from fleet.attestation_verdict import AttestationVerdict
from fleet.errors import InvalidDocument
from fleet.gpu_attestation import GpuAttestationVerdict, GpuEvidence, GpuOutcome
from fleet.report import GpuHealth, HealthReport
from fleet.rollout import Phase, Policy, Progress, Transition, command, new_rollout, parse_waves
from server.store import Conflict, EnrolledNode, OperatorToken, Store, open_store
from server.store.sql import SqlStore
from tests.store.old_schema import old_database

T = TypeVar("T")


def run(db_url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await open_store(db_url)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def node(node_id: str, pool: str = "prod", key: bytes = b"k" * 32) -> EnrolledNode:
    return EnrolledNode(node_id, key, pool, False, "unattested", 1_000)


def report(
    node_id: str, bundle: str | None = "drivers/a.bundle", healthy: bool = True
) -> HealthReport:
    gpu = GpuHealth(0, "H100", "GPU-0", "580.95.05", healthy, ())
    return HealthReport(node_id, 1, "a", "580.95.05", bundle, "committed", "ok", (gpu,))


def test_migrations_apply_once_and_reopen(db_url: str) -> None:
    run(db_url, lambda s: s.enroll(node("n1")))
    assert run(db_url, lambda s: s.enrolled("n1")) == node("n1")


def test_enrollment_keeps_the_first_key(db_url: str) -> None:
    async def body(store: Store) -> None:
        assert await store.enroll(node("n1")) == (node("n1"), True)
        assert await store.enroll(node("n1", key=b"x" * 32)) == (node("n1"), False)
        assert await store.enrolled("nope") is None
        assert await store.remove_node("n1")
        assert not await store.remove_node("n1")
        assert await store.enrolled("n1") is None

    run(db_url, body)


def test_the_first_applier_key_stays_pinned_until_the_node_is_removed(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        await store.enroll(node("n2"))
        unpinned = await store.enrolled("n1")  # read (and kept in memory, on SQLite) first
        assert unpinned is not None and unpinned.driver_key is None
        assert await store.pin_driver_key("n1", b"a" * 32) == b"a" * 32
        assert await store.pin_driver_key("n1", b"b" * 32) == b"a" * 32
        assert await store.pin_driver_key("n2", b"b" * 32) == b"b" * 32
        # Read with the node, as every signed request reads it.
        found = await store.enrolled("n1")
        assert found is not None and found.driver_key == b"a" * 32
        # Enrolling again without removing the node keeps the pin.
        assert (await store.enroll(node("n1")))[0].driver_key == b"a" * 32
        assert await store.remove_node("n1")
        assert await store.pin_driver_key("n1", b"b" * 32) is None
        await store.enroll(node("n1"))
        assert await store.pin_driver_key("n1", b"b" * 32) == b"b" * 32

    run(db_url, body)


def test_pins_made_before_they_moved_into_the_enrollment_row_are_kept(db_url: str) -> None:
    insert = (
        "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, enrolled_at) "
        "VALUES (?, ?, 'default', FALSE, 'unattested', 1000)"
    )
    nodes = [("n1", b"k" * 32), ("n2", b"k" * 32)]
    asyncio.run(old_database(db_url, "driver_key BLOB", insert, nodes))
    pin = "INSERT INTO driver_keys (node_id, public_key) VALUES (?, ?)"
    asyncio.run(old_database(db_url, "driver_key BLOB", pin, [("n1", b"a" * 32)]))

    async def body(store: Store) -> None:
        pinned = await store.enrolled("n1")
        assert pinned is not None and pinned.driver_key == b"a" * 32
        assert await store.pin_driver_key("n1", b"b" * 32) == b"a" * 32
        unpinned = await store.enrolled("n2")
        assert unpinned is not None and unpinned.driver_key is None
        assert await store.pin_driver_key("n2", b"b" * 32) == b"b" * 32

    run(db_url, body)


def test_enrollments_read_together_are_each_their_own(db_url: str) -> None:
    """Concurrent reads are batched into one statement: each gets its node, or None."""

    async def body(store: Store) -> None:
        for i in range(5):
            await store.enroll(node(f"n{i}", key=bytes([i]) * 32))
        wanted = ["n3", "nobody", "n0", "n3", "n4", "n1", "n2", "n0"]
        found = await asyncio.gather(*(store.enrolled(n) for n in wanted))
        assert [f.public_key[0] if f else None for f in found] == [3, None, 0, 3, 4, 1, 2, 0]

    run(db_url, body)


def test_reports_history_latest_and_replayed_nonce(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        await store.enroll(node("n2", pool="dev"))
        assert await store.add_report(report("n1", "drivers/old.bundle"), 10, "127.0.0.1", "a" * 32)
        assert await store.add_report(report("n1"), 20, "127.0.0.1", "b" * 32)
        assert not await store.add_report(report("n1", "x"), 30, "127.0.0.1", "b" * 32)

        statuses = {s.node.node_id: s for s in await store.fleet()}
        assert statuses["n1"].last_seen == 20
        assert statuses["n1"].report == report("n1")
        assert statuses["n2"].last_seen is None and statuses["n2"].report is None
        history = await store.history("n1", 10)
        assert [(h.received_at, h.report.bundle) for h in history] == [
            (20, "drivers/a.bundle"),
            (10, "drivers/old.bundle"),
        ]
        assert await store.pools() == {"dev": 1, "prod": 1}
        assert await store.pool_running("prod") == {"n1": "drivers/a.bundle"}
        one = await store.node("n2")
        assert one is not None and one.node.pool == "dev"

    run(db_url, body)


def test_concurrent_reports_are_each_answered_after_commit_and_replays_refused(
    db_url: str,
) -> None:
    """Reports arriving together share a transaction (group commit): every one
    answered True is stored, and a nonce used twice within one batch, or again in
    a later one, is stored once."""

    async def body(store: Store) -> None:
        nodes = [f"n{i}" for i in range(300)]
        for n in nodes:
            await store.enroll(node(n))
        sends = [store.add_report(report(n), 10, "", f"{i:032x}") for i, n in enumerate(nodes)]
        twice = [store.add_report(report("n0", "replayed"), 11, "", "f" * 32) for _ in range(5)]
        answers = await asyncio.gather(*sends, *twice)
        assert all(answers[: len(nodes)])
        assert answers[len(nodes) :].count(True) == 1
        assert not await store.add_report(report("n0", "again"), 12, "", "f" * 32)
        stored = {s.node.node_id: s for s in await store.fleet()}
        assert all(stored[n].report is not None for n in nodes)
        assert [h.report.bundle for h in await store.history("n0", 10)] == [
            "replayed",
            "drivers/a.bundle",
        ]

    run(db_url, body)


def test_a_failed_batch_fails_each_of_its_reports(db_url: str) -> None:
    """Nothing is acknowledged that was not stored: a write error reaches every
    caller of the batch (here the database is gone under the store)."""

    async def main() -> None:
        store = await open_store(db_url)
        assert isinstance(store, SqlStore)
        await store.enroll(node("n1"))
        await store.db.close()
        answers = await asyncio.gather(
            *(store.add_report(report("n1"), 10, "", f"{i:032x}") for i in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(a, Exception) for a in answers), answers

    asyncio.run(main())


def test_operator_tokens_are_found_by_hash(db_url: str) -> None:
    token = OperatorToken("ab" * 32, "ci", "operator", 5)

    async def body(store: Store) -> None:
        await store.add_token(token)
        assert await store.token("ab" * 32) == token
        assert await store.token("cd" * 32) is None

    run(db_url, body)


def test_rollout_lifecycle_writes_assignments_and_events(db_url: str) -> None:
    policy = Policy(parse_waves("1,100%"), max_unavailable=5)

    async def body(store: Store) -> None:
        for n in ("n1", "n2", "n3"):
            await store.enroll(node(n))
        await store.add_report(report("n1", "old"), 1, "", "c" * 32)
        running = await store.pool_running("prod")
        rollout = new_rollout("r1", "prod", "new", None, policy, running, now=100)
        await store.create_rollout(rollout, "started")
        with pytest.raises(Conflict):
            await store.create_rollout(replace(rollout, id="r2"), "started")

        def start(r: object, seen: object) -> Transition:
            assert isinstance(r, type(rollout))
            first = r.nodes[0]
            nodes = (replace(first, progress=Progress.ASSIGNED, assigned_at=100), *r.nodes[1:])
            return Transition(replace(r, nodes=nodes), ("assigned",))

        after = await store.change_rollout("r1", start, 100, wait=True)
        assert after is not None
        canary = after.nodes[0].node_id
        assigned = await store.assignment(canary)
        assert assigned is not None and (assigned.target, assigned.rollout_id) == ("new", "r1")
        assert await store.active_rollouts() == ["r1"]
        assert (await store.pool_running("prod"))[canary] == "new"

        def rollback(r: object, seen: object) -> Transition:
            assert isinstance(r, type(rollout))
            return command(r, "rollback", "test")

        back = await store.change_rollout("r1", rollback, 200, wait=False)
        assert back is not None and back.phase is Phase.ROLLED_BACK
        previous = running[canary]
        again = await store.assignment(canary)
        assert (again.target if again else None) == previous
        assert [e.event for e in await store.rollout_events("r1")] == [
            "started",
            "assigned",
            "rollback by test",
        ]
        assert [r.id for r in await store.rollouts()] == ["r1"]
        assert await store.rollout("r1") == back
        assert await store.change_rollout("nope", rollback, 1, wait=True) is None
        # Each start, step and assignment is in the transparency log, written with it.
        logged = [json.loads(doc) for doc in await store.log_entries(0, 10)]
        assert [
            (e["kind"], e["subject"], e["detail"].get("event", e["detail"].get("target")))
            for e in logged
        ] == [
            ("rollout", "r1", "started"),
            ("rollout", "r1", "assigned"),
            ("assignment", canary, "new"),
            ("rollout", "r1", "rollback by test"),
            ("assignment", canary, previous or ""),
        ]

    run(db_url, body)


def test_the_verdict_kept_with_a_report_reads_back_and_a_corrupt_one_is_named(
    db_url: str,
) -> None:
    verdict = AttestationVerdict(False, 4, "ef" * 32, "default", ("Secure Boot is not on",), False)

    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        await store.enroll(node("n1"))
        assert await store.add_report(report("n1"), 10, "", "a" * 32, verdict)
        status = await store.node("n1")
        assert status is not None and status.report_attestation == verdict
        assert [r.attestation for r in await store.history("n1", 5)] == [verdict]

        async with store.db.transaction(write=True) as tx:
            await tx.execute("UPDATE reports SET attestation = ?", '{"passed": "yes"}')
        with pytest.raises(InvalidDocument, match="n1's latest report: 'passed' must"):
            await store.fleet()
        with pytest.raises(InvalidDocument, match="n1's report received at 10: 'passed'"):
            await store.history("n1", 5)

    run(db_url, body)


def test_gpu_evidence_is_kept_in_each_nodes_latest_report_only(db_url: str) -> None:
    """About 12 KB a GPU: the latest report keeps it, to be judged again; older ones
    keep the verdict reached on it."""
    evidence = GpuEvidence(0, "GPU-0", b"\x11" * 4096, b"-----BEGIN CERTIFICATE-----" * 100)
    gpu_verdict = GpuAttestationVerdict(GpuOutcome.UNKNOWN, 5, "550.90.07", None, None, (), ())
    verdict = AttestationVerdict(False, 1, None, None, ("GPU 0 unknown",), gpus=(gpu_verdict,))

    def sent(node_id: str, bundle: str) -> HealthReport:
        return replace(report(node_id, bundle), gpu_evidence=(evidence,))

    async def body(store: Store) -> None:
        for node_id in ("n1", "n2"):
            await store.enroll(node(node_id))
        assert await store.add_report(sent("n1", "drivers/1.bundle"), 10, "::1", "a" * 32, verdict)
        assert await store.add_report(sent("n2", "drivers/1.bundle"), 10, "::1", "b" * 32)
        assert await store.add_report(sent("n1", "drivers/2.bundle"), 20, "::1", "c" * 32, verdict)
        # Received late, already older than the latest: it keeps none either.
        assert await store.add_report(sent("n1", "drivers/0.bundle"), 5, "::1", "d" * 32)

        latest = await store.node("n1")
        assert latest is not None and latest.report is not None
        assert latest.report.gpu_evidence == (evidence,)
        history = await store.history("n1", 10)
        assert [(h.received_at, len(h.report.gpu_evidence)) for h in history] == [
            (5, 0),
            (20, 1),
            (10, 0),
        ]
        older = next(h for h in history if h.received_at == 10)
        assert older.report.bundle == "drivers/1.bundle"  # the rest of it as it was
        assert older.attestation == verdict  # and the verdict on its GPUs
        other = await store.node("n2")  # another node's latest is its own
        assert other is not None and other.report is not None
        assert other.report.gpu_evidence == (evidence,)

    run(db_url, body)
