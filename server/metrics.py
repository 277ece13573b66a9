"""The server's Prometheus metrics: what an SRE graphs and alerts on (``GET /metrics``).

Two sources. What happens on the request path (reports accepted, by the update
they report; reports refused, by reason; how long verifying a report and its
attestation takes) is counted as it happens, in this process's registry. What
the fleet looks like (nodes by state and attestation, rollouts by phase and wave
progress, the re-signers' health, when each role's metadata expires, the
store's connections, remediation) is read from the store at scrape time,
aggregated in SQL or read from the remediation boards, which hold only the nodes
under remediation: every replica answers alike, and a scrape costs a few small
queries whatever the fleet's size. prometheus_client's collectors are synchronous and the store is
not, so a scrape reads a ``FleetSnapshot`` first and ``FleetCollector`` renders it.

Every name starts ``gpuward_`` and ends in its unit (``_seconds``, ``_total``).
The request-path counters are this process's: with ``workers`` > 1 a scrape
reaches one worker (through the shared port, any; through ``metrics_listen``,
worker 0). The remediation events' counter is the store's (kept with the audit
log), so it survives restarts and every replica gives the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from fleet.kept_reports import SCHEDULED_BY
from fleet.remediation import Action, AuditEvent, RemediationBoard, RemediationPolicy, Stage
from fleet.report import UPDATE_OUTCOMES
from fleet.rollout import ACTIVE_PHASES, Phase, Progress
from fleet.version import VERSION
from server.config import REPORT_SCHEDULES, ServerConfig
from server.fleetview import NODE_STATES
from server.renewal import FAILED, RenewalStatus, statuses
from server.store import NodeCount, PoolUse, RemediationCount, RolloutStanding, Store

# The text format Prometheus 2 reads (Debian 12 ships 2.42).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Kept fleet reports a scrape reads to find the newest scheduled one.
SCHEDULED_SEARCHED = 50
# Why a report was refused, as ``gpuward_reports_refused_total`` names it.
REFUSALS = (
    "unauthenticated",  # unsigned, stale or badly signed
    "rate_limited",
    "too_large",
    "malformed",  # not JSON, or not a report
    "wrong_node",  # signed by one node, naming another
    "attestation_missing",  # a TPM node's report without a quote
    "attestation_failed",
    "not_tpm_enrolled",  # evidence from a node enrolled without a TPM
    "replayed",
    "node_removed",  # removed while its report was checked
    "error",  # anything else: the server log says what
)
# A refusal's reason where its status says it all.
_BY_STATUS = {
    400: "malformed",
    401: "unauthenticated",
    413: "too_large",
    415: "malformed",
    429: "rate_limited",
}
ATTESTATION_RESULTS = ("passed", "failed", "pending", "unattested")
# Verifying a report takes milliseconds; its TPM attestation (a quote, an event
# log replayed, a policy judged) up to about a second on a loaded server.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def refusal(status: int, reason: str | None) -> str:
    """The ``reason`` label of a refused report: its own, else its status's."""
    return reason if reason in REFUSALS else _BY_STATUS.get(status, "error")


