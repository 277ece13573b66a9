"""The store's queries, written once for SQLite and PostgreSQL.

Both backends speak the SQL used here (``?`` placeholders, which the PostgreSQL
backend numbers; ``ON CONFLICT``; ``RETURNING``). A backend supplies
transactions and the one clause that differs: how a rollout row is locked.
Every multi-statement change runs in one transaction, so a replica that dies
half-way leaves nothing half-written.

The writes every node makes every interval (its report, and the report
challenge issued and redeemed) are group-committed (``GroupCommit``): those that
arrive while one batch commits are written together in the next transaction, so
a commit (and its fsync) serves many; each caller is answered only once its
batch has committed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fleet import merkle
from fleet.attestation_verdict import AttestationVerdict
from fleet.gpu import GpuSample
from fleet.remediation import Decision, RemediationAudit, RemediationBoard
from fleet.report import HealthReport
from fleet.rollout import ACTIVE_PHASES, Observation, Phase, Progress, Rollout, assignments
from fleet.stragglers import WINDOW, NodeWindow
from fleet.tlog import EntryKind, LogEntry, assignment_entry, remediation_entry, rollout_entry
from fleet.webhook import LOG_SPLIT_VIEW, NODE_REMEDIATION, Notice, WebhookEvent, new_event_id
from server.attestation.challenges import PendingChallenge, Successor
from server.attestation.enrollment import EnrolledTpm
from server.store import (
    FAILING,
    KEPT_CHUNK,
    NO_DRIVER,
    PENDING,
    REPLAY_WINDOW_S,
    Conflict,
    EkInUse,
    EnrolledNode,
    FailingAttestation,
    FleetCount,
    KeptFile,
    KeptReport,
    ListedNode,
    NodeCount,
    NodeQuery,
    NodeStatus,
    OperatorToken,
    PoolUse,
    RemediationCount,
    RemovedNode,
    ReportRecord,
    Retention,
    RolloutAssignment,
    RolloutChange,
    RolloutEvent,
    RolloutProgress,
    RolloutStanding,
    SilentNode,
    WaveProgress,
    WebhookCondition,
    WebhookDelivery,
)
from server.store.migrations import Dialect

Row = tuple[Any, ...]


class Tx(Protocol):
    async def execute(self, sql: str, *args: object) -> None: ...

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """``sql`` once per row of arguments, in order, in one round trip."""
        ...

    async def fetch_many(self, sql: str, rows: Sequence[Sequence[object]]) -> list[Row]:
        """``sql`` once per row of arguments, in order: every row they return."""
        ...


class Database(Protocol):
    # Appended to the SELECT of a rollout row: lock it for this transaction,
    # waiting for another replica's lock or skipping the row at once.
    lock_wait: str
    lock_skip: str
    # Appended to the SELECT of enrollment rows a report batch is stored under: a
    # removal of the node (a DELETE) waits for the batch, and then deletes its reports.
    lock_share: str
    # How the database spells what SQL leaves to each (reading JSON): the
    # placeholders of ``server.store.migrations``.
    dialect: Dialect

    def transaction(self, *, write: bool) -> AbstractAsyncContextManager[Tx]: ...

    def pool_use(self) -> PoolUse: ...

    async def query(self, sql: str, *args: object) -> list[Row]:
        """One read-only statement on its own, in one round trip (the hot reads)."""
        ...

    async def close(self) -> None: ...


_NODE_COLUMNS = (
    "e.node_id, e.public_key, e.pool, e.attested, e.attestation, e.enrolled_at, e.tpm, "
    "e.driver_key, n.last_seen, r.body, a.target, r.attestation"
)
_ENROLLMENTS = (
    "SELECT node_id, public_key, pool, attested, attestation, enrolled_at, tpm, driver_key "
    "FROM enrollments"
)
_ENROLLMENT = f"{_ENROLLMENTS} WHERE node_id = ?"
_OPERATORS = (
    "SELECT token_hash, name, role, created_at, token_id, expires_at, revoked_at, "
    "last_used_at FROM operator_tokens"
)
_LIVE_SESSION = "SELECT token_hash FROM operator_sessions WHERE session_hash = ? AND expires_at > ?"


def _listed_joins(bound: str = "") -> str:
    """A node with its latest report's columns and its assignment, not the report
    itself; ``bound`` (``" > ?"``) limits the joined rows' node ids too."""
    return (
        f"FROM enrollments e LEFT JOIN nodes n ON n.node_id = e.node_id"
        f"{bound and f' AND n.node_id{bound}'} "
        f"LEFT JOIN assignments a ON a.node_id = e.node_id{bound and f' AND a.node_id{bound}'}"
    )


_LISTED_JOINS = _listed_joins()
_NODE_JOINS = f"{_LISTED_JOINS} LEFT JOIN reports r ON r.id = n.last_report"


def _enrolled(row: Row) -> EnrolledNode:
    node_id, key, pool, attested, attestation, enrolled_at, tpm, driver_key = row[:8]
    return EnrolledNode(
        node_id,
        bytes(key),
        pool,
        bool(attested),
        attestation,
        enrolled_at,
        tpm,
        None if driver_key is None else bytes(driver_key),
    )


def _verdict(stored: str | None, where: str) -> AttestationVerdict | None:
    """A report's stored verdict; one that is not (the database was changed outside
    gpuward) is refused by ``InvalidDocument`` naming ``where``."""
    return None if stored is None else AttestationVerdict.from_json(stored, where)


def _record(node_id: str, at: int, body: str, attestation: str | None) -> ReportRecord:
    return ReportRecord(
        at,
        HealthReport.from_dict(json.loads(body)),
        _verdict(attestation, f"the verdict on node {node_id}'s report received at {at}"),
    )


def _by_node(rows: list[Row]) -> dict[str, list[ReportRecord]]:
    """Rows of (node id, report id, received_at, body, attestation) as each node's
    records, in order; a report in several rows is read once."""
    found: dict[str, list[ReportRecord]] = {}
    seen: set[int] = set()
    for node_id, report_id, at, body, attestation in rows:
        if report_id not in seen:
            seen.add(report_id)
            found.setdefault(node_id, []).append(_record(node_id, at, body, attestation))
    return found


def _status(row: Row) -> NodeStatus:
    last_seen, body, target, attestation = row[8:12]
    report = None if body is None else HealthReport.from_dict(json.loads(body))
    verdict = _verdict(attestation, f"the verdict on node {row[0]}'s latest report")
    return NodeStatus(_enrolled(row), last_seen, report, target, verdict)


Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BATCH = 1000


