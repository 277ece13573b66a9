"""Closing the loop from a bad GPU to a drained node, within guard rails, as pure rules.

At tens of thousands of GPUs failures are routine, so a finding must lead to an
action without a human, and an action that goes wrong must not take a pool down.
The server's remediation engine (``server.remediation``) feeds ``decide`` each
pool's nodes as their latest reports show them and carries out the steps it
returns in the pool's scheduler; ``settle`` records each step's outcome. Every
rule lives here, so it can be read in one place and tested without a scheduler:

1. A node's symptom is the worst of its latest report: a non-application XID
   (``fleet.xid_catalog``; an application's own fault is the job's, not the
   node's), a failed or degraded status, its silence (heartbeat loss: no report
   for ``missing_after`` intervals), or the fleet's straggler ranking naming it.
   A node never heard from has none.
2. The pool's policy maps the symptom to an action: none, notify, drain, reset
   (drain, then the operator's reset hook), reboot (drain, then the reboot
   hook), or service (drain until an operator releases the node).
3. A node under remediation is not acted on again; a new symptom restarts its
   hold-down, and one whose action is service escalates it to service.
4. Budget: at most ``budget`` nodes of a pool are under remediation at once
   (one awaiting approval holds its place).
5. Failure domain: at most one node per ``failure_domain`` value (a topology
   label such as the rack) is under remediation at once, so a rack-wide event
   drains one node, not the rack; a node without the label is its own domain.
6. Approval: with ``approval``, an action waits for an operator to approve it.
7. A drained node (not one for service) whose reports are healthy for
   ``hold_down_s`` after the action is resumed.
8. Flapping: a node that needs an action again within ``hold_down_s`` of being
   resumed is marked for service instead, and stays out until released.
9. Every decision and outcome is an audit entry naming the symptom behind it;
   a node held back by rule 4 or 5 is recorded once while held, not every tick.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from fleet.gpu_rules import DEGRADED, FAILED, classify_xid
from fleet.inventory import NODE_ID
from fleet.report import HealthReport
from fleet.rollout import POOL
from fleet.topology import DOMAINS
from fleet.wire import (
    Choice,
    Document,
    Field,
    Integer,
    ListOf,
    MapOf,
    Ref,
    Text,
    Wire,
    optional,
)
from fleet.xid_catalog import CRITICAL

MAX_REASON = 256  # what a scheduler is told (Slurm keeps a node's reason as one line)
MAX_TRACKED = 10_000  # nodes under remediation or held back, per pool
MAX_DETAIL = 1024
MAX_AUDIT_READ = 10_000  # audit entries one request reads
# Scheduler reasons are one printable line: no quotes, '=' or control characters a
# scheduler's own parser could read as more than text.
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;()/#%+_@\[\]-]")


class Action(enum.StrEnum):
    """What to do about a node, weakest first."""

    NONE = "none"
    NOTIFY = "notify"
    DRAIN = "drain"
    RESET = "reset"
    REBOOT = "reboot"
    SERVICE = "service"

    @property
    def strength(self) -> int:
        return list(Action).index(self)

    @property
    def drains(self) -> bool:
        return self.strength >= Action.DRAIN.strength


class Stage(enum.StrEnum):
    """Where a node under remediation stands."""

    AWAITING_APPROVAL = "awaiting-approval"  # decided; an operator must approve it
    ACTING = "acting"  # approved or decided; the scheduler has not yet done it
    DRAINED = "drained"  # done; resumed once healthy for the hold-down
    SERVICE = "service"  # drained until an operator releases it
    RESUMING = "resuming"  # healthy long enough, or released; not yet resumed


class SymptomKind(enum.StrEnum):
    XID = "xid"
    FAILED = "failed"
    DEGRADED = "degraded"
    STRAGGLER = "straggler"  # slower than its peers (fleet.stragglers), though healthy itself
    MISSING = "missing"


@dataclass(frozen=True)
class Symptom(Wire):
    """What is wrong with a node, as the remediation that follows it names it."""

    kind: SymptomKind
    summary: str
    xid: int | None = None

    WIRE = Document(
        Field("kind", Choice(SymptomKind)),
        Field("summary", Text(max_len=MAX_DETAIL), description="what was seen, in words"),
        optional("xid", Integer(maximum=2**31 - 1), "the XID, for an XID symptom"),
        where="symptom",
    )


@dataclass(frozen=True)
class RemediationPolicy:
    """A pool's rules (``[remediation.pools.NAME]`` in server.toml)."""

    on_failed: Action = Action.DRAIN
    on_degraded: Action = Action.NONE
    on_missing: Action = Action.DRAIN
    on_straggler: Action = Action.NONE
    xid_actions: Mapping[int, Action] = field(default_factory=dict)  # overrides per XID
    budget: int = 1
    failure_domain: str | None = "rack"  # one of fleet.topology.DOMAINS, or None
    hold_down_s: int = 900
    approval: bool = False

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError("a pool's remediation budget is at least 1 node")
        if self.failure_domain is not None and self.failure_domain not in DOMAINS:
            raise ValueError(f"failure_domain must be one of {', '.join(DOMAINS)}")
        if self.hold_down_s < 0:
            raise ValueError("hold_down must not be negative")

    @property
    def actions(self) -> frozenset[Action]:
        """Every action the pool can take: those the policy names, and service for a
        policy that drains (rule 8)."""
        named = {
            self.on_failed,
            self.on_degraded,
            self.on_missing,
            self.on_straggler,
            *self.xid_actions.values(),
        }
        if any(a.drains for a in named):
            named.add(Action.SERVICE)
        return frozenset(named - {Action.NONE})

    def action_for(self, symptom: Symptom) -> Action:
        if symptom.xid is not None and symptom.xid in self.xid_actions:
            return self.xid_actions[symptom.xid]
        if symptom.kind is SymptomKind.MISSING:
            return self.on_missing
        if symptom.kind is SymptomKind.DEGRADED:
            return self.on_degraded
        if symptom.kind is SymptomKind.STRAGGLER:
            return self.on_straggler
        return self.on_failed


