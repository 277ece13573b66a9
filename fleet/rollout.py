"""Staged rollouts: wave planning and the state machine, as pure functions.

A rollout moves one pool of nodes to one bundle (a target path of the image
repository) in waves: a canary, then growing shares of the pool. Inside a wave
at most ``max_unavailable`` nodes are updating at once. A wave is done when
every node in it has reported running the target, committed and healthy; it
then soaks for ``soak_s`` seconds and the next wave starts. When more than
``max_failures`` nodes of a wave roll back, refuse the bundle or run it
unhealthy, the rollout halts by itself and assigns nothing more. A node that
has not reported the target, committed and healthy, ``progress_deadline_s``
after its assignment (silent, stuck draining, or on the wrong bundle) counts
as failed too, so a rollout never waits for a node without end.

Everything here is a function of its inputs (the rollout, what each node last
reported, and the time), so the server can run it under a database lock on any
replica, and tests can drive it through every state without a clock or I/O.
The effect of a rollout is an assignment per node (which bundle it should run),
derived from the rollout by ``assignments``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from fleet.errors import InvalidDocument
from fleet.report import HealthReport
from fleet.webhook import ROLLOUT_DEADLINE_MISSED, ROLLOUT_HALTED, Notice
from fleet.wire import (
    Choice,
    Convert,
    Document,
    Field,
    Integer,
    ListOf,
    Nullable,
    Ref,
    Text,
    Wire,
    optional,
)

DEFAULT_WAVES = "1,5%,25%,100%"
# An hour: a download, a drain and a reboot, with room to spare.
DEFAULT_PROGRESS_DEADLINE_S = 3600
MAX_WAVES = 16
POOL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROLLOUT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_WAVE = re.compile(r"(\d{1,6})(%?)")


class Phase(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # by an operator; resume continues
    HALTED = "halted"  # by itself, failures passed the threshold; roll back or abort
    COMPLETED = "completed"
    ABORTED = "aborted"  # by an operator; assignments stay as they are
    ROLLED_BACK = "rolled-back"  # every touched node is assigned its previous bundle


ACTIVE_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.HALTED})


class Progress(StrEnum):
    PENDING = "pending"  # not assigned yet
    ASSIGNED = "assigned"  # told to run the target; no verdict yet
    DONE = "done"  # reported the target committed and healthy
    FAILED = "failed"  # rolled back, refused it, or runs it unhealthy


class RolloutError(InvalidDocument):
    """An operator asked for something the rollout's phase does not allow."""


@dataclass(frozen=True)
class WaveSpec:
    """One wave's size: a node count, or a percentage of the pool (cumulative)."""

    count: int | None = None
    percent: int | None = None

    def cumulative(self, pool_size: int) -> int:
        if self.count is not None:
            return min(self.count, pool_size)
        assert self.percent is not None
        return min(math.ceil(self.percent * pool_size / 100), pool_size)

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def parse_waves(text: str) -> tuple[WaveSpec, ...]:
    """``"1,5%,25%,100%"``: cumulative sizes, growing, ending at 100%."""
    specs: list[WaveSpec] = []
    for part in text.split(","):
        match = _WAVE.fullmatch(part.strip())
        if match is None:
            raise InvalidDocument(f"waves: {part.strip()!r} is not a count or a percentage")
        value = int(match.group(1))
        if match.group(2):
            if not 0 < value <= 100:
                raise InvalidDocument(f"waves: {value}% must be between 1% and 100%")
            specs.append(WaveSpec(percent=value))
        else:
            if value < 1:
                raise InvalidDocument("waves: a wave needs at least one node")
            specs.append(WaveSpec(count=value))
    if len(specs) > MAX_WAVES:
        raise InvalidDocument(f"waves: at most {MAX_WAVES} waves")
    if specs[-1].percent != 100:
        raise InvalidDocument("waves: the last wave must be 100% so that every node is reached")
    return tuple(specs)


def plan_waves(nodes: Sequence[str], specs: Sequence[WaveSpec], seed: str) -> list[list[str]]:
    """Split ``nodes`` into disjoint waves of the given cumulative sizes.

    The order is a hash of ``seed`` and the node id: stable for one rollout,
    different between rollouts, so the same node is not always the canary.
    Waves that would add no node are dropped.
    """
    order = sorted(set(nodes), key=lambda n: hashlib.sha256(f"{seed}\0{n}".encode()).digest())
    waves: list[list[str]] = []
    done = 0
    for spec in specs:
        upto = max(spec.cumulative(len(order)), done)
        if upto > done:
            waves.append(order[done:upto])
            done = upto
    return waves