class GroupCommit(Generic[Item, Result]):
    """Items written in batches by ``write`` (one transaction per batch), one batch
    at a time: whatever arrives while a batch is written goes into the next.

    ``submit`` returns the item's result once its batch is written, or raises what
    the write raised: nothing is acknowledged before it is stored. The same
    batching serves the one hot read (each signed request's enrollment).
    """

    def __init__(self, write: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._write = write
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:  # every caller of the batch gets it: none is lost
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():  # its caller may have timed out; the item is stored
                    done.set_result(result)

    async def close(self) -> None:
        """Wait for the items already submitted to be written."""
        if self._writer is not None:
            await self._writer


@dataclass(frozen=True)
class _NewChallenge:
    nonce: bytes
    pending: PendingChallenge
    now: float
    limit: int


@dataclass(frozen=True)
class _SoleChallenge:
    nonce: bytes
    pending: PendingChallenge


# A node's sole challenge of a purpose, in place of the one before.
_REPLACE_SOLE = (
    "INSERT INTO sole_challenges (subject, purpose, nonce, payload, expires_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject, purpose) DO UPDATE SET "
    "nonce = excluded.nonce, payload = excluded.payload, expires_at = excluded.expires_at"
)


def _sole_row(nonce: bytes, pending: PendingChallenge) -> tuple[object, ...]:
    return (pending.subject, pending.purpose, nonce, pending.payload, pending.expires_at)


@dataclass(frozen=True)
class _Report:
    report: HealthReport
    received_at: int
    remote: str
    nonce: str
    attestation: AttestationVerdict | None
    public_key: bytes | None


# A node's latest report and what it says: a report older than the one kept (from
# another replica, late) is stored and counted, but does not replace it. Its newest
# attested report is the attested one stored last, late or not: history's order, and
# retention's (which trims by id), so it goes only after every older attested one.
_UPSERT_NODE = """
    INSERT INTO nodes (node_id, last_report, last_seen, bundle, driver_version,
        update_outcome, healthy, report_attested, last_attested_report, reports_kept)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
    ON CONFLICT (node_id) DO UPDATE SET
        reports_kept = nodes.reports_kept + 1,
        last_attested_report = CASE
            WHEN excluded.last_attested_report > COALESCE(nodes.last_attested_report, 0)
            THEN excluded.last_attested_report ELSE nodes.last_attested_report END,
        report_attested = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.report_attested ELSE nodes.report_attested END,
        last_report = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.last_report ELSE nodes.last_report END,
        bundle = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.bundle ELSE nodes.bundle END,
        driver_version = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.driver_version ELSE nodes.driver_version END,
        update_outcome = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.update_outcome ELSE nodes.update_outcome END,
        healthy = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.healthy ELSE nodes.healthy END,
        last_seen = CASE WHEN nodes.last_seen <= excluded.last_seen
            THEN excluded.last_seen ELSE nodes.last_seen END
    RETURNING node_id, reports_kept
"""


# Deletions in one transaction: of the sweep, or of a report batch on top of its
# writes (in the steady state a batch of N reports deletes about N).
TRIM_ROWS = 5_000


def _runs(over: list[tuple[str, int]]) -> Iterator[dict[str, int]]:
    """``over``'s nodes and how many reports each must lose, in runs of at most
    ``TRIM_ROWS`` (a node's share split between runs where it does not fit)."""
    run: dict[str, int] = {}
    room = TRIM_ROWS
    for node_id, excess in over:
        while excess > 0:
            take = min(excess, room)
            run[node_id] = take
            excess, room = excess - take, room - take
            if room == 0:
                yield run
                run, room = {}, TRIM_ROWS
    if run:
        yield run


def _slack(count: int) -> int:
    """Reports a node may hold beyond the count before it is trimmed: trimming in
    runs of this many costs two statements per run, not per report."""
    return max(1, count // 16)


class SqlStore:
    def __init__(self, db: Database, retention: Retention | None = None) -> None:
        self.db = db
        self.retention = retention
        self._reports = GroupCommit(self._add_reports)
        self._new_challenges = GroupCommit(self._add_challenges)
        self._redeemed = GroupCommit(self._take_challenges)
        self._sole_issued = GroupCommit(self._replace_challenges)
        self._sole_taken = GroupCommit(self._take_sole_challenges)
        self._enrollment_reads = GroupCommit(self._enrolled_many)

    async def close(self) -> None:
        for batches in (
            self._reports, self._new_challenges, self._redeemed, self._sole_issued,
            self._sole_taken, self._enrollment_reads,
        ):  # fmt: skip
            await batches.close()
        await self.db.close()

    # Nodes and reports.

    async def enroll(self, node: EnrolledNode) -> tuple[EnrolledNode, bool]:
        """Raises ``EkInUse`` when the node's TPM is bound to another node."""
        ek = None if node.tpm is None else EnrolledTpm.from_dict(json.loads(node.tpm))
        async with self.db.transaction(write=True) as tx:
            # No conflict target: the node id's and the EK's unique indexes alike.
            created = await tx.fetch(
                "INSERT INTO enrollments (node_id, public_key, pool, attested, attestation, "
                "enrolled_at, tpm, ek_certificate_sha256, ek_public_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING node_id",
                node.node_id,
                node.public_key,
                node.pool,
                node.attested,
                node.attestation,
                node.enrolled_at,
                node.tpm,
                None if ek is None else ek.ek_certificate_sha256,
                None if ek is None else ek.ek_public_sha256,
            )
            rows = await tx.fetch(_ENROLLMENT, node.node_id)
            if not rows and ek is not None:
                holder = await _ek_holder(tx, ek.ek_certificate_sha256, ek.ek_public_sha256)
                raise EkInUse(node.node_id, holder or "another node (removed since; retry)")
        return _enrolled(rows[0]), bool(created)

    async def ek_holder(self, ek_certificate_sha256: str, ek_public_sha256: str) -> str | None:
        async with self.db.transaction(write=False) as tx:
            return await _ek_holder(tx, ek_certificate_sha256, ek_public_sha256)

    async def unbound_tpm_nodes(self) -> list[str]:
        rows = await self.db.query(
            "SELECT node_id FROM enrollments WHERE tpm IS NOT NULL "
            "AND ek_certificate_sha256 IS NULL ORDER BY node_id"
        )
        return [str(node_id) for (node_id,) in rows]

    async def enrolled(self, node_id: str) -> EnrolledNode | None:
        return await self._enrollment_reads.submit(node_id)

    async def _enrolled_many(self, node_ids: list[str]) -> list[EnrolledNode | None]:
        # Every signed request reads its node: those arriving together are read in
        # one statement (on PostgreSQL, a fifth of its work per report otherwise).
        wanted = sorted(set(node_ids))
        placeholders = ", ".join("?" * len(wanted))
        rows = await self.db.query(f"{_ENROLLMENTS} WHERE node_id IN ({placeholders})", *wanted)
        found = {row[0]: _enrolled(row) for row in rows}
        return [found.get(node_id) for node_id in node_ids]

    async def remove_node(self, node_id: str) -> RemovedNode | None:
        async with self.db.transaction(write=True) as tx:
            found = await tx.fetch(
                "DELETE FROM enrollments WHERE node_id = ? "
                "RETURNING pool, attestation, ek_certificate_sha256",
                node_id,
            )
            # Whatever the id left is deleted even if it is not enrolled (any more).
            # The latest-report row first: it references a report.
            await tx.execute("DELETE FROM nodes WHERE node_id = ?", node_id)
            reports = await tx.fetch("DELETE FROM reports WHERE node_id = ? RETURNING id", node_id)
            await tx.execute("DELETE FROM assignments WHERE node_id = ?", node_id)
            logs = await tx.fetch(
                "DELETE FROM event_logs WHERE node_id = ? RETURNING sha256", node_id
            )
            await _drop_unused_logs(tx, [digest for (digest,) in logs])
            await tx.execute("DELETE FROM gpu_samples WHERE node_id = ?", node_id)
            await tx.execute("DELETE FROM sole_challenges WHERE subject = ?", node_id)
            await tx.execute("DELETE FROM challenges WHERE subject = ?", node_id)
        if not found:
            return None
        pool, attestation, ek = found[0]
        return RemovedNode(node_id, pool, attestation, ek, len(reports))

    async def add_report(
        self,
        report: HealthReport,
        received_at: int,
        remote: str,
        nonce: str,
        attestation: AttestationVerdict | None = None,
        public_key: bytes | None = None,
    ) -> bool:
        return await self._reports.submit(
            _Report(report, received_at, remote, nonce, attestation, public_key)
        )

    async def _add_reports(self, batch: list[_Report]) -> list[bool]:
        """Store each report and make it its node's latest; False where its nonce was
        used (before, or earlier in the batch), or where its node is no longer
        enrolled with the key that signed it (removed while the report was checked:
        whoever enrolls the id next must not inherit it)."""
        async with self.db.transaction(write=True) as tx:
            enrolled = await self._enrolled_keys(tx, batch)
            inserted = await tx.fetch_many(
                "INSERT INTO reports (node_id, received_at, remote, body, nonce, attestation, "
                "update_outcome) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (node_id, nonce) DO NOTHING RETURNING id, node_id, nonce",
                [
                    (
                        r.report.node_id,
                        r.received_at,
                        r.remote,
                        r.report.canonical_json.decode("ascii"),
                        r.nonce,
                        None if r.attestation is None else r.attestation.to_json(),
                        r.report.update,
                    )
                    for r in batch
                    if r.public_key is None or enrolled.get(r.report.node_id) == r.public_key
                ],
            )
            ids = {(node_id, nonce): report_id for report_id, node_id, nonce in inserted}
            # The first of two reports with one nonce was inserted; the other is a replay.
            stored = [ids.pop((r.report.node_id, r.nonce), None) for r in batch]
            kept = [r for r, report_id in zip(batch, stored, strict=True) if report_id is not None]
            await _add_samples(tx, kept)
            nodes = sorted({r.report.node_id for r in kept})
            latest_before = await _latest_reports(tx, nodes)
            counts = await tx.fetch_many(
                _UPSERT_NODE,
                [
                    (
                        r.report.node_id,
                        report_id,
                        r.received_at,
                        r.report.bundle,
                        r.report.driver_version,
                        r.report.update,
                        r.report.healthy,
                        None if r.attestation is None else r.attestation.passed,
                        None if r.attestation is None else report_id,
                    )
                    for r, report_id in zip(batch, stored, strict=True)
                    if report_id is not None
                ],
            )
            inserted_ids = {report_id for report_id in stored if report_id is not None}
            superseded = (latest_before | inserted_ids) - await _latest_reports(tx, nodes)
            await _drop_gpu_evidence(tx, self.db.dialect, sorted(superseded))
            if self.retention is not None and kept:
                # A node's last count in the batch is its count after the batch.
                after: dict[str, int] = {node_id: kept_now for node_id, kept_now in counts}
                count = self.retention.count
                over = [(n, k - count) for n, k in after.items() if k > count + _slack(count)]
                # One run at most: nodes far over (the count lowered) are brought
                # down by their next batches and by the sweep.
                now = max(r.received_at for r in kept)
                await _trim(tx, next(_runs(over), {}), now - REPLAY_WINDOW_S)
        return [report_id is not None for report_id in stored]

    async def _enrolled_keys(self, tx: Tx, batch: list[_Report]) -> dict[str, bytes]:
        """The enrolled key of each node the batch's checked reports come from, those
        enrollments locked against removal until the batch is stored."""
        wanted = sorted({r.report.node_id for r in batch if r.public_key is not None})
        if not wanted:
            return {}
        # The lock clause is one of the backend's constants, never input.
        rows = await tx.fetch(
            f"SELECT node_id, public_key FROM enrollments "  # noqa: S608
            f"WHERE node_id IN ({', '.join('?' * len(wanted))}) ORDER BY node_id"
            f"{self.db.lock_share}",
            *wanted,
        )
        return {node_id: bytes(key) for node_id, key in rows}

    async def enforce_retention(self, now: float) -> int:
        """In transactions of at most ``TRIM_ROWS`` deletions: report writes wait
        for each (on SQLite, for the database), never for a whole sweep."""
        if self.retention is None:
            return 0
        # Whole seconds, as reports' arrival times are kept.
        replayable = int(now) - REPLAY_WINDOW_S
        expired = min(int(now - self.retention.max_age_s), replayable)
        # A node's oldest report (its index's first entry) says if it has expired
        # ones; nodes over the count (after the count was lowered) are trimmed too.
        rows = await self.db.query(
            "SELECT n.node_id, n.reports_kept, "
            "(SELECT r.received_at FROM reports r WHERE r.node_id = n.node_id "
            "ORDER BY r.id LIMIT 1) FROM nodes n"
        )
        deleted = 0
        count = self.retention.count
        for run in _runs([(n, kept - count) for n, kept, _ in rows if kept > count]):
            async with self.db.transaction(write=True) as tx:
                deleted += await _trim(tx, run, replayable)
        expiring = [n for n, _, oldest in rows if oldest is not None and oldest < expired]
        while expiring:
            async with self.db.transaction(write=True) as tx:
                budget = TRIM_ROWS
                while expiring and budget > 0:
                    removed = await _expire(tx, expiring[-1], expired, budget)
                    if removed < budget:  # none of the node's older ones left
                        expiring.pop()
                    deleted += removed
                    budget -= removed
        return deleted

    async def fleet(self) -> list[NodeStatus]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(f"SELECT {_NODE_COLUMNS} {_NODE_JOINS} ORDER BY e.node_id")
        # Parsing 100,000 reports takes seconds: off the loop that answers nodes.
        return await asyncio.to_thread(lambda: [_status(row) for row in rows])

    async def node_page(
        self, query: NodeQuery, limit: int, *, after: str | None = None, before: str | None = None
    ) -> list[ListedNode]:
        if after is not None and before is not None:
            raise ValueError("a page starts after one node or ends before one, not both")
        where, args = _node_conditions(query)
        joins, bound = _LISTED_JOINS, []
        if after is not None or before is not None:
            # PostgreSQL does not carry a bound on e.node_id across an outer join:
            # given in each join too, a page deep in the list starts its index scans
            # at the bound rather than at the first node.
            sign, key = (">", after) if after is not None else ("<", before)
            joins, bound = _listed_joins(f" {sign} ?"), [key, key]
            where.append(f"e.node_id {sign} ?")
            args.append(key)
        # Conditions are this module's constants with ``?`` for every value.
        rows = await self.db.query(
            f"SELECT e.node_id, e.pool, e.attestation, {_STATE}, n.last_seen, n.driver_version, "
            "n.bundle, n.update_outcome, n.report_attested, a.target "
            f"{joins} WHERE {' AND '.join(where) or 'TRUE'} "
            f"ORDER BY e.node_id {'DESC' if before is not None else 'ASC'} LIMIT ?",
            query.missing_before,
            *bound,
            *args,
            limit,
        )
        listed = [
            ListedNode(node_id, pool, how, state, seen, driver, bundle, update,
                       None if attested is None else bool(attested), assigned)
            for node_id, pool, how, state, seen, driver, bundle, update, attested, assigned in rows
        ]  # fmt: skip
        return listed[::-1] if before is not None else listed

    async def fleet_counts(self, missing_before: int) -> list[FleetCount]:
        # Grouped by columns (whose few values the planner knows), each state counted
        # apart: grouped by the state too, PostgreSQL expects a group per node and
        # sorts the fleet instead of hashing it, at twice the cost. (Constants only.)
        rows = await self.db.query(
            "SELECT driver_version, attestation, attested, report_attested, "  # noqa: S608
            "COUNT(*) FILTER (WHERE state = 'healthy'), "
            "COUNT(*) FILTER (WHERE state = 'unhealthy'), "
            "COUNT(*) FILTER (WHERE state = 'missing'), COUNT(*) FILTER (WHERE state = 'new'), "
            "COUNT(*) FILTER (WHERE differs) "
            f"FROM (SELECT {_STATE} AS state, n.driver_version, e.attestation, e.attested, "
            f"n.report_attested, {_DIFFERS} AS differs {_LISTED_JOINS}) f "
            "GROUP BY 1, 2, 3, 4",
            missing_before,
        )
        return [
            FleetCount(driver or NO_DRIVER, attestation, bool(attested),
                       None if report_attested is None else bool(report_attested),
                       *(int(count) for count in counts))
            for driver, attestation, attested, report_attested, *counts in rows
        ]  # fmt: skip

    async def gpu_windows(self, since: int) -> list[NodeWindow]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT g.node_id, g.received_at, g.samples FROM gpu_samples g "
                "JOIN enrollments e ON e.node_id = g.node_id "
                "JOIN nodes n ON n.node_id = g.node_id WHERE n.last_seen >= ? "
                "ORDER BY g.node_id, g.id",
                since,
            )
        by_node: dict[str, list[tuple[float, tuple[GpuSample, ...]]]] = {}
        for node_id, at, samples in rows:
            parsed = tuple(
                GpuSample.from_dict(doc, f"{node_id}.samples[{i}]")
                for i, doc in enumerate(json.loads(samples))
            )
            by_node.setdefault(node_id, []).append((float(at), parsed))
        return [NodeWindow(node_id, tuple(reports)) for node_id, reports in by_node.items()]

    async def node(self, node_id: str) -> NodeStatus | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                f"SELECT {_NODE_COLUMNS} {_NODE_JOINS} WHERE e.node_id = ?", node_id
            )
        return _status(rows[0]) if rows else None

    async def history(self, node_id: str, limit: int) -> list[ReportRecord]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT received_at, body, attestation FROM reports WHERE node_id = ? "
                "ORDER BY id DESC LIMIT ?",
                node_id,
                limit,
            )
        return [_record(node_id, at, body, attestation) for at, body, attestation in rows]

    async def compliance_evidence(
        self, limit: int, node_id: str | None = None
    ) -> dict[str, list[ReportRecord]]:
        one = () if node_id is None else (node_id,)
        rows = await self.db.query(_evidence(node_id is not None), *one, limit, *one)
        return await asyncio.to_thread(_by_node, rows)

    async def pools(self) -> dict[str, int]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT pool, COUNT(*) FROM enrollments GROUP BY pool ORDER BY pool"
            )
        return {pool: int(count) for pool, count in rows}

    # Kept compliance reports.

    async def keep_report(
        self, report: KeptReport, bodies: Mapping[str, bytes], slot: str | None = None
    ) -> bool:
        # Compressing a large fleet's PDF takes a while: off the loop that serves nodes.
        chunks = await asyncio.to_thread(_kept_chunks, report, bodies)
        async with self.db.transaction(write=True) as tx:
            if slot is not None:
                # The key is the guard: of replicas keeping at once, one inserts the row;
                # should the keep fail below, the row goes with the transaction.
                claimed = await tx.fetch(
                    "INSERT INTO report_slots (slot, claimed_at) VALUES (?, ?) "
                    "ON CONFLICT (slot) DO NOTHING RETURNING slot",
                    slot,
                    report.generated_at,
                )
                if not claimed:
                    return False
            taken = await tx.fetch(
                "INSERT INTO compliance_reports (report_id, scope, subject, generated_at, "
                "made_by, key_id, summary) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (report_id) DO NOTHING RETURNING report_id",
                report.report_id,
                report.scope,
                report.subject,
                report.generated_at,
                report.made_by,
                report.key_id,
                report.summary,
            )
            if not taken:
                raise Conflict(
                    f"a compliance report {report.report_id} is kept already; choose another id"
                )
            await tx.execute_many(
                "INSERT INTO compliance_report_files (report_id, fmt, idx, name, sha256, size, "
                "signature) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (report.report_id, f.fmt, i, f.name, f.sha256, f.size, f.signature)
                    for i, f in enumerate(report.files)
                ],
            )
            await tx.execute_many(
                "INSERT INTO compliance_report_chunks (report_id, fmt, seq, data) "
                "VALUES (?, ?, ?, ?)",
                chunks,
            )
        return True

    async def kept_reports(self, scope: str | None = None, limit: int = 100) -> list[KeptReport]:
        if scope is None:
            return await self._select_kept("", limit)
        return await self._select_kept("WHERE scope = ?", scope, limit)

    async def kept_report(self, report_id: str) -> KeptReport | None:
        found = await self._select_kept("WHERE report_id = ?", report_id, 1)
        return found[0] if found else None

    async def _select_kept(self, where: str, *args: object) -> list[KeptReport]:
        """The reports ``where`` selects, newest first, at most the last argument."""
        # ``where`` is one of this module's constants with ``?`` for every value.
        rows = await self.db.query(
            "SELECT r.report_id, r.scope, r.subject, r.generated_at, r.made_by, r.key_id, "  # noqa: S608
            "r.summary, f.fmt, f.name, f.sha256, f.size, f.signature FROM ("
            "SELECT report_id, scope, subject, generated_at, made_by, key_id, summary "
            f"FROM compliance_reports {where} ORDER BY generated_at DESC, report_id DESC LIMIT ?"
            ") r LEFT JOIN compliance_report_files f ON f.report_id = r.report_id "
            "ORDER BY r.generated_at DESC, r.report_id DESC, f.idx",
            *args,
        )
        heads: dict[str, tuple[Any, ...]] = {}
        files: dict[str, list[KeptFile]] = {}
        for *head, fmt, name, sha256, size, signature in rows:
            heads.setdefault(head[0], tuple(head))
            if fmt is not None:  # a report kept without files joins none
                kept = KeptFile(fmt, name, sha256, int(size), bytes(signature))
                files.setdefault(head[0], []).append(kept)
        return [
            KeptReport(report_id, scope, subject, int(at), made_by, key_id, summary,
                       tuple(files.get(report_id, ())))
            for report_id, scope, subject, at, made_by, key_id, summary in heads.values()
        ]  # fmt: skip

    async def kept_chunk(self, report_id: str, fmt: str, seq: int) -> bytes | None:
        rows = await self.db.query(
            "SELECT data FROM compliance_report_chunks WHERE report_id = ? AND fmt = ? AND seq = ?",
            report_id,
            fmt,
            seq,
        )
        return await asyncio.to_thread(zlib.decompress, rows[0][0]) if rows else None

    async def forget_reports(self, scope: str, keep: int) -> list[str]:
        if keep < 0:
            raise ValueError(f"cannot keep {keep} reports")
        async with self.db.transaction(write=True) as tx:
            gone = await tx.fetch(
                "DELETE FROM compliance_reports WHERE scope = ? AND report_id NOT IN ("
                "SELECT report_id FROM compliance_reports WHERE scope = ? "
                "ORDER BY generated_at DESC, report_id DESC LIMIT ?) "
                "RETURNING report_id, generated_at",
                scope,
                scope,
                keep,
            )
            ids = [(report_id,) for report_id, _ in gone]
            await tx.execute_many("DELETE FROM compliance_report_files WHERE report_id = ?", ids)
            await tx.execute_many("DELETE FROM compliance_report_chunks WHERE report_id = ?", ids)
        newest_first = sorted(gone, key=lambda row: (row[1], row[0]), reverse=True)
        return [report_id for report_id, _ in newest_first]

    # Operator tokens.

    async def add_token(self, token: OperatorToken) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO operator_tokens (token_hash, name, role, created_at, token_id, "
                "expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                token.token_hash,
                token.name,
                token.role,
                token.created_at,
                token.token_id,
                token.expires_at,
                token.revoked_at,
            )

    async def token(self, token_hash: str) -> OperatorToken | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(f"{_OPERATORS} WHERE token_hash = ?", token_hash)
        return OperatorToken(*rows[0]) if rows else None

    async def token_used(self, token_hash: str, now: int) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "UPDATE operator_tokens SET last_used_at = ? WHERE token_hash = ?", now, token_hash
            )

    async def tokens(self) -> list[OperatorToken]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(f"{_OPERATORS} ORDER BY created_at, token_id")
        return [OperatorToken(*row) for row in rows]

    async def revoke_token(self, token_id: str, now: int) -> None:
        async with self.db.transaction(write=True) as tx:
            rows = await tx.fetch(
                "SELECT token_hash FROM operator_tokens WHERE token_id = ?", token_id
            )
            if not rows:
                return
            await tx.execute(
                "UPDATE operator_tokens SET revoked_at = ? "
                "WHERE token_id = ? AND revoked_at IS NULL",
                now,
                token_id,
            )
            await tx.execute("DELETE FROM operator_sessions WHERE token_hash = ?", rows[0][0])

    async def add_session(
        self, session_hash: str, token_hash: str, expires_at: int, now: int
    ) -> None:
        async with self.db.transaction(write=True) as tx:
            # Expired sessions go as new ones come, so the table holds only live ones.
            await tx.execute("DELETE FROM operator_sessions WHERE expires_at <= ?", now)
            await tx.execute(
                "INSERT INTO operator_sessions (session_hash, token_hash, expires_at) "
                "VALUES (?, ?, ?)",
                session_hash,
                token_hash,
                expires_at,
            )

    async def session(self, session_hash: str, now: int) -> OperatorToken | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                f"{_OPERATORS} WHERE token_hash = ({_LIVE_SESSION})",
                session_hash,
                now,
            )
        return OperatorToken(*rows[0]) if rows else None

    async def end_session(self, session_hash: str) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute("DELETE FROM operator_sessions WHERE session_hash = ?", session_hash)

    # Rollouts and assignments.

    async def pool_running(self, pool: str) -> dict[str, str | None]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT e.node_id, COALESCE(a.target, n.bundle) FROM enrollments e "
                "LEFT JOIN nodes n ON n.node_id = e.node_id "
                "LEFT JOIN assignments a ON a.node_id = e.node_id WHERE e.pool = ?",
                pool,
            )
        return {node_id: bundle for node_id, bundle in rows}

    async def create_rollout(self, rollout: Rollout, event: str) -> None:
        active = sorted(p.value for p in ACTIVE_PHASES)
        async with self.db.transaction(write=True) as tx:
            clash = await tx.fetch(
                "SELECT id, phase FROM rollouts WHERE id = ? OR (pool = ? AND phase IN (?, ?, ?))",
                rollout.id,
                rollout.pool,
                *active,
            )
            if clash:
                other, phase = clash[0]
                raise Conflict(
                    f"rollout {other} already exists ({phase}) for pool {rollout.pool}; "
                    "finish, abort or roll it back first, or choose another id"
                )
            await tx.execute(
                "INSERT INTO rollouts (id, pool, phase, doc, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rollout.id,
                rollout.pool,
                rollout.phase.value,
                json.dumps(rollout.to_dict()),
                rollout.created_at,
                rollout.created_at,
            )
            await _add_events(tx, rollout.id, rollout.created_at, (event,))
            await self._append_log(tx, [rollout_entry(rollout, rollout.created_at, event)])

    async def rollouts(self) -> list[Rollout]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT doc FROM rollouts ORDER BY created_at DESC, id")
        return [Rollout.from_dict(json.loads(doc)) for (doc,) in rows]

    async def rollout_progress(self, limit: int) -> list[RolloutProgress]:
        rows = await self.db.query(
            "SELECT doc FROM rollouts ORDER BY created_at DESC, id LIMIT ?", limit
        )
        return [_progress(json.loads(doc)) for (doc,) in rows]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT doc FROM rollouts WHERE id = ?", rollout_id)
        return Rollout.from_dict(json.loads(rows[0][0])) if rows else None

    async def rollout_events(self, rollout_id: str) -> list[RolloutEvent]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT at, event FROM rollout_events WHERE rollout_id = ? ORDER BY id",
                rollout_id,
            )
        return [RolloutEvent(at, event) for at, event in rows]

    async def active_rollouts(self) -> list[str]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT id FROM rollouts WHERE phase = 'running' ORDER BY id")
        return [rollout_id for (rollout_id,) in rows]

    async def change_rollout(
        self, rollout_id: str, change: RolloutChange, now: int, *, wait: bool
    ) -> Rollout | None:
        lock = self.db.lock_wait if wait else self.db.lock_skip
        async with self.db.transaction(write=True) as tx:
            # The lock clause is one of the backend's two constants, never input.
            rows = await tx.fetch(f"SELECT doc FROM rollouts WHERE id = ?{lock}", rollout_id)  # noqa: S608
            if not rows:
                return None
            before = Rollout.from_dict(json.loads(rows[0][0]))
            seen = await _observations(tx, before.pool)
            transition = change(before, seen)
            after = transition.rollout
            if after == before:
                return after
            await tx.execute(
                "UPDATE rollouts SET phase = ?, doc = ?, updated_at = ? WHERE id = ?",
                after.phase.value,
                json.dumps(after.to_dict()),
                now,
                rollout_id,
            )
            old, new = assignments(before), assignments(after)
            logged = [rollout_entry(after, now, event) for event in transition.events]
            for node_id, target in new.items():
                if node_id in old and old[node_id] == target:
                    continue
                logged.append(assignment_entry(after, node_id, target, now))
                if target is None:
                    await tx.execute("DELETE FROM assignments WHERE node_id = ?", node_id)
                else:
                    await tx.execute(
                        "INSERT INTO assignments (node_id, target, rollout_id, assigned_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                        "target = excluded.target, rollout_id = excluded.rollout_id, "
                        "assigned_at = excluded.assigned_at",
                        node_id,
                        target,
                        rollout_id,
                        now,
                    )
            await _add_events(tx, rollout_id, now, transition.events)
            await self._append_log(tx, logged)
            await _add_webhook_events(
                tx, [WebhookEvent.of(n, new_event_id(), now) for n in transition.notices]
            )
        return after

    async def assignment(self, node_id: str) -> RolloutAssignment | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT node_id, target, rollout_id, assigned_at FROM assignments "
                "WHERE node_id = ?",
                node_id,
            )
        return RolloutAssignment(*rows[0]) if rows else None

    # Attestation.

    async def add_challenge(
        self, nonce: bytes, pending: PendingChallenge, now: float, limit: int
    ) -> bool:
        return await self._new_challenges.submit(_NewChallenge(nonce, pending, now, limit))

    async def _add_challenges(self, batch: list[_NewChallenge]) -> list[bool]:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "DELETE FROM challenges WHERE expires_at <= ?", max(c.now for c in batch)
            )
            # Replicas counting at once may each admit one more batch: the cap is a
            # bound on work, exceeded by at most a batch per replica.
            pending = {}
            for purpose in {c.pending.purpose for c in batch}:
                rows = await tx.fetch("SELECT COUNT(*) FROM challenges WHERE purpose = ?", purpose)
                pending[purpose] = int(rows[0][0])
            admitted = []
            for c in batch:
                admitted.append(pending[c.pending.purpose] < c.limit)
                pending[c.pending.purpose] += admitted[-1]
            await tx.execute_many(
                "INSERT INTO challenges (nonce, subject, purpose, payload, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (c.nonce, c.pending.subject, c.pending.purpose, c.pending.payload,
                     c.pending.expires_at)
                    for c, ok in zip(batch, admitted, strict=True)
                    if ok
                ],
            )  # fmt: skip
        return admitted

    async def take_challenge(self, nonce: bytes) -> PendingChallenge | None:
        return await self._redeemed.submit(nonce)

    async def _take_challenges(self, nonces: list[bytes]) -> list[PendingChallenge | None]:
        async with self.db.transaction(write=True) as tx:
            rows = await tx.fetch_many(
                "DELETE FROM challenges WHERE nonce = ? "
                "RETURNING nonce, subject, purpose, payload, expires_at",
                [(nonce,) for nonce in nonces],
            )
        taken = {
            bytes(nonce): PendingChallenge(subject, purpose, bytes(payload), float(expires_at))
            for nonce, subject, purpose, payload, expires_at in rows
        }
        # A nonce redeemed twice in one batch: the first gets it, as if one after the other.
        return [taken.pop(nonce, None) for nonce in nonces]

    # A node's sole report challenge: one row per (node, purpose), replaced in place,
    # so issuing and redeeming each touch one row of one index.

    async def replace_challenge(self, nonce: bytes, pending: PendingChallenge) -> None:
        await self._sole_issued.submit(_SoleChallenge(nonce, pending))

    async def _replace_challenges(self, batch: list[_SoleChallenge]) -> list[None]:
        async with self.db.transaction(write=True) as tx:
            # In order: of one subject's challenges in a batch, the last stays.
            await tx.execute_many(_REPLACE_SOLE, [_sole_row(c.nonce, c.pending) for c in batch])
        return [None] * len(batch)

    async def take_sole_challenge(
        self, subject: str, purpose: str, nonce: bytes, successor: Successor | None = None
    ) -> PendingChallenge | None:
        return await self._sole_taken.submit(((subject, purpose, nonce), successor))

    async def _take_sole_challenges(
        self, wanted: list[tuple[tuple[str, str, bytes], Successor | None]]
    ) -> list[PendingChallenge | None]:
        async with self.db.transaction(write=True) as tx:
            # A row taken here is deleted before its successor is written, in one
            # transaction: a replica taking the same nonce at once, waiting on the
            # row, finds it gone (a successor holds another nonce).
            rows = await tx.fetch_many(
                "DELETE FROM sole_challenges WHERE subject = ? AND purpose = ? AND nonce = ? "
                "RETURNING subject, purpose, nonce, payload, expires_at",
                [key for key, _ in wanted],
            )
            taken = {
                (subject, purpose, bytes(nonce)): PendingChallenge(
                    subject, purpose, bytes(payload), float(expires_at)
                )
                for subject, purpose, nonce, payload, expires_at in rows
            }
            found = [taken.pop(key, None) for key, _ in wanted]
            successors = [
                _sole_row(*successor)
                for (_, successor), pending in zip(wanted, found, strict=True)
                if pending is not None and successor is not None
            ]
            if successors:
                await tx.execute_many(_REPLACE_SOLE, successors)
        return found

    async def keep_event_log(self, node_id: str, log: bytes) -> None:
        # Keyed by the digest computed here, never one a caller names: the text is
        # shared, so a wrong digest would hand one node's bytes to every node.
        digest = hashlib.sha256(log).hexdigest()
        async with self.db.transaction(write=True) as tx:
            before = await tx.fetch("SELECT sha256 FROM event_logs WHERE node_id = ?", node_id)
            await tx.execute(
                "INSERT INTO event_log_texts (sha256, log) VALUES (?, ?) "
                "ON CONFLICT (sha256) DO NOTHING",
                digest,
                log,
            )
            await tx.execute(
                "INSERT INTO event_logs (node_id, sha256) VALUES (?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET sha256 = excluded.sha256",
                node_id,
                digest,
            )
            await _drop_unused_logs(tx, [old for (old,) in before if old != digest])

    # Both read through the text: on PostgreSQL a node keeping a log while the last
    # other node with it is removed may be left naming a deleted text; it then reads
    # as no log kept, so the node sends its log again and the text comes back.

    async def event_log(self, node_id: str) -> tuple[str, bytes] | None:
        rows = await self.db.query(
            f"SELECT t.sha256, t.log {_NODE_LOG} WHERE l.node_id = ?", node_id
        )
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    async def event_log_sha256(self, node_id: str) -> str | None:
        rows = await self.db.query(f"SELECT t.sha256 {_NODE_LOG} WHERE l.node_id = ?", node_id)
        return str(rows[0][0]) if rows else None

    async def pin_driver_key(self, node_id: str, public_key: bytes) -> bytes | None:
        # Only a node's first attested report gets here: later ones find the key
        # in the enrollment row their request was checked against.
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "UPDATE enrollments SET driver_key = ? WHERE node_id = ? AND driver_key IS NULL",
                public_key,
                node_id,
            )
            rows = await tx.fetch("SELECT driver_key FROM enrollments WHERE node_id = ?", node_id)
        return bytes(rows[0][0]) if rows else None

    # Re-signing.

    async def keep_renewal(self, signer: str, status: str) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO renewals (signer, status) VALUES (?, ?) "
                "ON CONFLICT (signer) DO UPDATE SET status = excluded.status",
                signer,
                status,
            )

    async def forget_renewal(self, signer: str) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute("DELETE FROM renewals WHERE signer = ?", signer)

    async def renewals(self) -> list[str]:
        rows = await self.db.query("SELECT status FROM renewals ORDER BY signer")
        return [str(status) for (status,) in rows]

    # Webhooks.

    async def route_webhook_events(
        self, route: Callable[[str], Sequence[str]], now: int, limit: int
    ) -> int:
        async with self.db.transaction(write=True) as tx:
            rows = await tx.fetch(
                "SELECT event_id, type FROM webhook_events WHERE routed = ? "
                "ORDER BY created_at LIMIT ?",
                False,
                limit,
            )
            # Another replica routing the same events adds nothing: the key is the guard.
            await tx.execute_many(
                "INSERT INTO webhook_deliveries (event_id, endpoint, state, attempts, "
                "next_attempt_at, last_error) VALUES (?, ?, ?, 0, ?, '') "
                "ON CONFLICT (event_id, endpoint) DO NOTHING",
                [
                    (event_id, endpoint, PENDING, now)
                    for event_id, event_type in rows
                    for endpoint in route(event_type)
                ],
            )
            await tx.execute_many(
                "UPDATE webhook_events SET routed = ? WHERE event_id = ?",
                [(True, event_id) for event_id, _ in rows],
            )
        return len(rows)

    async def claim_webhook_deliveries(
        self, endpoints: Sequence[str], now: int, hold_until: int, limit: int
    ) -> list[WebhookDelivery]:
        if not endpoints:
            return []
        async with self.db.transaction(write=True) as tx:
            # Only placeholders are joined in, never input.
            rows = await tx.fetch(
                "SELECT d.event_id, d.endpoint, d.attempts, d.next_attempt_at, e.body "  # noqa: S608
                "FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id "
                "WHERE d.state = ? AND d.next_attempt_at <= ? "
                f"AND d.endpoint IN ({', '.join('?' * len(endpoints))}) "
                "ORDER BY d.next_attempt_at LIMIT ?",
                PENDING,
                now,
                *endpoints,
                limit,
            )
            if not rows:
                return []
            # Held only if no one else held it since it was read: of replicas racing
            # for a delivery, one sends it.
            held = await tx.fetch_many(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE event_id = ? "
                "AND endpoint = ? AND state = ? AND next_attempt_at = ? "
                "RETURNING event_id, endpoint",
                [(hold_until, e, ep, PENDING, due) for e, ep, _, due, _ in rows],
            )
        mine = {(event_id, endpoint) for event_id, endpoint in held}
        return [
            WebhookDelivery(event_id, endpoint, int(attempts), str(body).encode())
            for event_id, endpoint, attempts, _, body in rows
            if (event_id, endpoint) in mine
        ]

    async def finish_webhook_attempt(
        self, delivery: WebhookDelivery, state: str, next_attempt_at: int, error: str
    ) -> None:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
                "last_error = ? WHERE event_id = ? AND endpoint = ?",
                state,
                delivery.attempts + 1,
                next_attempt_at,
                error,
                delivery.event_id,
                delivery.endpoint,
            )

    async def webhook_delivery_states(self, event_id: str) -> dict[str, tuple[str, int]]:
        rows = await self.db.query(
            "SELECT endpoint, state, attempts FROM webhook_deliveries WHERE event_id = ?",
            event_id,
        )
        return {endpoint: (state, int(attempts)) for endpoint, state, attempts in rows}

    async def forget_webhook_events(self, before: int) -> int:
        async with self.db.transaction(write=True) as tx:
            gone = await tx.fetch(
                "DELETE FROM webhook_events WHERE event_id IN (SELECT event_id FROM "
                "webhook_events WHERE created_at < ? LIMIT ?) RETURNING event_id",
                before,
                TRIM_ROWS,
            )
            await tx.execute_many(
                "DELETE FROM webhook_deliveries WHERE event_id = ?", [tuple(row) for row in gone]
            )
        return len(gone)

    async def webhook_conditions(self, kind: str) -> dict[str, WebhookCondition]:
        rows = await self.db.query(
            "SELECT subject, episode, since FROM webhook_conditions WHERE kind = ?", kind
        )
        return {subject: WebhookCondition(episode, int(since)) for subject, episode, since in rows}

    async def change_webhook_condition(
        self,
        kind: str,
        subject: str,
        before: str | None,
        after: str | None,
        event: WebhookEvent,
    ) -> bool:
        async with self.db.transaction(write=True) as tx:
            if before is None:
                moved = await tx.fetch(
                    "INSERT INTO webhook_conditions (kind, subject, episode, since) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (kind, subject) DO NOTHING RETURNING kind",
                    kind,
                    subject,
                    after,
                    event.time,
                )
            elif after is None:
                moved = await tx.fetch(
                    "DELETE FROM webhook_conditions WHERE kind = ? AND subject = ? "
                    "AND episode = ? RETURNING kind",
                    kind,
                    subject,
                    before,
                )
            else:
                moved = await tx.fetch(
                    "UPDATE webhook_conditions SET episode = ?, since = ? WHERE kind = ? "
                    "AND subject = ? AND episode = ? RETURNING kind",
                    after,
                    event.time,
                    kind,
                    subject,
                    before,
                )
            if moved:
                await _add_webhook_events(tx, [event])
        return bool(moved)

    async def change_remediation(
        self,
        pool: str,
        change: Callable[[RemediationBoard], Decision],
        now: int,
        *,
        notify: bool,
    ) -> RemediationBoard:
        async with self.db.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO remediation_boards (pool, doc, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (pool) DO NOTHING",
                pool,
                json.dumps(RemediationBoard(pool).to_dict()),
                now,
            )
            # The lock clause is one of the backend's two constants, never input.
            rows = await tx.fetch(
                f"SELECT doc FROM remediation_boards WHERE pool = ?{self.db.lock_wait}",  # noqa: S608
                pool,
            )
            before = RemediationBoard.from_dict(json.loads(rows[0][0]))
            decision = change(before)
            if decision.board != before:
                await tx.execute(
                    "UPDATE remediation_boards SET doc = ?, updated_at = ? WHERE pool = ?",
                    json.dumps(decision.board.to_dict()),
                    now,
                    pool,
                )
            await tx.execute_many(
                "INSERT INTO remediation_audit (at, pool, node_id, doc) VALUES (?, ?, ?, ?)",
                [(a.at, a.pool, a.node_id, json.dumps(a.to_dict())) for a in decision.audit],
            )
            await self._append_log(tx, [remediation_entry(a) for a in decision.audit])
            counts = Counter((a.pool, a.event.value, a.action.value) for a in decision.audit)
            await tx.execute_many(
                _COUNT_AUDIT, [(*key, entries) for key, entries in sorted(counts.items())]
            )
            if notify:
                notices = [
                    Notice(NODE_REMEDIATION, f"node/{a.node_id}", a.to_dict())
                    for a in decision.audit
                ]
                await _add_webhook_events(
                    tx, [WebhookEvent.of(n, new_event_id(), now) for n in notices]
                )
        return decision.board

    # The transparency log (server.tlog).

    async def append_log(
        self, entries: Sequence[LogEntry], *, once: bool = False, notify: bool = False
    ) -> list[tuple[int, LogEntry]]:
        async with self.db.transaction(write=True) as tx:
            appended = await self._append_log(tx, entries, once=once)
            if notify:
                await _add_webhook_events(tx, _split_view_events(appended))
        return appended

    async def _append_log(
        self, tx: Tx, entries: Sequence[LogEntry], *, once: bool = False
    ) -> list[tuple[int, LogEntry]]:
        """Append in ``tx``, under the head row's lock: the log's next index is taken
        by one transaction at a time, whichever replica runs it. ``once``: leave out
        the entries whose ``once_key`` the log has."""
        # The lock clause is one of the backend's two constants, never input.
        rows = await tx.fetch(f"SELECT size FROM tlog_head WHERE id = 1{self.db.lock_wait}")  # noqa: S608
        size = int(rows[0][0])
        keys: list[str | None] = [e.once_key if once else None for e in entries]
        if once:
            logged = await tx.fetch_many(
                "SELECT once_key FROM tlog_entries WHERE once_key = ?", [(k,) for k in keys]
            )
            seen = {str(row[0]) for row in logged}
            fresh = {}
            for entry, key in zip(entries, keys, strict=True):
                if key not in seen and key not in fresh:
                    fresh[key] = entry
            entries, keys = list(fresh.values()), list(fresh)
        if not entries:
            return []
        known = await _subtrees(tx, merkle.frontier(size))
        datas = [entry.data for entry in entries]
        made = merkle.extend(size, known.__getitem__, [merkle.leaf_hash(d) for d in datas])
        await tx.execute_many(
            "INSERT INTO tlog_entries (idx, at, kind, leaf_hash, doc, once_key) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (size + i, e.at, e.kind.value, merkle.leaf_hash(d), d.decode(), key)
                for i, (e, d, key) in enumerate(zip(entries, datas, keys, strict=True))
            ],
        )
        await tx.execute_many(
            "INSERT INTO tlog_subtrees (level, idx, hash) VALUES (?, ?, ?)",
            [(level, idx, h) for (level, idx), h in made],
        )
        await tx.execute("UPDATE tlog_head SET size = ? WHERE id = 1", size + len(entries))
        return list(enumerate(entries, start=size))

    async def log_size(self) -> int:
        rows = await self.db.query("SELECT size FROM tlog_head WHERE id = 1")
        return int(rows[0][0])

    async def log_subtrees(self, subtrees: Iterable[merkle.Subtree]) -> dict[merkle.Subtree, bytes]:
        async with self.db.transaction(write=False) as tx:
            return await _subtrees(tx, subtrees)

    async def log_entries(self, start: int, end: int) -> list[str]:
        rows = await self.db.query(
            "SELECT doc FROM tlog_entries WHERE idx >= ? AND idx < ? ORDER BY idx", start, end
        )
        return [str(row[0]) for row in rows]

    async def log_once(self, once_key: str) -> int | None:
        rows = await self.db.query("SELECT idx FROM tlog_entries WHERE once_key = ?", once_key)
        return int(rows[0][0]) if rows else None

    async def log_index(self, leaf_hash: bytes) -> int | None:
        rows = await self.db.query(
            "SELECT MIN(idx) FROM tlog_entries WHERE leaf_hash = ?", leaf_hash
        )
        return None if rows[0][0] is None else int(rows[0][0])

    async def remediation_boards(self) -> list[RemediationBoard]:
        rows = await self.db.query("SELECT doc FROM remediation_boards ORDER BY pool")
        return [RemediationBoard.from_dict(json.loads(row[0])) for row in rows]

    async def remediation_audit(self, node_id: str | None, limit: int) -> list[RemediationAudit]:
        if node_id is None:
            rows = await self.db.query(
                "SELECT doc FROM remediation_audit ORDER BY id DESC LIMIT ?", limit
            )
        else:
            rows = await self.db.query(
                "SELECT doc FROM remediation_audit WHERE node_id = ? ORDER BY id DESC LIMIT ?",
                node_id,
                limit,
            )
        return [RemediationAudit.from_dict(json.loads(row[0])) for row in reversed(rows)]

    async def silent_nodes(self, before: int) -> list[SilentNode]:
        rows = await self.db.query(
            "SELECT e.node_id, e.pool, n.last_seen, e.enrolled_at FROM enrollments e "
            "LEFT JOIN nodes n ON n.node_id = e.node_id "
            "WHERE COALESCE(n.last_seen, e.enrolled_at) < ? ORDER BY e.node_id",
            before,
        )
        return [SilentNode(*row) for row in rows]

    async def failing_attestations(self) -> list[FailingAttestation]:
        # The verdict's stored JSON (AttestationVerdict.to_json) of one that failed
        # holds this; a reason quoting it may match too, so each is read to be sure.
        rows = await self.db.query(
            "SELECT e.node_id, e.pool, n.last_seen, r.attestation FROM enrollments e "
            "JOIN nodes n ON n.node_id = e.node_id JOIN reports r ON r.id = n.last_report "
            "WHERE r.attestation LIKE ? ORDER BY e.node_id",
            '%"passed": false%',
        )
        found = []
        for node_id, pool, at, stored in rows:
            verdict = _verdict(stored, f"the verdict on node {node_id}'s latest report")
            if verdict is not None and not verdict.passed:
                found.append(FailingAttestation(node_id, pool, int(at), verdict))
        return found

    # Metrics.

    async def node_counts(self, missing_before: int) -> list[NodeCount]:
        rows = await self.db.query(_NODE_COUNTS, missing_before)
        return [NodeCount(pool, state, attestation, int(n)) for pool, state, attestation, n in rows]

    async def rollout_phases(self) -> dict[str, int]:
        rows = await self.db.query("SELECT phase, COUNT(*) FROM rollouts GROUP BY phase")
        return {phase: int(count) for phase, count in rows}

    async def rollout_standings(self) -> list[RolloutStanding]:
        active = sorted(p.value for p in ACTIVE_PHASES)
        async with self.db.transaction(write=False) as tx:  # one view of both
            heads = await tx.fetch(_in(self.db.dialect, _ROLLOUT_HEADS), *active)
            counts = await tx.fetch(_in(self.db.dialect, _ROLLOUT_NODES), *active)
        nodes: dict[str, list[tuple[int, str, int]]] = {}
        for rollout_id, wave, progress, count in counts:
            nodes.setdefault(rollout_id, []).append((int(wave), str(progress), int(count)))
        return [
            RolloutStanding(
                rollout_id, pool, phase, int(wave), tuple(sorted(nodes.get(rollout_id, []))),
                int(last_event_at),
            )
            for rollout_id, pool, phase, wave, last_event_at in heads
        ]  # fmt: skip

    async def remediation_counts(self) -> list[RemediationCount]:
        rows = await self.db.query(
            "SELECT pool, event, action, entries FROM remediation_counts "
            "ORDER BY pool, event, action"
        )
        return [RemediationCount(p, e, a, int(n)) for p, e, a, n in rows]

    def pool_use(self) -> PoolUse:
        return self.db.pool_use()


