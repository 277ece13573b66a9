"""What a pool's remediation board says is held back: only nodes that wait for a
place in the budget or their failure domain. The metrics and the alert on held
nodes (``gpuward_remediation_held_nodes``) read it, so a node whose action is
notify, or one that left the pool, must not count."""

from __future__ import annotations

from fleet.remediation import (
    Action,
    AuditEvent,
    NodeObservation,
    RemediationBoard,
    RemediationPolicy,
    Symptom,
    SymptomKind,
    decide,
)

XID = Symptom(SymptomKind.XID, "GPU 0: XID 79 (fallen off the bus)", 79)
SLOW = Symptom(SymptomKind.DEGRADED, "GPU 0: clocks throttled")
POLICY = RemediationPolicy(budget=1, failure_domain=None, on_degraded=Action.NOTIFY)


def seen(node_id: str, symptom: Symptom | None) -> NodeObservation:
    return NodeObservation(node_id, symptom, 1_000, None)


def test_a_notified_node_is_not_held_back_and_is_notified_once() -> None:
    nodes = [seen("gpu-1", XID), seen("gpu-2", XID), seen("gpu-3", SLOW)]
    first = decide(RemediationBoard("prod"), POLICY, nodes, 1_000)
    assert dict(first.board.held).keys() == {"gpu-2"}
    assert "pool budget of 1" in first.board.held["gpu-2"]
    assert dict(first.board.notified) == {"gpu-3": SLOW.summary}
    assert [(a.node_id, a.event) for a in first.audit] == [
        ("gpu-3", AuditEvent.NOTIFIED),
        ("gpu-1", AuditEvent.DECIDED),
        ("gpu-2", AuditEvent.HELD),
    ]
    again = decide(first.board, POLICY, nodes, 1_010)
    assert again.audit == () and again.board == first.board


def test_a_held_node_whose_symptom_eases_to_notify_is_held_no_more() -> None:
    before = decide(RemediationBoard("prod"), POLICY, [seen("gpu-1", XID), seen("gpu-2", XID)], 1)
    assert set(before.board.held) == {"gpu-2"}
    after = decide(before.board, POLICY, [seen("gpu-1", XID), seen("gpu-2", SLOW)], 2)
    assert dict(after.board.held) == {}
    assert dict(after.board.notified) == {"gpu-2": SLOW.summary}


def test_nodes_that_left_the_pool_are_neither_held_nor_notified() -> None:
    nodes = [seen("gpu-1", XID), seen("gpu-2", XID), seen("gpu-3", SLOW)]
    before = decide(RemediationBoard("prod"), POLICY, nodes, 1).board
    after = decide(before, POLICY, [seen("gpu-1", XID)], 2).board
    assert (dict(after.held), dict(after.notified)) == ({}, {})
    assert [n.node_id for n in after.nodes] == ["gpu-1"]


def test_a_board_stored_before_notified_nodes_were_kept_apart_still_reads() -> None:
    board = decide(RemediationBoard("prod"), POLICY, [seen("gpu-1", XID)], 1).board
    stored = board.to_dict()
    del stored["notified"]
    assert RemediationBoard.from_dict(stored) == board


def test_the_actions_a_pool_can_take_include_service_once_it_drains() -> None:
    assert POLICY.actions == {Action.DRAIN, Action.NOTIFY, Action.SERVICE}
    watch_only = RemediationPolicy(
        on_failed=Action.NOTIFY, on_missing=Action.NONE, failure_domain=None
    )
    assert watch_only.actions == {Action.NOTIFY}
