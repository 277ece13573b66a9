"""The PostgreSQL backend (asyncpg): one database shared by several replicas.

Migrations are recorded in ``schema_migrations`` and applied under a
transaction-scoped advisory lock, so replicas starting together apply each one
once. A rollout row is locked with ``SELECT ... FOR UPDATE``; the periodic
advance uses ``SKIP LOCKED``, so while one replica advances a rollout the others
pass over it instead of queueing behind it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache

import asyncpg

from fleet.errors import GpuwardError
from server.store import Retention
from server.store.sql import Row, SqlStore

_MIGRATION_LOCK = 0x67707577  # "gpuw": pg_advisory_xact_lock key for migrations

MIGRATIONS = (
    """
    CREATE TABLE reports (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node_id TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        remote TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX reports_node ON reports (node_id, id);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        last_report BIGINT NOT NULL REFERENCES reports (id),
        last_seen BIGINT NOT NULL
    );
    """,
    """
    ALTER TABLE reports ADD COLUMN nonce TEXT;
    CREATE UNIQUE INDEX reports_nonce ON reports (node_id, nonce);
    ALTER TABLE nodes ADD COLUMN bundle TEXT;
    ALTER TABLE nodes ADD COLUMN driver_version TEXT;
    ALTER TABLE nodes ADD COLUMN update_outcome TEXT;
    ALTER TABLE nodes ADD COLUMN healthy BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE enrollments (
        node_id TEXT PRIMARY KEY,
        public_key BYTEA NOT NULL,
        pool TEXT NOT NULL,
        attested BOOLEAN NOT NULL,
        attestation TEXT NOT NULL,
        enrolled_at BIGINT NOT NULL
    );
    CREATE INDEX enrollments_pool ON enrollments (pool, node_id);
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        phase TEXT NOT NULL,
        doc TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX rollouts_pool ON rollouts (pool, phase);
    CREATE TABLE assignments (
        node_id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        rollout_id TEXT NOT NULL,
        assigned_at BIGINT NOT NULL
    );
    CREATE TABLE rollout_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rollout_id TEXT NOT NULL,
        at BIGINT NOT NULL,
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
        nonce BYTEA PRIMARY KEY,
        subject TEXT NOT NULL,
        purpose TEXT NOT NULL,
        payload BYTEA NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at);
    CREATE INDEX challenges_purpose ON challenges (purpose);
    CREATE TABLE event_logs (
        node_id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        log BYTEA NOT NULL
    );
    """,
    # Each node's latest GPU health samples (a JSON list per report), the window
    # straggler detection compares across the fleet.
    """
    CREATE TABLE gpu_samples (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        node_id TEXT NOT NULL,
        received_at BIGINT NOT NULL,
        samples TEXT NOT NULL
    );
    CREATE INDEX gpu_samples_node ON gpu_samples (node_id, id);
    """,
    # Nodes that boot alike share one event log (~41 KB): keep each distinct log
    # once, keyed by its digest, and only the digest per node.
    """
    CREATE TABLE event_log_texts (
        sha256 TEXT PRIMARY KEY,
        log BYTEA NOT NULL
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
        public_key BYTEA NOT NULL
    );
    """,
    # The pinned applier key moves into the enrollment row, which every signed
    # request reads anyway: an attested report then needs no query to check it.
    """
    ALTER TABLE enrollments ADD COLUMN driver_key BYTEA;
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
        nonce BYTEA NOT NULL,
        payload BYTEA NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
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
    ALTER TABLE operator_tokens ADD COLUMN expires_at BIGINT;
    ALTER TABLE operator_tokens ADD COLUMN revoked_at BIGINT;
    ALTER TABLE operator_tokens ADD COLUMN last_used_at BIGINT;
    UPDATE operator_tokens SET token_id = substr(md5(random()::text || token_hash), 1, 12);
    CREATE UNIQUE INDEX operator_tokens_id ON operator_tokens (token_id);
    CREATE TABLE operator_sessions (
        session_hash TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        expires_at BIGINT NOT NULL
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
    UPDATE enrollments SET ek_certificate_sha256 = (tpm::jsonb ->> 'ek_certificate_sha256')
        WHERE tpm IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM enrollments o WHERE o.tpm IS NOT NULL
                AND (o.tpm::jsonb ->> 'ek_certificate_sha256')
                    = (enrollments.tpm::jsonb ->> 'ek_certificate_sha256')
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
    ALTER TABLE nodes ADD COLUMN reports_kept BIGINT NOT NULL DEFAULT 0;
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


@cache
def _numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1``, ``$2``, ... (the SQL has no ``?`` literals)."""
    count = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


class _Tx:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self._conn.execute(_numbered(sql), *args)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(_numbered(sql), *args)]

    async def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        await self._conn.executemany(_numbered(sql), rows)

    async def fetch_many(self, sql: str, rows: Sequence[Sequence[object]]) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetchmany(_numbered(sql), rows)]


class PostgresDatabase:
    lock_wait = " FOR UPDATE"
    lock_skip = " FOR UPDATE SKIP LOCKED"
    lock_share = " FOR KEY SHARE"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, max_size: int = 10) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_size, reset=_keep_session
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise GpuwardError(f"cannot connect to PostgreSQL: {exc}") from None
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _migrate(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[_Tx]:
        async with self._pool.acquire() as conn, conn.transaction(readonly=not write):
            yield _Tx(conn)

    async def query(self, sql: str, *args: object) -> list[Row]:
        return [tuple(r) for r in await self._pool.fetch(_numbered(sql), *args)]

    async def close(self) -> None:
        await self._pool.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no ``RESET ALL`` round trip: the store
    sets no session state (no LISTEN, cursors, SET or session-level advisory locks),
    and asyncpg still rolls back a transaction left open."""


async def _migrate(conn: asyncpg.Connection, upto: int = len(MIGRATIONS)) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    version = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    for number, script in enumerate(MIGRATIONS[version:upto], start=version + 1):
        await conn.execute(script)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)


class PostgresStore(SqlStore):
    @classmethod
    async def connect(cls, url: str, retention: Retention | None = None) -> PostgresStore:
        return cls(await PostgresDatabase.connect(url), retention)