@dataclass(frozen=True)
class Policy(Wire):
    """How a rollout proceeds: its waves, and how fast and how carefully."""

    waves: tuple[WaveSpec, ...]
    max_unavailable: int = 1  # nodes of a wave updating at the same time
    soak_s: int = 0  # a finished wave waits this long before the next starts
    max_failures: int = 0  # more failures than this in one wave halt the rollout
    # An assigned node not on the target by then counts as failed.
    progress_deadline_s: int = DEFAULT_PROGRESS_DEADLINE_S

    WIRE = Document(
        Field(
            "waves",
            Convert(
                Text(max_len=256),
                decode=parse_waves,
                encode=lambda waves: ",".join(str(w) for w in waves),
                examples=(DEFAULT_WAVES, "100%", "2,50%,100%"),
                description="cumulative sizes, counts or percentages, ending at 100%",
            ),
            default=parse_waves(DEFAULT_WAVES),
        ),
        Field(
            "max_unavailable",
            Integer(minimum=1, maximum=100_000),
            default=1,
            description="nodes of a wave updating at the same time",
        ),
        Field(
            "soak_s",
            Integer(maximum=30 * 86_400),
            default=0,
            description="a finished wave waits this long before the next starts",
        ),
        Field(
            "max_failures",
            Integer(maximum=100_000),
            default=0,
            description="more failures than this in one wave halt the rollout",
        ),
        # Rollouts stored before the deadline existed read with the default.
        Field(
            "progress_deadline_s",
            Integer(minimum=1, maximum=30 * 86_400),
            default=DEFAULT_PROGRESS_DEADLINE_S,
            description="an assigned node not on the target, committed and healthy, this "
            "many seconds after its assignment counts as failed",
        ),
        where="policy",
    )


@dataclass(frozen=True)
class Observation:
    """What a node last said about itself, as far as a rollout cares."""

    received_at: int
    bundle: str | None
    driver_version: str | None
    update: str
    healthy: bool

    @classmethod
    def from_report(cls, report: HealthReport, received_at: int) -> Observation:
        return cls(received_at, report.bundle, report.driver_version, report.update, report.healthy)


@dataclass(frozen=True)
class NodeState(Wire):
    """One node of a rollout: its wave, how far it got, and what to go back to."""

    node_id: str
    wave: int
    previous: str | None  # the bundle to go back to on rollback (None: no assignment)
    progress: Progress = Progress.PENDING
    assigned_at: int | None = None
    detail: str = ""
    missed_deadline_at: int | None = None  # when it was failed for missing the deadline

    WIRE = Document(
        Field("node_id", Text(max_len=128)),
        Field("wave", Integer(maximum=MAX_WAVES)),
        Field(
            "previous",
            Nullable(Text(max_len=512)),
            description="the bundle to go back to on rollback; null: no assignment",
        ),
        Field("progress", Choice(Progress)),
        Field("assigned_at", Nullable(Integer())),
        Field("detail", Text(max_len=1024)),
        optional(
            "missed_deadline_at",
            Integer(),
            "when the node was failed for missing its progress deadline; null: it was not",
        ),
        where="node",
    )


@dataclass(frozen=True)
class Rollout(Wire):
    """A rollout as the server stores it."""

    id: str
    pool: str
    target: str  # target path of the bundle in the image repository
    target_driver: str | None  # the driver version nodes must report, when known
    policy: Policy
    nodes: tuple[NodeState, ...]
    created_at: int
    phase: Phase = Phase.RUNNING
    wave: int = 0  # the wave in progress (== wave_count once completed)
    soak_started: int | None = None
    reason: str = ""

    @property
    def wave_count(self) -> int:
        return 1 + max((n.wave for n in self.nodes), default=-1)

    def wave_nodes(self, wave: int) -> list[NodeState]:
        return [n for n in self.nodes if n.wave == wave]

    WIRE = Document(
        Field("id", Text(max_len=64, pattern=ROLLOUT_ID)),
        Field("pool", Text(max_len=64, pattern=POOL)),
        Field("target", Text(max_len=512), description="target path of the bundle"),
        Field(
            "target_driver",
            Nullable(Text(max_len=16)),
            description="the driver version nodes must report, when known",
        ),
        Field("policy", Ref(Policy)),
        Field("nodes", ListOf(Ref(NodeState), 1_000_000)),
        Field("created_at", Integer()),
        Field("phase", Choice(Phase)),
        Field("wave", Integer(maximum=MAX_WAVES), description="the wave in progress"),
        Field("soak_started", Nullable(Integer())),
        Field("reason", Text(max_len=1024)),
        name="RolloutRecord",
        where="rollout",
    )


@dataclass(frozen=True)
class Transition:
    """A rollout after a step, and what happened: for the audit log (``events``),
    and for the webhooks (``notices``: a halt, a missed deadline)."""

    rollout: Rollout
    events: tuple[str, ...] = ()
    notices: tuple[Notice, ...] = ()