class ServerMetrics:
    """This process's counters and histograms, in a registry of its own (a test
    process runs several servers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        Info("gpuward_build", "The running gpuward version.", registry=self.registry).info(
            {"version": VERSION}
        )
        self.reports_accepted = Counter(
            "gpuward_reports_accepted_total",
            "Reports stored, by the update outcome they report (up-to-date, staged, "
            "committed, rolled-back, refused, failed).",
            ["update"],
            registry=self.registry,
        )
        self.reports_refused = Counter(
            "gpuward_reports_refused_total",
            "Reports refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.report_verification = Histogram(
            "gpuward_report_verification_seconds",
            "Time from a report's arrival to its verdict: signature, body, parsing and "
            "attestation, before it is stored.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.attestation_verification = Histogram(
            "gpuward_attestation_verification_seconds",
            "Time to verify TPM evidence (quote, event log, policy), by purpose: a "
            "report's, or an enrollment's (with the token alone, the token check).",
            ["purpose"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Every series exists from the start, so that rate() sees the first one.
        for update in sorted(UPDATE_OUTCOMES):
            self.reports_accepted.labels(update)
        for reason in REFUSALS:
            self.reports_refused.labels(reason)
        for purpose in ("report", "enrollment"):
            self.attestation_verification.labels(purpose)


@dataclass(frozen=True)
class FleetSnapshot:
    """What a scrape reads from the store, at ``now``."""

    now: float
    resign_interval_s: float
    nodes: tuple[NodeCount, ...]
    phases: Mapping[str, int]
    rollouts: tuple[RolloutStanding, ...]
    renewals: tuple[RenewalStatus, ...]
    pool: PoolUse
    remediation_policies: Mapping[str, RemediationPolicy]  # by pool, as configured
    remediation_boards: tuple[RemediationBoard, ...]
    remediation_counts: tuple[RemediationCount, ...]
    report_schedule_s: int  # the configured period of scheduled reports; 0: none
    last_scheduled_report: int | None  # when the newest scheduled report was made


async def read_snapshot(store: Store, config: ServerConfig, now: float) -> FleetSnapshot:
    # A node is missing once silent for longer than this (server.fleetview.node_state):
    # a whole-second bound, as reports' times are kept in whole seconds.
    missing_before = math.ceil(now - config.report_interval_s * config.missing_after)
    return FleetSnapshot(
        now=now,
        resign_interval_s=config.resign_interval_s,
        nodes=tuple(await store.node_counts(missing_before)),
        phases=await store.rollout_phases(),
        rollouts=tuple(await store.rollout_standings()),
        renewals=tuple(await statuses(store)),
        pool=store.pool_use(),
        remediation_policies={} if config.remediation is None else config.remediation.pools,
        remediation_boards=tuple(await store.remediation_boards()),
        remediation_counts=tuple(await store.remediation_counts()),
        report_schedule_s=REPORT_SCHEDULES[config.report_schedule],
        last_scheduled_report=await _last_scheduled(store),
    )


async def _last_scheduled(store: Store) -> int | None:
    kept = await store.kept_reports("fleet", SCHEDULED_SEARCHED)
    return next((k.generated_at for k in kept if k.made_by == SCHEDULED_BY), None)


class FleetCollector(Collector):
    """The fleet-wide series of one snapshot: gauges, and the store's counter."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # collected once per scrape: nothing to check names against ahead

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._rollouts()
        yield from self._metadata()
        yield from self._resigners()
        yield from self._pool()
        yield from self._remediation()
        yield from self._reports()

    def _reports(self) -> Iterator[Metric]:
        s = self.snapshot
        yield GaugeMetricFamily(
            "gpuward_compliance_report_schedule_seconds",
            "How often the server makes and keeps a fleet compliance report (0: only on request).",
            value=s.report_schedule_s,
        )
        if s.report_schedule_s:
            # 0 until the first one is kept, so that a schedule never kept alerts too.
            yield GaugeMetricFamily(
                "gpuward_compliance_report_last_scheduled_timestamp_seconds",
                "When the newest scheduled fleet compliance report was made.",
                value=s.last_scheduled_report or 0,
            )

    def _nodes(self) -> Iterator[Metric]:
        nodes = GaugeMetricFamily(
            "gpuward_nodes",
            "Enrolled nodes by pool, state (healthy, unhealthy, missing, new) and the "
            "attestation of their latest report (passed, failed; pending: a TPM node "
            "yet to report; unattested: enrolled without a TPM).",
            labels=["pool", "state", "attestation"],
        )
        counts = {(c.pool, c.state, c.attestation): c.nodes for c in self.snapshot.nodes}
        for pool in sorted({c.pool for c in self.snapshot.nodes}):
            for state in NODE_STATES:
                for result in ATTESTATION_RESULTS:
                    nodes.add_metric([pool, state, result], counts.get((pool, state, result), 0))
        yield nodes

    def _rollouts(self) -> Iterator[Metric]:
        s = self.snapshot
        phases = GaugeMetricFamily("gpuward_rollouts", "Rollouts by phase.", labels=["phase"])
        for each in Phase:
            phases.add_metric([each.value], s.phases.get(each.value, 0))
        yield phases
        per = ["rollout", "pool"]
        phase = GaugeMetricFamily(
            "gpuward_rollout_phase",
            "1 for an active rollout's phase (running, paused, halted), 0 for the others.",
            labels=[*per, "phase"],
        )
        wave = GaugeMetricFamily(
            "gpuward_rollout_wave", "The wave an active rollout is in, from 0.", labels=per
        )
        waves = GaugeMetricFamily(
            "gpuward_rollout_waves", "How many waves an active rollout has.", labels=per
        )
        nodes = GaugeMetricFamily(
            "gpuward_rollout_nodes",
            "An active rollout's nodes by wave and progress (pending, assigned, done, failed).",
            labels=[*per, "wave", "progress"],
        )
        progressed = GaugeMetricFamily(
            "gpuward_rollout_last_progress_timestamp_seconds",
            "When an active rollout last moved (a node assigned or judged, a wave "
            "started, a command): a running rollout that has not moved for long is stuck.",
            labels=per,
        )
        active = sorted(p.value for p in ACTIVE_PHASES)
        for rollout in s.rollouts:
            labels = [rollout.rollout_id, rollout.pool]
            for name in active:
                phase.add_metric([*labels, name], float(rollout.phase == name))
            wave.add_metric(labels, rollout.wave)
            count = 1 + max((w for w, _, _ in rollout.nodes), default=-1)
            waves.add_metric(labels, count)
            counts = {(w, p): n for w, p, n in rollout.nodes}
            for w in range(count):
                for progress in Progress:
                    nodes.add_metric(
                        [*labels, str(w), progress.value], counts.get((w, progress.value), 0)
                    )
            progressed.add_metric(labels, rollout.last_event_at)
        yield from (phase, wave, waves, nodes, progressed)

    def _metadata(self) -> Iterator[Metric]:
        expires = GaugeMetricFamily(
            "gpuward_metadata_expires_in_seconds",
            "Seconds until a role's metadata expires, as the re-signers last read it: per "
            "repository (image, director: the first of every node's) and role.",
            labels=["repository", "role"],
        )
        soonest: dict[str, float] = {}
        for status in self.snapshot.renewals:
            for expiry in status.expiries:
                at = expiry.expires.timestamp()
                soonest[expiry.role] = min(at, soonest.get(expiry.role, at))
        for key, at in sorted(soonest.items()):
            repository, _, role = key.partition(":")
            expires.add_metric([repository, role], at - self.snapshot.now)
        yield expires

    def _resigners(self) -> Iterator[Metric]:
        per = ["host", "repo"]
        failures = GaugeMetricFamily(
            "gpuward_resigner_failed_passes",
            "A re-signer's failed passes in a row (0: its last pass succeeded).",
            labels=per,
        )
        overdue = GaugeMetricFamily(
            "gpuward_resigner_overdue",
            "1 when a re-signer is silent well past its next pass: it stopped.",
            labels=per,
        )
        last_pass = GaugeMetricFamily(
            "gpuward_resigner_last_pass_timestamp_seconds",
            "When a re-signer's last pass ended.",
            labels=per,
        )
        last_ok = GaugeMetricFamily(
            "gpuward_resigner_last_success_timestamp_seconds",
            "When a re-signer's last successful pass ended.",
            labels=per,
        )
        for status in self.snapshot.renewals:
            labels = [status.host, status.repo]
            failed = status.failures if status.outcome == FAILED else 0
            failures.add_metric(labels, failed)
            late = status.overdue(self.snapshot.now, self.snapshot.resign_interval_s)
            overdue.add_metric(labels, float(late))
            last_pass.add_metric(labels, status.at)
            if status.last_ok_at is not None:
                last_ok.add_metric(labels, status.last_ok_at)
        yield from (failures, overdue, last_pass, last_ok)

    def _pool(self) -> Iterator[Metric]:
        pool = self.snapshot.pool
        connections = GaugeMetricFamily(
            "gpuward_db_connections",
            "The store's open connections: in use, or idle.",
            labels=["state"],
        )
        connections.add_metric(["in_use"], pool.in_use)
        connections.add_metric(["idle"], pool.open - pool.in_use)
        yield connections
        yield GaugeMetricFamily(
            "gpuward_db_connections_max",
            "The most connections the store opens (1 for SQLite).",
            value=pool.limit,
        )

    def _remediation(self) -> Iterator[Metric]:
        s = self.snapshot
        per = ["pool"]
        nodes = GaugeMetricFamily(
            "gpuward_remediation_nodes",
            "Nodes under remediation by pool, stage (awaiting-approval, acting, drained, "
            "service, resuming) and action (drain, reset, reboot, service).",
            labels=[*per, "stage", "action"],
        )
        oldest = GaugeMetricFamily(
            "gpuward_remediation_oldest_decision_timestamp_seconds",
            "When the action of a pool's longest-standing node in a stage was decided: "
            "for awaiting-approval, since when the oldest waits for an operator.",
            labels=[*per, "stage"],
        )
        held = GaugeMetricFamily(
            "gpuward_remediation_held_nodes",
            "Nodes that need an action, held back by their pool's budget or by one node "
            "per failure domain.",
            labels=per,
        )
        failing = GaugeMetricFamily(
            "gpuward_remediation_step_failures",
            "Nodes whose last scheduler step (a drain, a hook, a resume) failed; it is "
            "retried every tick.",
            labels=per,
        )
        events = CounterMetricFamily(
            "gpuward_remediation_events_total",
            "Remediation audit entries by pool, event (decided, done, failed, held, "
            "resumed, ...) and action, counted in the store: every replica gives the same.",
            labels=[*per, "event", "action"],
        )
        boards = {b.pool: b for b in s.remediation_boards}
        counts: dict[str, dict[tuple[str, str], int]] = {}
        for count in s.remediation_counts:
            counts.setdefault(count.pool, {})[(count.event, count.action)] = count.entries
        # A configured pool's series exist from the start, zero or not, so that a
        # graph starts at 0 and increase() sees the first event.
        for pool in sorted({*s.remediation_policies, *boards, *counts}):
            policy = s.remediation_policies.get(pool)
            board = boards.get(pool, RemediationBoard(pool))
            actions = frozenset() if policy is None else policy.actions
            drains = sorted(
                {a.value for a in actions if a.drains} | {n.action.value for n in board.nodes}
            )
            for stage in Stage:
                here = [n for n in board.nodes if n.stage is stage]
                for action in drains:
                    nodes.add_metric(
                        [pool, stage.value, action], sum(n.action == action for n in here)
                    )
                if here:
                    oldest.add_metric([pool, stage.value], min(n.since for n in here))
            held.add_metric([pool], len(board.held))
            failing.add_metric([pool], sum(n.attempts > 0 for n in board.nodes))
            seen = counts.get(pool, {})
            for event, action in sorted(_audit_kinds(actions) | set(seen)):
                events.add_metric([pool, event, action], seen.get((event, action), 0))
        yield from (nodes, oldest, held, failing, events)


def _audit_kinds(actions: frozenset[Action]) -> set[tuple[str, str]]:
    """Every (event, action) a pool's audit log can hold when it takes ``actions``:
    a notify is only ever notified (rule 2); an action that drains, any other event."""
    kinds: set[tuple[str, str]] = set()
    if Action.NOTIFY in actions:
        kinds.add((AuditEvent.NOTIFIED.value, Action.NOTIFY.value))
    for action in actions:
        if action.drains:
            kinds |= {(e.value, action.value) for e in AuditEvent if e is not AuditEvent.NOTIFIED}
    return kinds


def exposition(metrics: ServerMetrics, snapshot: FleetSnapshot) -> bytes:
    """The scrape's body: this process's counters, then the snapshot's series."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(snapshot))
    return generate_latest(metrics.registry) + generate_latest(fleet)
