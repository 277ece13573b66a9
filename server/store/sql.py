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
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fleet.gpu import GpuSample
from fleet.report import HealthReport
from fleet.rollout import ACTIVE_PHASES, Observation, Rollout, assignments
from fleet.stragglers import WINDOW, NodeWindow
from server.attestation.challenges import PendingChallenge
from server.store import (
    Assignment,
    Conflict,
    EnrolledNode,
    NodeStatus,
    OperatorToken,
    ReportRecord,
    RolloutChange,
    RolloutEvent,
)

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

    def transaction(self, *, write: bool) -> AbstractAsyncContextManager[Tx]: ...

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
_NODE_JOINS = (
    "FROM enrollments e LEFT JOIN nodes n ON n.node_id = e.node_id "
    "LEFT JOIN reports r ON r.id = n.last_report "
    "LEFT JOIN assignments a ON a.node_id = e.node_id"
)


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


def _status(row: Row) -> NodeStatus:
    last_seen, body, target, attestation = row[8:12]
    report = None if body is None else HealthReport.from_dict(json.loads(body))
    return NodeStatus(_enrolled(row), last_seen, report, target, attestation)


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


@dataclass(frozen=True)
class _Report:
    report: HealthReport
    received_at: int
    remote: str
    nonce: str
    attestation: str | None