@dataclass(frozen=True)
class NodeRemediation(Wire):
    """One node under remediation."""

    node_id: str
    stage: Stage
    action: Action
    symptom: Symptom
    since: int  # when the action was decided
    domain: str | None = None  # its failure domain's value when decided
    healthy_since: int | None = None  # its first healthy report after the action
    attempts: int = 0  # scheduler calls that failed
    last_error: str = ""

    WIRE = Document(
        Field("node_id", Text(max_len=128, pattern=NODE_ID)),
        Field("stage", Choice(Stage)),
        Field("action", Choice(Action)),
        Field("symptom", Ref(Symptom)),
        Field("since", Integer(), description="when the action was decided, epoch seconds"),
        optional("domain", Text(max_len=64), "the node's failure domain (e.g. its rack)"),
        optional("healthy_since", Integer(), "healthy in every report since, epoch seconds"),
        Field("attempts", Integer(), description="scheduler calls that failed so far"),
        Field("last_error", Text(max_len=MAX_DETAIL)),
        where="node remediation",
    )


@dataclass(frozen=True)
class RemediationBoard(Wire):
    """A pool's remediation state: the nodes under remediation, those held back by
    the budget or a failure domain (with why, so it is audited once), those whose
    action is notify (with what was notified, so it is audited once), and when
    nodes were last resumed (for the flapping rule)."""

    pool: str
    nodes: tuple[NodeRemediation, ...] = ()
    held: Mapping[str, str] = field(default_factory=dict)
    resumed: Mapping[str, int] = field(default_factory=dict)
    notified: Mapping[str, str] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeRemediation | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def pending_steps(self) -> tuple[NodeRemediation, ...]:
        """What the scheduler must still do: actions and resumes not yet done."""
        return tuple(n for n in self.nodes if n.stage in (Stage.ACTING, Stage.RESUMING))

    WIRE = Document(
        Field("pool", Text(max_len=64, pattern=POOL)),
        Field("nodes", ListOf(Ref(NodeRemediation), MAX_TRACKED)),
        Field("held", MapOf(Text(max_len=128, pattern=NODE_ID), Text(max_len=512), MAX_TRACKED)),
        Field("resumed", MapOf(Text(max_len=128, pattern=NODE_ID), Integer(), MAX_TRACKED)),
        # Absent from a board written before notified nodes were kept apart from held ones.
        Field(
            "notified",
            MapOf(Text(max_len=128, pattern=NODE_ID), Text(max_len=MAX_DETAIL), MAX_TRACKED),
            default={},
            description="nodes whose action is notify, with the symptom notified",
        ),
        where="remediation board",
    )