def new_rollout(
    rollout_id: str,
    pool: str,
    target: str,
    target_driver: str | None,
    policy: Policy,
    running: Mapping[str, str | None],
    now: int,
) -> Rollout:
    """A rollout of ``target`` over the nodes in ``running`` (node -> its bundle now)."""
    if not ROLLOUT_ID.fullmatch(rollout_id):
        raise InvalidDocument(f"rollout id {rollout_id!r} must be lower-case letters, digits, -")
    if not POOL.fullmatch(pool):
        raise InvalidDocument(f"pool {pool!r} must be lower-case letters, digits, '.', '_', '-'")
    if not running:
        raise InvalidDocument(f"pool {pool!r} has no enrolled nodes; enroll nodes into it first")
    waves = plan_waves(sorted(running), policy.waves, rollout_id)
    nodes = tuple(
        NodeState(node, wave, running[node])
        for wave, members in enumerate(waves)
        for node in members
    )
    return Rollout(rollout_id, pool, target, target_driver, policy, nodes, now)


def _verdict(rollout: Rollout, node: NodeState, seen: Observation | None) -> tuple[Progress, str]:
    """Where an assigned node stands, from its latest report since the assignment."""
    if seen is None or node.assigned_at is None or seen.received_at < node.assigned_at:
        return Progress.ASSIGNED, node.detail
    on_target = seen.bundle == rollout.target and (
        rollout.target_driver is None or seen.driver_version == rollout.target_driver
    )
    if seen.update in ("rolled-back", "refused"):
        return Progress.FAILED, f"reported {seen.update}"
    if on_target and not seen.healthy:
        return Progress.FAILED, "runs the target but is not healthy"
    if on_target and seen.update in ("committed", "up-to-date"):
        return Progress.DONE, "committed and healthy"
    return Progress.ASSIGNED, f"reported {seen.update}, not on the target yet"


def _missed_deadline(rollout: Rollout, node: NodeState, detail: str, now: int) -> str | None:
    """Why an assigned node still without a verdict (``detail``: where it stands)
    has missed its progress deadline at ``now``; None while it has time left."""
    assert node.assigned_at is not None  # assigned
    due = node.assigned_at + rollout.policy.progress_deadline_s
    if now < due:
        return None
    return (
        f"missed its progress deadline at {datetime.fromtimestamp(due, UTC).isoformat()} "
        f"({rollout.policy.progress_deadline_s}s after its assignment); "
        f"last: {detail or 'no report since its assignment'}"
    )


def step(rollout: Rollout, seen: Mapping[str, Observation], now: int) -> Transition:
    """Advance a running rollout as far as the reports allow at time ``now``."""
    if rollout.phase is not Phase.RUNNING:
        return Transition(rollout)
    events: list[str] = []
    notices: list[Notice] = []
    nodes = {n.node_id: n for n in rollout.nodes}
    wave, soak_started = rollout.wave, rollout.soak_started
    while True:
        members = [nodes[n.node_id] for n in rollout.nodes if n.wave == wave]
        for node in members:
            if node.progress is Progress.ASSIGNED:
                progress, detail = _verdict(rollout, node, seen.get(node.node_id))
                missed = None
                if progress is Progress.ASSIGNED:
                    missed = _missed_deadline(rollout, node, detail, now)
                if missed is not None:
                    notices.append(_deadline_notice(rollout, node, detail, now))
                    progress, detail = Progress.FAILED, missed
                if progress is not Progress.ASSIGNED or detail != node.detail:
                    nodes[node.node_id] = replace(
                        node,
                        progress=progress,
                        detail=detail,
                        missed_deadline_at=None if missed is None else now,
                    )
                if progress is not Progress.ASSIGNED:
                    events.append(f"{node.node_id} {progress.value}: {detail}")
        members = [nodes[n.node_id] for n in members]
        failed = [n for n in members if n.progress is Progress.FAILED]
        if len(failed) > rollout.policy.max_failures:
            late = [n.node_id for n in failed if n.missed_deadline_at is not None]
            reason = (
                f"wave {wave}: {len(failed)} node(s) failed "
                f"(more than {rollout.policy.max_failures}): {', '.join(n.node_id for n in failed)}"
            ) + (f"; missed the progress deadline: {', '.join(late)}" if late else "")
            events.append(f"halted: {reason}")
            notices.append(_halt_notice(rollout, wave, reason, failed))
            return _done(rollout, nodes, wave, None, Phase.HALTED, reason, events, notices)
        in_flight = sum(1 for n in members if n.progress is Progress.ASSIGNED)
        free = rollout.policy.max_unavailable - in_flight
        for node in members:
            if free <= 0:
                break
            if node.progress is Progress.PENDING:
                nodes[node.node_id] = replace(node, progress=Progress.ASSIGNED, assigned_at=now)
                events.append(f"{node.node_id} assigned {rollout.target} (wave {wave})")
                free -= 1
        settled = all(
            nodes[n.node_id].progress in (Progress.DONE, Progress.FAILED) for n in members
        )
        if not settled:
            return _done(rollout, nodes, wave, None, Phase.RUNNING, rollout.reason, events, notices)
        if soak_started is None:
            soak_started = now
            events.append(f"wave {wave} done; soaking {rollout.policy.soak_s}s")
        if now < soak_started + rollout.policy.soak_s:
            return _done(
                rollout, nodes, wave, soak_started, Phase.RUNNING, rollout.reason, events, notices
            )
        wave, soak_started = wave + 1, None
        if wave >= rollout.wave_count:
            events.append("completed")
            return _done(rollout, nodes, wave, None, Phase.COMPLETED, "", events, notices)
        events.append(f"wave {wave} started")