async def _subtrees(tx: Tx, subtrees: Iterable[merkle.Subtree]) -> dict[merkle.Subtree, bytes]:
    wanted = sorted(subtrees)
    if not wanted:
        return {}
    rows = await tx.fetch_many(
        "SELECT level, idx, hash FROM tlog_subtrees WHERE level = ? AND idx = ?", wanted
    )
    return {(int(level), int(idx)): bytes(h) for level, idx, h in rows}


@functools.cache
def _in(dialect: Dialect, sql: str) -> str:
    return dialect.render(sql)


@functools.cache
def _evidence(one_node: bool) -> str:
    """What a compliance report reads besides each node's latest report (of one node,
    given its id twice, or of all), given how many updates: the newest updates, found
    through the partial index reports_updates (its condition word for word, so that
    both databases use it), and the attested report each node's row names, by its
    key. No plan reaches a routine report but by that key. A report that is both
    comes twice (once a report: ``_by_node``)."""
    updates_of, attested_of = (" AND u.node_id = ?", " AND n.node_id = ?") if one_node else ("", "")
    return (
        "SELECT node_id, id, received_at, body, attestation FROM (SELECT u.node_id, u.id, "  # noqa: S608
        "u.received_at, u.body, u.attestation, ROW_NUMBER() OVER "
        "(PARTITION BY u.node_id ORDER BY u.id DESC) AS nth FROM reports u "
        "JOIN nodes n ON n.node_id = u.node_id "
        f"WHERE u.update_outcome <> 'up-to-date' AND u.id <> n.last_report{updates_of}) "
        "updates WHERE nth <= ? "
        "UNION ALL SELECT r.node_id, r.id, r.received_at, r.body, r.attestation "
        "FROM nodes n JOIN reports r ON r.id = n.last_attested_report "
        f"WHERE n.last_attested_report <> n.last_report{attested_of} "
        "ORDER BY node_id, id DESC"
    )