class SqlStore:
    def __init__(self, db: Database) -> None:
        self.db = db
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
        async with self.db.transaction(write=True) as tx:
            created = await tx.fetch(
                "INSERT INTO enrollments "
                "(node_id, public_key, pool, attested, attestation, enrolled_at, tpm) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO NOTHING RETURNING node_id",
                node.node_id,
                node.public_key,
                node.pool,
                node.attested,
                node.attestation,
                node.enrolled_at,
                node.tpm,
            )
            rows = await tx.fetch(
                _ENROLLMENT,
                node.node_id,
            )
        return _enrolled(rows[0]), bool(created)

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

    async def remove_node(self, node_id: str) -> bool:
        async with self.db.transaction(write=True) as tx:
            found = await tx.fetch(
                "DELETE FROM enrollments WHERE node_id = ? RETURNING node_id", node_id
            )
            await tx.execute("DELETE FROM assignments WHERE node_id = ?", node_id)
            logs = await tx.fetch(
                "DELETE FROM event_logs WHERE node_id = ? RETURNING sha256", node_id
            )
            await _drop_unused_logs(tx, [digest for (digest,) in logs])
            await tx.execute("DELETE FROM gpu_samples WHERE node_id = ?", node_id)
            await tx.execute("DELETE FROM sole_challenges WHERE subject = ?", node_id)
        return bool(found)

    async def add_report(
        self,
        report: HealthReport,
        received_at: int,
        remote: str,
        nonce: str,
        attestation: str | None = None,
    ) -> bool:
        return await self._reports.submit(_Report(report, received_at, remote, nonce, attestation))

    async def _add_reports(self, batch: list[_Report]) -> list[bool]:
        """Store each report and make it its node's latest; False where its nonce was
        used (before, or earlier in the batch)."""
        async with self.db.transaction(write=True) as tx:
            inserted = await tx.fetch_many(
                "INSERT INTO reports (node_id, received_at, remote, body, nonce, attestation) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, nonce) DO NOTHING "
                "RETURNING id, node_id, nonce",
                [
                    (
                        r.report.node_id,
                        r.received_at,
                        r.remote,
                        r.report.canonical_json.decode("ascii"),
                        r.nonce,
                        r.attestation,
                    )
                    for r in batch
                ],
            )
            ids = {(node_id, nonce): report_id for report_id, node_id, nonce in inserted}
            # The first of two reports with one nonce was inserted; the other is a replay.
            stored = [ids.pop((r.report.node_id, r.nonce), None) for r in batch]
            kept = [r for r, report_id in zip(batch, stored, strict=True) if report_id is not None]
            await _add_samples(tx, kept)
            await tx.execute_many(
                "INSERT INTO nodes (node_id, last_report, last_seen, bundle, driver_version, "
                "update_outcome, healthy) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET last_report = excluded.last_report, "
                "last_seen = excluded.last_seen, bundle = excluded.bundle, "
                "driver_version = excluded.driver_version, "
                "update_outcome = excluded.update_outcome, healthy = excluded.healthy "
                "WHERE nodes.last_seen <= excluded.last_seen",
                [
                    (
                        r.report.node_id,
                        report_id,
                        r.received_at,
                        r.report.bundle,
                        r.report.driver_version,
                        r.report.update,
                        r.report.healthy,
                    )
                    for r, report_id in zip(batch, stored, strict=True)
                    if report_id is not None
                ],
            )
        return [report_id is not None for report_id in stored]

    async def fleet(self) -> list[NodeStatus]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(f"SELECT {_NODE_COLUMNS} {_NODE_JOINS} ORDER BY e.node_id")
        return [_status(row) for row in rows]

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
        return [
            ReportRecord(at, HealthReport.from_dict(json.loads(body)), attestation)
            for at, body, attestation in rows
        ]

    async def pools(self) -> dict[str, int]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT pool, COUNT(*) FROM enrollments GROUP BY pool ORDER BY pool"
            )
        return {pool: int(count) for pool, count in rows}

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

    async def rollouts(self) -> list[Rollout]:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT doc FROM rollouts ORDER BY created_at DESC, id")
        return [Rollout.from_dict(json.loads(doc)) for (doc,) in rows]

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
            for node_id, target in new.items():
                if node_id in old and old[node_id] == target:
                    continue
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
        return after

    async def assignment(self, node_id: str) -> Assignment | None:
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT node_id, target, rollout_id, assigned_at FROM assignments "
                "WHERE node_id = ?",
                node_id,
            )
        return Assignment(*rows[0]) if rows else None

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
            await tx.execute_many(
                "INSERT INTO sole_challenges (subject, purpose, nonce, payload, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject, purpose) DO UPDATE SET "
                "nonce = excluded.nonce, payload = excluded.payload, "
                "expires_at = excluded.expires_at",
                [
                    (c.pending.subject, c.pending.purpose, c.nonce, c.pending.payload,
                     c.pending.expires_at)
                    for c in batch
                ],
            )  # fmt: skip
        return [None] * len(batch)

    async def take_sole_challenge(
        self, subject: str, purpose: str, nonce: bytes
    ) -> PendingChallenge | None:
        return await self._sole_taken.submit((subject, purpose, nonce))

    async def _take_sole_challenges(
        self, wanted: list[tuple[str, str, bytes]]
    ) -> list[PendingChallenge | None]:
        async with self.db.transaction(write=True) as tx:
            rows = await tx.fetch_many(
                "DELETE FROM sole_challenges WHERE subject = ? AND purpose = ? AND nonce = ? "
                "RETURNING subject, purpose, nonce, payload, expires_at",
                wanted,
            )
        taken = {
            (subject, purpose, bytes(nonce)): PendingChallenge(
                subject, purpose, bytes(payload), float(expires_at)
            )
            for subject, purpose, nonce, payload, expires_at in rows
        }
        return [taken.pop(key, None) for key in wanted]

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


_NODE_LOG = "FROM event_logs l JOIN event_log_texts t ON t.sha256 = l.sha256"


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
    rows = [
        (r.report.node_id, r.received_at, json.dumps([g.sample.to_dict() for g in health.gpus]))
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


async def _add_events(tx: Tx, rollout_id: str, at: int, events: tuple[str, ...]) -> None:
    for event in events:
        await tx.execute(
            "INSERT INTO rollout_events (rollout_id, at, event) VALUES (?, ?, ?)",
            rollout_id,
            at,
            event,
        )