class AuditEvent(enum.StrEnum):
    NOTIFIED = "notified"  # the policy's action is notify
    AWAITING_APPROVAL = "awaiting-approval"
    APPROVED = "approved"
    DECIDED = "decided"  # the action will run now
    HELD = "held"  # held back by the budget or a failure domain
    DONE = "done"  # the scheduler did it
    FAILED = "failed"  # the scheduler call failed; it is retried
    RECURRED = "recurred"  # a node under remediation showed a new symptom
    ESCALATED = "escalated"  # to service
    RESUME_DECIDED = "resume-decided"  # healthy for the hold-down
    RESUMED = "resumed"
    RELEASED = "released"  # an operator ended it


@dataclass(frozen=True)
class RemediationAudit(Wire):
    """One line of the remediation audit log."""

    at: int
    pool: str
    node_id: str
    event: AuditEvent
    action: Action
    symptom: Symptom
    detail: str = ""
    by: str = "gpuward"  # the operator, for approvals and releases

    WIRE = Document(
        Field("at", Integer(), description="epoch seconds"),
        Field("pool", Text(max_len=64, pattern=POOL)),
        Field("node_id", Text(max_len=128, pattern=NODE_ID)),
        Field("event", Choice(AuditEvent)),
        Field("action", Choice(Action)),
        Field("symptom", Ref(Symptom), description="the finding that caused it"),
        Field("detail", Text(max_len=MAX_DETAIL)),
        Field("by", Text(max_len=128), description="gpuward, or the operator who acted"),
        where="remediation audit entry",
    )


@dataclass(frozen=True)
class NodeObservation:
    """A node as remediation sees it this tick."""

    node_id: str
    symptom: Symptom | None  # None: healthy
    reported_at: int | None  # its latest report; None: never reported
    domain: str | None  # the value of the pool's failure-domain label, if any


# Records an audit entry for a node: (node, event, detail).
_Log = Callable[["NodeRemediation", "AuditEvent", str], None]


@dataclass(frozen=True)
class Decision:
    board: RemediationBoard
    audit: tuple[RemediationAudit, ...]


def symptom_of(
    report: HealthReport | None,
    last_seen: int | None,
    missing_before: int,
    straggling: str | None = None,
) -> Symptom | None:
    """Rule 1: the worst symptom a node shows, None if healthy or never heard from;
    ``straggling``: why the fleet's straggler ranking names the node, if it does."""
    if report is None or last_seen is None:
        return None
    if last_seen < missing_before:
        return Symptom(SymptomKind.MISSING, f"no report since {last_seen} (heartbeat lost)")
    health = report.health
    if health is not None:
        xids = [x for x in health.xids if classify_xid(x.xid).category != "application"]
        xids.sort(key=lambda x: classify_xid(x.xid).severity != CRITICAL)
        if xids:
            event, known = xids[0], classify_xid(xids[0].xid)
            gpu = "GPU ?" if event.gpu_index is None else f"GPU {event.gpu_index}"
            summary = f"{gpu}: XID {event.xid} ({known.description}); NVIDIA: {known.action}"
            return Symptom(SymptomKind.XID, summary[:MAX_DETAIL], event.xid)
        if health.status in (FAILED, DEGRADED):
            kind = SymptomKind.FAILED if health.status == FAILED else SymptomKind.DEGRADED
            return Symptom(kind, "; ".join(health.reasons[:3])[:MAX_DETAIL] or health.status)
    if report.gpus and not report.healthy:
        problems = [p for g in report.gpus for p in g.problems]
        summary = "; ".join(problems[:3])[:MAX_DETAIL]
        return Symptom(SymptomKind.FAILED, summary or "a GPU is unhealthy")
    if straggling is not None:
        return Symptom(SymptomKind.STRAGGLER, straggling[:MAX_DETAIL])
    return None


def scheduler_reason(action: Action, symptom: Symptom) -> str:
    """The reason a scheduler shows for a drain: one safe line, at most MAX_REASON
    characters, whatever text the node put in its report."""
    text = f"gpuward {action.value}: {symptom.summary}"
    return " ".join(_UNSAFE.sub(" ", text).split())[:MAX_REASON]