def _done(
    rollout: Rollout,
    nodes: Mapping[str, NodeState],
    wave: int,
    soak_started: int | None,
    phase: Phase,
    reason: str,
    events: list[str],
    notices: list[Notice],
) -> Transition:
    updated = replace(
        rollout,
        nodes=tuple(nodes[n.node_id] for n in rollout.nodes),
        wave=wave,
        soak_started=soak_started,
        phase=phase,
        reason=reason,
    )
    return Transition(updated, tuple(events), tuple(notices))


def _subject(rollout: Rollout) -> str:
    return f"rollout/{rollout.id}"


def _deadline_notice(rollout: Rollout, node: NodeState, detail: str, now: int) -> Notice:
    assert node.assigned_at is not None  # assigned
    return Notice(
        ROLLOUT_DEADLINE_MISSED,
        _subject(rollout),
        {
            "rollout": rollout.id,
            "pool": rollout.pool,
            "target": rollout.target,
            "wave": node.wave,
            "node": node.node_id,
            "assigned_at": node.assigned_at,
            "deadline_at": node.assigned_at + rollout.policy.progress_deadline_s,
            "progress_deadline_s": rollout.policy.progress_deadline_s,
            "failed_at": now,
            "last": detail or "no report since its assignment",
        },
    )


def _halt_notice(rollout: Rollout, wave: int, reason: str, failed: list[NodeState]) -> Notice:
    return Notice(
        ROLLOUT_HALTED,
        _subject(rollout),
        {
            "rollout": rollout.id,
            "pool": rollout.pool,
            "target": rollout.target,
            "wave": wave,
            "reason": reason,
            "max_failures": rollout.policy.max_failures,
            "failed": [n.node_id for n in failed],
            "deadline_missed": [n.node_id for n in failed if n.missed_deadline_at is not None],
        },
    )


def halt(rollout: Rollout, reason: str) -> Transition:
    """Halt a running rollout for what its waves cannot see: a fault that follows
    its target driver across the fleet (``fleet.attribution``), although each node
    on it still passes its own health gate."""
    if rollout.phase is not Phase.RUNNING:
        return Transition(rollout)
    updated = replace(rollout, phase=Phase.HALTED, reason=reason, soak_started=None)
    notice = _halt_notice(rollout, rollout.wave, reason, [])
    return Transition(updated, (f"halted: {reason}",), (notice,))


# Operator commands: which phases each may start from, and where it leads.
COMMANDS: Mapping[str, tuple[frozenset[Phase], Phase]] = {
    "pause": (frozenset({Phase.RUNNING}), Phase.PAUSED),
    "resume": (frozenset({Phase.PAUSED}), Phase.RUNNING),
    "abort": (frozenset(ACTIVE_PHASES), Phase.ABORTED),
    "rollback": (
        frozenset({*ACTIVE_PHASES, Phase.COMPLETED, Phase.ABORTED}),
        Phase.ROLLED_BACK,
    ),
}


def command(rollout: Rollout, name: str, who: str) -> Transition:
    if name not in COMMANDS:
        raise RolloutError(f"unknown rollout command {name!r}; use one of {', '.join(COMMANDS)}")
    allowed, phase = COMMANDS[name]
    if rollout.phase not in allowed:
        raise RolloutError(f"rollout {rollout.id} is {rollout.phase.value}; cannot {name} it")
    updated = replace(rollout, phase=phase, reason=f"{name} by {who}", soak_started=None)
    return Transition(updated, (f"{name} by {who}",))


def assignments(rollout: Rollout) -> dict[str, str | None]:
    """The bundle each node this rollout touched should run (None: no assignment)."""
    touched = [n for n in rollout.nodes if n.progress is not Progress.PENDING]
    if rollout.phase is Phase.ROLLED_BACK:
        return {n.node_id: n.previous for n in touched}
    return {n.node_id: rollout.target for n in touched}
