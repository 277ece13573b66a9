"""What a compliance report reads of each node besides its latest report
(``Store.compliance_evidence``): its newest updates and its newest attested report,
without reading its routine reports, on SQLite and PostgreSQL; and a database of an
older server gets each report's update outcome and each node's attested report
filled in when it migrates."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fleet.attestation_verdict import AttestationVerdict
from server.store import ReportRecord, Retention, Store, open_store
from server.store.sql import SqlStore, _evidence
from server.store.sqlite import SqliteDatabase
from tests.store.old_schema import old_database
from tests.store.test_store import node, report, run

PASSED = AttestationVerdict(True, 1, None, None, ())
FAILED = AttestationVerdict(False, 1, None, None, ("quote does not verify",))
ROUTINE = "up-to-date"

# Each node's reports, oldest first, as (update, verdict); each report's reason is
# "<node>-<index>", received at 1000 + index unless ``LATE`` says otherwise.
Sent = list[tuple[str, AttestationVerdict | None]]
FLEET: dict[str, Sent] = {
    # Many routine reports around updates of every outcome, attested and not; the
    # newest attested one routine, and routine unattested ones after it.
    "a": [
        (ROUTINE, PASSED),
        ("committed", None),
        *[(ROUTINE, None)] * 8,
        ("rolled-back", None),
        *[(ROUTINE, None)] * 9,
        ("failed", FAILED),
        *[(ROUTINE, None)] * 9,
        ("refused", None),
        (ROUTINE, FAILED),
        *[(ROUTINE, None)] * 8,
        ("committed", None),  # the latest: never included
    ],
    # The latest is an attested update: neither counts; an older attested update does.
    "b": [("committed", PASSED), (ROUTINE, None), ("rolled-back", PASSED)],
    # Only routine reports and no verdict: nothing to read.
    "c": [(ROUTINE, None)] * 5,
    # The attested report is an update too: read once.
    "e": [(ROUTINE, None), ("committed", PASSED), (ROUTINE, None)],
    # Late reports from another replica: f-1 and f-2 were received before f-0 but
    # stored after it. f-0 stays the latest; f-2, stored last, is the newest attested.
    "f": [(ROUTINE, None), ("committed", PASSED), (ROUTINE, PASSED)],
}
LATE = {"f-1": 900, "f-2": 800}


def _reason(node_id: str, i: int) -> str:
    return f"{node_id}-{i}"


async def _send(store: Store, fleet: dict[str, Sent]) -> None:
    for node_id, sent in fleet.items():
        await store.enroll(node(node_id))
        for i, (update, verdict) in enumerate(sent):
            reason = _reason(node_id, i)
            at = LATE.get(reason, 1_000 + i)
            sent_report = replace(report(node_id), update=update, reason=reason)
            assert await store.add_report(sent_report, at, "", reason, verdict)
    await store.enroll(node("d"))  # never reported


def _reasons(found: dict[str, list[ReportRecord]]) -> dict[str, list[str]]:
    return {node_id: [r.report.reason for r in records] for node_id, records in found.items()}


async def _as_history_reads(store: Store, limit: int) -> dict[str, list[ReportRecord]]:
    """What a compliance report found in each node's whole history, newest first:
    its newest ``limit`` updates and its newest attested report, but its latest."""
    found = {}
    for status in await store.fleet():
        node_id = status.node.node_id
        latest = None if status.report is None else status.report.reason
        history = await store.history(node_id, 1_000)
        updates = [h for h in history if h.report.reason != latest and h.report.update != ROUTINE]
        attested = next((h for h in history if h.attestation is not None), None)
        wanted = updates[:limit]
        if attested is not None and attested.report.reason != latest:
            wanted.append(attested)
        if wanted:
            found[node_id] = [h for h in history if h in wanted]
    return found


def test_the_evidence_is_the_newest_updates_and_attested_report_but_the_latest(
    db_url: str,
) -> None:
    async def body(store: Store) -> None:
        await _send(store, FLEET)
        found = _reasons(await store.compliance_evidence(3))
        assert found == {
            "a": ["a-31", "a-30", "a-20", "a-10"],
            "b": ["b-0"],
            "e": ["e-1"],
            "f": ["f-2", "f-1"],
        }
        assert _reasons(await store.compliance_evidence(10))["a"] == [
            "a-31", "a-30", "a-20", "a-10", "a-1",
        ]  # fmt: skip
        assert _reasons(await store.compliance_evidence(0))["a"] == ["a-31"]
        # Each record whole: the report as sent, received when it was, its verdict.
        newest, update = (await store.compliance_evidence(1))["a"]
        assert (newest.received_at, newest.report.update, newest.attestation) == (
            1_031, ROUTINE, FAILED,
        )  # fmt: skip
        assert (update.received_at, update.report.update, update.attestation) == (
            1_030, "refused", None,
        )  # fmt: skip
        # As a compliance report found them reading every report.
        for limit in (0, 1, 2, 3, 10):
            assert await store.compliance_evidence(limit) == await _as_history_reads(store, limit)
        # One node's, or none.
        assert _reasons(await store.compliance_evidence(3, "a")) == {"a": found["a"]}
        assert _reasons(await store.compliance_evidence(3, "f")) == {"f": found["f"]}
        for nothing in ("c", "d", "nobody"):
            assert await store.compliance_evidence(3, nothing) == {}
        # A removed node leaves none.
        assert await store.remove_node("a")
        assert "a" not in await store.compliance_evidence(3)
        assert await store.compliance_evidence(3, "a") == {}

    run(db_url, body)


def test_a_newer_report_moves_the_evidence_on(db_url: str) -> None:
    """The latest report joins the evidence once it is no longer the latest; an
    attested one replaces the attested one before, an unattested one does not."""

    async def body(store: Store) -> None:
        await _send(store, {"b": FLEET["b"]})
        assert _reasons(await store.compliance_evidence(3)) == {"b": ["b-0"]}
        await store.add_report(replace(report("b"), update=ROUTINE, reason="b-3"), 2_000, "", "n3")
        assert _reasons(await store.compliance_evidence(3)) == {"b": ["b-2", "b-0"]}
        sent = replace(report("b"), update=ROUTINE, reason="b-4")
        await store.add_report(sent, 2_001, "", "n4", PASSED)
        await store.add_report(replace(report("b"), update=ROUTINE, reason="b-5"), 2_002, "", "n5")
        assert _reasons(await store.compliance_evidence(3)) == {"b": ["b-4", "b-2", "b-0"]}
        assert _reasons(await store.compliance_evidence(1)) == {"b": ["b-4", "b-2"]}

    run(db_url, body)


def test_an_attested_report_trimmed_away_is_not_read(db_url: str) -> None:
    """Retention trims a node's oldest reports, the attested one among them: the node
    still names it, and the evidence is what is left."""

    async def main() -> None:
        store = await open_store(db_url, Retention(count=3, max_age_s=10**9))
        try:
            await store.enroll(node("n"))
            sent: Sent = [(ROUTINE, PASSED), ("committed", None), *[(ROUTINE, None)] * 6]
            for i, (update, verdict) in enumerate(sent):
                # A day apart: none is young enough to be kept against replays.
                sent_report = replace(report("n"), update=update, reason=_reason("n", i))
                assert await store.add_report(sent_report, 86_400 * (i + 1), "", str(i), verdict)
            assert [h.report.reason for h in await store.history("n", 100)][-1] != "n-0"
            assert await store.compliance_evidence(3) == {}
        finally:
            await store.close()

    asyncio.run(main())


def test_routine_reports_are_not_read(db_url: str) -> None:
    """Every routine report's body is made unreadable, and the evidence still reads:
    those rows are not parsed. The plans reach reports by the partial index of
    updates and by key only."""

    async def body(store: Store) -> None:
        await _send(store, FLEET)
        expected = await store.compliance_evidence(3)
        assert isinstance(store, SqlStore)
        async with store.db.transaction(write=True) as tx:
            await tx.execute(
                "UPDATE reports SET body = ? WHERE update_outcome = ? "
                "AND id NOT IN (SELECT last_report FROM nodes) AND id NOT IN "
                "(SELECT last_attested_report FROM nodes WHERE last_attested_report IS NOT NULL)",
                "not JSON",
                ROUTINE,
            )
        assert await store.compliance_evidence(3) == expected
        for one in (False, True):
            args = (("a",) if one else ()) + (3,) + (("a",) if one else ())
            if isinstance(store.db, SqliteDatabase):
                plan = [row[-1] for row in await store.db.query(
                    f"EXPLAIN QUERY PLAN {_evidence(one)}", *args)]  # fmt: skip
                reads = [step for step in plan if " u " in step or " r " in step]
                assert reads and all(
                    "USING INDEX reports_updates" in step or "PRIMARY KEY" in step for step in reads
                ), plan

    run(db_url, body)


def test_an_older_database_gets_update_outcomes_and_attested_reports(db_url: str) -> None:
    """Reports and nodes as a server before this migration stored them: each report's
    update outcome comes from its body, each node's newest attested report is found,
    and the evidence is then what a store that had them from the start reads."""
    enroll = (
        "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, "
        "enrolled_at) VALUES (?, ?, 'prod', FALSE, 'unattested', 1)"
    )
    nodes = [(n, b"k" * 32) for n in FLEET]
    asyncio.run(old_database(db_url, "last_attested_report", enroll, nodes))
    add = (
        "INSERT INTO reports (node_id, received_at, remote, body, nonce, attestation) "
        "VALUES (?, ?, '', ?, ?, ?)"
    )
    rows = []
    for node_id, sent in FLEET.items():
        for i, (update, verdict) in enumerate(sent):
            reason = _reason(node_id, i)
            text = replace(report(node_id), update=update, reason=reason).canonical_json.decode()
            at = LATE.get(reason, 1_000 + i)
            rows.append((node_id, at, text, reason, None if verdict is None else verdict.to_json()))
    asyncio.run(old_database(db_url, "last_attested_report", add, rows))
    # Each node's latest as that server kept it: the one received last.
    latest = (
        "INSERT INTO nodes (node_id, last_report, last_seen, reports_kept) "
        "SELECT node_id, id, received_at, 1 FROM reports r WHERE node_id = ? "
        "ORDER BY received_at DESC LIMIT 1"
    )
    asyncio.run(old_database(db_url, "last_attested_report", latest, [(n,) for n in FLEET]))

    async def body(store: Store) -> None:
        assert isinstance(store, SqlStore)
        outcomes = await store.db.query("SELECT nonce, update_outcome FROM reports")
        assert {nonce: outcome for nonce, outcome in outcomes} == {
            _reason(n, i): update for n, sent in FLEET.items() for i, (update, _) in enumerate(sent)
        }
        for limit in (0, 1, 3, 10):
            assert await store.compliance_evidence(limit) == await _as_history_reads(store, limit)
        assert _reasons(await store.compliance_evidence(3)) == {
            "a": ["a-31", "a-30", "a-20", "a-10"],
            "b": ["b-0"],
            "e": ["e-1"],
            "f": ["f-2", "f-1"],
        }
        # New reports keep both.
        sent = replace(report("c"), update="committed", reason="c-5")
        assert await store.add_report(sent, 2_000, "", "c-5", PASSED)
        sent = replace(report("c"), update=ROUTINE, reason="c-6")
        assert await store.add_report(sent, 2_001, "", "c-6")
        assert _reasons(await store.compliance_evidence(3, "c")) == {"c": ["c-5"]}

    run(db_url, body)
