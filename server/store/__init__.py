"""The fleet store: one interface, SQLite for one server, PostgreSQL for replicas.

``open_store(url)`` picks the backend from the URL (``sqlite:///path``, a plain
path, or ``postgresql://...``). Both run the same queries (``server.store.sql``)
over a small transaction interface, and the same migrations
(``server.store.migrations``); only connections differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from fleet.attestation_verdict import AttestationVerdict
from fleet.errors import GpuwardError
from fleet.merkle import Subtree
from fleet.nodeauth import MAX_SKEW_S
from fleet.remediation import Decision, RemediationAudit, RemediationBoard
from fleet.report import HealthReport
from fleet.rollout import Observation, Phase, Rollout, Transition
from fleet.stragglers import NodeWindow
from fleet.tlog import LogEntry
from fleet.webhook import WebhookEvent
from server.attestation.challenges import PendingChallenge, Successor

log = structlog.get_logger(__name__)

# A signed request is fresh for MAX_SKEW_S either side of the server's clock, so a
# report's nonce can be replayed until 2 * MAX_SKEW_S after it arrived; another
# minute covers replicas' clocks disagreeing.
REPLAY_WINDOW_S = 2 * MAX_SKEW_S + 60


class Conflict(GpuwardError):
    """The change contradicts what is stored (an active rollout, an existing id)."""


class EkInUse(Conflict):
    """The TPM's EK is bound to another node: a TPM vouches for one node only."""

    def __init__(self, node_id: str, holder: str) -> None:
        super().__init__(ek_bound_message(node_id, holder))
        self.holder = holder


def ek_bound_message(node_id: str, holder: str) -> str:
    return (
        f"this TPM's endorsement key is bound to node {holder}, and a TPM vouches for one "
        f"node only, so it cannot enroll {node_id}. If this machine is now {node_id}, an "
        f"admin removes {holder} first ('gpuward nodes remove {holder}', which deletes its "
        "history and frees the TPM)"
    )


@dataclass(frozen=True)
class Retention:
    """How many reports, and how old, the store keeps per node (``server run``'s
    report_retention_count and report_retention_days). A node's latest report is
    always kept, and so is every report young enough to be replayed
    (``REPLAY_WINDOW_S``): its row is what refuses the replay at another replica."""

    count: int
    max_age_s: float


@dataclass(frozen=True)
class RemovedNode:
    """What removing a node deleted with it, for the audit log."""

    node_id: str
    pool: str
    attestation: str
    ek_certificate_sha256: str | None  # the EK the removal frees, if a TPM vouched
    reports: int  # reports deleted


@dataclass(frozen=True)
class EnrolledNode:
    node_id: str
    public_key: bytes  # raw Ed25519: verifies the node's request signatures
    pool: str
    attested: bool  # False in the no-TPM enrollment-token mode
    attestation: str  # how enrollment was verified, for people ("unattested", "tpm2")
    enrolled_at: int
    # The TPM attestation key record (``server.attestation.enrollment.EnrolledTpm`` as JSON)
    # that later quotes must verify with; None when no TPM vouched for the node.
    tpm: str | None = None
    # The applier measurement key (``keys.driver_key``) the node's first attested
    # report named: every later driver log must be signed by it. None: none yet.
    # Read with the node on every request, so checking it costs no query.
    driver_key: bytes | None = None


@dataclass(frozen=True)
class NodeStatus:
    node: EnrolledNode
    last_seen: int | None  # None: enrolled, never reported
    report: HealthReport | None
    assigned: str | None  # the bundle a rollout assigned it
    report_attestation: AttestationVerdict | None = None  # the latest report's, if attested


@dataclass(frozen=True)
class ReportRecord:
    received_at: int
    report: HealthReport
    attestation: AttestationVerdict | None = None  # the verdict, if the report was attested


@dataclass(frozen=True)
class KeptFile:
    """One signed file of a kept compliance report."""

    fmt: str  # "json", "html", "pdf" or "csv"
    name: str  # the file name it was signed under
    sha256: str  # hex, of the file's bytes
    size: int
    signature: bytes  # the report key's signature over the file's bytes


