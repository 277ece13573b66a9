"""The webhook outbox in the store, on SQLite and PostgreSQL: events written with the
change that caused them, routed to endpoints, claimed by one sender at a time,
retried, forgotten; and the watched conditions, each moved by one replica."""

from __future__ import annotations

import json

from fleet.attestation_verdict import AttestationVerdict
from fleet.rollout import Phase, Policy, new_rollout, parse_waves, step
from fleet.webhook import Notice, WebhookEvent, new_event_id
from server.store import DELIVERED, FAILED, PENDING, Store
from tests.store.test_store import node, report, run


def _event(kind: str, subject: str, at: int) -> WebhookEvent:
    return WebhookEvent.of(Notice(kind, subject, {"n": 1}), new_event_id(), at)


def test_a_halt_is_recorded_with_the_rollout_and_delivered_per_endpoint(db_url: str) -> None:
    policy = Policy(parse_waves("100%"), progress_deadline_s=60)

    async def body(store: Store) -> None:
        await store.enroll(node("n1"))
        rollout = new_rollout("r1", "prod", "new", None, policy, {"n1": None}, now=0)
        await store.create_rollout(rollout, "started")
        await store.change_rollout("r1", lambda r, seen: step(r, seen, 0), 0, wait=True)
        halted = await store.change_rollout("r1", lambda r, seen: step(r, seen, 60), 60, wait=True)
        assert halted is not None and halted.phase is Phase.HALTED

        def route(event_type: str) -> list[str]:
            return ["all", "halts"] if event_type == "rollout.halted" else ["all"]

        assert await store.route_webhook_events(route, 60, 100) == 2
        assert await store.route_webhook_events(route, 60, 100) == 0  # each once
        claimed = await store.claim_webhook_deliveries(["all", "halts"], 60, 90, 10)
        assert len(claimed) == 3
        bodies = {d.event_id: json.loads(d.body) for d in claimed}
        assert sorted(b["type"] for b in bodies.values()) == [
            "rollout.deadline_missed",
            "rollout.halted",
        ]
        assert all(b["time"] == 60 and b["subject"] == "rollout/r1" for b in bodies.values())
        # Held: no other sender gets them until the hold ends.
        assert await store.claim_webhook_deliveries(["all", "halts"], 89, 120, 10) == []
        assert await store.claim_webhook_deliveries(["other"], 60, 90, 10) == []

        ok, retry, out = claimed
        await store.finish_webhook_attempt(ok, DELIVERED, 60, "")
        await store.finish_webhook_attempt(retry, PENDING, 200, "HTTP 500")
        await store.finish_webhook_attempt(out, FAILED, 60, "HTTP 500")
        assert await store.claim_webhook_deliveries(["all", "halts"], 199, 300, 10) == []
        again = await store.claim_webhook_deliveries(["all", "halts"], 200, 300, 10)
        assert [(d.event_id, d.endpoint, d.attempts) for d in again] == [
            (retry.event_id, retry.endpoint, 1)
        ]
        assert again[0].body == retry.body  # the same bytes on every attempt
        states = await store.webhook_delivery_states(ok.event_id)
        assert states[ok.endpoint] == (DELIVERED, 1)

        assert await store.forget_webhook_events(61) == 2
        assert await store.webhook_delivery_states(ok.event_id) == {}
        assert await store.claim_webhook_deliveries(["all", "halts"], 10_000, 10_001, 10) == []

    run(db_url, body)


def test_a_condition_moves_once_however_many_replicas_see_it(db_url: str) -> None:
    async def body(store: Store) -> None:
        opened = _event("node.missing", "node/n1", 10)
        assert await store.change_webhook_condition("node.missing", "node/n1", None, "5", opened)
        # A replica that saw the same change too late records nothing.
        late = _event("node.missing", "node/n1", 11)
        assert not await store.change_webhook_condition("node.missing", "node/n1", None, "5", late)
        assert (await store.webhook_conditions("node.missing"))["node/n1"].episode == "5"
        moved = _event("node.missing", "node/n1", 20)
        assert await store.change_webhook_condition("node.missing", "node/n1", "5", "15", moved)
        assert (await store.webhook_conditions("node.missing"))["node/n1"].since == 20
        ended = _event("node.missing.resolved", "node/n1", 30)
        assert not await store.change_webhook_condition("node.missing", "node/n1", "5", None, ended)
        assert await store.change_webhook_condition("node.missing", "node/n1", "15", None, ended)
        assert await store.webhook_conditions("node.missing") == {}

        assert await store.route_webhook_events(lambda _t: ["e"], 30, 100) == 3
        claimed = await store.claim_webhook_deliveries(["e"], 30, 40, 10)
        assert {d.event_id for d in claimed} == {opened.id, moved.id, ended.id}

    run(db_url, body)


def test_silent_nodes_and_failing_attestations_are_found(db_url: str) -> None:
    failing = AttestationVerdict(False, 4, "ef" * 32, "default", ('"passed": false',), False)
    passing = AttestationVerdict(True, 4, "ef" * 32, "default", ('"passed": false',), True)

    async def body(store: Store) -> None:
        for n in ("n1", "n2", "n3", "n4"):
            await store.enroll(node(n))  # enrolled at 1000
        await store.add_report(report("n1"), 2000, "", "a" * 32, failing)
        await store.add_report(report("n2"), 1500, "", "b" * 32, passing)
        await store.add_report(report("n3"), 3000, "", "c" * 32)
        silent = await store.silent_nodes(2001)
        assert [(s.node_id, s.last_seen) for s in silent] == [
            ("n1", 2000),
            ("n2", 1500),
            ("n4", None),
        ]
        found = await store.failing_attestations()
        assert [(f.node_id, f.received_at, f.verdict) for f in found] == [("n1", 2000, failing)]
        # Only the latest report counts.
        await store.add_report(report("n1"), 2100, "", "d" * 32, passing)
        assert await store.failing_attestations() == []

    run(db_url, body)