def _kept_chunks(report: KeptReport, bodies: Mapping[str, bytes]) -> list[Row]:
    """The rows of ``report``'s files' chunks, each at most ``KEPT_CHUNK`` bytes of its
    file, compressed; an empty file has one, empty, so that every kept file has a
    first chunk. Refuses files that are not the bodies: a kept report's sizes and
    digests are what its readers check downloads against."""
    formats = [f.fmt for f in report.files]
    if len(set(formats)) != len(formats) or set(bodies) != set(formats):
        raise ValueError(
            f"report {report.report_id}: one body per file, of formats {sorted(formats)}, "
            f"not {sorted(bodies)}"
        )
    rows: list[Row] = []
    for kept in report.files:
        body = memoryview(bodies[kept.fmt])
        if len(body) != kept.size or hashlib.sha256(body).hexdigest() != kept.sha256:
            raise ValueError(
                f"report {report.report_id}: its {kept.fmt} file's size or sha256 is not its body's"
            )
        rows += [
            (report.report_id, kept.fmt, seq, zlib.compress(body[start : start + KEPT_CHUNK]))
            for seq, start in enumerate(range(0, max(len(body), 1), KEPT_CHUNK))
        ]
    return rows


async def _latest_reports(tx: Tx, nodes: Sequence[str]) -> set[int]:
    """The ids of the latest reports of ``nodes``."""
    if not nodes:
        return set()
    rows = await tx.fetch(
        f"SELECT last_report FROM nodes WHERE node_id IN ({', '.join('?' * len(nodes))})",  # noqa: S608
        *nodes,
    )
    return {int(report_id) for (report_id,) in rows}