@dataclass(frozen=True)
class KeptReport:
    """A compliance report made on a schedule or on request, kept with its files."""

    report_id: str
    scope: str  # "fleet" or "node"
    subject: str  # "fleet", or the node id
    generated_at: int
    made_by: str  # the operator token's name, or "schedule"
    key_id: str
    summary: str  # the document's summary as JSON text: the next report's trend reads it
    files: tuple[KeptFile, ...]


# A kept file is stored in pieces of at most this many bytes, each compressed apart:
# a download reads one piece at a time, never the whole file.
KEPT_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class OperatorToken:
    token_hash: str  # sha256 hex of the token; the token itself is never stored
    name: str
    role: str
    created_at: int
    token_id: str = ""  # a short random id that names the token in lists and revocation
    expires_at: int | None = None  # None: issued before tokens expired, or --expires-in never
    revoked_at: int | None = None
    last_used_at: int | None = None  # to within operators.USED_EVERY_S


@dataclass(frozen=True)
class RolloutAssignment:
    node_id: str
    target: str
    rollout_id: str
    assigned_at: int


@dataclass(frozen=True)
class RolloutEvent:
    at: int
    event: str


@dataclass(frozen=True)
class NodeQuery:
    """Which nodes a dashboard page lists; every condition given must hold.

    A node's state is the one ``server.fleetview.node_state`` gives it: missing when
    last heard (or, never heard, enrolled) before ``missing_before``.
    """

    missing_before: int
    search: str = ""  # a part of the node id, any case
    state: str | None = None  # healthy, unhealthy, missing or new
    pool: str | None = None
    attestation: str | None = None  # how it enrolled (unattested, tpm2), or FAILING
    driver: str | None = None  # the driver its latest report names; NO_DRIVER: none
    differs: bool = False  # only nodes assigned a bundle they do not report running


@dataclass(frozen=True)
class ListedNode:
    """A node as the dashboard's list shows it: what its latest report said, from the
    columns kept with it (reading and parsing each report body would cost more than
    the rest of the page), and its state as the store tells it."""

    node_id: str
    pool: str
    attestation: str  # how it enrolled
    state: str  # server.fleetview.node_state's, for ``NodeQuery.missing_before``
    last_seen: int | None  # None: never reported
    driver: str | None
    bundle: str | None  # the bundle it reports running
    update: str | None  # its latest update outcome
    report_attested: bool | None  # its latest report's verdict; None: not attested
    assigned: str | None  # the bundle a rollout assigned it

    @property
    def differs(self) -> bool:
        return assigned_elsewhere(self.assigned, self.bundle)


def assigned_elsewhere(assigned: str | None, running: str | None) -> bool:
    """Whether a node is assigned a bundle it does not report running (the rule
    ``NodeQuery.differs`` filters by): updating, or stuck."""
    return assigned is not None and running != assigned


# ``NodeQuery.attestation``: nodes whose latest report's attestation failed.
FAILING = "failing"
# ``NodeQuery.driver`` and ``FleetCount.driver``: no driver reported (yet).
NO_DRIVER = "none"


@dataclass(frozen=True)
class FleetCount:
    """How many nodes share one driver, way of enrolling and latest verdict, by state
    (``NodeQuery.state``), and how many of them ``NodeQuery.differs`` selects."""

    driver: str  # NO_DRIVER: none reported
    attestation: str  # how they enrolled
    attested: bool  # enrolled with a TPM's word
    report_attested: bool | None  # their latest report's verdict; None: not attested
    healthy: int
    unhealthy: int
    missing: int
    new: int
    differs: int

    @property
    def nodes(self) -> int:
        return self.healthy + self.unhealthy + self.missing + self.new


@dataclass(frozen=True)
class WaveProgress:
    """How many nodes of one wave of a rollout stand where (``fleet.rollout.Progress``)."""

    wave: int
    pending: int
    assigned: int
    done: int
    failed: int

    @property
    def nodes(self) -> int:
        return self.pending + self.assigned + self.done + self.failed


@dataclass(frozen=True)
class RolloutProgress:
    """A rollout as a list of rollouts shows it, without its nodes."""

    id: str
    pool: str
    target: str
    phase: Phase
    waves: tuple[WaveProgress, ...]


RolloutChange = Callable[[Rollout, Mapping[str, Observation]], Transition]

