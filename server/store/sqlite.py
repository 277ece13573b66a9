"""The SQLite backend: one file, WAL mode, for a single server.

The schema version lives in ``PRAGMA user_version`` and migrations run in
order on open. All calls run on one worker thread (SQLite connections are not
for sharing between threads) so the event loop never blocks on disk; an
asyncio lock keeps one transaction's statements together. ``BEGIN IMMEDIATE``
takes the database's write lock up front, which is also what serialises two
processes sharing the file, so rollouts need no row lock here.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from server.store import EnrolledNode, RemovedNode, Retention
from server.store.sql import Row, SqlStore

T = TypeVar("T")

MIGRATIONS = (
    """
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        remote TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX reports_node ON reports (node_id, id);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        last_report INTEGER NOT NULL REFERENCES reports (id),
        last_seen INTEGER NOT NULL
    );
    """,
    """
    ALTER TABLE reports ADD COLUMN nonce TEXT;
    CREATE UNIQUE INDEX reports_nonce ON reports (node_id, nonce);
    ALTER TABLE nodes ADD COLUMN bundle TEXT;
    ALTER TABLE nodes ADD COLUMN driver_version TEXT;
    ALTER TABLE nodes ADD COLUMN update_outcome TEXT;
    ALTER TABLE nodes ADD COLUMN healthy INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE enrollments (
        node_id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL,
        pool TEXT NOT NULL,
        attested INTEGER NOT NULL,
        attestation TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL
    );
    CREATE INDEX enrollments_pool ON enrollments (pool, node_id);
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        phase TEXT NOT NULL,
        doc TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX rollouts_pool ON rollouts (pool, phase);
    CREATE TABLE assignments (
        node_id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        rollout_id TEXT NOT NULL,
        assigned_at INTEGER NOT NULL
    );
    CREATE TABLE rollout_events (
        id INTEGER PRIMARY KEY,
        rollout_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
    """,
    # The enrolled TPM attestation key (server.attestation.EnrolledNode JSON);
    # NULL for nodes enrolled without a TPM.
    """
    ALTER TABLE enrollments ADD COLUMN tpm TEXT;
    """,
    # The verdict on an attested report (server.report_attestation.Verdict JSON);
    # NULL for a report sent without TPM evidence.
    """
    ALTER TABLE reports ADD COLUMN attestation TEXT;
    """,
    # Attestation state every replica must see: pending challenges (single-use,
    # expiring; server.attestation.challenges) and each node's last verified
    # event log, so its reports may name it by digest at any replica.
    """
    CREATE TABLE challenges (
        nonce BLOB PRIMARY KEY,
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        payload BLOB NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE INDEX challenges_purpose ON challenges (purpose);
    CREATE TABLE event_logs (
        node_id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        log BLOB NOT NULL
    );
    """,
    # Each node's latest GPU health samples (a JSON list per report), the window
    # straggler detection compares across the fleet.
    """
    CREATE TABLE gpu_samples (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        samples TEXT NOT NULL
    );
    CREATE INDEX gpu_samples_node ON gpu_samples (node_id, id);
    """,
    # Nodes that boot alike share one event log (~41 KB): keep each distinct log
    # once, keyed by its digest, and only the digest per node.
    """
    CREATE TABLE event_log_texts (
        sha256 TEXT PRIMARY KEY,
        log BLOB NOT NULL
    );
    INSERT INTO event_log_texts (sha256, log) SELECT sha256, log FROM event_logs WHERE TRUE
        ON CONFLICT (sha256) DO NOTHING;
    ALTER TABLE event_logs DROP COLUMN log;
    CREATE INDEX event_logs_sha256 ON event_logs (sha256);
    """,
    # Each node's applier measurement key (keys.driver_key), pinned by its first
    # attested report that names one; removed with the node, so re-enrolling re-pins.
    """
    CREATE TABLE driver_keys (
        node_id TEXT PRIMARY KEY,
        public_key BLOB NOT NULL
    );
    """,
    # The pinned applier key moves into the enrollment row, which every signed
    # request reads anyway: an attested report then needs no query to check it.
    """
    ALTER TABLE enrollments ADD COLUMN driver_key BLOB;
    UPDATE enrollments SET driver_key = (
        SELECT k.public_key FROM driver_keys k WHERE k.node_id = enrollments.node_id
    );
    DROP TABLE driver_keys;
    """,
    # Report challenges are held one per node (issue_replacing), replaced in place.
    """
    CREATE TABLE sole_challenges (
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        nonce BLOB NOT NULL,
        payload BLOB NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (subject, purpose)
    );
    """,
    # Each re-signer's last outcome (server.renewal), one row per host and repository.
    """
    CREATE TABLE renewals (
        signer TEXT PRIMARY KEY,
        status TEXT NOT NULL
    );
    """,
    # Operator tokens expire and can be revoked; each has a short id to name it by
    # (its hash is never shown). Dashboard sessions are random ids, stored hashed,
    # tied to the token that opened them and removed when it is revoked.
    """
    ALTER TABLE operator_tokens ADD COLUMN token_id TEXT;
    ALTER TABLE operator_tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE operator_tokens ADD COLUMN revoked_at INTEGER;
    ALTER TABLE operator_tokens ADD COLUMN last_used_at INTEGER;
    UPDATE operator_tokens SET token_id = lower(hex(randomblob(6)));
    CREATE UNIQUE INDEX operator_tokens_id ON operator_tokens (token_id);
    CREATE TABLE operator_sessions (
        session_hash TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX operator_sessions_token ON operator_sessions (token_hash);
    """,
    # A TPM vouches for one node: its EK (by certificate and by public key) is
    # bound to one enrollment, and the unique indexes are the guard, so two
    # replicas enrolling one EK for two ids cannot both win. Nodes enrolled before
    # keep their certificate's binding, the earliest enrolled of each EK only: a
    # later one sharing it is left unbound, and the server warns of it at start.
    """
    ALTER TABLE enrollments ADD COLUMN ek_certificate_sha256 TEXT;
    ALTER TABLE enrollments ADD COLUMN ek_public_sha256 TEXT;
    UPDATE enrollments SET ek_certificate_sha256 = json_extract(tpm, '$.ek_certificate_sha256')
        WHERE tpm IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM enrollments o WHERE o.tpm IS NOT NULL
                AND json_extract(o.tpm, '$.ek_certificate_sha256')
                    = json_extract(enrollments.tpm, '$.ek_certificate_sha256')
                AND (o.enrolled_at, o.node_id) < (enrollments.enrolled_at, enrollments.node_id)
        );
    CREATE UNIQUE INDEX enrollments_ek_certificate ON enrollments (ek_certificate_sha256);
    CREATE UNIQUE INDEX enrollments_ek_public ON enrollments (ek_public_sha256);
    """,
    # Retention (server.store.Retention): how many reports each node has stored,
    # kept with its latest, so trimming a node needs no count of its reports.
    # What removed nodes left behind goes: reports and samples of ids no longer
    # enrolled, and those received (with a clock margin) before the id's present
    # enrollment, which a node enrolling a removed node's id had inherited.
    """
    ALTER TABLE nodes ADD COLUMN reports_kept INTEGER NOT NULL DEFAULT 0;
    DELETE FROM nodes WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = nodes.node_id
            AND nodes.last_seen >= e.enrolled_at - 300
    );
    DELETE FROM reports WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = reports.node_id
            AND reports.received_at >= e.enrolled_at - 300
    );
    DELETE FROM gpu_samples WHERE NOT EXISTS (
        SELECT 1 FROM enrollments e WHERE e.node_id = gpu_samples.node_id
            AND gpu_samples.received_at >= e.enrolled_at - 300
    );
    UPDATE nodes SET reports_kept = (
        SELECT COUNT(*) FROM reports r WHERE r.node_id = nodes.node_id
    );
    """,
)


class _Tx:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: object) -> None:
        await self._db.call(self._db.conn.execute, sql, args)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self._db.call(_fetch, self._db.conn, sql, args)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        await self._db.call(self._db.conn.executemany, sql, rows)

    async def fetch_many(self, sql: str, rows: Sequence[Sequence[object]]) -> list[Row]:
        def run() -> list[Row]:
            return [row for args in rows for row in _fetch(self._db.conn, sql, args)]

        return await self._db.call(run)


def _fetch(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[Row]:
    return conn.execute(sql, args).fetchall()


class SqliteDatabase:
    lock_wait = ""
    lock_skip = ""
    lock_share = ""

    def __init__(self, conn: sqlite3.Connection, worker: ThreadPoolExecutor) -> None:
        self.conn = conn
        self._worker = worker
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuward-sqlite")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            _migrate(conn)
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(worker, connect)
        except BaseException:
            worker.shutdown()
            raise
        return cls(conn, worker)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, partial(fn, *args))

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_Tx]:
        async with self._lock:
            await self.call(self.conn.execute, "BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _Tx(self)
            except BaseException:
                await self.call(self.conn.execute, "ROLLBACK")
                raise
            await self.call(self.conn.execute, "COMMIT")

    async def query(self, sql: str, *args: object) -> list[Row]:
        async with self._lock:  # not inside another coroutine's transaction
            return await self.call(_fetch, self.conn, sql, args)

    async def close(self) -> None:
        await self.call(self.conn.close)
        self._worker.shutdown()


def _migrate(conn: sqlite3.Connection, upto: int = len(MIGRATIONS)) -> None:
    """Apply what is missing, reading the version under the write lock.

    Two processes opening the file at once (a server and ``gpuward server token
    create``) must not both apply a migration. SQLite's DDL is transactional, so
    a migration that fails half-way leaves the previous version intact.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:upto], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore(SqlStore):
    """What every node request reads, its enrollment and (for a report challenge)
    the digest of its kept event log, is kept in memory once read: the request then
    costs no trip to the database thread. Exact, because a SQLite store serves one
    server process and both change only through ``enroll``, ``remove_node``,
    ``pin_driver_key`` and ``keep_event_log`` here, which drop the node;
    PostgreSQL, shared by replicas, reads every time (batched: ``server.store.sql``).
    (A new write to either must drop the node too.)"""

    def __init__(self, db: SqliteDatabase, retention: Retention | None = None) -> None:
        super().__init__(db, retention)
        self._nodes: dict[str, EnrolledNode] = {}
        self._log_digests: dict[str, str] = {}
        self._changes = 0  # a read that overlapped a change is not kept

    @classmethod
    async def open(cls, path: Path, retention: Retention | None = None) -> SqliteStore:
        return cls(await SqliteDatabase.open(path), retention)

    async def _kept(
        self, cache: dict[str, T], node_id: str, read: Callable[[str], Awaitable[T | None]]
    ) -> T | None:
        found = cache.get(node_id)
        if found is None:
            changes = self._changes
            found = await read(node_id)
            if found is not None and changes == self._changes:
                cache[node_id] = found
        return found

    async def enrolled(self, node_id: str) -> EnrolledNode | None:
        return await self._kept(self._nodes, node_id, super().enrolled)

    async def event_log_sha256(self, node_id: str) -> str | None:
        return await self._kept(self._log_digests, node_id, super().event_log_sha256)

    async def enroll(self, node: EnrolledNode) -> tuple[EnrolledNode, bool]:
        try:
            return await super().enroll(node)
        finally:
            self._forget(node.node_id)

    async def remove_node(self, node_id: str) -> RemovedNode | None:
        try:
            return await super().remove_node(node_id)
        finally:
            self._forget(node_id)

    async def keep_event_log(self, node_id: str, log: bytes) -> None:
        try:
            await super().keep_event_log(node_id, log)
        finally:
            self._forget(node_id)

    async def pin_driver_key(self, node_id: str, public_key: bytes) -> bytes | None:
        try:
            return await super().pin_driver_key(node_id, public_key)
        finally:
            self._forget(node_id)

    def _forget(self, node_id: str) -> None:
        self._changes += 1
        self._nodes.pop(node_id, None)
        self._log_digests.pop(node_id, None)