def decide(
    board: RemediationBoard,
    policy: RemediationPolicy,
    nodes: Sequence[NodeObservation],
    now: int,
) -> Decision:
    """The pool's next board and what to audit, by the rules above."""
    audit: list[RemediationAudit] = []
    tracked = {n.node_id: n for n in board.nodes}
    # A node no longer in the pool (removed, or moved to another) is neither held
    # back nor notified any more.
    present = {n.node_id for n in nodes}
    held = {node: why for node, why in board.held.items() if node in present}
    notified = {node: what for node, what in board.notified.items() if node in present}
    resumed = {node: at for node, at in board.resumed.items() if at > now - policy.hold_down_s}

    def log(node: NodeRemediation, event: AuditEvent, detail: str = "") -> None:
        audit.append(
            RemediationAudit(
                now, board.pool, node.node_id, event, node.action, node.symptom, detail
            )
        )

    candidates: list[tuple[NodeObservation, Symptom, Action]] = []
    for seen in nodes:
        current = tracked.get(seen.node_id)
        if current is not None:
            tracked[seen.node_id] = _follow(current, seen, policy, now, log)
            continue
        if seen.symptom is None:
            held.pop(seen.node_id, None)
            notified.pop(seen.node_id, None)
            continue
        action = policy.action_for(seen.symptom)
        if action.drains and seen.node_id in resumed:
            action = Action.SERVICE  # rule 8
        if not action.drains:
            held.pop(seen.node_id, None)  # it no longer waits for a place
        if action is Action.NONE:
            continue
        if action is Action.NOTIFY:
            told = notified.get(seen.node_id)
            if told != seen.symptom.summary and (told is not None or len(notified) < MAX_TRACKED):
                notified[seen.node_id] = seen.symptom.summary
                audit.append(
                    RemediationAudit(
                        now, board.pool, seen.node_id, AuditEvent.NOTIFIED, action, seen.symptom
                    )
                )
            continue
        notified.pop(seen.node_id, None)
        candidates.append((seen, seen.symptom, action))

    candidates.sort(key=lambda c: (-c[2].strength, c[0].node_id))
    for seen, symptom, action in candidates:
        why = _held_back(policy, list(tracked.values()), seen)
        if why is not None:
            first = seen.node_id not in held
            if first and len(held) >= MAX_TRACKED:
                continue  # a pool-wide outage: held all the same, the board stays bounded
            held[seen.node_id] = why  # the latest reason shows; the first is audited
            if first:
                audit.append(
                    RemediationAudit(
                        now, board.pool, seen.node_id, AuditEvent.HELD, action, symptom, why
                    )
                )
            continue
        held.pop(seen.node_id, None)
        flapping = action is Action.SERVICE and seen.node_id in resumed
        detail = (
            f"failed again within the {policy.hold_down_s} s hold-down after it was resumed: "
            "marked for service"
            if flapping
            else ""
        )
        stage = Stage.AWAITING_APPROVAL if policy.approval else Stage.ACTING
        record = NodeRemediation(seen.node_id, stage, action, symptom, now, seen.domain)
        tracked[seen.node_id] = record
        event = AuditEvent.AWAITING_APPROVAL if policy.approval else AuditEvent.DECIDED
        log(record, event, detail)

    after = RemediationBoard(
        board.pool, tuple(tracked[k] for k in sorted(tracked)), held, resumed, notified
    )
    return Decision(after, tuple(audit))


def _follow(
    node: NodeRemediation,
    seen: NodeObservation,
    policy: RemediationPolicy,
    now: int,
    log: _Log,
) -> NodeRemediation:
    """Rules 3 and 7 for a node already under remediation."""
    if seen.symptom is not None:
        if node.healthy_since is None and seen.symptom == node.symptom:
            return node
        after = replace(node, symptom=seen.symptom, healthy_since=None)
        action = policy.action_for(seen.symptom)
        if action is Action.SERVICE and node.stage is Stage.DRAINED:
            after = replace(after, stage=Stage.SERVICE, action=Action.SERVICE)
            log(after, AuditEvent.ESCALATED, "")
        elif node.stage is not Stage.RESUMING:
            log(after, AuditEvent.RECURRED, "its hold-down starts again once it is healthy")
        return after
    if node.stage is not Stage.DRAINED:
        return node
    healthy_since = node.healthy_since
    if healthy_since is None:
        reported = seen.reported_at
        if reported is None or reported <= node.since:
            return node  # no report since the action: nothing shows it is healthy yet
        healthy_since = reported
        node = replace(node, healthy_since=healthy_since)
    if now - healthy_since >= policy.hold_down_s:
        node = replace(node, stage=Stage.RESUMING, attempts=0, last_error="")
        log(node, AuditEvent.RESUME_DECIDED, f"healthy in every report since {healthy_since}")
    return node


