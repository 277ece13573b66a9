"""Removing a node removes its past, on SQLite and PostgreSQL: whoever enrolls the
id next inherits no report, latest report, GPU sample, event log, challenge,
pinned applier key or EK binding; and a report of the removed node still in
flight is not stored under the id."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fleet.attestation_verdict import AttestationVerdict
from fleet.report import GpuReport, NodeHealth
from server.attestation.challenges import PendingChallenge
from server.store import EnrolledNode, Store
from tests.store.old_schema import old_database
from tests.store.test_ek_binding import digest, tpm_node
from tests.store.test_gpu_samples import with_samples
from tests.store.test_store import report, run

OLD_KEY, NEW_KEY = b"o" * 32, b"n" * 32


def newcomer() -> EnrolledNode:
    return EnrolledNode("gpu-017", NEW_KEY, "lab", False, "unattested", 2_000)


def test_a_removed_nodes_past_goes_with_it(db_url: str) -> None:
    async def body(store: Store) -> None:
        await store.enroll(tpm_node("gpu-017", key=OLD_KEY))
        await store.enroll(tpm_node("gpu-018", "tpm-b"))  # a neighbour, untouched
        health = NodeHealth(
            "healthy", (), tuple(GpuReport(s, ()) for s in with_samples("g", 1)), ()
        )
        passed = AttestationVerdict(True, 1, None, None, ())
        for i, node_id in enumerate(("gpu-017", "gpu-017", "gpu-018")):
            sent = replace(report(node_id), health=health)
            key = OLD_KEY if node_id == "gpu-017" else b"k" * 32
            assert await store.add_report(sent, 1_000 + i, "", f"n{i}", passed, key)
        assert await store.pin_driver_key("gpu-017", b"d" * 32) == b"d" * 32
        for node_id in ("gpu-017", "gpu-018"):
            await store.keep_event_log(node_id, f"log of {node_id}".encode())
        soon = time.time() + 600
        await store.replace_challenge(b"s" * 32, PendingChallenge("gpu-017", "report", b"", soon))
        await store.add_challenge(
            b"e" * 32, PendingChallenge("gpu-017", "enroll", b"x", soon), time.time(), 100
        )

        removed = await store.remove_node("gpu-017")
        assert removed is not None and removed.reports == 2
        assert await store.remove_node("gpu-017") is None

        assert (await store.enroll(newcomer()))[1]
        status = await store.node("gpu-017")
        assert status is not None
        assert (status.last_seen, status.report, status.report_attestation) == (None, None, None)
        assert status.node.driver_key is None and status.node.tpm is None
        assert await store.history("gpu-017", 500) == []
        assert [w.node_id for w in await store.gpu_windows(0)] == ["gpu-018"]
        assert await store.event_log("gpu-017") is None
        assert await store.event_log_sha256("gpu-017") is None
        assert await store.take_sole_challenge("gpu-017", "report", b"s" * 32) is None
        assert await store.take_challenge(b"e" * 32) is None
        assert await store.ek_holder(digest("tpm-a"), digest("tpm-a-key")) is None
        # The neighbour keeps everything.
        kept = await store.node("gpu-018")
        assert kept is not None and kept.report is not None
        assert len(await store.history("gpu-018", 500)) == 1
        assert await store.event_log("gpu-018") is not None

    run(db_url, body)


def test_a_report_in_flight_when_its_node_is_removed_is_not_kept(db_url: str) -> None:
    """The removed node's report, checked before the removal and stored after it, or
    after the id enrolled again with another key: refused, as its key no longer
    speaks for the id. Reports stored under the lock are removed with the node."""

    async def body(store: Store) -> None:
        await store.enroll(tpm_node("gpu-017", key=OLD_KEY))
        await store.remove_node("gpu-017")
        assert not await store.add_report(report("gpu-017"), 1_000, "", "a", None, OLD_KEY)
        await store.enroll(newcomer())
        assert not await store.add_report(report("gpu-017"), 1_001, "", "b", None, OLD_KEY)
        assert await store.history("gpu-017", 10) == []
        # Racing: reports of the old key and the removal, together.
        await store.remove_node("gpu-017")
        await store.enroll(replace(newcomer(), public_key=OLD_KEY))
        sends = [
            store.add_report(report("gpu-017"), 1_002 + i, "", f"c{i}", None, OLD_KEY)
            for i in range(20)
        ]
        await asyncio.gather(*sends[:10], store.remove_node("gpu-017"), *sends[10:])
        assert await store.node("gpu-017") is None
        await store.enroll(newcomer())
        assert await store.history("gpu-017", 100) == []
        assert await store.add_report(report("gpu-017"), 1_100, "", "d", None, NEW_KEY)

    run(db_url, body)


def test_the_migration_drops_what_removed_nodes_left(db_url: str) -> None:
    """An older server kept a removed node's reports; the id enrolled again inherited
    them. The migration deletes reports of ids not enrolled and reports received
    before the id's present enrollment, and counts what each node keeps."""
    enroll = (
        "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, "
        "enrolled_at) VALUES (?, ?, ?, ?, ?, ?)"
    )
    rows = [("again", b"k" * 32, "p", False, "unattested", 50_000)]
    rows += [("kept", b"l" * 32, "p", False, "unattested", 1_000)]
    asyncio.run(old_database(db_url, "reports_kept", enroll, rows))
    add = "INSERT INTO reports (node_id, received_at, remote, body, nonce) VALUES (?, ?, '', ?, ?)"
    body_of = {n: report(n).canonical_json.decode() for n in ("again", "gone", "kept")}
    reports = [("gone", 1_000, body_of["gone"], "g1"), ("again", 2_000, body_of["again"], "a1")]
    reports += [("kept", 2_000 + i, body_of["kept"], f"k{i}") for i in range(3)]
    asyncio.run(old_database(db_url, "reports_kept", add, reports))
    latest = (
        "INSERT INTO nodes (node_id, last_report, last_seen) "
        "SELECT node_id, MAX(id), MAX(received_at) FROM reports WHERE node_id = ? GROUP BY node_id"
    )
    nodes = [("gone",), ("again",), ("kept",)]
    asyncio.run(old_database(db_url, "reports_kept", latest, nodes))

    async def body(store: Store) -> None:
        again = await store.node("again")
        assert again is not None and again.report is None and again.last_seen is None
        assert await store.history("again", 10) == []
        assert await store.history("gone", 10) == []
        kept = await store.node("kept")
        assert kept is not None and kept.last_seen == 2_002
        assert len(await store.history("kept", 10)) == 3

    run(db_url, body)