# GPU evidence (each GPU's SPDM report and certificate chain, about 12 KB a GPU)
# is kept in each node's latest report only, where it can be judged again (with
# RIMs or OCSP responses published since); a report that is no longer its node's
# latest keeps the verdict reached on it (``attestation``: per GPU, its checks,
# versions, nonce and every measurement), not the evidence.
_DROP_GPU_EVIDENCE = (
    "UPDATE reports SET body = {json_without(body, gpu_evidence)} WHERE id = ? AND body LIKE ?"
)
_HAS_GPU_EVIDENCE = '%"gpu_evidence"%'


async def _drop_gpu_evidence(tx: Tx, dialect: Dialect, report_ids: Sequence[int]) -> None:
    if report_ids:
        await tx.execute_many(
            _in(dialect, _DROP_GPU_EVIDENCE), [(i, _HAS_GPU_EVIDENCE) for i in report_ids]
        )


# The states of ``server.fleetview.node_state``, decided alike (a report is a
# heartbeat; a node that never reported counts from its enrollment); the test
# of the metrics compares the two. A verdict passed if its JSON, as
# ``AttestationVerdict.to_json`` writes it (sorted keys, ", " and ": "), has the
# member "passed": true. A quote inside a string is escaped, and no nested
# object has that member, so only that member matches; matching text costs a
# fifth of parsing every node's verdict as JSON (on PostgreSQL, 0.16 s against
# 0.87 s for 100,000 nodes here).
_NODE_COUNTS = """
    SELECT e.pool,
        CASE WHEN COALESCE(n.last_seen, e.enrolled_at) < ? THEN 'missing'
            WHEN n.node_id IS NULL THEN 'new'
            WHEN n.healthy THEN 'healthy' ELSE 'unhealthy' END,
        CASE WHEN NOT e.attested THEN 'unattested'
            WHEN r.attestation IS NULL THEN 'pending'
            WHEN r.attestation LIKE '%"passed": true%' THEN 'passed'
            ELSE 'failed' END,
        COUNT(*)
    FROM enrollments e LEFT JOIN nodes n ON n.node_id = e.node_id
    LEFT JOIN reports r ON r.id = n.last_report
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
_COUNT_AUDIT = (
    "INSERT INTO remediation_counts (pool, event, action, entries) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pool, event, action) DO UPDATE "
    "SET entries = remediation_counts.entries + excluded.entries"
)
# The newest event of a rollout is the last of its index (rollout_id, id).
_ROLLOUT_HEADS = """
    SELECT r.id, r.pool, r.phase, CAST({json_text(r.doc, wave)} AS INTEGER),
        COALESCE((SELECT e.at FROM rollout_events e WHERE e.rollout_id = r.id
            ORDER BY e.id DESC LIMIT 1), r.created_at)
    FROM rollouts r WHERE r.phase IN (?, ?, ?) ORDER BY r.id