def _held_back(
    policy: RemediationPolicy, under: Sequence[NodeRemediation], seen: NodeObservation
) -> str | None:
    """Rules 4 and 5: why ``seen`` may not be acted on now, or None."""
    if len(under) >= policy.budget:
        names = ", ".join(sorted(n.node_id for n in under)[:5])
        return f"pool budget of {policy.budget} node(s) reached ({names} under remediation)"
    if policy.failure_domain is not None and seen.domain is not None:
        peer = next((n for n in under if n.domain == seen.domain), None)
        if peer is not None:
            return (
                f"{peer.node_id} in the same {policy.failure_domain} ({seen.domain}) is under "
                "remediation: one node per failure domain at a time"
            )
    return None


def settle(board: RemediationBoard, node_id: str, outcome: str, ok: bool, now: int) -> Decision:
    """The outcome of the scheduler step for ``node_id``: what was done (``ok``), or
    what went wrong (the step is tried again on the next tick; a failure is
    audited when it first happens or changes, not on every retry)."""
    node = board.node(node_id)
    if node is None or node.stage not in (Stage.ACTING, Stage.RESUMING):
        return Decision(board, ())  # released or settled meanwhile
    outcome = outcome[:MAX_DETAIL]
    resumed = dict(board.resumed)
    after: NodeRemediation | None
    if not ok:
        after = replace(node, attempts=node.attempts + 1, last_error=outcome)
        event = None if outcome == node.last_error else AuditEvent.FAILED
    elif node.stage is Stage.RESUMING:
        after, event = None, AuditEvent.RESUMED
        resumed[node_id] = now
    else:
        stage = Stage.SERVICE if node.action is Action.SERVICE else Stage.DRAINED
        after, event = replace(node, stage=stage, attempts=0, last_error=""), AuditEvent.DONE
    nodes = tuple(n for n in board.nodes if n.node_id != node_id)
    if after is not None:
        nodes = tuple(sorted((*nodes, after), key=lambda n: n.node_id))
    audit = (
        ()
        if event is None
        else (
            RemediationAudit(now, board.pool, node_id, event, node.action, node.symptom, outcome),
        )
    )
    return Decision(replace(board, nodes=nodes, resumed=resumed), audit)


def approve(board: RemediationBoard, node_id: str, operator: str, now: int) -> Decision:
    """An operator approves the action waiting for ``node_id``."""
    node = board.node(node_id)
    if node is None or node.stage is not Stage.AWAITING_APPROVAL:
        raise LookupError(f"no action awaits approval for {node_id} in pool {board.pool}")
    after = replace(node, stage=Stage.ACTING)
    entry = RemediationAudit(
        now, board.pool, node_id, AuditEvent.APPROVED, node.action, node.symptom, by=operator
    )
    nodes = tuple(after if n.node_id == node_id else n for n in board.nodes)
    return Decision(replace(board, nodes=nodes), (entry,))


def release(board: RemediationBoard, node_id: str, operator: str, now: int) -> Decision:
    """An operator ends the remediation of ``node_id``: an action not yet taken is
    dropped; a drained node (service included) is resumed."""
    node = board.node(node_id)
    if node is None:
        raise LookupError(f"{node_id} is not under remediation in pool {board.pool}")
    if node.stage is Stage.AWAITING_APPROVAL:
        nodes = tuple(n for n in board.nodes if n.node_id != node_id)
        detail = "the action was not taken"
    else:
        after = replace(node, stage=Stage.RESUMING, attempts=0, last_error="")
        nodes = tuple(after if n.node_id == node_id else n for n in board.nodes)
        detail = "the node is resumed"
    entry = RemediationAudit(
        now, board.pool, node_id, AuditEvent.RELEASED, node.action, node.symptom, detail, operator
    )
    return Decision(replace(board, nodes=nodes), (entry,))


@dataclass(frozen=True)
class RemediationOverview(Wire):
    """``GET /v1/remediation``: every pool's board."""

    boards: tuple[RemediationBoard, ...]

    WIRE = Document(
        Field("boards", ListOf(Ref(RemediationBoard), 100_000)),
        where="remediation overview",
    )


@dataclass(frozen=True)
class RemediationAuditLog(Wire):
    """``GET /v1/remediation/audit``: the newest entries, oldest first."""

    entries: tuple[RemediationAudit, ...]

    WIRE = Document(
        Field("entries", ListOf(Ref(RemediationAudit), MAX_AUDIT_READ)),
        where="remediation audit log",
    )