# A webhook delivery's states: retried while pending, until delivered or out of attempts.
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class WebhookDelivery:
    """One event to one endpoint, claimed for an attempt."""

    event_id: str
    endpoint: str
    attempts: int  # made before this one
    body: bytes  # the event's JSON, the same on every attempt


@dataclass(frozen=True)
class WebhookCondition:
    """A condition the server watches that holds now (server.webhooks)."""

    episode: str  # what it is about this time (a node missing since when): a change is news
    since: int  # when it was found


@dataclass(frozen=True)
class SilentNode:
    node_id: str
    pool: str
    last_seen: int | None  # None: enrolled, never reported
    enrolled_at: int


@dataclass(frozen=True)
class FailingAttestation:
    """An enrolled node whose latest report's attestation did not pass."""

    node_id: str
    pool: str
    received_at: int
    verdict: AttestationVerdict


# What the metrics scrape reads (``server.metrics``): counted in SQL, so a scrape of a
# fleet of 100,000 nodes moves a few dozen rows, never a row per node.


@dataclass(frozen=True)
class NodeCount:
    """How many nodes of a pool are in a state (``server.fleetview.NODE_STATES``) with
    their latest report's attestation: "passed" or "failed", "pending" for a TPM node
    that has not reported yet, "unattested" for a node enrolled without a TPM."""

    pool: str
    state: str
    attestation: str
    nodes: int


@dataclass(frozen=True)
class RolloutStanding:
    """An active rollout's standing: its phase and wave, how many nodes of each wave
    stand where (``fleet.rollout.Progress``), and when its last event was logged
    (an assignment, a node's verdict, a wave's start, a command): the rollout's
    last progress."""

    rollout_id: str
    pool: str
    phase: str
    wave: int
    nodes: tuple[tuple[int, str, int], ...]  # (wave, progress, nodes)
    last_event_at: int


@dataclass(frozen=True)
class RemediationCount:
    """How many audit entries a pool has of an event (``fleet.remediation.AuditEvent``)
    and action, ever: it only grows, in whichever replica is asked."""

    pool: str
    event: str
    action: str
    entries: int


@dataclass(frozen=True)
class PoolUse:
    """The store's connections: open, busy, and the most the pool opens."""

    open: int
    in_use: int
    limit: int


