"""The remediation rules (fleet.remediation), one at a time, without a scheduler.

The end-to-end behaviour against a real Slurm cluster is tests/remediation;
here each rule of the module docstring is shown on its own, and the scheduler
reason is attacked with any text a node could put in its report.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.gpu import XidEvent
from fleet.remediation import (
    MAX_REASON,
    Action,
    AuditEvent,
    NodeObservation,
    RemediationBoard,
    RemediationPolicy,
    Stage,
    Symptom,
    SymptomKind,
    approve,
    decide,
    release,
    scheduler_reason,
    settle,
    symptom_of,
)
from fleet.report import HealthReport, NodeHealth
from tests.simnode import report_doc

XID_79 = Symptom(SymptomKind.XID, "GPU 0: XID 79", 79)
POLICY = RemediationPolicy(budget=2, failure_domain="rack", hold_down_s=600)


def seen(
    node: str, symptom: Symptom | None = None, at: int = 100, rack: str | None = None
) -> NodeObservation:
    return NodeObservation(node, symptom, at, rack)


def run(
    board: RemediationBoard,
    nodes: Sequence[NodeObservation],
    now: int,
    policy: RemediationPolicy = POLICY,
) -> tuple[RemediationBoard, list[tuple[str, AuditEvent]]]:
    """decide, then settle every step as done: what a tick does with a working scheduler."""
    decision = decide(board, policy, nodes, now)
    board, audit = decision.board, [(a.node_id, a.event) for a in decision.audit]
    for node in board.pending_steps():
        settled = settle(board, node.node_id, "ok", True, now)
        board = settled.board
        audit += [(a.node_id, a.event) for a in settled.audit]
    return board, audit


def report(
    xids: Sequence[int] = (), status: str = "healthy", reasons: Sequence[str] = ()
) -> HealthReport:
    doc = report_doc("n1")
    events = [XidEvent(1.0, 0, "GPU-0", x) for x in xids]
    doc["health"] = NodeHealth(status, tuple(reasons), (), tuple(events)).to_dict()
    return HealthReport.from_dict(doc)


def test_symptoms_worst_first_and_application_xids_are_the_jobs() -> None:
    assert symptom_of(report([13, 43]), 100, 0) is None  # the application's own faults
    got = symptom_of(report([31, 63, 79], "failed"), 100, 0)
    assert got is not None and got.kind is SymptomKind.XID and got.xid == 79
    assert "fallen off the bus" in got.summary
    degraded = symptom_of(report(status="degraded", reasons=["slow"]), 100, 0)
    assert degraded == Symptom(SymptomKind.DEGRADED, "slow")
    missing = symptom_of(report(), 100, 101)
    assert missing is not None and missing.kind is SymptomKind.MISSING
    assert symptom_of(None, None, 0) is None  # never heard from: nothing to judge
    assert symptom_of(report(), 100, 0) is None
    slow = symptom_of(report(), 100, 0, "GPU 5: sm_clock_ratio 0.63")
    assert slow == Symptom(SymptomKind.STRAGGLER, "GPU 5: sm_clock_ratio 0.63")
    assert symptom_of(report([79]), 100, 0, "slow").kind is SymptomKind.XID  # type: ignore[union-attr]


def test_the_policy_maps_symptoms_and_xid_overrides() -> None:
    policy = RemediationPolicy(on_degraded=Action.NOTIFY, xid_actions={79: Action.SERVICE})
    assert policy.action_for(XID_79) is Action.SERVICE
    assert policy.action_for(Symptom(SymptomKind.XID, "x", 48)) is Action.DRAIN
    assert policy.action_for(Symptom(SymptomKind.DEGRADED, "x")) is Action.NOTIFY
    assert policy.action_for(Symptom(SymptomKind.MISSING, "x")) is Action.DRAIN
    assert policy.action_for(Symptom(SymptomKind.STRAGGLER, "x")) is Action.NONE
    with pytest.raises(ValueError, match="budget"):
        RemediationPolicy(budget=0)
    with pytest.raises(ValueError, match="failure_domain"):
        RemediationPolicy(failure_domain="building")


def test_budget_and_failure_domain_hold_nodes_back_once() -> None:
    nodes = [
        seen("a1", XID_79, rack="r1"),
        seen("a2", XID_79, rack="r1"),
        seen("b1", XID_79, rack="r2"),
        seen("c1", XID_79, rack="r3"),
    ]
    board, audit = run(RemediationBoard("prod"), nodes, 200)
    assert {n.node_id for n in board.nodes} == {"a1", "b1"}
    assert all(n.stage is Stage.DRAINED for n in board.nodes)
    assert ("a2", AuditEvent.HELD) in audit and ("c1", AuditEvent.HELD) in audit
    assert "same rack (r1)" in board.held["a2"] and "pool budget of 2" in board.held["c1"]
    _, again = run(board, nodes, 210)
    assert again == []  # held is recorded once while it holds, not every tick


def test_healthy_for_the_hold_down_resumes_and_frees_the_place() -> None:
    board, _ = run(RemediationBoard("prod"), [seen("a1", XID_79, rack="r1")], 200)
    board, _ = run(board, [seen("a1", None, at=200, rack="r1")], 300)
    assert board.node("a1") is not None and board.node("a1").healthy_since is None  # type: ignore[union-attr]
    board, _ = run(board, [seen("a1", None, at=250, rack="r1")], 300)
    assert board.nodes[0].healthy_since == 250
    board, _ = run(board, [seen("a1", None, at=840, rack="r1")], 849)
    assert board.nodes[0].stage is Stage.DRAINED  # 599 s healthy
    board, audit = run(board, [seen("a1", None, at=850, rack="r1")], 850)
    assert board.nodes == () and board.resumed == {"a1": 850}
    assert audit == [("a1", AuditEvent.RESUME_DECIDED), ("a1", AuditEvent.RESUMED)]


def test_a_symptom_during_the_hold_down_starts_it_again() -> None:
    board, _ = run(RemediationBoard("prod"), [seen("a1", XID_79)], 200)
    board, _ = run(board, [seen("a1", None, at=300)], 300)
    slow = Symptom(SymptomKind.FAILED, "GPU 0: lost")
    board, audit = run(board, [seen("a1", slow, at=400)], 400)
    assert audit == [("a1", AuditEvent.RECURRED)]
    assert board.nodes[0].healthy_since is None and board.nodes[0].symptom == slow


def test_failing_again_within_the_hold_down_after_resuming_is_service() -> None:
    board = RemediationBoard("prod", resumed={"a1": 1000})
    decision = decide(board, POLICY, [seen("a1", XID_79)], 1500)
    (decided,) = decision.audit
    assert decided.action is Action.SERVICE and "marked for service" in decided.detail
    board, _ = run(board, [seen("a1", XID_79)], 1500)
    (node,) = board.nodes
    assert node.action is Action.SERVICE and node.stage is Stage.SERVICE
    board, _ = run(board, [seen("a1", None, at=9000)], 99_000)
    assert board.nodes[0].stage is Stage.SERVICE  # waits for an operator
    board, _ = run(RemediationBoard("prod", resumed={"a1": 1000}), [seen("a1", XID_79)], 1601)
    assert board.nodes[0].action is Action.DRAIN  # the hold-down had passed


def test_approval_reserves_a_place_and_release_ends_it() -> None:
    policy = RemediationPolicy(budget=1, approval=True, failure_domain=None)
    board, audit = run(
        RemediationBoard("prod"), [seen("a1", XID_79), seen("b1", XID_79)], 200, policy
    )
    assert audit == [("a1", AuditEvent.AWAITING_APPROVAL), ("b1", AuditEvent.HELD)]
    assert board.pending_steps() == ()
    with pytest.raises(LookupError):
        approve(board, "b1", "alice", 210)
    approved = approve(board, "a1", "alice", 210)
    assert approved.audit[0].by == "alice" and approved.board.pending_steps()[0].node_id == "a1"
    dropped = release(board, "a1", "bob", 220)
    assert dropped.board.nodes == () and dropped.audit[0].detail == "the action was not taken"
    with pytest.raises(LookupError):
        release(dropped.board, "a1", "bob", 230)


def test_a_failing_step_is_retried_and_audited_once_per_error() -> None:
    decision = decide(RemediationBoard("prod"), POLICY, [seen("a1", XID_79)], 200)
    board = decision.board
    events = []
    for error in ("permission denied", "permission denied", "timed out"):
        settled = settle(board, "a1", error, False, 210)
        board = settled.board
        events += [a.detail for a in settled.audit]
    assert events == ["permission denied", "timed out"]
    assert board.nodes[0].attempts == 3 and board.nodes[0].stage is Stage.ACTING
    assert settle(board, "zz", "x", False, 220).board == board  # released meanwhile


def test_notify_and_none_take_no_place() -> None:
    policy = RemediationPolicy(on_degraded=Action.NOTIFY, on_failed=Action.NONE, budget=1)
    slow = Symptom(SymptomKind.DEGRADED, "slow")
    board, audit = run(
        RemediationBoard("prod"), [seen("a1", slow), seen("b1", XID_79)], 200, policy
    )
    assert board.nodes == () and audit == [("a1", AuditEvent.NOTIFIED)]
    _, again = run(board, [seen("a1", slow)], 210, policy)
    assert again == []


@given(st.text(max_size=4000))
def test_any_reported_text_makes_one_safe_scheduler_reason(text: str) -> None:
    reason = scheduler_reason(Action.DRAIN, Symptom(SymptomKind.DEGRADED, text))
    assert len(reason) <= MAX_REASON
    assert reason.startswith("gpuward drain:")
    assert reason.isprintable() and reason.isascii()
    assert not set(reason) & set("=\"'`$\\\n\r\t|&<>")


def test_long_reasons_and_outcomes_still_make_a_readable_board() -> None:
    long = report(status="failed", reasons=["r" * 512] * 5)
    symptom = symptom_of(long, 100, 0)
    assert symptom is not None
    decision = decide(RemediationBoard("prod"), POLICY, [seen("a1", symptom)], 200)
    settled = settle(decision.board, "a1", "e" * 5000, False, 210)
    for board in (decision.board, settled.board):
        assert RemediationBoard.from_dict(board.to_dict()) == board
    for entry in (*decision.audit, *settled.audit):
        assert type(entry).from_dict(entry.to_dict()) == entry
