"""What a compliance report reads of the store: each node's enrollment, its latest
report, and only the older reports the report shows.

A node keeps up to ``report_retention_count`` reports (500), nearly all of them
routine ("up-to-date"); reading them all for a fleet of 100,000 would be 50
million rows. The document needs the latest report, the newest attested one
(attestation and Secure Boot) and the updates (the history and its rollbacks),
which ``Store.compliance_evidence`` finds by index in one query. Rollouts are
read once and matched to nodes here, with the operators their events name.
"""

from __future__ import annotations

import json
import re

from fleet.compliance import EkCertificate, NodeFacts, RolloutRecord, SeenReport
from server.attestation.enrollment import EnrolledTpm
from server.config import ServerConfig
from server.fleetview import node_state
from server.store import NodeStatus, ReportRecord, Store

# A node's updates read at most: the document shows the newest of them and counts
# its rollbacks among them.
UPDATES_READ = 500

# The rollout engine's events name operators so (server.rollout.engine, fleet.rollout.command);
# a token's name holds no colon.
_STARTED = re.compile(r"started by ([^:]+): ")
_RESUMED = re.compile(r"resume by (.+)")


async def rollouts_by_node(store: Store) -> dict[str, tuple[RolloutRecord, ...]]:
    """Each node's rollouts, with the operators their events name."""
    found: dict[str, list[RolloutRecord]] = {}
    for rollout in await store.rollouts():
        events = [e.event for e in await store.rollout_events(rollout.id)]
        started = next((m.group(1) for e in events if (m := _STARTED.match(e))), None)
        resumed = tuple(m.group(1) for e in events if (m := _RESUMED.fullmatch(e)))
        record = RolloutRecord(
            rollout.id, rollout.target_driver, rollout.created_at, started, resumed
        )
        for node in rollout.nodes:
            found.setdefault(node.node_id, []).append(record)
    return {node_id: tuple(records) for node_id, records in found.items()}


def facts(
    status: NodeStatus,
    older: list[ReportRecord],
    now: float,
    config: ServerConfig,
    rollouts: tuple[RolloutRecord, ...] = (),
) -> NodeFacts:
    """What the report says of one node: its enrollment, its latest report (from
    ``status``) and the ``older`` ones the report reads, newest first."""
    node = status.node
    tpm = None if node.tpm is None else EnrolledTpm.from_dict(json.loads(node.tpm))
    history = [SeenReport(r.received_at, r.report, r.attestation) for r in older]
    if status.report is not None and status.last_seen is not None:
        history.insert(0, SeenReport(status.last_seen, status.report, status.report_attestation))
    return NodeFacts(
        node_id=node.node_id,
        pool=node.pool,
        state=node_state(status, now, config),
        enrollment=node.attestation,
        attested=node.attested,
        enrolled_at=node.enrolled_at,
        last_seen=status.last_seen,
        ek_certificate=None
        if tpm is None
        else EkCertificate(
            tpm.ek_certificate_sha256, tpm.ek_certificate_subject, tpm.ek_certificate_serial
        ),
        history=tuple(history),
        rollouts=rollouts,
    )


async def fleet_facts(store: Store, now: float, config: ServerConfig) -> list[NodeFacts]:
    """Every enrolled node's facts, read in a few queries whatever the fleet's size."""
    statuses = await store.fleet()
    evidence = await store.compliance_evidence(UPDATES_READ)
    rollouts = await rollouts_by_node(store)
    return [
        facts(s, evidence.get(s.node.node_id, []), now, config, rollouts.get(s.node.node_id, ()))
        for s in statuses
    ]


async def node_facts(
    store: Store, node_id: str, now: float, config: ServerConfig
) -> NodeFacts | None:
    """One node's facts; None if it is not enrolled."""
    status = await store.node(node_id)
    if status is None:
        return None
    evidence = await store.compliance_evidence(UPDATES_READ, node_id)
    rollouts = (await rollouts_by_node(store)).get(node_id, ())
    return facts(status, evidence.get(node_id, []), now, config, rollouts)
