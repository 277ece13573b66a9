"""Remediation boards and the audit log in the store, on SQLite and PostgreSQL.

A board changes under its row lock with its audit entries (and webhook events)
in one transaction, so concurrent changes (two replicas ticking, an operator
approving meanwhile) never lose one another's work, and a change that raises
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from fleet.remediation import (
    Action,
    AuditEvent,
    Decision,
    RemediationAudit,
    RemediationBoard,
    Symptom,
    SymptomKind,
)
from server.store import Store
from tests.store.test_store import run

SYMPTOM = Symptom(SymptomKind.XID, "GPU 0: XID 79", 79)


def held(node_id: str, at: int) -> Callable[[RemediationBoard], Decision]:
    def change(board: RemediationBoard) -> Decision:
        entry = RemediationAudit(
            at, board.pool, node_id, AuditEvent.HELD, Action.DRAIN, SYMPTOM, "budget"
        )
        return Decision(replace(board, held={**board.held, node_id: "budget"}), (entry,))

    return change


def test_concurrent_changes_are_serialised_and_audited(db_url: str) -> None:
    async def body(store: Store) -> None:
        await asyncio.gather(
            *(store.change_remediation("prod", held(f"n{i}", i), i, notify=True) for i in range(20))
        )
        (board,) = await store.remediation_boards()
        assert board.pool == "prod" and set(board.held) == {f"n{i}" for i in range(20)}
        entries = await store.remediation_audit(None, 100)
        assert sorted(e.node_id for e in entries) == sorted(f"n{i}" for i in range(20))
        assert [e.node_id for e in await store.remediation_audit("n7", 10)] == ["n7"]
        assert len(await store.remediation_audit(None, 5)) == 5
        claimed = await store.route_webhook_events(lambda _t: ["all"], 100, 100)
        assert claimed == 20
        deliveries = await store.claim_webhook_deliveries(["all"], 100, 200, 100)
        bodies = [json.loads(d.body) for d in deliveries]
        assert {b["type"] for b in bodies} == {"node.remediation"}
        assert {b["subject"] for b in bodies} == {f"node/n{i}" for i in range(20)}

    run(db_url, body)


def test_a_change_that_raises_leaves_nothing(db_url: str) -> None:
    def broken(board: RemediationBoard) -> Decision:
        raise RuntimeError("bug")

    async def body(store: Store) -> None:
        await store.change_remediation("prod", held("n1", 1), 1, notify=False)
        with pytest.raises(RuntimeError):
            await store.change_remediation("prod", broken, 2, notify=False)
        (board,) = await store.remediation_boards()
        assert set(board.held) == {"n1"}
        assert [e.at for e in await store.remediation_audit(None, 10)] == [1]

    run(db_url, body)
