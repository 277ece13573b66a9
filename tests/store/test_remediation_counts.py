"""The remediation audit log counted by pool, event and action (``Store.remediation_counts``,
the metrics' ``gpuward_remediation_events_total``): kept in the transaction that
writes the entries, so the count is the log's on both backends, after a restart
and in every replica; and a database that had entries before the count existed
gets them counted when it migrates."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import asyncpg

from fleet.remediation import (
    Action,
    AuditEvent,
    Decision,
    NodeObservation,
    RemediationAudit,
    RemediationBoard,
    RemediationPolicy,
    Symptom,
    SymptomKind,
    decide,
    settle,
)
from server.store import RemediationCount, Store, postgres, sqlite
from server.store.migrations import MIGRATIONS
from tests.store.test_store import run

XID = Symptom(SymptomKind.XID, "GPU 0: XID 79 (fallen off the bus)", 79)
SLOW = Symptom(SymptomKind.DEGRADED, "GPU 0: clocks throttled")
# The migration that made the count: every earlier one leaves audit entries uncounted.
COUNTED_FROM = next(
    i for i, migration in enumerate(MIGRATIONS) if "CREATE TABLE remediation_counts" in migration
)


def _counted(audit: list[RemediationAudit]) -> list[RemediationCount]:
    counts = Counter((a.pool, a.event.value, a.action.value) for a in audit)
    return [RemediationCount(*key, n) for key, n in sorted(counts.items())]


def test_the_count_is_the_audit_logs_after_a_restart(db_url: str) -> None:
    policy = RemediationPolicy(budget=1, failure_domain=None, on_degraded=Action.NOTIFY)
    seen = [
        NodeObservation("gpu-1", XID, 1_000, None),
        NodeObservation("gpu-2", XID, 1_000, None),  # held back by the budget of one
        NodeObservation("gpu-3", SLOW, 1_000, None),  # notified
    ]

    def tick(now: int) -> Callable[[RemediationBoard], Decision]:
        return lambda board: decide(board, policy, seen, now)

    async def body(store: Store) -> list[RemediationAudit]:
        for pool in ("prod", "dev"):
            await store.change_remediation(pool, tick(1_000), 1_000, notify=False)
        await store.change_remediation("prod", tick(1_010), 1_010, notify=False)  # nothing new
        # The scheduler drained gpu-1.
        await store.change_remediation(
            "prod", lambda b: settle(b, "gpu-1", "drained", True, 1_020), 1_020, notify=False
        )
        return await store.remediation_audit(None, 100)

    audit = run(db_url, body)
    assert {(a.pool, a.node_id, a.event) for a in audit} == {
        (pool, node, event)
        for pool in ("prod", "dev")
        for node, event in (
            ("gpu-1", AuditEvent.DECIDED),
            ("gpu-2", AuditEvent.HELD),
            ("gpu-3", AuditEvent.NOTIFIED),
        )
    } | {("prod", "gpu-1", AuditEvent.DONE)}
    # Read by a store opened afresh: a restarted server, or another replica.
    assert run(db_url, lambda store: store.remediation_counts()) == _counted(audit)


def _entries() -> list[RemediationAudit]:
    return [
        RemediationAudit(1_000, "prod", "gpu-1", AuditEvent.DECIDED, Action.DRAIN, XID),
        RemediationAudit(1_001, "prod", "gpu-1", AuditEvent.DONE, Action.DRAIN, XID),
        RemediationAudit(1_002, "prod", "gpu-2", AuditEvent.DECIDED, Action.DRAIN, XID),
        RemediationAudit(1_003, "dev", "gpu-9", AuditEvent.NOTIFIED, Action.NOTIFY, SLOW),
    ]


def _rows() -> list[tuple[int, str, str, str]]:
    return [(a.at, a.pool, a.node_id, json.dumps(a.to_dict())) for a in _entries()]


_INSERT = "INSERT INTO remediation_audit (at, pool, node_id, doc) VALUES ({}, {}, {}, {})"


def test_sqlite_counts_the_entries_it_had_before(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        sqlite._migrate(conn, COUNTED_FROM)
        conn.executemany(_INSERT.format(*"????"), _rows())
        sqlite._migrate(conn)
    finally:
        conn.close()
    assert run(f"sqlite://{path}", lambda s: s.remediation_counts()) == _counted(_entries())


def test_postgres_counts_the_entries_it_had_before(postgres_url: str) -> None:
    async def migrate() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            async with conn.transaction():
                await postgres._migrate(conn, COUNTED_FROM)
            await conn.executemany(_INSERT.format("$1", "$2", "$3", "$4"), _rows())
            async with conn.transaction():
                await postgres._migrate(conn)
        finally:
            await conn.close()

    asyncio.run(migrate())
    assert run(postgres_url, lambda s: s.remediation_counts()) == _counted(_entries())