"""
_ROLLOUT_NODES = """
    SELECT r.id, CAST({json_text(n.value, wave)} AS INTEGER), {json_text(n.value, progress)},
        COUNT(*)
    FROM rollouts r, {json_rows(r.doc, nodes)} AS n
    WHERE r.phase IN (?, ?, ?) GROUP BY 1, 2, 3
"""

_NODE_LOG = "FROM event_logs l JOIN event_log_texts t ON t.sha256 = l.sha256"

# A node's state as ``server.fleetview.node_state`` has it, over ``_LISTED_JOINS``,
# given the time before which a silent node is missing.
_STATE = (
    "CASE WHEN COALESCE(n.last_seen, e.enrolled_at) < ? THEN 'missing' "
    "WHEN n.node_id IS NULL THEN 'new' WHEN n.healthy THEN 'healthy' ELSE 'unhealthy' END"
)
# Assigned a bundle that its latest report does not name (or it has not reported).
_DIFFERS = "(a.target IS NOT NULL AND (n.bundle IS NULL OR n.bundle <> a.target))"


def _node_conditions(query: NodeQuery) -> tuple[list[str], list[object]]:
    """``query`` as SQL conditions over ``_LISTED_JOINS``, and their arguments."""
    where: list[str] = []
    args: list[object] = []
    if query.search:
        # Node ids are ASCII, so lower() is the same on both databases.
        where.append("lower(e.node_id) LIKE ? ESCAPE '!'")
        escaped = "".join(f"!{c}" if c in "!%_" else c for c in query.search.lower())
        args.append(f"%{escaped}%")
    if query.state is not None:
        where.append(f"{_STATE} = ?")
        args += [query.missing_before, query.state]
    if query.pool is not None:
        where.append("e.pool = ?")
        args.append(query.pool)
    if query.attestation == FAILING:
        where.append("NOT n.report_attested")
    elif query.attestation is not None:
        where.append("e.attestation = ?")
        args.append(query.attestation)
    if query.driver == NO_DRIVER:
        where.append("n.driver_version IS NULL")
    elif query.driver is not None:
        where.append("n.driver_version = ?")
        args.append(query.driver)
    if query.differs:
        where.append(_DIFFERS)
    return where, args


async def _ek_holder(
    tx: Tx, ek_certificate_sha256: str, ek_public_sha256: str | None
) -> str | None:
    rows = await tx.fetch(
        "SELECT node_id FROM enrollments WHERE ek_certificate_sha256 = ? "
        "OR ek_public_sha256 = ? ORDER BY node_id LIMIT 1",
        ek_certificate_sha256,
        ek_public_sha256,
    )
    return str(rows[0][0]) if rows else None


async def _trim(tx: Tx, over: dict[str, int], replayable: int) -> int:
    """Delete each node's oldest reports, as many as ``over`` says it holds too many,
    never its latest, nor one received after ``replayable``; the number deleted."""
    if not over:
        return 0
    deleted = await tx.fetch_many(
        "DELETE FROM reports WHERE id IN (SELECT r.id FROM reports r "
        "JOIN nodes n ON n.node_id = r.node_id WHERE r.node_id = ? "
        "AND r.id <> n.last_report AND r.received_at < ? ORDER BY r.id LIMIT ?) "
        "RETURNING node_id",
        [(node_id, replayable, excess) for node_id, excess in over.items()],
    )
    await _uncount(tx, [node_id for (node_id,) in deleted])
    return len(deleted)


async def _expire(tx: Tx, node_id: str, before: int, limit: int) -> int:
    """Delete the node's oldest reports received before ``before``, at most ``limit``,
    never its latest; the number deleted.

    In id order, the order they were stored: reports from replicas whose clocks
    disagree by seconds are not told apart at the boundary."""
    first_kept = await tx.fetch(
        "SELECT MIN(id) FROM reports WHERE node_id = ? AND received_at >= ?", node_id, before
    )
    bound = first_kept[0][0]
    deleted = await tx.fetch(
        "DELETE FROM reports WHERE id IN (SELECT id FROM reports WHERE node_id = ? "
        "AND id < COALESCE(?, id + 1) "
        "AND id <> (SELECT last_report FROM nodes WHERE node_id = ?) ORDER BY id LIMIT ?) "
        "RETURNING node_id",
        node_id,
        bound,
        node_id,
        limit,
    )
    await _uncount(tx, [node_id for (node_id,) in deleted])
    return len(deleted)


async def _uncount(tx: Tx, node_ids: list[str]) -> None:
    counted: dict[str, int] = {}
    for node_id in node_ids:
        counted[node_id] = counted.get(node_id, 0) + 1
    await tx.execute_many(
        "UPDATE nodes SET reports_kept = reports_kept - ? WHERE node_id = ?",
        [(count, node_id) for node_id, count in counted.items()],
    )


async def _drop_unused_logs(tx: Tx, digests: list[str]) -> None:
    """Delete the logs of ``digests`` that no node names any more."""
    await tx.execute_many(
        "DELETE FROM event_log_texts WHERE sha256 = ? "
        "AND NOT EXISTS (SELECT 1 FROM event_logs WHERE sha256 = ?)",
        [(digest, digest) for digest in digests],
    )


async def _observations(tx: Tx, pool: str) -> dict[str, Observation]:
    rows = await tx.fetch(
        "SELECT n.node_id, n.last_seen, n.bundle, n.driver_version, n.update_outcome, n.healthy "
        "FROM nodes n JOIN enrollments e ON e.node_id = n.node_id WHERE e.pool = ?",
        pool,
    )
    return {
        node_id: Observation(seen, bundle, driver, update, bool(healthy))
        for node_id, seen, bundle, driver, update, healthy in rows
    }


async def _add_samples(tx: Tx, reports: list[_Report]) -> None:
    """Keep the reports' GPU samples, and only each node's latest ``WINDOW`` sets."""
    # Taken from the report's canonical JSON, encoded once for the report's row:
    # encoding the samples again (dataclasses.asdict) was most of a report's cost.
    rows = [
        (
            r.report.node_id,
            r.received_at,
            json.dumps(
                [g["sample"] for g in json.loads(r.report.canonical_json)["health"]["gpus"]]
            ),
        )
        for r in reports
        if (health := r.report.health) is not None and health.gpus
    ]
    if not rows:
        return
    await tx.execute_many(
        "INSERT INTO gpu_samples (node_id, received_at, samples) VALUES (?, ?, ?)", rows
    )
    await tx.execute_many(
        "DELETE FROM gpu_samples WHERE node_id = ? AND id NOT IN "
        "(SELECT id FROM gpu_samples WHERE node_id = ? ORDER BY id DESC LIMIT ?)",
        [(node_id, node_id, WINDOW) for node_id in dict.fromkeys(row[0] for row in rows)],
    )


def _split_view_events(appended: Sequence[tuple[int, LogEntry]]) -> list[WebhookEvent]:
    """The webhook events of the split views among log entries just appended."""
    events = []
    for index, entry in appended:
        if entry.kind is EntryKind.SPLIT_VIEW:
            facts = {"log_index": index, "checkpoint_sha256": entry.sha256, **(entry.detail or {})}
            notice = Notice(LOG_SPLIT_VIEW, f"node/{entry.subject}", facts)
            events.append(WebhookEvent.of(notice, new_event_id(), entry.at))
    return events


async def _add_webhook_events(tx: Tx, events: Sequence[WebhookEvent]) -> None:
    await tx.execute_many(
        "INSERT INTO webhook_events (event_id, type, created_at, body) VALUES (?, ?, ?, ?)",
        [(e.id, e.type, e.time, e.body().decode()) for e in events],
    )


def _progress(doc: dict[str, Any]) -> RolloutProgress:
    """A stored rollout's progress, counted from its JSON as the store wrote it
    (``Rollout.to_dict``): reading it into a ``Rollout`` checks every node's
    fields, about 13 us a node, which at 100,000 nodes is more than a page may take."""
    waves: dict[int, Counter[str]] = {}
    for node in doc["nodes"]:
        waves.setdefault(node["wave"], Counter())[node["progress"]] += 1
    return RolloutProgress(
        doc["id"],
        doc["pool"],
        doc["target"],
        Phase(doc["phase"]),
        tuple(
            WaveProgress(
                wave,
                pending=counted[Progress.PENDING],
                assigned=counted[Progress.ASSIGNED],
                done=counted[Progress.DONE],
                failed=counted[Progress.FAILED],
            )
            for wave, counted in sorted(waves.items())
        ),
    )


async def _add_events(tx: Tx, rollout_id: str, at: int, events: tuple[str, ...]) -> None:
    for event in events:
        await tx.execute(
            "INSERT INTO rollout_events (rollout_id, at, event) VALUES (?, ?, ?)",
            rollout_id,
            at,
            event,
        )