class Store(Protocol):
    async def close(self) -> None: ...

    async def enroll(self, node: EnrolledNode) -> tuple[EnrolledNode, bool]:
        """Store ``node`` unless its id is enrolled; return what is stored, and if it was new."""
        ...

    async def enrolled(self, node_id: str) -> EnrolledNode | None: ...

    async def ek_holder(self, ek_certificate_sha256: str, ek_public_sha256: str) -> str | None:
        """The node an EK is bound to (by its certificate's or its key's digest), if any."""
        ...

    async def unbound_tpm_nodes(self) -> list[str]:
        """TPM-enrolled nodes whose EK is bound to no one: enrolled before EKs were
        bound, sharing their EK with a node enrolled earlier."""
        ...

    async def remove_node(self, node_id: str) -> RemovedNode | None:
        """Remove the enrollment and everything the node left: its reports and latest
        report, GPU samples, assignment, event log, pending challenges, pinned
        applier key and EK binding. A node enrolling the id next starts afresh.
        None if the node is not enrolled."""
        ...

    async def add_report(
        self,
        report: HealthReport,
        received_at: int,
        remote: str,
        nonce: str,
        attestation: AttestationVerdict | None = None,
        public_key: bytes | None = None,
    ) -> bool:
        """Store a report (with its attestation verdict) and make it the node's latest,
        trimming the node's reports to the retention policy; False if the nonce was
        used, or if the node is no longer enrolled with ``public_key``."""
        ...

    async def enforce_retention(self, now: float) -> int:
        """Trim every node's reports to the retention policy (those of nodes that
        stopped reporting included); the number deleted."""
        ...

    async def fleet(self) -> list[NodeStatus]: ...

    async def node_page(
        self, query: NodeQuery, limit: int, *, after: str | None = None, before: str | None = None
    ) -> list[ListedNode]:
        """At most ``limit`` nodes ``query`` selects, in node id order: the first ones,
        those right after the id ``after``, or those right before the id ``before``
        (keyset paging: a page costs its rows, however deep it is)."""
        ...

    async def fleet_counts(self, missing_before: int) -> list[FleetCount]:
        """The fleet counted in one pass, grouped by driver, enrollment and verdict."""
        ...

    async def gpu_windows(self, since: int) -> list[NodeWindow]:
        """Each enrolled node's latest GPU samples (``fleet.stragglers.WINDOW`` reports
        at most), if its last one arrived at ``since`` or later."""
        ...

    async def node(self, node_id: str) -> NodeStatus | None: ...

    async def history(self, node_id: str, limit: int) -> list[ReportRecord]: ...

    async def compliance_evidence(
        self, limit: int, node_id: str | None = None
    ) -> dict[str, list[ReportRecord]]:
        """Per node (or only ``node_id``), newest first, the reports a compliance report
        reads besides the node's latest (which ``fleet()``/``node()`` already carry):
        its newest ``limit`` updates (reports whose update is not "up-to-date") and its
        newest attested report; the latest report itself is never included. One query
        however large the fleet; routine reports are not read.

        Newest is by arrival order (as ``history`` reads), and a report that is both
        an update and the attested one is there once; nodes with none are absent."""
        ...

    async def pools(self) -> dict[str, int]: ...

    # Kept compliance reports (server.reports): every replica serves every one.

    async def keep_report(
        self, report: KeptReport, bodies: Mapping[str, bytes], slot: str | None = None
    ) -> bool:
        """Keep a report and its files (``bodies`` by format, one per ``report.files``);
        Conflict if the id is taken. Files are stored zlib-compressed in chunks (at
        most 8 MiB of file a chunk), compressed off the event loop (asyncio.to_thread),
        in one transaction. ValueError, keeping nothing, if the bodies are not one per
        file or a file's size or sha256 is not its body's.

        ``slot`` (such as "daily:2026-12-07") is claimed in the same transaction: False,
        keeping nothing, if a report was kept for it already. So of replicas making a
        scheduled report at once, one keeps it, and a keep that fails frees the slot."""
        ...

    async def kept_reports(self, scope: str | None = None, limit: int = 100) -> list[KeptReport]:
        """Newest first (generated_at, then id)."""
        ...

    async def kept_report(self, report_id: str) -> KeptReport | None: ...

    async def kept_chunk(self, report_id: str, fmt: str, seq: int) -> bytes | None:
        """The ``seq``th piece (from 0) of a kept file, decompressed; None past the end
        or if there is no such file."""
        ...

    async def forget_reports(self, scope: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` reports of ``scope`` with their files;
        the ids deleted, newest first."""
        ...

    async def add_token(self, token: OperatorToken) -> None: ...

    async def token(self, token_hash: str) -> OperatorToken | None: ...

    async def token_used(self, token_hash: str, now: int) -> None: ...

    async def tokens(self) -> list[OperatorToken]:
        """Every operator token, revoked and expired ones included, oldest first."""
        ...

    async def revoke_token(self, token_id: str, now: int) -> None:
        """Mark the token revoked and end every dashboard session it opened."""
        ...

    async def add_session(
        self, session_hash: str, token_hash: str, expires_at: int, now: int
    ) -> None: ...

    async def session(self, session_hash: str, now: int) -> OperatorToken | None:
        """The token behind an unexpired dashboard session (its own checks still apply)."""
        ...

    async def end_session(self, session_hash: str) -> None: ...

    async def pool_running(self, pool: str) -> dict[str, str | None]:
        """Each node of ``pool`` -> the bundle it should run now (assigned, else reported)."""
        ...

    async def create_rollout(self, rollout: Rollout, event: str) -> None:
        """Store a new rollout; ``Conflict`` if its pool has an active one."""
        ...

    async def rollouts(self) -> list[Rollout]: ...

    async def rollout_progress(self, limit: int) -> list[RolloutProgress]:
        """The newest ``limit`` rollouts' progress, newest first."""
        ...

    async def rollout(self, rollout_id: str) -> Rollout | None: ...

    async def rollout_events(self, rollout_id: str) -> list[RolloutEvent]: ...

    async def active_rollouts(self) -> list[str]: ...

    async def change_rollout(
        self, rollout_id: str, change: RolloutChange, now: int, *, wait: bool
    ) -> Rollout | None:
        """Apply ``change`` under the rollout's row lock, with its assignments and events.

        Without ``wait``, returns None at once when another replica holds the lock.
        """
        ...

    async def assignment(self, node_id: str) -> RolloutAssignment | None: ...

    # Attestation: shared by replicas, so any of them redeems what another issued.

    async def add_challenge(
        self, nonce: bytes, pending: PendingChallenge, now: float, limit: int
    ) -> bool:
        """Drop the challenges expired at ``now`` and keep ``pending`` under ``nonce``,
        unless ``limit`` challenges of its purpose are pending: then False."""
        ...

    async def replace_challenge(self, nonce: bytes, pending: PendingChallenge) -> None:
        """Keep ``pending`` under ``nonce`` as its subject's sole challenge of its
        purpose, in place of the one before (removed with the node)."""
        ...

    async def take_sole_challenge(
        self, subject: str, purpose: str, nonce: bytes, successor: Successor | None = None
    ) -> PendingChallenge | None:
        """Delete and return the subject's sole challenge of ``purpose`` if its nonce is
        ``nonce``, in one statement, and keep ``successor`` in its place in the same
        transaction; None (and no successor kept) otherwise."""
        ...

    async def take_challenge(self, nonce: bytes) -> PendingChallenge | None:
        """Delete and return the challenge in one statement; None if there is none."""
        ...

    async def keep_event_log(self, node_id: str, log: bytes) -> None:
        """Keep the node's last verified event log, under its sha256. Nodes with the
        same log share one copy; a log no node keeps any more is deleted."""
        ...

    async def event_log(self, node_id: str) -> tuple[str, bytes] | None:
        """The node's last verified event log: (sha256 hex, bytes)."""
        ...

    async def event_log_sha256(self, node_id: str) -> str | None:
        """The digest of the node's last verified event log, without the log."""
        ...

    async def pin_driver_key(self, node_id: str, public_key: bytes) -> bytes | None:
        """Pin ``public_key`` as the node's applier measurement key if none is pinned
        yet; the key pinned now or before (``EnrolledNode.driver_key``), None if the
        node is not enrolled. Removing the node (to re-enroll it) unpins it."""
        ...

    # Re-signing (server.renewal): every replica answers for every re-signer.

    async def keep_renewal(self, signer: str, status: str) -> None:
        """Keep ``signer``'s last renewal outcome (JSON), in place of the one before."""
        ...

    async def forget_renewal(self, signer: str) -> None:
        """``signer`` stopped on purpose: it no longer re-signs anything."""
        ...

    async def renewals(self) -> list[str]:
        """Every re-signer's last outcome (JSON), by signer."""
        ...

    # Webhooks (server.webhooks): events, their deliveries, the conditions watched.

    async def route_webhook_events(
        self, route: Callable[[str], Sequence[str]], now: int, limit: int
    ) -> int:
        """Give up to ``limit`` events not routed yet a pending delivery, due at
        ``now``, to each endpoint ``route(event type)`` names; the number routed."""
        ...

    async def claim_webhook_deliveries(
        self, endpoints: Sequence[str], now: int, hold_until: int, limit: int
    ) -> list[WebhookDelivery]:
        """Up to ``limit`` pending deliveries to ``endpoints`` due at ``now``, each
        held until ``hold_until`` so that no other replica sends it meanwhile."""
        ...

    async def finish_webhook_attempt(
        self, delivery: WebhookDelivery, state: str, next_attempt_at: int, error: str
    ) -> None:
        """Record an attempt's outcome: ``state`` (pending: try again at
        ``next_attempt_at``), and the error, if any."""
        ...

    async def webhook_delivery_states(self, event_id: str) -> dict[str, tuple[str, int]]:
        """Each endpoint's delivery of the event: (state, attempts made)."""
        ...

    async def forget_webhook_events(self, before: int) -> int:
        """Delete events created before ``before`` with their deliveries; how many."""
        ...

    async def webhook_conditions(self, kind: str) -> dict[str, WebhookCondition]:
        """The conditions of ``kind`` that held when last watched, by subject."""
        ...

    async def change_webhook_condition(
        self,
        kind: str,
        subject: str,
        before: str | None,
        after: str | None,
        event: WebhookEvent,
    ) -> bool:
        """Move the condition from episode ``before`` (None: it did not hold) to
        ``after`` (None: it ended) and record ``event``, in one transaction; False,
        recording nothing, when it was not at ``before`` (another replica moved it)."""
        ...

    async def silent_nodes(self, before: int) -> list[SilentNode]:
        """Enrolled nodes last heard from (or enrolled, if never) before ``before``."""
        ...

    async def failing_attestations(self) -> list[FailingAttestation]:
        """Enrolled nodes whose latest report was attested and did not pass."""
        ...

    # Remediation (server.remediation).

    async def change_remediation(
        self,
        pool: str,
        change: Callable[[RemediationBoard], Decision],
        now: int,
        *,
        notify: bool,
    ) -> RemediationBoard:
        """Apply ``change`` to the pool's board (an empty one if it has none) under
        its row lock, storing the board and its audit entries (and, with ``notify``,
        a webhook event for each) in one transaction."""
        ...

    # The transparency log (server.tlog): append-only, never trimmed.

    async def append_log(
        self, entries: Sequence[LogEntry], *, once: bool = False, notify: bool = False
    ) -> list[tuple[int, LogEntry]]:
        """Append ``entries`` in one transaction; each appended, with its index. ``once``:
        leave out those whose ``LogEntry.once_key`` the log has already (what the
        server sees on every pass, such as the bundles it serves). ``notify``: a split
        view appended is a ``log.split_view`` webhook event too, in that transaction.
        Rollouts, their assignments and remediation are logged by the store itself,
        in the transaction of the change."""
        ...

    async def log_size(self) -> int: ...

    async def log_subtrees(self, subtrees: Iterable[Subtree]) -> dict[Subtree, bytes]:
        """The hashes of those perfect subtrees (``fleet.merkle``) the log has."""
        ...

    async def log_entries(self, start: int, end: int) -> list[str]:
        """The canonical JSON of entries [start, end), in order."""
        ...

    async def log_once(self, once_key: str) -> int | None:
        """The entry appended ``once`` under that key (``LogEntry.once_key``), if any."""
        ...

    async def log_index(self, leaf_hash: bytes) -> int | None:
        """The first entry with that leaf hash, if any."""
        ...

    async def remediation_boards(self) -> list[RemediationBoard]:
        """Every pool's board, by pool."""
        ...

    async def remediation_audit(self, node_id: str | None, limit: int) -> list[RemediationAudit]:
        """The newest ``limit`` audit entries (of ``node_id`` alone, if given), oldest first."""
        ...

    # Metrics (server.metrics): aggregates, cheap at any fleet size.

    async def node_counts(self, missing_before: int) -> list[NodeCount]:
        """Nodes by pool, state and attestation; a node last heard from (or enrolled,
        if it never reported) before ``missing_before`` is missing."""
        ...

    async def rollout_phases(self) -> dict[str, int]:
        """How many rollouts are in each phase that has any."""
        ...

    async def rollout_standings(self) -> list[RolloutStanding]:
        """Each active rollout's standing (running, paused or halted)."""
        ...

    async def remediation_counts(self) -> list[RemediationCount]:
        """The remediation audit log's entries by pool, event and action."""
        ...

    def pool_use(self) -> PoolUse: ...


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names; None for PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if not path:
        raise GpuwardError("empty database URL; give a file path or sqlite:///path")
    return Path(path)


async def open_store(url: str, retention: Retention | None = None) -> Store:
    """The store at ``url``, migrated; ``retention``: None keeps every report."""
    path = sqlite_path(url)
    store: Store
    if path is None:
        from server.store.postgres import PostgresStore

        store = await PostgresStore.connect(url, retention)
    else:
        from server.store.sqlite import SqliteStore

        store = await SqliteStore.open(path, retention)
    unbound = await store.unbound_tpm_nodes()
    if unbound:
        log.warning(
            "tpm_nodes_share_an_ek",
            nodes=unbound,
            action="each shares its TPM's EK with a node enrolled before it (enrolled "
            "before EKs were bound): remove the ones that are not that machine "
            "('gpuward nodes remove ID')",
        )
    return store
